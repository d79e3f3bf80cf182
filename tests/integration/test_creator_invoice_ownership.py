"""A creator subscription's invoices are the plugin's, whatever order their events come in.

The plugin writes the engine's ``meaning_metadata`` on every subscription it makes,
Stripe copies it onto each invoice (``parent.subscription_details.metadata``), and
the engine reads the owner from there (``invoice_owner``): so the engine's handler of
the invoice charge's ``charge.succeeded`` / ``payment_intent.succeeded`` leaves it to
the plugin, even when those events are handled before ``invoice.paid`` is, and the
charge is posted once, by the plugin, as ``subscription_invoice``.

A subscription made before the plugin wrote that metadata carries none: the plugin
writes it once (from a periodic task in the worker, a bounded batch a run, or when one of its
``customer.subscription.*`` events shows it missing), so its next renewal is the
plugin's too, never an unnamed engine ``charge``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.payments.records import invoice_owner
from engine.worker.handlers import core_fallbacks, core_registrations
from plugins.creator_subscriptions import adoption

C = "/v1/creator_subscriptions"
PAID = frozenset({"invoice.paid", "invoice.payment_succeeded"})


@asynccontextmanager
async def invoice_paid_held_back(stack: Stack) -> AsyncIterator[None]:
    """Stripe sends the stack no ``invoice.paid``/``invoice.payment_succeeded`` inside:
    its webhook endpoints listen to every other event type the engine and plugins
    handle (``enabled_events``, as Stripe's API updates them), then to all again."""
    handled = [
        *core_registrations(),
        *stack.services.plugins.webhook_handlers(),
        *core_fallbacks(),
    ]
    types = sorted({r.event_type for r in handled} - PAID - {"*"})
    client = stack.stripe()

    def listen(enabled: list[str]) -> None:
        for endpoint in client.v1.webhook_endpoints.list(params={"limit": 100}).data:
            client.v1.webhook_endpoints.update(endpoint.id, params={"enabled_events": enabled})

    await asyncio.to_thread(listen, types)
    try:
        yield
    finally:
        await asyncio.to_thread(listen, ["*"])


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=("commission_rules", "creator_subscriptions"),
    ) as running:
        yield running


async def _creator_fan_and_tier(stack: Stack) -> tuple[str, int, int]:
    """An onboarded creator (its account), a fan with a card and a tier of 19.99."""
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
    return account, fan, int(tier)


async def test_an_invoice_charge_handled_before_invoice_paid_is_posted_once_by_the_plugin(
    stack: Stack,
) -> None:
    account, fan, tier = await _creator_fan_and_tier(stack)
    pool = stack.services.db.pool
    charges = (
        "SELECT kind, plugin, reference FROM marketplace_ledger_transactions "
        "WHERE idempotency_key LIKE 'charge:%'"
    )
    # invoice.paid handled later (below): the charge's events come first.
    async with invoice_paid_held_back(stack):
        subscription = ok(
            await stack.http.post(f"{C}/subscriptions", json={"fan_id": fan, "tier_id": tier}),
            201,
        )
        await stack.settle()
        assert await pool.fetch(charges) == []  # the engine left the invoice's charge alone
    # Read from Stripe: the plugin records the invoice from its events, some held back.
    found = (
        await asyncio.to_thread(
            stack.stripe().v1.invoices.list,
            params={"subscription": str(subscription["stripe_subscription_id"])},
        )
    ).data[0]
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


def _last_request(stack: Stack) -> int:
    data = stack.sandbox.control("GET", "/_sandbox/requests")["data"]
    return int(data[-1]["seq"]) if data else 0


def _paid_payments_read(stack: Stack, invoice_id: str, after: int) -> int:
    """How many times the sandbox was asked for ``invoice_id``'s paid InvoicePayments
    (``GET /v1/invoice_payments?invoice=...&status=paid``) after request ``after``."""
    data = stack.sandbox.control(
        "GET", f"/_sandbox/requests?path=/v1/invoice_payments&after={after}"
    )
    asked = [parse_qs(str(entry["query"])) for entry in data["data"] if entry["method"] == "GET"]
    return sum(
        query.get("invoice") == [invoice_id] and query.get("status") == ["paid"] for query in asked
    )


