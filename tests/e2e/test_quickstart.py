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

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.up_runs import RunningUp, clean_environment, fresh_checkout, running_up

from engine.infra.processes import find_free_port

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
MARKETPLACE = Path(sys.executable).with_name("marketplace")
DOC_API_LINE = re.compile(r"^API=http://127\.0\.0\.1:8000\b", re.MULTILINE)
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.MULTILINE | re.DOTALL)
BLOCK_MARK = ">>> quickstart block "
# Variables the quickstart sets and the end-state checks read.
RESULTS = ("API", "ADMIN", "CREATOR", "SUBSCRIPTION", "BOOKING", "PROVIDER", "VENUE")

RUN_TIMEOUT = 600.0


@pytest.fixture
def up() -> Iterator[RunningUp]:
    """``marketplace up`` in an empty directory; stopped with SIGINT, leaving nothing running."""
    with (
        fresh_checkout("quickstart") as checkout,
        running_up(checkout, "--port", str(find_free_port())) as running,
    ):
        yield running


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


def run_quickstart(up: RunningUp) -> dict[str, str]:
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


def test_quickstart_runs_as_written(up: RunningUp) -> None:
    values = run_quickstart(up)
    assert values["API"] == up.api
    headers = {"Authorization": f"Bearer {values['ADMIN']}"}
    with httpx.Client(base_url=up.api, headers=headers, timeout=30) as client:
        check_creator_paid(client, values["CREATOR"])
        check_booking_settled(client, values["BOOKING"], values["PROVIDER"], values["VENUE"])
