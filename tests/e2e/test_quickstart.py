"""docs/quickstart.md runs as written against a real ``marketplace up``, so it cannot go stale.

``up`` starts as a subprocess in an empty temporary directory (its own
``.marketplace`` data: embedded PostgreSQL and NATS, the sandbox, the API and
its worker) on a free port. The quickstart's ```sh blocks run in order in one
bash session in that directory, under ``set -euo pipefail``; the only change
made to them is the ``API=`` line, pointed at the address ``up`` printed, as
the quickstart tells its reader to do. A failing command fails the test with
its block and the block's output. Then the end state is checked through the
API (the creator's two invoices and tip posted and matching Stripe's balance,
the booking settled with one transfer each to provider and venue), and ``up``
is stopped with SIGINT and must exit 0 leaving no process behind.

Every bound below is how long to wait before giving up on a stuck stack,
never an assertion on speed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.infra.processes import find_free_port, port_accepts

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
MARKETPLACE = Path(sys.executable).with_name("marketplace")
DOC_API_LINE = re.compile(r"^API=http://127\.0\.0\.1:8000\b", re.MULTILINE)
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCK_MARK = ">>> quickstart block "
# Variables the quickstart sets and the end-state checks read.
RESULTS = ("API", "ADMIN", "CREATOR", "SUBSCRIPTION", "BOOKING", "PROVIDER", "VENUE")

START_TIMEOUT = 240.0
RUN_TIMEOUT = 600.0
STOP_TIMEOUT = 90.0


@dataclass(frozen=True)
class Up:
    """A running ``marketplace up``: its directory, log and the addresses it printed."""

    directory: Path
    log: Path
    api: str
    sandbox: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def clean_environment() -> dict[str, str]:
    """This process's environment without settings that would point ``up`` at the test servers."""
    overrides = ("DATABASE_URL", "NATS_URL", "STRIPE_SECRET_KEY")
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("MARKETPLACE_") and key not in overrides
    }


def printed(pattern: str, log: Path, process: subprocess.Popen[bytes]) -> str:
    """The first group of ``pattern`` in ``up``'s output, once it is there."""
    deadline = time.monotonic() + START_TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(pattern, text, re.MULTILINE)
        if found:
            return found.group(1)
        if process.poll() is not None:
            pytest.fail(f"up exited with {process.returncode} while starting:\n{text}")
        time.sleep(0.2)
    pytest.fail(f"up printed no {pattern!r} within {START_TIMEOUT:.0f} s:\n{text}")


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


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """``marketplace up`` in an empty directory; stopped with SIGINT, leaving nothing running."""
    directory = tmp_path / "checkout"
    directory.mkdir()
    log = tmp_path / "up.log"
    port = find_free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MARKETPLACE), "up", "--port", str(port)],
            cwd=directory,
            env=clean_environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for pytest reaches it only through us
        )
    try:
        printed(r"^(Ctrl-C stops everything)", log, process)
        running = Up(
            directory=directory,
            log=log,
            api=printed(r"^api\s+(http://\S+)", log, process),
            sandbox=printed(r"^sandbox\s+(http://\S+)", log, process),
        )
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"up did not stop within {STOP_TIMEOUT:.0f} s of SIGINT")
    output = log.read_text(errors="replace")
    assert code == 0, f"up exited with {code} after SIGINT:\n{output}"
    assert "Traceback" not in output, f"up logged a traceback:\n{output}"
    left = processes_mentioning(directory)
    assert not left, "still running after up stopped:\n" + "\n".join(left)
    for address in (running.api, running.sandbox):
        host, _, port_text = address.removeprefix("http://").partition(":")
        assert not port_accepts(host, int(port_text)), f"{address} still answers after up stopped"


def quickstart_script(api: str, results: Path) -> tuple[str, list[str]]:
    """One bash script of the quickstart's sh blocks, each announced by a marker line."""
    text = QUICKSTART.read_text(encoding="utf-8")
    blocks = SH_BLOCK.findall(text)
    assert blocks, f"no ```sh blocks in {QUICKSTART}"
    api_lines = [i for i, block in enumerate(blocks) if DOC_API_LINE.search(block)]
    assert api_lines == [0], (
        "the quickstart's first sh block must set API=http://127.0.0.1:8000 (once): "
        "the test points that line at its own stack"
    )
    blocks[0] = DOC_API_LINE.sub(f"API={api}", blocks[0], count=1)
    parts = ["set -euo pipefail"]
    for number, block in enumerate(blocks, start=1):
        parts += [f"printf '\\n%s\\n' '{BLOCK_MARK}{number}'", block]
    parts += [
        f"for name in {' '.join(RESULTS)}; do",
        f'  printf "%s=%s\\n" "$name" "${{!name}}"; done > {results}',
    ]
    return "\n".join(parts) + "\n", blocks


