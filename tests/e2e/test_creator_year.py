"""creator_subscriptions acceptance, end to end: 3 creators x 10 fans, a year of test-clock time.

Through the HTTP API, the sandbox, signed webhooks and the worker: every renewal
is exactly one ledger transaction; every invoice's creator earnings plus platform
fee is its amount paid, to the cent, and the fee is Stripe's; each creator's
ledger balance is the sandbox's balance of their connected account (and the
platform's too), also after refunds made directly in Stripe (one reversing the
creator's share and fee, one not) and a payout made and canceled. Creator B's
payouts fail and B's account is then restricted: B alone is flagged and
notified, B's renewals stop, and creator A's renewals and payouts carry on
untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from support.stack import Stack, running_stack

from engine.core.orders import PayoutFailure
from engine.core.plugins import hookimpl
from engine.reconciliation.service import run_reconciliation
from engine.testing.calendar import DAY, months_after

P = "/v1/creator_subscriptions"
ENABLED = ("commission_rules", "creator_subscriptions")


class PayoutFailures:
    """A test plugin recording payout-failure notifications."""

    def __init__(self) -> None:
        self.failures: list[PayoutFailure] = []

    @hookimpl
    def on_payout_failure(self, failure: PayoutFailure) -> None:
        self.failures.append(failure)


@pytest.fixture
def failures() -> PayoutFailures:
    return PayoutFailures()


@pytest.fixture
async def stack(
    fresh_database_url: str, nats_url: str, unique_name: str, failures: PayoutFailures
) -> AsyncIterator[Stack]:
    config = {
        "plugins": {
            "commission_rules": {
                "rules": [
                    {"id": "default", "rate_bps": 1000},
                    {
                        "id": "gold",
                        "rate_bps": "1250.5",
                        "scope": {"plugin": "creator_subscriptions", "tier": "Gold"},
                    },
                ]
            }
        },
        "webhooks": {"batch_size": 200},
        "worker": {"concurrency": 8},
    }
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        config=config,
        plugins=ENABLED,
        extra_plugins={"test_payout_failures": failures},
    ) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def onboard(stack: Stack, handle: str, *, bank: str | None = None) -> str:
    created = ok(
        await stack.http.post(f"{P}/creators", json={"handle": handle, "display_name": handle}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    if bank is not None:
        await asyncio.to_thread(
            stack.stripe().v1.accounts.external_accounts.create,
            account_id,
            params={
                "external_account": {
                    "object": "bank_account",
                    "country": "US",
                    "currency": "usd",
                    "routing_number": "110000000",
                    "account_number": bank,
                },
                "default_for_currency": True,
            },
        )
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    return account_id


async def tier(stack: Stack, account_id: str, name: str, amount: int, interval: str) -> int:
    body = {"name": name, "amount": amount, "interval": interval}
    return int(ok(await stack.http.post(f"{P}/creators/{account_id}/tiers", json=body), 201)["id"])


async def subscribe(stack: Stack, ref: str, clock: str, tier_id: int) -> dict[str, Any]:
    body = {"external_ref": ref, "name": ref, "payment_method": "pm_card_visa", "test_clock": clock}
    fan_id = ok(await stack.http.post(f"{P}/fans", json=body), 201)["id"]
    return dict(
        ok(
            await stack.http.post(
                f"{P}/subscriptions", json={"fan_id": fan_id, "tier_id": tier_id}
            ),
            201,
        )
    )


async def advance_clock(stack: Stack, clock: str, to: int) -> None:
    await asyncio.to_thread(
        stack.stripe().v1.test_helpers.test_clocks.advance, clock, params={"frozen_time": to}
    )


async def invoices_of(stack: Stack, account_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor:
            params["cursor"] = cursor
        page = ok(await stack.http.get(f"{P}/creators/{account_id}/invoices", params=params))
        found += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


async def test_three_creators_thirty_fans_a_year(stack: Stack, failures: PayoutFailures) -> None:
    http = stack.http
    a = await onboard(stack, "alpha")
    b = await onboard(stack, "bravo", bank="000111111116")  # Stripe's "no_account" test number
    c = await onboard(stack, "charlie")
    await stack.settle()
    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = (
        await asyncio.to_thread(
            stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now}
        )
    )["id"]

    a_basic = await tier(stack, a, "Basic", 500, "month")
    a_gold = await tier(stack, a, "Gold", 1299, "month")
    b_only = await tier(stack, b, "Supporter", 800, "month")
    c_monthly = await tier(stack, c, "Monthly", 999, "month")
    c_yearly = await tier(stack, c, "Yearly", 9990, "year")
    plan = {
        a: [a_basic] * 5 + [a_gold] * 5,
        b: [b_only] * 10,
        c: [c_monthly] * 8 + [c_yearly] * 2,
    }
    subs: dict[str, list[dict[str, Any]]] = {}
    for account_id, tier_ids in plan.items():
        subs[account_id] = [
            await subscribe(stack, f"{account_id}-fan-{n}", clock, tier_id)
            for n, tier_id in enumerate(tier_ids)
        ]
    assert {s["application_fee_percent"] for s in subs[a]} == {"10.00", "12.51"}
    await stack.settle()

    started = time.monotonic()
    for month in range(1, 13):
        # A day past each month's renewals: their invoices are drafts for an hour
        # before they are charged, and months differ in length.
        await advance_clock(stack, clock, months_after(now, month) + DAY)
        await stack.settle(60)
        if month == 2:
            # Midnight on the global clock: the daily payouts run. B's bank rejects its payout.
            await stack.advance(DAY)
            flagged = ok(await http.get(f"{P}/creators", params={"payout_failed": "true"}))
            assert [creator["account_id"] for creator in flagged["data"]] == [b]
            b_payouts = ok(await http.get(f"{P}/creators/{b}/payouts"))
            assert b_payouts["payout_failure_code"] == "no_account"
            assert [p["status"] for p in b_payouts["data"]] == ["failed"]
            a_payouts = ok(await http.get(f"{P}/creators/{a}/payouts"))
            assert a_payouts["payout_failure_code"] is None
            assert a_payouts["data"]
            assert all(p["status"] != "failed" for p in a_payouts["data"])
            assert {f.account_id for f in failures.failures} == {b}
            # ... and then Stripe restricts B: charges and payouts disabled.
            stack.sandbox.control("POST", f"/_sandbox/accounts/{b}/restrict")
            await stack.settle()
            b_view = ok(await http.get(f"{P}/creators/{b}"))
            assert b_view["charges_enabled"] is False
            refused = await http.post(
                f"{P}/payments/tips",
                json={"fan_id": 1, "creator_account_id": b, "amount": 500},
            )
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == "account_restricted"
    year_s = time.monotonic() - started
    await stack.advance(3 * DAY)  # A's and C's later payouts are made and arrive

    # Money moved in Stripe's dashboard, outside the engine: part of one of A's invoices
    # refunded with A's share and the fee taken back, part of one of C's at the platform's
    # expense; and C, switched to manual payouts, has a payout made and canceled.
    state = stack.sandbox.state

    def charge_of(invoice: dict[str, Any]) -> str:
        intent = state.find(state.private(invoice["stripe_invoice_id"]).get("intent") or "")
        return str(intent["latest_charge"])

    a_paid = [i for i in await invoices_of(stack, a) if i["status"] == "paid" and i["amount_paid"]]
    c_paid = [i for i in await invoices_of(stack, c) if i["status"] == "paid" and i["amount_paid"]]
    sdk = stack.stripe()
    await asyncio.to_thread(
        sdk.v1.refunds.create,
        params={
            "charge": charge_of(a_paid[-1]),
            "amount": a_paid[-1]["amount_paid"] // 2,
            "reverse_transfer": True,
            "refund_application_fee": True,
        },
    )
    await asyncio.to_thread(
        sdk.v1.refunds.create, params={"charge": charge_of(c_paid[-1]), "amount": 100}
    )
    await asyncio.to_thread(
        sdk.v1.accounts.update,
        c,
        params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}},
    )
    body = {"external_ref": "c-tipper", "name": "Tipper", "payment_method": "pm_card_bypassPending"}
    tipper = ok(await http.post(f"{P}/fans", json=body), 201)["id"]
    ok(
        await http.post(
            f"{P}/payments/tips", json={"fan_id": tipper, "creator_account_id": c, "amount": 5000}
        ),
        201,
    )
    as_c = stack.stripe(stripe_account=c)
    payout = await asyncio.to_thread(
        as_c.v1.payouts.create, params={"amount": 3000, "currency": "usd"}
    )
    await asyncio.to_thread(as_c.v1.payouts.cancel, payout["id"])
    await stack.settle()
    c_payouts = ok(await http.get(f"{P}/creators/{c}/payouts"))["data"]
    assert [p["status"] for p in c_payouts if p["stripe_payout_id"] == payout["id"]] == ["canceled"]

    # Every invoice: earnings + fee == amount paid, the fee is Stripe's, one ledger transaction.
    async with stack.services.db.pool.acquire() as conn:
        ledger_counts = {
            row["idempotency_key"]: row["n"]
            for row in await conn.fetch(
                "SELECT idempotency_key, count(*) AS n FROM marketplace_ledger_transactions "
                "WHERE kind = 'subscription_invoice' GROUP BY idempotency_key"
            )
        }
    reasons: dict[str, Counter[str]] = {}
    for account_id in (a, b, c):
        reasons[account_id] = Counter()
        for invoice in await invoices_of(stack, account_id):
            stripe_invoice = state.objects[invoice["stripe_invoice_id"]]
            assert invoice["status"] == stripe_invoice["status"]
            if invoice["status"] != "paid":
                continue
            reasons[account_id][invoice["billing_reason"]] += 1
            assert invoice["amount_paid"] == stripe_invoice["amount_paid"]
            # The fee Stripe took is on the invoice's charge (none when nothing was charged).
            intent = state.find(state.private(invoice["stripe_invoice_id"]).get("intent") or "")
            charge = state.find(intent["latest_charge"] or "") if intent else None
            fee = (charge["application_fee_amount"] or 0) if charge else 0
            assert invoice["application_fee"] == fee
            assert (
                invoice["creator_earnings"] + invoice["application_fee"] == invoice["amount_paid"]
            )
            # The engine's posting of the invoice's destination charge, keyed by the charge.
            assert charge is not None
            assert ledger_counts.pop(f"charge:{charge['id']}") == 1
    assert ledger_counts == {}  # no posting without its invoice

    # A and C renewed every month (C's yearly fans once); B stopped after the restriction.
    assert reasons[a] == {"subscription_create": 10, "subscription_cycle": 120}
    assert reasons[c] == {"subscription_create": 10, "subscription_cycle": 8 * 12 + 2}
    assert reasons[b]["subscription_create"] == 10
    assert reasons[b]["subscription_cycle"] == 10 * 2
    b_subs = ok(await http.get(f"{P}/creators/{b}/subscribers"))["data"]
    assert {s["status"] for s in b_subs} == {"canceled"}
    a_subs = ok(await http.get(f"{P}/creators/{a}/subscribers"))["data"]
    assert {s["status"] for s in a_subs} == {"active"}

    # Ledger balances are the sandbox's balances, creator by creator, and the platform's.
    for account_id in (a, b, c):
        ledger = await stack.services.ledger.balances(account_id)
        assert ledger.get("usd", 0) == await stack.stripe_balance(account_id, "usd")
    platform = await stack.services.ledger.balances("platform")
    assert platform["usd"] == await stack.stripe_balance(None, "usd")
    assert await stack.services.ledger.unbalanced_transactions() == []
    # ... and line by line: every balance transaction of every account has its ledger lines.
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.status == "completed"
    assert run.problems == 0, run.problem_items()[:5]
    assert run.counts["matched"] >= 4 * sum(reasons[x].total() for x in (a, b, c))

    # A's payouts all went through; only B is flagged.
    a_payouts = ok(await http.get(f"{P}/creators/{a}/payouts"))
    assert a_payouts["payout_failure_code"] is None
    assert {p["status"] for p in a_payouts["data"]} <= {"paid", "in_transit", "pending"}
    assert any(p["status"] == "paid" for p in a_payouts["data"])
    assert {f.account_id for f in failures.failures} == {b}
    print(f"year of renewals for 30 fans handled in {year_s:.1f}s")
