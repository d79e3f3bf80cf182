"""``marketplace up`` as a newcomer runs it: in an empty directory, stopped with Ctrl-C.

``running_up(directory)`` starts it as a subprocess (its own ``.marketplace``:
embedded PostgreSQL and NATS, the sandbox, the API and its worker), waits for
what it prints once ready, and on exit sends SIGINT and checks that it exited
0, logged no traceback and left no process or port behind.
``start_drain_stop(directory)`` is one start of tests/e2e/test_up_starts.py and
scripts/up_soak.py: ``/ready`` answers, and the ``account.updated`` Stripe
sends when onboarding completes is drained (the engine shows the account
enabled, which only a draining worker makes true).

Every bound here is how long to wait before giving up on a stuck stack, never
an assertion on speed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from engine.infra.processes import find_free_port, port_accepts

MARKETPLACE = Path(sys.executable).with_name("marketplace")

START_TIMEOUT = 240.0
DRAIN_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0


class UpRunFailed(AssertionError):
    """``up`` did not come up, drain or stop as it must; says why, with its log."""


@dataclass(frozen=True)
class RunningUp:
    """A running ``marketplace up``: its directory, log and the addresses it printed."""

    directory: Path
    log: Path
    api: str
    sandbox: str
    admin_key: str

    def output(self) -> str:
        """Everything ``up`` printed so far."""
        return self.log.read_text(errors="replace")


@dataclass(frozen=True)
class UpRun:
    """What one start took (seconds), for the soak script's summary."""

    ready_after: float
    drained_after: float


def clean_environment() -> dict[str, str]:
    """This process's environment without settings that would point ``up`` elsewhere."""
    overrides = ("DATABASE_URL", "NATS_URL", "STRIPE_SECRET_KEY")
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MARKETPLACE_") and key not in overrides
    }


def _printed(pattern: str, log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(pattern, text, re.MULTILINE)
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise UpRunFailed(f"up exited with {process.returncode} while starting:\n{text}")
        time.sleep(0.2)
    raise UpRunFailed(f"up printed no {pattern!r} within {START_TIMEOUT:.0f} s:\n{text}")


def processes_mentioning(directory: Path) -> list[str]:
    """Processes whose command line names ``directory`` (this stack's PostgreSQL and NATS)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(directory) in command:
            found.append(f"{proc.name}: {command}")
    return found


def _stop(process: subprocess.Popen[bytes], running: RunningUp | None, log: Path) -> None:
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise UpRunFailed(f"up did not stop within {STOP_TIMEOUT:.0f} s of SIGINT") from None
    output = log.read_text(errors="replace")
    if code != 0:
        raise UpRunFailed(f"up exited with {code} after SIGINT:\n{output}")
    if "Traceback" in output:
        raise UpRunFailed(f"up logged a traceback:\n{output}")
    if running is None:
        return
    left = processes_mentioning(running.directory)
    if left:
        raise UpRunFailed("still running after up stopped:\n" + "\n".join(left))
    for address in (running.api, running.sandbox):
        host, _, port = address.removeprefix("http://").partition(":")
        if port_accepts(host, int(port)):
            raise UpRunFailed(f"{address} still answers after up stopped")


@contextmanager
def fresh_checkout(name: str) -> Iterator[Path]:
    """An empty directory for ``up``, outside pytest's temporary tree; removed afterwards.

    ``up`` runs PostgreSQL as its own OS account, so the directories above the data
    directory are made traversable. Pytest's tree is no place for that: every pytest
    session that starts on this machine (a second ``make test``) resets
    ``/tmp/pytest-of-<user>`` to mode 0700, which cuts a running server off its data.
    """
    root = Path(tempfile.mkdtemp(prefix=f"marketplace-{name}-"))
    try:
        yield root / "checkout"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def running_up(directory: Path, *arguments: str) -> Iterator[RunningUp]:
    """``marketplace up [arguments]`` in ``directory`` (made if missing) until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory.with_name(directory.name + "-up.log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MARKETPLACE), "up", *arguments],
            cwd=directory,
            env=clean_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for pytest reaches it only through us
        )
    running: RunningUp | None = None
    try:
        _printed(r"^(Ctrl-C stops everything)", log, process)
        running = RunningUp(
            directory=directory,
            log=log,
            api=_printed(r"^api\s+(http://\S+)", log, process),
            sandbox=_printed(r"^sandbox\s+(http://\S+)", log, process),
            admin_key=_printed(r"^admin key\s+(\S+)", log, process),
        )
        yield running
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise
    _stop(process, running, log)


def _drain_one_event(up: RunningUp) -> None:
    headers = {"Authorization": f"Bearer {up.admin_key}"}
    with httpx.Client(base_url=up.api, headers=headers, timeout=30) as client:
        created = client.post(
            "/v1/accounts", json={"role": "creator", "display_name": "Soak Creator"}
        )
        if created.status_code != 201:
            raise UpRunFailed(f"POST /v1/accounts answered {created.status_code}: {created.text}")
        account_id = created.json()["account"]["id"]
        done = httpx.post(f"{up.sandbox}/_sandbox/accounts/{account_id}/complete_onboarding")
        done.raise_for_status()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        account: dict[str, object] = {}
        while time.monotonic() < deadline:
            account = client.get(f"/v1/accounts/{account_id}").json()
            if account.get("charges_enabled"):
                return
            time.sleep(0.2)
        raise UpRunFailed(
            f"account.updated for {account_id} was not drained in {DRAIN_TIMEOUT:.0f} s; "
            f"the engine still shows {account}; /ready says {client.get('/ready').text}"
        )


def start_drain_stop(directory: Path) -> UpRun:
    """One fresh start of ``up`` in ``directory`` (must be empty); raises UpRunFailed."""
    began = time.monotonic()
    # A port of its own: the default 8000 may be any other stack's on this machine
    # (and then this one's check that its port closed would see theirs).
    with running_up(directory, "--port", str(find_free_port())) as up:
        ready_after = time.monotonic() - began
        ready = httpx.get(f"{up.api}/ready", timeout=30)
        if ready.status_code != 200:
            raise UpRunFailed(f"/ready answered {ready.status_code}: {ready.text}")
        _drain_one_event(up)
        drained_after = time.monotonic() - began
    return UpRun(ready_after=ready_after, drained_after=drained_after)
