"""A creator subscription's invoices are the plugin's, whatever order their events come in.

The plugin writes the engine's ``meaning_metadata`` on every subscription it makes,
Stripe copies it onto each invoice (``parent.subscription_details.metadata``), and
the engine reads the owner from there (``invoice_owner``): so the engine's handler of
the invoice charge's ``charge.succeeded`` / ``payment_intent.succeeded`` leaves it to
the plugin, even when those events are handled before ``invoice.paid`` is, and the
charge is posted once, by the plugin, as ``subscription_invoice``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.payments.records import invoice_owner
from plugins.creator_subscriptions import webhooks

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


async def test_an_invoice_charge_handled_before_invoice_paid_is_posted_once_by_the_plugin(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "ada", "display_name": "Ada"}),
        201,
    )
    account = str(created["creator"]["account_id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account}/complete_onboarding")
    body = {"external_ref": "fan", "name": "Fan", "payment_method": "pm_card_visa"}
    fan = int(ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"])
    await stack.settle()
    tier = ok(
        await stack.http.post(
            f"{C}/creators/{account}/tiers", json={"name": "Gold", "amount": 1999}
        ),
        201,
    )["id"]
    original = webhooks._settle_invoice

    async def not_yet(*args: Any) -> list[Any]:
        return []  # invoice.paid handled later (below): the charge's events come first

    monkeypatch.setattr(webhooks, "_settle_invoice", not_yet)
    subscription = ok(
        await stack.http.post(f"{C}/subscriptions", json={"fan_id": fan, "tier_id": tier}), 201
    )
    await stack.settle()
    pool = stack.services.db.pool
    charges = (
        "SELECT kind, plugin, reference FROM marketplace_ledger_transactions "
        "WHERE idempotency_key LIKE 'charge:%'"
    )
    assert await pool.fetch(charges) == []  # the engine left the invoice's charge alone
    monkeypatch.setattr(webhooks, "_settle_invoice", original)
    [invoice] = ok(await stack.http.get(f"{C}/creators/{account}/invoices"))["data"]
    found = await asyncio.to_thread(
        stack.stripe().v1.invoices.retrieve, str(invoice["stripe_invoice_id"])
    )
    # As Stripe sends it: decimal strings stay strings.
    stripe_invoice = json.loads(json.dumps(found.to_dict(), default=str))
    assert invoice_owner(stripe_invoice) == "creator_subscriptions"
    await stack.send_event("invoice.paid", stripe_invoice)
    assert [tuple(row) for row in await pool.fetch(charges)] == [
        (
            "subscription_invoice",
            "creator_subscriptions",
            f"creator_subscriptions:subscription:{subscription['id']}",
        )
    ]
    await stack.assert_ledger_is_stripe(account, "platform", currency="usd")
