"""Benchmark: what an incremental payout refresh reads from Stripe, beside a full one.

Runs alone (``.venv/bin/python bench/payouts.py [--payouts N] [--new M]``): starts
embedded PostgreSQL and NATS in a temporary directory and the stack (sandbox,
API, worker; no plugins), funds one connected account, makes ``N`` manual
payouts a minute apart and lets them be paid, then refreshes the account's
payouts three times (``engine.payments.payouts.refresh_payouts``): the first (no cursor yet: the
whole list), a second after ``M`` more payouts (incremental) and a full one.
For each it prints the payouts read (listed plus retrieved, from the sandbox's
request log), the requests and the seconds taken. The last lines are
``bench: payouts_read_<run>`` and ``bench: payout_refresh_read_ratio``
(read by the incremental refresh / by the full one).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.infra.embedded import Services as EmbeddedServices  # noqa: E402
from engine.payments.payouts import refresh_payouts  # noqa: E402
from engine.sandbox.testing import verified_account_params  # noqa: E402
from engine.testing.stack import Stack, running_stack  # noqa: E402

DAY = 86_400


def last_seq(stack: Stack) -> int:
    data = stack.sandbox.control("GET", "/_sandbox/requests")["data"]
    return int(data[-1]["seq"]) if data else 0


def make_payouts(stack: Stack, account: str, count: int) -> None:
    """``count`` manual payouts, a minute apart on the sandbox's clock (an account's
    payouts are not all made in one second; those that are get listed again, ``gte``)."""
    as_account = stack.stripe(stripe_account=account)
    for _ in range(count):
        as_account.v1.payouts.create(params={"amount": 100, "currency": "usd"})
        stack.sandbox.advance(60)


async def measured(stack: Stack, name: str, account: str, *, full: bool = False) -> int:
    """Refresh the account's payouts once; print and return the payouts read."""
    mark = last_seq(stack)
    started = time.perf_counter()
    applied = await refresh_payouts(
        stack.services.db.pool, stack.services.gateway, stack.services.ledger, account, full=full
    )
    seconds = time.perf_counter() - started
    asked = [
        entry
        for entry in stack.sandbox.control("GET", f"/_sandbox/requests?after={mark}")["data"]
        if entry["method"] == "GET" and entry["path"].startswith("/v1/payouts")
    ]
    read = sum(int(entry.get("listed") or 0) for entry in asked if entry["path"] == "/v1/payouts")
    read += sum(1 for entry in asked if entry["path"] != "/v1/payouts")
    print(
        f"{name:<12} read {read:5d} payouts   requests {len(asked):3d}   "
        f"applied {len(applied):5d}   {seconds:6.2f} s"
    )
    return read


async def run(payouts: int, new: int) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="bench-payouts-") as scratch:
        async with EmbeddedServices(Path(scratch), fast=True, use_environment=False) as services:
            urls = services.urls
            async with running_stack(
                urls.database_url,
                urls.nats_url,
                "BENCH_PAYOUTS",
                plugins=(),
                config={"worker": {"payout_refresh_seconds": 0}},
            ) as stack:
                client = stack.stripe()

                def fund() -> str:
                    account = str(client.v1.accounts.create(params=verified_account_params()).id)
                    client.v1.accounts.update(
                        account,
                        params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}},
                    )
                    client.v1.payment_intents.create(
                        params={
                            "amount": 100 * (payouts + new) * 2,
                            "currency": "usd",
                            "payment_method": "pm_card_bypassPending",
                            "confirm": True,
                            "transfer_data": {"destination": account},
                        }
                    )
                    return account

                account = await asyncio.to_thread(fund)
                await asyncio.to_thread(make_payouts, stack, account, payouts)
                # Every one paid. The account is not the engine's, so the worker parks its
                # events: the refresh alone records its payouts.
                await asyncio.to_thread(stack.sandbox.advance, 4 * DAY)
                reads = {"first": await measured(stack, "first", account)}
                await asyncio.to_thread(make_payouts, stack, account, new)
                reads["incremental"] = await measured(stack, "incremental", account)
                reads["full"] = await measured(stack, "full", account, full=True)
    return reads


def main() -> None:
    """Parse arguments, run, print the ``bench:`` lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payouts", type=int, default=300)
    parser.add_argument("--new", type=int, default=5)
    args = parser.parse_args()
    for name in ("taskiq", "nats"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    reads: dict[str, Any] = asyncio.run(run(args.payouts, args.new))
    for name, count in reads.items():
        print(f"bench: payouts_read_{name} {count}")
    print(f"bench: payout_refresh_read_ratio {reads['incremental'] / reads['full']:.3f}")


if __name__ == "__main__":
    main()
