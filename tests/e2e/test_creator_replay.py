"""creator_subscriptions acceptance: Stripe's events duplicated and shuffled give the same state.

A few months of a small creator marketplace run through the whole stack (renewals,
an upgrade, a pause, a cancellation at period end, a failing card dunned to
cancellation, payouts, one of them failing). Then everything the webhooks derived
(subscription mirrors, invoices, their ledger postings, payouts, the inbox) is
wiped and the sandbox's complete event history is delivered again through the
signed HTTP intake, shuffled, with a fifth re-sent under the same id and a fifth
under new ids. The final state must equal the first, field for field.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from support.stack import Stack, running_stack

from engine.testing.events import signed

P = "/v1/creator_subscriptions"
ENABLED = ("commission_rules", "creator_subscriptions")
DAY = 86_400
WEBHOOK_KINDS = ("subscription_invoice", "payout", "payout_failure")


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=ENABLED,
        config={"webhooks": {"batch_size": 200}},
    ) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def onboard(stack: Stack, handle: str, bank: str | None = None) -> str:
    created = ok(
        await stack.http.post(f"{P}/creators", json={"handle": handle, "display_name": handle}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    if bank:
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
    await stack.settle()
    return account_id


async def subscribe(stack: Stack, ref: str, clock: str, tier_id: int) -> dict[str, Any]:
    body = {"external_ref": ref, "name": ref, "payment_method": "pm_card_visa", "test_clock": clock}
    fan = ok(await stack.http.post(f"{P}/fans", json=body), 201)
    sub = ok(
        await stack.http.post(f"{P}/subscriptions", json={"fan_id": fan["id"], "tier_id": tier_id}),
        201,
    )
    return {**sub, "customer": fan["stripe_customer_id"]}


async def advance(stack: Stack, clock: str, to: int) -> None:
    await asyncio.to_thread(
        stack.stripe().v1.test_helpers.test_clocks.advance, clock, params={"frozen_time": to}
    )
    await stack.settle(60)


async def snapshot(stack: Stack) -> dict[str, Any]:
    """Everything webhooks derive, keyed by stable ids (never our serial ids of new rows)."""
    async with stack.services.db.pool.acquire() as conn:
        subs = await conn.fetch(
            """
            SELECT id, stripe_subscription_id, tier, status, current_period_start,
                   current_period_end, cancel_at_period_end, cancel_at, canceled_at, paused,
                   pause_behavior, failed_payments, stripe_price_id
            FROM creator_subscriptions_subscriptions ORDER BY id
            """
        )
        invoices = await conn.fetch(
            """
            SELECT stripe_invoice_id, subscription, billing_reason, status, currency, amount_due,
                   amount_paid, application_fee, creator_earnings, stripe_fee, attempt_count,
                   period_start, period_end, payment_intent_id, charge_id, transfer_id,
                   ledger_key, paid_at
            FROM creator_subscriptions_invoices ORDER BY stripe_invoice_id
            """
        )
        ledger = await conn.fetch(
            """
            SELECT t.idempotency_key, t.kind, t.reference, t.stripe_object_id,
                   json_agg(json_build_array(e.account, e.amount, e.currency)
                            ORDER BY e.account, e.amount) AS entries
            FROM marketplace_ledger_transactions t
            JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
            GROUP BY t.id ORDER BY t.idempotency_key
            """
        )
        payouts = await conn.fetch(
            "SELECT stripe_payout_id, account_id, amount, status, failure_code "
            "FROM marketplace_payouts ORDER BY stripe_payout_id"
        )
        payments = await conn.fetch(
            "SELECT stripe_payment_intent_id, kind, amount, fee_amount, status, stripe_charge_id, "
            "rule_id FROM marketplace_payments ORDER BY stripe_payment_intent_id"
        )
        accounts = await conn.fetch(
            "SELECT stripe_account_id, charges_enabled, payouts_enabled, status, "
            "payout_failure_code FROM marketplace_accounts ORDER BY stripe_account_id"
        )
    return {
        "subscriptions": [dict(row) for row in subs],
        "invoices": [dict(row) for row in invoices],
        "ledger": [{**dict(row), "entries": json.loads(row["entries"])} for row in ledger],
        "payouts": [dict(row) for row in payouts],
        "payments": [dict(row) for row in payments],
        "accounts": [dict(row) for row in accounts],
    }


async def forget_webhook_effects(stack: Stack, first_tiers: Mapping[int, int]) -> None:
    """Wipe what the webhooks made; keep what the API made (rows, prices, tips, refunds)."""
    async with stack.services.db.pool.acquire() as conn, conn.transaction():
        kinds = list(WEBHOOK_KINDS)
        await conn.execute(
            "DELETE FROM marketplace_ledger_entries WHERE ledger_transaction IN "
            "(SELECT id FROM marketplace_ledger_transactions WHERE kind = ANY($1))",
            kinds,
        )
        await conn.execute(
            "DELETE FROM marketplace_ledger_transactions WHERE kind = ANY($1)", kinds
        )
        await conn.execute("DELETE FROM marketplace_payouts")
        await conn.execute(
            "DELETE FROM marketplace_payments "
            "WHERE plugin = 'creator_subscriptions' AND kind = 'subscription'"
        )
        await conn.execute("DELETE FROM creator_subscriptions_invoices")
        await conn.execute(
            """
            UPDATE creator_subscriptions_subscriptions
            SET stripe_subscription_id = NULL, status = 'pending', status_at_event = 0,
                stripe_price_id = '', price_at_event = 0, current_period_start = 0,
                current_period_end = 0, cancel_at_period_end = false, cancel_at = NULL,
                canceled_at = NULL, cancel_at_event = 0, paused = false, pause_behavior = '',
                pause_at_event = 0, failed_payments = 0
            """
        )
        for subscription_id, tier_id in first_tiers.items():
            await conn.execute(
                "UPDATE creator_subscriptions_subscriptions SET tier = $2 WHERE id = $1",
                subscription_id,
                tier_id,
            )
        await conn.execute("DELETE FROM marketplace_webhook_events")
        await conn.execute("DELETE FROM marketplace_webhook_accounts")


async def event_history(stack: Stack, accounts: list[str]) -> list[dict[str, Any]]:
    """Every event the sandbox recorded, as Stripe's JSON (plain HTTP, no SDK conversions)."""
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {stack.settings.stripe.secret_key}"}
    async with httpx.AsyncClient(base_url=stack.sandbox.url, timeout=60) as client:
        for account in [None, *accounts]:
            extra = {"Stripe-Account": account} if account else {}
            after = None
            while True:
                params = {"limit": 100, **({"starting_after": after} if after else {})}
                page = ok(
                    await client.get("/v1/events", params=params, headers={**headers, **extra})
                )
                events += page["data"]
                if not page["has_more"]:
                    break
                after = page["data"][-1]["id"]
    return events