async def test_invoice_paid_of_a_charge_the_plugin_posts_asks_stripe_for_it_once(
    stack: Stack,
) -> None:
    """The engine's ``invoice.paid`` fallback runs after the plugin's handler, which has
    just recorded and posted the invoice's charge (``post_destination_charge`` with
    ``invoice``): the engine knows that from the payment it recorded and asks Stripe
    nothing, so the invoice's payments are read once (by the plugin, for its charge). A
    repeated delivery of the event reads them no more."""
    account, fan, tier = await _creator_fan_and_tier(stack)
    async with invoice_paid_held_back(stack):
        subscription = ok(
            await stack.http.post(f"{C}/subscriptions", json={"fan_id": fan, "tier_id": tier}),
            201,
        )
        await stack.settle()
    found = (
        await asyncio.to_thread(
            stack.stripe().v1.invoices.list,
            params={"subscription": str(subscription["stripe_subscription_id"])},
        )
    ).data[0]
    stripe_invoice = json.loads(json.dumps(found.to_dict(), default=str))
    invoice_id = str(stripe_invoice["id"])
    before = _last_request(stack)
    await stack.send_event("invoice.paid", stripe_invoice)
    assert _paid_payments_read(stack, invoice_id, before) == 1  # the plugin's, not the engine's
    pool = stack.services.db.pool
    named = (
        "subscription_invoice",
        "creator_subscriptions",
        f"creator_subscriptions:subscription:{subscription['id']}",
    )
    assert [tuple(row) for row in await pool.fetch(LEDGER_CHARGES)] == [named]
    before = _last_request(stack)
    await stack.send_event("invoice.paid", stripe_invoice)  # Stripe delivers it again
    assert _paid_payments_read(stack, invoice_id, before) == 0
    assert [tuple(row) for row in await pool.fetch(LEDGER_CHARGES)] == [named]
    await stack.assert_ledger_is_stripe(account, "platform", currency="usd")


LEDGER_CHARGES = (
    "SELECT kind, plugin, reference FROM marketplace_ledger_transactions "
    "WHERE idempotency_key LIKE 'charge:%' ORDER BY id"
)


async def _subscription_on_a_clock(stack: Stack) -> tuple[str, str, dict[str, Any]]:
    """A creator, a fan on a new test clock and their subscription (made by the plugin):
    the creator's account, the clock and the subscription's view."""
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "bo", "display_name": "Bo"}),
        201,
    )
    account = str(created["creator"]["account_id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account}/complete_onboarding")
    # Its account.updated handled first: the plugin sells only once charges are enabled.
    await stack.settle()
    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = str(
        (
            await asyncio.to_thread(
                stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now}
            )
        )["id"]
    )
    body = {"external_ref": "fan-old", "name": "Fan", "payment_method": "pm_card_visa"}
    fan = int(ok(await stack.http.post(f"{C}/fans", json={**body, "test_clock": clock}), 201)["id"])
    tier = ok(
        await stack.http.post(
            f"{C}/creators/{account}/tiers", json={"name": "Gold", "amount": 1500}
        ),
        201,
    )["id"]
    subscription = ok(
        await stack.http.post(f"{C}/subscriptions", json={"fan_id": fan, "tier_id": tier}), 201
    )
    await stack.settle()
    return account, clock, subscription


async def _made_the_old_way(stack: Stack, stripe_id: str, *, unmarked_first: bool) -> None:
    """The subscription as one made before the plugin wrote ``meaning_metadata``: no
    ``marketplace_*`` keys in Stripe, and the plugin's row not marked as having written
    them (``unmarked_first``: the row before Stripe's change, so its event finds it so)."""
    unmark = "UPDATE creator_subscriptions_subscriptions SET meaning_marked = false"
    pool = stack.services.db.pool
    if unmarked_first:
        await pool.execute(unmark)
    await asyncio.to_thread(
        stack.stripe().v1.subscriptions.update,
        stripe_id,
        params={"metadata": {"marketplace_plugin": "", "marketplace_reference": ""}},
    )
    await stack.settle()
    if not unmarked_first:
        await pool.execute(unmark)


async def _stripe_metadata(stack: Stack, stripe_id: str) -> dict[str, str]:
    found = await asyncio.to_thread(stack.stripe().v1.subscriptions.retrieve, stripe_id)
    return {
        key: str(value)
        for key, value in found.to_dict()["metadata"].items()
        if key in {"marketplace_plugin", "marketplace_reference"}
    }