def running_block(output: str) -> tuple[int, str]:
    """The number of the block the script was in when it stopped, and that block's output."""
    _, mark, after = output.rpartition(BLOCK_MARK)
    if not mark:
        return 1, output
    number, _, block_output = after.partition("\n")
    return int(number), block_output


def run_quickstart(up: Up) -> dict[str, str]:
    """Run the quickstart in ``up``'s directory; return the variables it set (``RESULTS``)."""
    results = up.directory.parent / "quickstart.results"
    script, blocks = quickstart_script(up.api, results)
    path = up.directory.parent / "quickstart.sh"
    path.write_text(script, encoding="utf-8")
    try:
        done = subprocess.run(
            ["bash", str(path)],
            cwd=up.directory,
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        output, code = done.stdout.decode(errors="replace"), done.returncode
    except subprocess.TimeoutExpired as stuck:
        raw = stuck.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        code = None
    if code != 0:
        number, block_output = running_block(output)
        failed = "timed out" if code is None else f"exited with {code}"
        pytest.fail(
            f"quickstart block {number} {failed}:\n{blocks[number - 1]}\n"
            f"--- its output ---\n{block_output}\n--- up's output ---\n{up.output()[-4000:]}"
        )
    values = dict(line.split("=", 1) for line in results.read_text().splitlines())
    missing = [name for name in RESULTS if not values.get(name)]
    assert not missing, f"the quickstart no longer sets {missing}"
    return values


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.request.url}: {response.text}"
    return response.json()


def check_creator_paid(client: httpx.Client, creator: str) -> None:
    """Two paid invoices (first month and renewal) and one tip, posted and equal to Stripe."""
    prefix = f"/v1/creator_subscriptions/creators/{creator}"
    invoices = ok(client.get(f"{prefix}/invoices"))["data"]
    assert sorted(i["billing_reason"] for i in invoices) == [
        "subscription_create",
        "subscription_cycle",
    ], invoices
    for invoice in invoices:
        assert invoice["status"] == "paid", invoice
        assert invoice["application_fee"] > 0, invoice
        assert invoice["creator_earnings"] + invoice["application_fee"] == invoice["amount_paid"]
    lines = ok(client.get(f"{prefix}/transactions"))["data"]
    tips = [line["amount"] for line in lines if line["kind"] == "tip"]
    assert len(tips) == 1, lines
    earned = sum(i["creator_earnings"] for i in invoices) + tips[0]
    balance = ok(client.get(f"{prefix}/balance"))
    ledger = sum(b["amount"] for b in balance["ledger"] if b["currency"] == "usd")
    stripe = sum(
        b["amount"] for b in [*balance["available"], *balance["pending"]] if b["currency"] == "usd"
    )
    assert ledger == earned == stripe, balance


def check_booking_settled(client: httpx.Client, booking_id: str, provider: str, venue: str) -> None:
    """Settled, everything collected, one paid transfer per beneficiary of its stored leg."""
    path = f"/v1/three_sided_bookings/bookings/{booking_id}"
    booking = ok(client.get(path))
    assert booking["state"] == "settled", booking
    assert booking["collected"] == booking["amount"], booking
    legs = {leg["role"]: leg for leg in booking["split"]["legs"]}
    assert legs["provider"]["account_id"] == provider
    assert legs["venue"]["account_id"] == venue
    reconciliation = ok(client.get(f"{path}/reconciliation", params={"check": "true"}))
    assert reconciliation["problems"] == [], reconciliation["problems"]
    transfers = {o["role"]: o for o in reconciliation["objects"] if o["type"] == "transfer"}
    assert set(transfers) == {"provider", "venue"}, reconciliation["objects"]
    for role, transfer in transfers.items():
        assert transfer["status"] == "paid", transfer
        assert transfer["amount"] == transfer["stripe_amount"] == legs[role]["amount"], transfer


def test_quickstart_runs_as_written(up: Up) -> None:
    values = run_quickstart(up)
    assert values["API"] == up.api
    headers = {"Authorization": f"Bearer {values['ADMIN']}"}
    with httpx.Client(base_url=up.api, headers=headers, timeout=30) as client:
        check_creator_paid(client, values["CREATOR"])
        check_booking_settled(client, values["BOOKING"], values["PROVIDER"], values["VENUE"])
