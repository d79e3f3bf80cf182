"""Run plugins' periodic tasks in the workers, one runner per task across all workers.

Each task loops on its interval; before a run it takes a PostgreSQL advisory
lock derived from its name with ``pg_try_advisory_lock``, so with many workers
exactly one runs it at a time and the others skip that round.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from engine.core.contributions import PeriodicTask

__all__ = ["lock_key", "run_periodic", "run_periodic_once"]

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a task name."""
    digest = hashlib.sha256(f"marketplace.periodic:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def run_periodic_once(services: Any, task: PeriodicTask) -> bool:
    """Run ``task`` now unless another worker is running it; return whether it ran."""
    key = lock_key(task.name)
    async with services.db.pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            return False
        try:
            await task.run(services)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
    return True


async def run_periodic(services: Any, task: PeriodicTask) -> None:
    """Run ``task`` every ``task.every_seconds`` until cancelled; failures are logged."""
    while True:
        try:
            await run_periodic_once(services, task)
        except asyncio.CancelledError:
            raise
        except Exception:  # a failing task runs again next interval; the worker goes on
            log.exception("periodic task %s failed", task.name)
        await asyncio.sleep(task.every_seconds)