async def test_a_subscription_made_unmarked_is_marked_by_the_worker_and_renews_as_the_plugins(
    stack: Stack,
) -> None:
    """A subscription without ``marketplace_plugin`` in Stripe (made before the plugin
    wrote it) gets it from the plugin's periodic task in the worker, once; its renewal
    invoice then names the plugin, so the engine leaves the renewal's charge alone even
    while ``invoice.paid`` is not handled yet, and the plugin posts it once, named."""
    account, clock, subscription = await _subscription_on_a_clock(stack)
    stripe_id = str(subscription["stripe_subscription_id"])
    await _made_the_old_way(stack, stripe_id, unmarked_first=False)
    assert await _stripe_metadata(stack, stripe_id) == {}

    [task] = [t for t in stack.services.plugins.periodic_tasks() if t.name == adoption.MARK_TASK]
    await task.run(stack.services)
    await stack.settle()
    reference = f"creator_subscriptions:subscription:{subscription['id']}"
    assert await _stripe_metadata(stack, stripe_id) == {
        "marketplace_plugin": "creator_subscriptions",
        "marketplace_reference": reference,
    }
    marked = "SELECT meaning_marked FROM creator_subscriptions_subscriptions WHERE id = $1"
    pool = stack.services.db.pool
    assert await pool.fetchval(marked, int(subscription["id"])) is True

    named = ("subscription_invoice", "creator_subscriptions", reference)
    async with invoice_paid_held_back(stack):  # the renewal's invoice.paid handled later
        await stack.advance_test_clock(clock, 32 * 86_400)
        # The first invoice's charge only: the engine left the renewal's alone.
        assert [tuple(row) for row in await pool.fetch(LEDGER_CHARGES)] == [named]
    invoices = await asyncio.to_thread(
        stack.stripe().v1.invoices.list, params={"subscription": stripe_id}
    )
    [found] = [item for item in invoices.data if item.billing_reason == "subscription_cycle"]
    stripe_invoice = json.loads(json.dumps(found.to_dict(), default=str))
    assert invoice_owner(stripe_invoice) == "creator_subscriptions"
    await stack.send_event("invoice.paid", stripe_invoice)
    assert [tuple(row) for row in await pool.fetch(LEDGER_CHARGES)] == [named, named]
    await stack.assert_ledger_is_stripe(account, "platform", currency="usd")


async def test_a_subscription_event_missing_meaning_metadata_marks_it_once(
    stack: Stack,
) -> None:
    """A ``customer.subscription.*`` event of one of the plugin's subscriptions whose
    Stripe metadata lacks ``marketplace_plugin`` (and which the plugin never marked)
    has the plugin write it; its renewal is then posted once, by the plugin, named."""
    account, clock, subscription = await _subscription_on_a_clock(stack)
    stripe_id = str(subscription["stripe_subscription_id"])
    await _made_the_old_way(stack, stripe_id, unmarked_first=True)
    reference = f"creator_subscriptions:subscription:{subscription['id']}"
    assert await _stripe_metadata(stack, stripe_id) == {
        "marketplace_plugin": "creator_subscriptions",
        "marketplace_reference": reference,
    }
    await stack.advance_test_clock(clock, 32 * 86_400)
    named = ("subscription_invoice", "creator_subscriptions", reference)
    pool = stack.services.db.pool
    assert [tuple(row) for row in await pool.fetch(LEDGER_CHARGES)] == [named, named]
    await stack.assert_ledger_is_stripe(account, "platform", currency="usd")


async def test_a_subscription_stripe_refuses_to_mark_is_left_for_the_next_run(stack: Stack) -> None:
    """Marking goes one subscription at a time: one Stripe refuses (here, one it does
    not know) is logged and left unmarked for the next run, and every other is marked;
    a run marks at most its ``limit``."""
    _, _, subscription = await _subscription_on_a_clock(stack)
    stripe_id = str(subscription["stripe_subscription_id"])
    await _made_the_old_way(stack, stripe_id, unmarked_first=False)
    pool = stack.services.db.pool
    await pool.execute(
        "INSERT INTO creator_subscriptions_subscriptions (fan, creator, tier, account_id, "
        "customer_id, currency, status, application_fee_percent, stripe_subscription_id, "
        "created_at, updated_at) "
        "SELECT fan, creator, tier, account_id, customer_id, currency, 'active', "
        "application_fee_percent, 'sub_unknown_to_stripe', now(), now() "
        "FROM creator_subscriptions_subscriptions WHERE id = $1",
        int(subscription["id"]),
    )
    assert await adoption.mark_subscriptions(stack.services, limit=1) == 1  # the first row
    assert await adoption.mark_subscriptions(stack.services) == 0  # Stripe refuses the other
    marked = await pool.fetch(
        "SELECT stripe_subscription_id, meaning_marked FROM creator_subscriptions_subscriptions "
        "ORDER BY id"
    )
    assert [tuple(row) for row in marked] == [(stripe_id, True), ("sub_unknown_to_stripe", False)]
    assert await _stripe_metadata(stack, stripe_id) == {
        "marketplace_plugin": "creator_subscriptions",
        "marketplace_reference": f"creator_subscriptions:subscription:{subscription['id']}",
    }
