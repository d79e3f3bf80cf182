"""Worker heartbeats in PostgreSQL, and the readiness check built on them.

Every worker process keeps one row of ``marketplace_workers`` current: when it
last reported (``last_seen_at``) and when its receiver last pulled from
JetStream (``last_pull_at``). A worker that died stops reporting; a worker
whose receiver is stuck stops pulling. ``/ready`` reads the rows (see
``workers_readiness``), so an API process knows whether anything drains the
mailboxes, wherever the workers run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

__all__ = ["Heartbeat", "WorkersReadiness", "workers_readiness"]

log = logging.getLogger(__name__)

_BEAT = """
INSERT INTO marketplace_workers (worker, host, pid, last_seen_at, last_pull_at)
VALUES ($1, $2, $3, now(), now() - make_interval(secs => $4))
ON CONFLICT (worker) DO UPDATE SET
    last_seen_at = now(), last_pull_at = EXCLUDED.last_pull_at, stopped_at = NULL
"""

# Rows of workers gone for a day say nothing any more.
_FORGET = """
DELETE FROM marketplace_workers
WHERE last_seen_at < now() - interval '1 day' AND worker <> $1
"""

_FRESHEST = """
SELECT worker,
       EXTRACT(EPOCH FROM now() - last_seen_at)::float8 AS seen_ago,
       EXTRACT(EPOCH FROM now() - last_pull_at)::float8 AS pull_ago
FROM marketplace_workers
WHERE stopped_at IS NULL
ORDER BY GREATEST(last_seen_at, last_pull_at) DESC
LIMIT 5
"""


class Heartbeat:
    """Reports one worker process to ``marketplace_workers`` every ``every_seconds``."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        worker: str,
        last_pull: Callable[[], float],
        every_seconds: float = 5.0,
    ) -> None:
        """``last_pull`` returns the ``time.monotonic()`` of the receiver's latest pull."""
        self._pool = pool
        self.worker = worker
        self._last_pull = last_pull
        self.every_seconds = every_seconds

    async def beat(self) -> None:
        """Report now."""
        since_pull = max(0.0, time.monotonic() - self._last_pull())
        async with self._pool.acquire() as conn:
            await conn.execute(_BEAT, self.worker, socket.gethostname(), os.getpid(), since_pull)

    async def beat_forever(self) -> None:
        """Report every ``every_seconds`` until cancelled; a failed report is retried."""
        rounds = 0
        while True:
            try:
                await self.beat()
                if rounds % 720 == 0:
                    async with self._pool.acquire() as conn:
                        await conn.execute(_FORGET, self.worker)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("worker heartbeat failed (%s); retrying", exc)
            rounds += 1
            await asyncio.sleep(self.every_seconds)

    async def stopped(self) -> None:
        """Mark this worker as stopped on purpose (not merely silent)."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE marketplace_workers SET stopped_at = now() WHERE worker = $1", self.worker
            )


@dataclass(frozen=True, slots=True)
class WorkersReadiness:
    """Whether some worker reports and pulls; ``reason`` says why not."""

    ok: bool
    reason: str = ""


async def workers_readiness(pool: asyncpg.Pool, stale_seconds: float) -> WorkersReadiness:
    """Ready when a running worker reported and pulled within ``stale_seconds``."""
    async with pool.acquire(timeout=2) as conn:
        rows = await conn.fetch(_FRESHEST)
    if not rows:
        return WorkersReadiness(False, "no worker is running")
    for row in rows:
        pull_ago = row["pull_ago"]
        if row["seen_ago"] <= stale_seconds and pull_ago is not None and pull_ago <= stale_seconds:
            return WorkersReadiness(True)
    row = rows[0]
    if row["seen_ago"] > stale_seconds:
        return WorkersReadiness(
            False, f"worker {row['worker']} stopped reporting {row['seen_ago']:.0f} s ago"
        )
    return WorkersReadiness(
        False, f"worker {row['worker']} has not pulled from NATS for {row['pull_ago']:.0f} s"
    )
