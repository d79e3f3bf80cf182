"""Embedded PostgreSQL and NATS JetStream for development, ``marketplace up`` and the tests.

The one import for callers: the two servers, ``Services`` (both, or the ones
configured), and ``reap_orphans`` for servers whose owner died. How a server
runs is described in ``engine.infra.server``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from engine.infra.nats_server import EmbeddedNats, find_nats_server
from engine.infra.postgres import EmbeddedPostgres, postgres_bin_dir
from engine.infra.processes import ServerState, find_free_port, pid_alive
from engine.infra.server import STATE_SUFFIX, EmbeddedServer, EmbeddedServiceError

__all__ = [
    "DATABASE_URL_VARIABLE",
    "NATS_URL_VARIABLE",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServiceError",
    "ServiceUrls",
    "Services",
    "find_free_port",
    "find_nats_server",
    "postgres_bin_dir",
    "reap_orphans",
]

logger = logging.getLogger(__name__)

DATABASE_URL_VARIABLE = "MARKETPLACE_DATABASE_URL"
NATS_URL_VARIABLE = "MARKETPLACE_NATS_URL"

_SERVER_KINDS: dict[str, Callable[[Path], EmbeddedServer]] = {
    EmbeddedPostgres.kind: EmbeddedPostgres,
    EmbeddedNats.kind: EmbeddedNats,
}


def reap_orphans(root: Path) -> list[Path]:
    """Stop the embedded servers directly under ``root`` whose owning process is gone.

    A run killed with SIGKILL cannot run its atexit handlers; this cleans up
    after it. Servers whose owner is alive (another run in progress) are left
    alone. Returns the data directories whose servers were stopped.
    """
    stopped = []
    for state_path in sorted(root.glob(f"*{STATE_SUFFIX}")):
        state = ServerState.read(state_path)
        if state is None or state.kind not in _SERVER_KINDS or pid_alive(state.owner_pid):
            continue
        data_dir = state_path.with_name(state_path.name.removesuffix(STATE_SUFFIX))
        logger.info("stopping orphaned %s on %s", state.kind, data_dir)
        _SERVER_KINDS[state.kind](data_dir).stop()
        stopped.append(data_dir)
    return stopped


@dataclass(frozen=True)
class ServiceUrls:
    """Where the engine finds its database and its message broker."""

    database_url: str
    nats_url: str


@dataclass
class Services:
    """PostgreSQL and NATS for one process: the configured ones, or embedded servers.

    A URL passed in is used as is and nothing is started for it; so is one from
    ``MARKETPLACE_DATABASE_URL`` / ``MARKETPLACE_NATS_URL`` unless
    ``use_environment`` is false. For each service without a URL an embedded
    server is started with its data under ``root`` (``root/postgres``,
    ``root/nats``, each with its ``.log`` beside it). ``stop()`` stops only what
    ``start()`` started. Usable as a context manager, sync or async::

        with Services(Path(".marketplace")) as services:
            print(services.urls.database_url, services.urls.nats_url)
    """

    root: Path
    database: str = "marketplace"
    fast: bool = False
    database_url: str | None = None
    nats_url: str | None = None
    use_environment: bool = True
    postgres: EmbeddedPostgres | None = field(default=None, init=False)
    nats: EmbeddedNats | None = field(default=None, init=False)
    _urls: ServiceUrls | None = field(default=None, init=False, repr=False)

    @property
    def urls(self) -> ServiceUrls:
        """The URLs in use; only valid between start() and stop()."""
        if self._urls is None:
            raise EmbeddedServiceError("services are not started")
        return self._urls

    def _configured(self, given: str | None, variable: str) -> str | None:
        if given:
            return given
        return (os.environ.get(variable) or None) if self.use_environment else None

    def start(self) -> ServiceUrls:
        """Start whatever is not configured (both servers in parallel) and return the URLs."""
        database_url = self._configured(self.database_url, DATABASE_URL_VARIABLE)
        nats_url = self._configured(self.nats_url, NATS_URL_VARIABLE)
        if database_url is None:
            self.postgres = EmbeddedPostgres(
                self.root / "postgres", database=self.database, fast=self.fast
            )
        if nats_url is None:
            self.nats = EmbeddedNats(self.root / "nats")
        with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="embedded") as pool:
            starting_postgres = pool.submit(self.postgres.start) if self.postgres else None
            starting_nats = pool.submit(self.nats.start) if self.nats else None
            try:
                if starting_postgres is not None:
                    database_url = starting_postgres.result()
                if starting_nats is not None:
                    nats_url = starting_nats.result()
            except BaseException:
                concurrent.futures.wait([f for f in (starting_postgres, starting_nats) if f])
                self.stop()
                raise
        if database_url is None or nats_url is None:
            raise AssertionError("unreachable: every missing URL was started above")
        self._urls = ServiceUrls(database_url=database_url, nats_url=nats_url)
        return self._urls

    def stop(self) -> None:
        """Stop the servers start() started; configured services are left alone."""
        for server in (self.nats, self.postgres):
            if server is not None:
                server.stop()
        self.nats = self.postgres = None
        self._urls = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
