"""creator_subscriptions: disputes and refunds made in Stripe's dashboard reach ledger and views.

A tip paid with Stripe's ``pm_card_createDispute`` is disputed: the tip and the
engine's payment show ``disputed`` (later ``dispute_won`` once winning evidence
is submitted), the finance panel's "Disputed" shows the withdrawn amount, and
the dispute's balance transactions are posted, so reconciliation finds nothing
missing. Refunds made directly on the sandbox (with and without reversing the
creator's transfer and the platform's fee) are posted by the engine and show
in the tip's refunded amount and status, and in the creator's transactions.
Per account, the ledger is Stripe's balance (available + pending) to the cent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.dashboard.queries import finance_summary
from engine.reconciliation.service import run_reconciliation

C = "/v1/creator_subscriptions"


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=("commission_rules", "creator_subscriptions"),
    ) as running:
        yield running


async def creator(stack: Stack, handle: str) -> str:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": handle, "display_name": handle}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await stack.settle()
    return account_id


async def tip(stack: Stack, account_id: str, ref: str, card: str, amount: int) -> dict[str, Any]:
    body = {"external_ref": ref, "name": ref, "payment_method": card}
    fan = ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"]
    return dict(
        ok(
            await stack.http.post(
                f"{C}/payments/tips",
                json={"fan_id": fan, "creator_account_id": account_id, "amount": amount},
            ),
            201,
        )
    )


async def engine_status(stack: Stack, charge_id: str) -> tuple[str, int]:
    row = await stack.services.db.pool.fetchrow(
        "SELECT status, amount_refunded FROM marketplace_payments WHERE stripe_charge_id = $1",
        charge_id,
    )
    assert row is not None
    return str(row["status"]), int(row["amount_refunded"])


async def assert_ledger_is_stripe(stack: Stack, accounts: list[str]) -> None:
    for account in [*accounts, None]:
        ledger = await stack.ledger.balances(account or "platform")
        assert ledger.get("usd", 0) == await stack.stripe_balance(account, "usd"), (
            account or "platform"
        )
    await stack.assert_ledger_balanced()
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.status == "completed"
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_a_disputed_tip_shows_everywhere_and_reconciles(stack: Stack) -> None:
    ada = await creator(stack, "ada")
    disputed = await tip(stack, ada, "fan-d", "pm_card_createDispute", 2000)
    await stack.settle()
    charge_id = str(
        (
            await asyncio.to_thread(
                stack.stripe().v1.payment_intents.retrieve, disputed["payment_intent_id"]
            )
        )["latest_charge"]
    )

    view = ok(await stack.http.get(f"{C}/payments/{disputed['id']}"))
    assert view["status"] == "disputed"
    assert await engine_status(stack, charge_id) == ("disputed", 0)
    rows = await finance_summary(stack.services.db.pool, "month", 12)
    [row] = [r for r in rows if r.plugin == "creator_subscriptions"]
    assert row.disputes == 1
    assert row.disputed == 2000  # the finance panel's "Disputed"
    balance = ok(await stack.http.get(f"{C}/creators/{ada}/balance"))
    assert balance["disputed"] == [{"amount": 2000, "currency": "usd"}]  # the creator's earnings
    await assert_ledger_is_stripe(stack, [ada])

    # Winning evidence: Stripe reinstates the funds (and its fee); the status says so.
    [dispute] = (await asyncio.to_thread(stack.stripe().v1.disputes.list))["data"]
    await asyncio.to_thread(
        stack.stripe().v1.disputes.update,
        dispute["id"],
        params={"evidence": {"uncategorized_text": "winning_evidence"}},
    )
    await stack.settle()
    assert ok(await stack.http.get(f"{C}/payments/{disputed['id']}"))["status"] == "dispute_won"
    assert await engine_status(stack, charge_id) == ("dispute_won", 0)
    assert ok(await stack.http.get(f"{C}/creators/{ada}/balance"))["disputed"] == []
    await assert_ledger_is_stripe(stack, [ada])


async def test_refunds_made_on_stripe_directly_are_posted_and_shown(stack: Stack) -> None:
    bob = await creator(stack, "bob")
    paid = await tip(stack, bob, "fan-r", "pm_card_visa", 3000)
    await stack.settle()
    charge_id = str(
        (
            await asyncio.to_thread(
                stack.stripe().v1.payment_intents.retrieve, paid["payment_intent_id"]
            )
        )["latest_charge"]
    )
    # In Stripe's dashboard: part refunded taking the creator's share and fee back ...
    await asyncio.to_thread(
        stack.stripe().v1.refunds.create,
        params={
            "charge": charge_id,
            "amount": 1000,
            "reverse_transfer": True,
            "refund_application_fee": True,
        },
    )
    await stack.settle()
    view = ok(await stack.http.get(f"{C}/payments/{paid['id']}"))
    assert (view["status"], view["amount_refunded"]) == ("partially_refunded", 1000)
    assert await engine_status(stack, charge_id) == ("partially_refunded", 1000)
    lines = ok(await stack.http.get(f"{C}/creators/{bob}/transactions"))["data"]
    assert {line["kind"] for line in lines} >= {"reversal", "application_fee_refund"}
    await assert_ledger_is_stripe(stack, [bob])

    # ... and the rest at the platform's expense (no reversal, no fee refund).
    await asyncio.to_thread(
        stack.stripe().v1.refunds.create, params={"charge": charge_id, "amount": 2000}
    )
    await stack.settle()
    view = ok(await stack.http.get(f"{C}/payments/{paid['id']}"))
    assert (view["status"], view["amount_refunded"]) == ("refunded", 3000)
    assert await engine_status(stack, charge_id) == ("refunded", 3000)
    await assert_ledger_is_stripe(stack, [bob])


async def test_a_subscription_invoice_is_refunded_through_the_api_in_proportion(
    stack: Stack,
) -> None:
    cleo = await creator(stack, "cleo")
    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = (
        await asyncio.to_thread(
            stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now}
        )
    )["id"]
    tier = ok(
        await stack.http.post(f"{C}/creators/{cleo}/tiers", json={"name": "Gold", "amount": 1999}),
        201,
    )["id"]
    body = {"external_ref": "fan-s", "name": "Fan", "payment_method": "pm_card_visa"}
    fan = ok(await stack.http.post(f"{C}/fans", json={**body, "test_clock": clock}), 201)["id"]
    ok(await stack.http.post(f"{C}/subscriptions", json={"fan_id": fan, "tier_id": tier}), 201)
    await stack.settle()
    [invoice] = ok(await stack.http.get(f"{C}/creators/{cleo}/invoices"))["data"]
    assert invoice["status"] == "paid"
    fee = int(invoice["application_fee"])
    assert fee > 0

    first = ok(
        await stack.http.post(
            f"{C}/invoices/{invoice['stripe_invoice_id']}/refunds", json={"amount": 999}
        ),
        201,
    )
    # Stripe reverses the transfer and refunds the fee in proportion to the refund.
    assert (first["amount"], first["transfer_reversed"]) == (999, 999)
    assert abs(first["fee_refunded"] - fee * 999 / 1999) <= 1
    rest = ok(
        await stack.http.post(f"{C}/invoices/{invoice['stripe_invoice_id']}/refunds", json={}),
        201,
    )
    assert rest["amount"] == 1000
    assert first["fee_refunded"] + rest["fee_refunded"] == fee
    too_much = await stack.http.post(
        f"{C}/invoices/{invoice['stripe_invoice_id']}/refunds", json={"amount": 1}
    )
    assert too_much.status_code in {400, 422}, too_much.text
    assert too_much.json()["field"] == "amount"
    missing = await stack.http.post(f"{C}/invoices/in_missing/refunds", json={})
    assert missing.status_code == 404, missing.text
    await stack.settle()

    charge_id = str(
        stack.sandbox.state.find(
            stack.sandbox.state.private(invoice["stripe_invoice_id"]).get("intent") or ""
        )["latest_charge"]
    )
    assert await engine_status(stack, charge_id) == ("refunded", 1999)
    await assert_ledger_is_stripe(stack, [cleo])


async def test_refunds_that_fail_later_are_taken_off_the_tip(stack: Stack) -> None:
    """``pm_card_refundFail``: a refund through the API and one made in Stripe succeed,
    then fail (``refund.failed``); the money is back with the platform and the creator,
    so the tip and the engine's payment count neither as refunded any more."""
    cy = await creator(stack, "cy")
    paid = await tip(stack, cy, "fan-f", "pm_card_refundFail", 3000)
    await stack.settle()
    charge_id = str(
        (
            await asyncio.to_thread(
                stack.stripe().v1.payment_intents.retrieve, paid["payment_intent_id"]
            )
        )["latest_charge"]
    )
    ok(await stack.http.post(f"{C}/payments/{paid['id']}/refunds", json={"amount": 1000}), 201)
    await asyncio.to_thread(
        stack.stripe().v1.refunds.create, params={"charge": charge_id, "amount": 500}
    )
    await stack.settle()
    view = ok(await stack.http.get(f"{C}/payments/{paid['id']}"))
    assert (view["status"], view["amount_refunded"]) == ("partially_refunded", 1500)
    assert await engine_status(stack, charge_id) == ("partially_refunded", 1500)

    stack.sandbox.advance(86_400)  # the card's refunds fail
    await stack.settle()
    view = ok(await stack.http.get(f"{C}/payments/{paid['id']}"))
    assert (view["status"], view["amount_refunded"]) == ("succeeded", 0)
    assert await engine_status(stack, charge_id) == ("succeeded", 0)
    await assert_ledger_is_stripe(stack, [cy])
