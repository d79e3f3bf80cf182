"""Payouts in the ledger, through the whole stack: canceled payouts come back, the platform's count.

A creator's manual payout made directly in Stripe and canceled while pending is
posted out at its ``created`` and back at the time of its ``payout_cancel``
balance transaction; the platform's own payouts (one paid out, one canceled)
are posted on ``platform`` the same way. Per account, the ledger is Stripe's
balance (available + pending) to the cent and reconciliation finds nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.core.ledger import bank_of, stripe_time
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


async def posting_time(stack: Stack, key: str) -> Any:
    return await stack.services.db.pool.fetchval(
        "SELECT occurred_at FROM marketplace_ledger_transactions WHERE idempotency_key = $1", key
    )


async def test_canceled_payouts_are_reversed_and_platform_payouts_posted(stack: Stack) -> None:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "ada", "display_name": "Ada"}), 201
    )
    ada = created["creator"]["account_id"]
    stack.sandbox.control("POST", f"/_sandbox/accounts/{ada}/complete_onboarding")
    await stack.settle()
    body = {"external_ref": "fan-1", "name": "Fan", "payment_method": "pm_card_bypassPending"}
    fan = ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"]
    ok(
        await stack.http.post(
            f"{C}/payments/tips", json={"fan_id": fan, "creator_account_id": ada, "amount": 5000}
        ),
        201,
    )
    await stack.settle()

    as_ada = stack.stripe(stripe_account=ada)
    # Manual payouts, as Stripe has them: on an account whose schedule is manual.
    await asyncio.to_thread(
        stack.stripe().v1.accounts.update,
        ada,
        params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}},
    )
    payout = await asyncio.to_thread(
        as_ada.v1.payouts.create, params={"amount": 1500, "currency": "usd"}
    )
    await stack.settle()
    assert (await stack.ledger.balances(bank_of(ada)))["usd"] == 1500
    canceled = await asyncio.to_thread(as_ada.v1.payouts.cancel, payout["id"])
    platform_paid = await asyncio.to_thread(
        stack.stripe().v1.payouts.create, params={"amount": 40, "currency": "usd"}
    )
    platform_canceled = await asyncio.to_thread(
        stack.stripe().v1.payouts.create, params={"amount": 25, "currency": "usd"}
    )
    await asyncio.to_thread(stack.stripe().v1.payouts.cancel, platform_canceled["id"])
    await stack.settle()

    # Posted at Stripe's times: out when created, back when the cancel's transaction was.
    returned = await asyncio.to_thread(
        as_ada.v1.balance_transactions.retrieve, canceled["failure_balance_transaction"]
    )
    assert returned["type"] == "payout_cancel"
    assert await posting_time(stack, f"payout:{payout['id']}") == stripe_time(payout["created"])
    assert await posting_time(stack, f"payout_cancel:{payout['id']}") == stripe_time(
        returned["created"]
    )
    assert (await stack.ledger.balances(bank_of(ada))).get("usd", 0) == 0
    assert (await stack.ledger.balances(bank_of("platform")))["usd"] == 40
    assert await posting_time(stack, f"payout:{platform_paid['id']}") == stripe_time(
        platform_paid["created"]
    )
    statuses = dict(
        await stack.services.db.pool.fetch(
            "SELECT stripe_payout_id, status FROM marketplace_payouts"
        )
    )
    assert statuses[payout["id"]] == "canceled"
    assert statuses[platform_canceled["id"]] == "canceled"

    for account in (ada, None):
        ledger = await stack.ledger.balances(account or "platform")
        assert ledger.get("usd", 0) == await stack.stripe_balance(account, "usd")
    await stack.assert_ledger_balanced()
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.status == "completed"
    assert run.problems == 0, [item.detail for item in run.problem_items()]
