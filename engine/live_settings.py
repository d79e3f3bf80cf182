"""Settings an admin changes at run time, in force in every process within a bounded time.

A plugin keeps such a setting in its own tables (commission rules keep their
rule sets) and, when one changes, calls ``bump(name)``: that increments the
setting's version in ``marketplace_live_settings`` and sends a PostgreSQL
``NOTIFY`` in the same transaction. Every API and worker process runs one
``LiveSettings`` watcher (``Services`` starts it): it ``LISTEN``s, and also
compares versions every ``poll_seconds`` in case a notification was missed (a
dropped connection, a fail-over). For each setting whose version moved it calls
the callbacks registered with ``watch(name, callback)``, which reload the
setting. So a change made through one API process is applied by all of them:
at once when notifications flow, within ``poll_seconds`` when they do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

__all__ = ["CHANNEL", "LiveSettings", "Reload", "bump"]

log = logging.getLogger(__name__)

CHANNEL = "marketplace_live_settings"

Reload = Callable[[int], Awaitable[None]]
"""``await reload(version)``: put the setting's stored value in force in this process."""

_BUMP = """
WITH bumped AS (
    INSERT INTO marketplace_live_settings (name, version, updated_at) VALUES ($1, 1, now())
    ON CONFLICT (name) DO UPDATE
        SET version = marketplace_live_settings.version + 1, updated_at = now()
    RETURNING version
)
SELECT version, pg_notify($2, $1 || ':' || version) FROM bumped
"""


async def bump(conn: Any, name: str) -> int:
    """Record on ``conn`` (in the transaction that stored the change) that ``name`` changed.

    The version moves, and every process hears of it, only if that transaction
    commits. Returns the new version.
    """
    row = await conn.fetchrow(_BUMP, name, CHANNEL)
    return int(row["version"])


class LiveSettings:
    """The watcher of one process (see the module docstring)."""

    def __init__(
        self, pool: asyncpg.Pool, url: str, *, poll_seconds: float = 5.0, listen: bool = True
    ) -> None:
        """``listen=False`` only polls (a pooler in transaction mode cannot ``LISTEN``)."""
        self._pool = pool
        self._url = url
        self.poll_seconds = poll_seconds
        self.listen = listen
        self._reloads: dict[str, list[Reload]] = {}
        self._seen: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def bump(self, name: str, conn: Any | None = None) -> int:
        """Record that ``name`` changed; returns its new version.

        Pass the connection of the transaction that stored the change: the
        version moves, and the notification goes out, only if it commits.
        """
        if conn is None:
            async with self._pool.acquire() as own:
                return await bump(own, name)
        return await bump(conn, name)

    async def version(self, name: str) -> int:
        """The stored version of ``name`` (0: never changed)."""
        found = await self._pool.fetchval(
            "SELECT version FROM marketplace_live_settings WHERE name = $1", name
        )
        return int(found or 0)

    def watch(self, name: str, reload: Reload) -> None:
        """Call ``reload(version)`` whenever ``name`` moves past the version seen at start."""
        self._reloads.setdefault(name, []).append(reload)

    async def start(self) -> None:
        """Note the current versions and start listening (idempotent)."""
        if self._task is not None:
            return
        self._seen = await self._versions()
        self._task = asyncio.create_task(self._run(), name="live-settings")

    async def close(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> list[str]:
        """Reload every watched setting whose version moved; return their names."""
        async with self._lock:
            current = await self._versions()
            moved = []
            for name, version in current.items():
                if version == self._seen.get(name) or name not in self._reloads:
                    continue
                for reload in self._reloads[name]:
                    await reload(version)
                self._seen[name] = version
                moved.append(name)
                log.info("live setting %s now at version %d", name, version)
            return moved

    async def _versions(self) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT name, version FROM marketplace_live_settings")
        return {str(row["name"]): int(row["version"]) for row in rows}

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            connection: asyncpg.Connection | None = None
            try:
                if self.listen:
                    connection = await asyncpg.connect(self._url)
                    await connection.add_listener(CHANNEL, self._notified)
                # Whatever changed while no one listened.
                await self.check()
                while connection is None or not connection.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
                    self._wake.clear()
                    await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # a lost connection or a failed reload: retried next round
                log.warning("live settings watcher failed; retrying", exc_info=True)
                await asyncio.sleep(self.poll_seconds)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close()
