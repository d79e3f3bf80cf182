"""Benchmark: 100 creators x 20 fans renewing in one test-clock advance, end to end.

Runs alone (``python bench/renewals.py [--creators N] [--fans N]``): starts
embedded PostgreSQL and NATS JetStream in a temporary directory, then the whole
stack in this process (the offline Stripe sandbox, the engine's API over HTTP
with its registered webhook endpoints, and a worker). Through the API it
onboards the creators, gives each a tier and subscribes the fans (all on one
Stripe test clock), lets every resulting event be handled, then advances the
test clock past the first renewal: 2,000 invoices are created, finalised and
charged as destination charges, and their events are delivered as signed
webhooks.

It measures, from the moment the advance is requested: the time until the last
renewal's ledger posting is committed, and the webhook events handled per
second over that time (every event of the run: invoices, payment intents,
charges, transfers, application fees, subscription updates). It then checks
that every renewal has exactly one ledger transaction whose creator earnings
plus platform fee equal the amount paid. The last lines are
``bench: renewal_run_s N`` and ``bench: renewal_events_per_s N``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.testing.infra import services_for_tests  # noqa: E402
from engine.testing.stack import Stack, running_stack  # noqa: E402

P = "/v1/creator_subscriptions"
DAY = 86_400
CONCURRENCY = 24


def _ok(response: Any, status: int = 200) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    return response.json()


async def _gather(jobs: list[Any], limit: int = CONCURRENCY) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Any) -> Any:
        async with semaphore:
            return await job

    return list(await asyncio.gather(*(run(job) for job in jobs)))


async def _creator(stack: Stack, index: int) -> tuple[str, int]:
    created = _ok(
        await stack.http.post(
            f"{P}/creators", json={"handle": f"creator-{index}", "display_name": f"C{index}"}
        ),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    await asyncio.to_thread(
        stack.sandbox.control, "POST", f"/_sandbox/accounts/{account_id}/complete_onboarding"
    )
    tier = _ok(
        await stack.http.post(
            f"{P}/creators/{account_id}/tiers",
            json={"name": "Supporter", "amount": 500 + index},
        ),
        201,
    )
    return account_id, int(tier["id"])


async def _fan(stack: Stack, ref: str, clock: str, tier_id: int) -> None:
    fan = _ok(
        await stack.http.post(
            f"{P}/fans",
            json={"external_ref": ref, "payment_method": "pm_card_visa", "test_clock": clock},
        ),
        201,
    )
    _ok(
        await stack.http.post(f"{P}/subscriptions", json={"fan_id": fan["id"], "tier_id": tier_id}),
        201,
    )


def _quiet() -> None:
    """Keep the run's output to the figures (the engine logs every request at INFO)."""
    for name in ("", "httpx", "stripe", "taskiq", "engine", "uvicorn", "plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)


async def _scalar(stack: Stack, query: str, *args: Any) -> Any:
    async with stack.services.db.pool.acquire() as conn:
        return await conn.fetchval(query, *args)


async def _run(creators: int, fans: int, database_url: str, nats_url: str) -> dict[str, float]:
    config = {
        "webhooks": {"batch_size": 200},
        "worker": {"concurrency": 16},
        "database": {"pool_max": 30},
    }
    async with running_stack(
        database_url,
        nats_url,
        "BENCHRENEWALS",
        plugins=("commission_rules", "creator_subscriptions"),
        config=config,
    ) as stack:
        _quiet()
        setup = time.monotonic()
        tiers = await _gather([_creator(stack, n) for n in range(creators)])
        await stack.settle(120)
        now = int((await asyncio.to_thread(stack.sandbox.control, "GET", "/_sandbox/clock"))["now"])
        clock = (
            await asyncio.to_thread(
                stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now}
            )
        )["id"]
        await _gather(
            [
                _fan(stack, f"fan-{c}-{f}", clock, tier_id)
                for c, (_, tier_id) in enumerate(tiers)
                for f in range(fans)
            ]
        )
        await stack.settle(300)
        expected = creators * fans
        print(
            f"setup: {creators} creators, {expected} subscriptions in "
            f"{time.monotonic() - setup:.1f}s"
        )
        handled_before = await _scalar(
            stack, "SELECT count(*) FROM marketplace_webhook_events WHERE status = 'handled'"
        )
        wall_start = await _scalar(stack, "SELECT now()")

        started = time.monotonic()
        await asyncio.to_thread(
            stack.stripe().v1.test_helpers.test_clocks.advance,
            clock,
            params={"frozen_time": now + 32 * DAY},
        )
        advanced = time.monotonic() - started
        renewed = 0
        deadline = started + 900
        while time.monotonic() < deadline:
            renewed = await _scalar(
                stack,
                "SELECT count(*) FROM creator_subscriptions_invoices "
                "WHERE billing_reason = 'subscription_cycle' AND ledger_key <> ''",
            )
            if renewed >= expected:
                break
            await asyncio.sleep(0.05)
        if renewed < expected:
            raise RuntimeError(f"only {renewed} of {expected} renewals posted")
        last_posting = await _scalar(
            stack,
            "SELECT max(t.created_at) FROM marketplace_ledger_transactions t "
            "JOIN creator_subscriptions_invoices i ON i.ledger_key = t.idempotency_key "
            "WHERE i.billing_reason = 'subscription_cycle'",
        )
        run_s = (last_posting - wall_start).total_seconds()
        await stack.settle(300)
        handled = await _scalar(
            stack,
            "SELECT count(*) FROM marketplace_webhook_events WHERE status = 'handled' "
            "AND handled_at <= $1",
            last_posting,
        )
        events = int(handled) - int(handled_before)
        total_events = (
            await _scalar(
                stack, "SELECT count(*) FROM marketplace_webhook_events WHERE status = 'handled'"
            )
            - handled_before
        )

        bad = await _scalar(
            stack,
            """
            SELECT count(*) FROM creator_subscriptions_invoices i
            WHERE i.billing_reason = 'subscription_cycle'
              AND (i.creator_earnings + i.application_fee <> i.amount_paid
                   OR (SELECT count(*) FROM marketplace_ledger_transactions t
                       WHERE t.idempotency_key = i.ledger_key) <> 1)
            """,
        )
        if bad:
            raise RuntimeError(f"{bad} renewals without exactly one balanced posting")
        print(f"sandbox advance call returned after {advanced:.1f}s")
        print(f"renewals posted: {renewed} (each one ledger transaction, earnings + fee = paid)")
        print(f"events handled up to the last posting: {events} ({total_events} in all)")
        return {"renewal_run_s": run_s, "renewal_events_per_s": events / run_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creators", type=int, default=100)
    parser.add_argument("--fans", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with (
        tempfile.TemporaryDirectory(prefix="bench-renewals-") as work,
        services_for_tests(Path(work)) as urls,
    ):
        figures = asyncio.run(_run(args.creators, args.fans, urls.database_url, urls.nats_url))
    print(f"bench: renewal_run_s {figures['renewal_run_s']:.2f}")
    print(f"bench: renewal_events_per_s {figures['renewal_events_per_s']:.0f}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
