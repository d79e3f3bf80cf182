"""Run plugins' periodic tasks in the workers: at most once per interval across all workers.

Each worker loops over each task. A run is *claimed* in PostgreSQL before it
starts: one statement moves the task's ``next_due`` (table
``marketplace_periodic_runs``) an interval ahead, and only if it was due, so
of any number of workers exactly one claims each interval and the others
sleep until the new ``next_due``. The database's clock decides, so the
workers' clocks need not agree. A claimed run that fails (or whose worker
dies) is not retried within its interval: the task runs again at the next.

A run also holds a PostgreSQL advisory lock derived from the task's name, so
a run that takes longer than its interval never overlaps the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import socket
from typing import Any

from engine.core.contributions import PeriodicTask

__all__ = ["claim_run", "lock_key", "run_periodic", "run_periodic_once"]

log = logging.getLogger(__name__)

# Claim the next run: insert the task's row on first use, else move next_due an
# interval ahead only when it is due. Under concurrency the losers' ON CONFLICT
# re-checks the winner's committed row and updates nothing.
_CLAIM = """
INSERT INTO marketplace_periodic_runs AS r (name, next_due, started_at, owner)
VALUES ($1, now() + make_interval(secs => $2), now(), $3)
ON CONFLICT (name) DO UPDATE
SET next_due = now() + make_interval(secs => $2), started_at = now(), owner = $3
WHERE r.next_due <= now()
RETURNING 1
"""

_SECONDS_UNTIL_DUE = """
SELECT GREATEST(0, extract(epoch FROM next_due - now()))::float8
FROM marketplace_periodic_runs WHERE name = $1
"""


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a task name."""
    digest = hashlib.sha256(f"marketplace.periodic:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def claim_run(conn: Any, task: PeriodicTask) -> bool:
    """Claim this interval's run of ``task`` (true for exactly one caller per interval)."""
    return bool(await conn.fetchval(_CLAIM, task.name, float(task.every_seconds), _owner()))


async def run_periodic_once(services: Any, task: PeriodicTask) -> bool:
    """Run ``task`` if its run is due and no other worker is running it; return whether it ran."""
    key = lock_key(task.name)
    async with services.db.pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            return False
        try:
            if not await claim_run(conn, task):
                return False
            await task.run(services)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return True


async def _seconds_until_due(services: Any, task: PeriodicTask) -> float:
    async with services.db.pool.acquire() as conn:
        remaining = await conn.fetchval(_SECONDS_UNTIL_DUE, task.name)
    return float(task.every_seconds if remaining is None else remaining)


async def run_periodic(services: Any, task: PeriodicTask) -> None:
    """Try ``task`` whenever its run may be due, until cancelled; failures are logged."""
    while True:
        wait = float(task.every_seconds)
        try:
            await run_periodic_once(services, task)
            wait = await _seconds_until_due(services, task)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failing task runs again next interval; the worker goes on
            log.exception("periodic task %s failed", task.name)
        # Due but locked means a run is overrunning its interval: look again in a
        # moment, not in a busy loop. A little jitter so workers do not ask in step.
        floor = min(float(task.every_seconds), 1.0)
        wait = max(floor, min(float(task.every_seconds), wait))
        await asyncio.sleep(wait + random.random() * 0.05)
