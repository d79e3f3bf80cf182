"""Benchmark: what an incremental reconciliation run lists and holds, beside a full one.

Runs alone (``.venv/bin/python bench/reconciliation.py [--tips N] [--new M] [--page P]``):
starts embedded PostgreSQL and NATS in a temporary directory and the whole
stack (sandbox, API, worker), pays ``N`` tips to three creators through the
API (each a destination charge: four balance transactions on two balances),
then reconciles three times with pages of ``P``: the first run (no cursor yet:
the whole history), a second after ``M`` more tips (incremental), and a full
run. For each it prints the balance transactions listed, the ledger rows read
(``ReconciliationRun.ledger_rows_read``), the list requests the sandbox received
(its request log), the most transactions held at once by one account, and the
seconds taken. The last lines are ``bench: ledger_rows_read_first``,
``..._incremental`` and ``..._full`` (the ledger rows each run read) and two
ratios: ``bench: reconciliation_listed_ratio`` (listed by the incremental run /
by the full one) and ``bench: reconciliation_time_ratio`` (incremental / full).

``--table-stats`` also prints, per run, the rows PostgreSQL itself read from
``marketplace_ledger_entries`` (``pg_stat_user_tables``: sequential plus index
fetches, anything else the stack did meanwhile included), waiting 11 s before
and after each run for the backends to report their statistics (PostgreSQL
flushes an idle backend's within 10 s), as ``bench: ledger_tuples_<run> <n>``.
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
from engine.reconciliation.service import ReconciliationRun, run_reconciliation  # noqa: E402
from engine.testing.stack import Stack, running_stack  # noqa: E402

C = "/v1/creator_subscriptions"


async def pay_tips(stack: Stack, creators: list[str], count: int, prefix: str) -> None:
    """``count`` tips spread over ``creators``, each from a new fan."""
    for index in range(count):
        body = {
            "external_ref": f"{prefix}-{index}",
            "name": "Fan",
            "payment_method": "pm_card_visa",
        }
        fan = await stack.http.post(f"{C}/fans", json=body)
        assert fan.status_code == 201, fan.text
        paid = await stack.http.post(
            f"{C}/payments/tips",
            json={
                "fan_id": fan.json()["id"],
                "creator_account_id": creators[index % len(creators)],
                "amount": 500 + index,
            },
        )
        assert paid.status_code == 201, paid.text
    await stack.settle(120)


def last_seq(stack: Stack) -> int:
    data = stack.sandbox.control("GET", "/_sandbox/requests")["data"]
    return int(data[-1]["seq"]) if data else 0


async def ledger_tuples(stack: Stack) -> int:
    """Rows PostgreSQL has read from the ledger entries so far (after its stats are in)."""
    await asyncio.sleep(11)
    async with stack.services.db.pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_user_tables WHERE relname = 'marketplace_ledger_entries'"
        )
    return int(row[0]) if row is not None else 0


async def measured(
    stack: Stack, name: str, tuples: dict[str, int] | None = None, **options: Any
) -> tuple[ReconciliationRun, float]:
    before = await ledger_tuples(stack) if tuples is not None else 0
    mark = last_seq(stack)
    started = time.perf_counter()
    run = await run_reconciliation(stack.services, **options)
    seconds = time.perf_counter() - started
    asked = stack.sandbox.control(
        "GET", f"/_sandbox/requests?path=/v1/balance_transactions&after={mark}"
    )["data"]
    held = max((account.most_held for account in run.accounts), default=0)
    print(
        f"{name:<13} listed {run.balance_transactions:6d}   "
        f"ledger rows read {run.ledger_rows_read:6d}   requests {len(asked):4d}   "
        f"most held {held:4d}   problems {run.problems:3d}   {seconds:6.2f} s"
    )
    assert run.problems == 0, [item.detail for item in run.problem_items()]
    if tuples is not None:
        key = name.split(maxsplit=1)[0]
        tuples[key] = await ledger_tuples(stack) - before
        print(f"{name:<13} postgres read {tuples[key]} ledger entry rows")
    return run, seconds


async def run(
    tips: int, new: int, page: int, tuples: dict[str, int] | None
) -> tuple[dict[str, int], float, float]:
    """Seed, reconcile three ways, print the figures.

    Returns the ledger rows each run read, and the two ratios; fills ``tuples``
    (when given) with what PostgreSQL read from the ledger entries per run.
    """
    with tempfile.TemporaryDirectory(prefix="bench-reconciliation-") as scratch:
        async with EmbeddedServices(Path(scratch), fast=True, use_environment=False) as services:
            urls = services.urls
            async with running_stack(
                urls.database_url,
                urls.nats_url,
                "BENCH_RECONCILIATION",
                plugins=["commission_rules", "creator_subscriptions"],
            ) as stack:
                creators = []
                for handle in ("ada", "bob", "cy"):
                    created = await stack.http.post(
                        f"{C}/creators", json={"handle": handle, "display_name": handle}
                    )
                    assert created.status_code == 201, created.text
                    account = str(created.json()["creator"]["account_id"])
                    stack.sandbox.control(
                        "POST", f"/_sandbox/accounts/{account}/complete_onboarding"
                    )
                    creators.append(account)
                await stack.settle()
                started = time.perf_counter()
                await pay_tips(stack, creators, tips, "seed")
                print(f"paid {tips} tips in {time.perf_counter() - started:.1f} s")
                first, _ = await measured(stack, "first run", tuples, page_size=page)
                await pay_tips(stack, creators, new, "new")
                incremental, fast = await measured(stack, "incremental", tuples, page_size=page)
                full, slow = await measured(stack, "full", tuples, page_size=page, full=True)
    rows = {
        "first": first.ledger_rows_read,
        "incremental": incremental.ledger_rows_read,
        "full": full.ledger_rows_read,
    }
    return rows, incremental.balance_transactions / full.balance_transactions, fast / slow


def main() -> None:
    """Parse arguments, run, print the ``bench:`` lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tips", type=int, default=200)
    parser.add_argument("--new", type=int, default=5)
    parser.add_argument("--page", type=int, default=100)
    parser.add_argument(
        "--table-stats",
        action="store_true",
        help="also print the ledger entry rows PostgreSQL read per run (waits 11 s per reading)",
    )
    args = parser.parse_args()
    for name in ("taskiq", "nats"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    tuples: dict[str, int] | None = {} if args.table_stats else None
    rows, listed, timed = asyncio.run(run(args.tips, args.new, args.page, tuples))
    for name, count in rows.items():
        print(f"bench: ledger_rows_read_{name} {count}")
    for name, count in (tuples or {}).items():
        print(f"bench: ledger_tuples_{name} {count}")
    print(f"bench: reconciliation_listed_ratio {listed:.3f}")
    print(f"bench: reconciliation_time_ratio {timed:.3f}")


if __name__ == "__main__":
    main()
