"""Benchmark: how fast the dashboard pages render for an account with 10,000 ledger transactions.

Runs alone (``.venv/bin/python bench/dashboard.py [--transactions N] [--rounds R]``):
starts embedded PostgreSQL and NATS in a temporary directory and the whole
stack (sandbox, API, worker), creates a creator's connected account through
the API, then posts ``N`` ledger transactions to it through the engine's
ledger the way the business models do (destination-charge postings over the
last year, with refunds and payouts among them) and matching payments and
payouts rows. Signed in as the creator (and as an admin), it times each page
over HTTP, server-side rendering included: the earnings page, the first and a
deep filtered page of transactions, and the admin finance panel. Prints the
median and p95 per page; the last line is ``bench: dashboard_render_ms N``,
the slowest page's p95 (target: under 300 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core.ledger import (  # noqa: E402
    CUSTOMERS,
    PLATFORM,
    PLATFORM_STRIPE_FEES,
    Entry,
    Posting,
    bank_of,
)
from engine.core.money import Money  # noqa: E402
from engine.infra.embedded import Services as EmbeddedServices  # noqa: E402
from engine.testing.stack import Stack, running_stack  # noqa: E402

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
BATCH = 500


def _charge(index: int, account: str, when: datetime) -> Posting:
    """A destination charge as creator_subscriptions posts it (one transaction, 8 lines)."""
    amount = Money(500 + (index * 37) % 4500, "usd")
    stripe_fee = Money(amount.amount * 29 // 1000 + 30, "usd")
    fee = Money(amount.amount // 10, "usd")
    return Posting(
        key=f"bench:charge:{index}",
        kind="subscription_invoice" if index % 4 else "tip",
        entries=(
            Entry(CUSTOMERS, -amount),
            Entry(PLATFORM, amount),
            Entry(PLATFORM, -stripe_fee),
            Entry(PLATFORM_STRIPE_FEES, stripe_fee),
            Entry(PLATFORM, -amount),
            Entry(account, amount),
            Entry(account, -fee),
            Entry(PLATFORM, fee),
        ),
        reference=f"creator_subscriptions:subscription:{index % 400}",
        stripe_object_id=f"ch_bench{index}",
        plugin="creator_subscriptions",
        description=f"bench charge {index}",
        occurred_at=when,
    )


def _refund(index: int, account: str, when: datetime) -> Posting:
    amount = Money(300, "usd")
    return Posting(
        key=f"bench:refund:{index}",
        kind="refund",
        entries=(
            Entry(PLATFORM, -amount),
            Entry(CUSTOMERS, amount),
            Entry(PLATFORM, amount),
            Entry(account, -amount),
        ),
        reference=f"creator_subscriptions:subscription:{index % 400}",
        stripe_object_id=f"re_bench{index}",
        plugin="creator_subscriptions",
        occurred_at=when,
    )


def _payout(index: int, account: str, when: datetime) -> Posting:
    return Posting.transfer(
        f"bench:payout:{index}",
        "payout",
        account,
        bank_of(account),
        Money(5000, "usd"),
        stripe_object_id=f"po_bench{index}",
        description="payout to bank",
        occurred_at=when,
    )


def postings(account: str, count: int) -> list[Posting]:
    """``count`` postings on ``account`` spread over the last year, oldest first."""
    now = datetime.now(UTC)
    found = []
    for index in range(count):
        when = now - timedelta(seconds=int(365 * 86_400 * (count - index) / count))
        if index % 20 == 7:
            found.append(_refund(index, account, when))
        elif index % 50 == 13:
            found.append(_payout(index, account, when))
        else:
            found.append(_charge(index, account, when))
    return found


async def seed(stack: Stack, account: str, count: int) -> None:
    """The ledger transactions, payouts and payments rows for ``account``."""
    all_postings = postings(account, count)
    for start in range(0, len(all_postings), BATCH):
        await stack.ledger.post_many(all_postings[start : start + BATCH])
    pool = stack.services.db.pool
    payouts = [p for p in all_postings if p.kind == "payout"]
    await pool.executemany(
        """
        INSERT INTO marketplace_payouts
            (stripe_payout_id, account_id, amount, currency, status, failure_code,
             failure_message, arrival_date, created_at, updated_at)
        VALUES ($1, $2, 5000, 'usd', $3, $4, '', 0, $5, $5)
        """,
        [
            (
                p.stripe_object_id,
                account,
                "failed" if n % 10 == 0 else "paid",
                "account_closed" if n % 10 == 0 else None,
                p.occurred_at,
            )
            for n, p in enumerate(payouts)
        ],
    )
    charges = [p for p in all_postings if p.stripe_object_id.startswith("ch_")]
    await pool.executemany(
        """
        INSERT INTO marketplace_payments
            (reference, plugin, kind, account_id, stripe_payment_intent_id, stripe_charge_id,
             amount, currency, fee_amount, status, amount_refunded, created_at)
        VALUES ($1, 'creator_subscriptions', $2, $3, $4, $5, $6, 'usd', $7, 'succeeded', 0, $8)
        """,
        [
            (
                p.reference,
                p.kind,
                account,
                f"pi_{p.stripe_object_id}",
                p.stripe_object_id,
                p.entries[1].amount.amount,
                p.entries[7].amount.amount,
                p.occurred_at,
            )
            for p in charges
        ],
    )
    await pool.execute("ANALYZE")


async def signed_in(stack: Stack, key: str) -> httpx.AsyncClient:
    """A browser-like client with a dashboard session for ``key``."""
    client = httpx.AsyncClient(base_url=stack.url, timeout=60)
    form = await client.get("/dashboard/sign-in")
    token = CSRF.search(form.text)
    assert token, form.text
    signed = await client.post(
        "/dashboard/sign-in", data={"api_key": key, "csrf_token": token.group(1)}
    )
    assert signed.status_code == 303, signed.text
    return client


async def timed(client: httpx.AsyncClient, path: str, rounds: int) -> list[float]:
    """Milliseconds per GET of ``path`` (after warm-up), each answered 200."""
    for _ in range(3):
        warm = await client.get(path)
        assert warm.status_code == 200, (path, warm.status_code, warm.text[:500])
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = await client.get(path)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, path
    return samples


def p95(samples: list[float]) -> float:
    """The 95th percentile."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def run(transactions: int, rounds: int) -> float:
    """Seed, time every page, print the figures; return the slowest page's p95."""
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as scratch:
        async with EmbeddedServices(Path(scratch), fast=True, use_environment=False) as services:
            urls = services.urls
            async with running_stack(
                urls.database_url,
                urls.nats_url,
                "BENCH_DASHBOARD",
                plugins=["commission_rules", "creator_subscriptions"],
            ) as stack:
                body = {"role": "creator", "display_name": "Bench Creator"}
                created = await stack.http.post("/v1/accounts", json=body)
                assert created.status_code == 201, created.text
                account = str(created.json()["account"]["id"])
                started = time.perf_counter()
                await seed(stack, account, transactions)
                print(
                    f"seeded {transactions} ledger transactions for {account} in "
                    f"{time.perf_counter() - started:.1f} s"
                )
                creator = await signed_in(stack, await stack.create_key("account", account))
                admin = await signed_in(stack, stack.admin_key)
                oldest = await stack.services.db.pool.fetchval(
                    "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY ledger_transaction) "
                    "FROM marketplace_ledger_entries WHERE account = $1",
                    account,
                )
                pages = {
                    "earnings page": (creator, f"/dashboard/accounts/{account}"),
                    "earnings page, daily chart": (
                        creator,
                        f"/dashboard/accounts/{account}?chart=day",
                    ),
                    "transactions, first page": (
                        creator,
                        f"/dashboard/accounts/{account}/transactions",
                    ),
                    "transactions, deep and filtered": (
                        creator,
                        f"/dashboard/accounts/{account}/transactions"
                        f"?kind=subscription_invoice&before={oldest}",
                    ),
                    "admin finance panel": (admin, "/dashboard/admin"),
                }
                worst = 0.0
                for name, (client, path) in pages.items():
                    samples = await timed(client, path, rounds)
                    median, high = statistics.median(samples), p95(samples)
                    worst = max(worst, high)
                    print(f"{name:<34} median {median:7.1f} ms   p95 {high:7.1f} ms")
                await creator.aclose()
                await admin.aclose()
    return worst


def main() -> None:
    """Parse arguments, run, print the ``bench:`` line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    # The worker idles through the run; its broker's fetch timeouts are not news here.
    for name in ("taskiq", "nats"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    worst = asyncio.run(run(args.transactions, args.rounds))
    print(f"bench: dashboard_render_ms {worst:.0f}")


if __name__ == "__main__":
    main()