async def deliver(stack: Stack, events: list[dict[str, Any]]) -> None:
    secrets = stack.settings.stripe
    semaphore = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:

        async def send(event: dict[str, Any]) -> None:
            connect = bool(event.get("account"))
            secret = (secrets.connect_webhook_secrets if connect else secrets.webhook_secrets)[0]
            payload, headers = signed(event, secret)
            path = "/webhooks/stripe/connect" if connect else "/webhooks/stripe"
            async with semaphore:
                response = await client.post(path, content=payload, headers=headers)
            assert response.status_code == 200, response.text

        await asyncio.gather(*(send(event) for event in events))


async def test_duplicated_and_shuffled_events_give_identical_state(stack: Stack) -> None:
    http = stack.http
    a = await onboard(stack, "alpha")
    b = await onboard(stack, "bravo", bank="000111111113")  # account_closed
    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = (
        await asyncio.to_thread(
            stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now}
        )
    )["id"]
    tiers = {}
    for account_id in (a, b):
        for name, amount in (("Basic", 600), ("Plus", 1500)):
            body = {"name": name, "amount": amount}
            created = ok(await http.post(f"{P}/creators/{account_id}/tiers", json=body), 201)
            tiers[account_id, name] = created["id"]
    subs = [
        await subscribe(stack, f"fan-{account_id}-{n}", clock, tiers[account_id, "Basic"])
        for account_id in (a, b)
        for n in range(4)
    ]
    first_tiers = {int(s["id"]): int(s["tier_id"]) for s in subs}

    await advance(stack, clock, now + 31 * DAY)
    ok(
        await http.post(
            f"{P}/subscriptions/{subs[0]['id']}/change-tier", json={"tier_id": tiers[a, "Plus"]}
        )
    )
    ok(await http.post(f"{P}/subscriptions/{subs[1]['id']}/pause"))
    ok(await http.post(f"{P}/subscriptions/{subs[2]['id']}/cancel", json={"at_period_end": True}))
    bad = await asyncio.to_thread(
        stack.stripe().v1.payment_methods.attach,
        "pm_card_chargeCustomerFail",
        params={"customer": subs[4]["customer"]},
    )
    await asyncio.to_thread(
        stack.stripe().v1.subscriptions.update,
        subs[4]["stripe_subscription_id"],
        params={"default_payment_method": bad["id"]},
    )
    tip = ok(
        await http.post(
            f"{P}/payments/tips", json={"fan_id": 1, "creator_account_id": b, "amount": 900}
        ),
        201,
    )
    ok(await http.post(f"{P}/payments/{tip['id']}/refunds", json={"amount": 300}), 201)
    await advance(stack, clock, now + 45 * DAY)
    await stack.advance(DAY)  # the daily payout run: A is paid, B's bank bounces it
    await advance(stack, clock, now + 2 * 31 * DAY)  # the paused period's invoice is voided
    ok(await http.post(f"{P}/subscriptions/{subs[1]['id']}/resume"))
    await advance(stack, clock, now + 3 * 31 * DAY)
    await stack.advance(3 * DAY)

    first = await snapshot(stack)
    assert {s["status"] for s in first["subscriptions"]} >= {"active", "canceled"}
    assert any(i["status"] == "void" for i in first["invoices"])  # the paused period
    assert any(p["status"] == "failed" for p in first["payouts"])
    assert any(i["billing_reason"] == "subscription_update" for i in first["invoices"])

    history = await event_history(stack, [a, b])
    assert len(history) > 200
    rng = random.Random(20_260_601)
    again = rng.sample(history, len(history) // 5)
    renamed = [
        {**event, "id": f"{event['id']}_resent"} for event in rng.sample(history, len(history) // 5)
    ]
    replay = [*history, *again, *renamed]
    rng.shuffle(replay)

    await forget_webhook_effects(stack, first_tiers)
    await deliver(stack, replay)
    await stack.settle(90)
    second = await snapshot(stack)

    # Every part, accounts included: account.updated re-reads the account from
    # Stripe, and the payout failure flag follows the latest payout by Stripe's time.
    for part in first:
        assert second[part] == first[part], part
    assert await stack.dead_events() == []
