"""Start ``marketplace up`` on a fresh data directory, prove its worker drains, stop it.

Used by tests/e2e/test_up_starts.py (a few starts in ``make test``) and by
scripts/up_soak.py (many starts in a row). One start: launch ``up`` in an
empty directory, wait for its printed API address and ``/ready``, create a
connected account, complete its onboarding on the sandbox (Stripe then sends
``account.updated``), and wait until the engine shows the account enabled,
which only a draining worker makes true. Then SIGINT, and check that ``up``
exited 0 and left no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

MARKETPLACE = Path(sys.executable).with_name("marketplace")
_API = re.compile(r"^api\s+(http://\S+)", re.MULTILINE)
_SANDBOX = re.compile(r"^sandbox\s+(http://\S+)", re.MULTILINE)
_ADMIN = re.compile(r"^admin key\s+(\S+)", re.MULTILINE)

# Generous: a busy 2-core machine may take long to start PostgreSQL; none of
# these bounds is a speed assertion, only how long to wait before giving up.
START_TIMEOUT = 240.0
DRAIN_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0


class UpRunFailed(AssertionError):
    """One start of ``up`` did not come up with a draining worker; says why, with the log."""


@dataclass(frozen=True)
class UpRun:
    """What one start took (seconds), for the soak script's summary."""

    ready_after: float
    drained_after: float


def _wait_for(pattern: re.Pattern[str], log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = pattern.search(text)
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise UpRunFailed(f"up exited with {process.returncode} while starting:\n{text}")
        time.sleep(0.2)
    raise UpRunFailed(f"up printed no {pattern.pattern!r} in {START_TIMEOUT:.0f} s:\n{text}")


def _leftovers(directory: Path) -> list[str]:
    """Processes whose command line mentions ``directory`` (embedded servers of this run)."""
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


def _drain_one_event(api: str, sandbox: str, admin_key: str) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        created = client.post(
            "/v1/accounts", json={"role": "creator", "display_name": "Soak Creator"}
        )
        if created.status_code != 201:
            raise UpRunFailed(f"POST /v1/accounts answered {created.status_code}: {created.text}")
        account_id = created.json()["account"]["id"]
        done = httpx.post(f"{sandbox}/_sandbox/accounts/{account_id}/complete_onboarding")
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
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "up.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MARKETPLACE_")}
    env["MARKETPLACE_DATA_DIR"] = str(directory / ".marketplace")
    began = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MARKETPLACE), "up"], cwd=directory, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        api = _wait_for(_API, log, process)
        ready_after = time.monotonic() - began
        sandbox = _wait_for(_SANDBOX, log, process)
        admin_key = _wait_for(_ADMIN, log, process)
        ready = httpx.get(f"{api}/ready", timeout=30)
        if ready.status_code != 200:
            raise UpRunFailed(f"/ready answered {ready.status_code}: {ready.text}")
        _drain_one_event(api, sandbox, admin_key)
        drained_after = time.monotonic() - began
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise UpRunFailed(f"up did not stop within {STOP_TIMEOUT:.0f} s of SIGINT") from None
    text = log.read_text(errors="replace")
    if code != 0:
        raise UpRunFailed(f"up exited with {code} after SIGINT:\n{text}")
    if "Traceback" in text:
        raise UpRunFailed(f"up logged a traceback:\n{text}")
    left = _leftovers(directory)
    if left:
        raise UpRunFailed("processes left running after up stopped:\n" + "\n".join(left))
    return UpRun(ready_after=ready_after, drained_after=drained_after)
