"""The lifecycle every embedded server shares: start or adopt, wait until ready, stop by pid.

Each server keeps its data in a directory of its own and writes two files next
to it: ``<name>.log`` (everything the server prints) and ``<name>.state.json``
(its pid, port and the Python process that owns it). Servers run on loopback
ports, are stopped by pid, are stopped by their owner at interpreter exit, and
are adopted rather than started twice when one already runs on the same data.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import logging
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

from engine.infra.processes import (
    ServerState,
    find_free_port,
    pid_alive,
    process_matches,
    read_from,
    stop_process,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "START_TIMEOUT_SECONDS",
    "STATE_SUFFIX",
    "STOP_TIMEOUT_SECONDS",
    "EmbeddedServer",
    "EmbeddedServiceError",
    "server_environment",
]

logger = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
STATE_SUFFIX = ".state.json"

# A free port can be taken by someone else before the server binds it.
_BIND_ATTEMPTS = 3
_PROBE_INTERVAL_SECONDS = 0.05

_T = TypeVar("_T")


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be found, started or reached; the message quotes its log."""


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


def server_environment() -> dict[str, str]:
    """The environment servers run with: PATH and the C locale, nothing else.

    Nothing of ours (Stripe keys, PG* variables pointing elsewhere) leaks into
    the servers, and their messages stay in the plain C locale.
    """
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C"}


class _ExitedEarly(Exception):
    """The server process ended before it became ready."""


class EmbeddedServer(ABC):
    """Lifecycle shared by the embedded servers: start or adopt, wait until ready, stop by pid.

    Subclasses say how to find a running server, prepare the data directory,
    launch the process, probe it and recognise a lost port.
    """

    kind: ClassVar[str]
    stop_signal: ClassVar[signal.Signals]

    def __init__(self, data_dir: Path, port: int | None, host: str) -> None:
        self.data_dir = data_dir.absolute()
        self.port = port
        self.host = host
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.state_path = self.data_dir.with_name(self.data_dir.name + STATE_SUFFIX)
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
