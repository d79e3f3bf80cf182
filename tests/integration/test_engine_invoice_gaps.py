"""Charges the engine once left to nobody: an invoice an enabled plugin names but does
not settle, a PaymentIntent naming a plugin that is not enabled, and the reversal and
application fee refund of a charge a plugin records after it was posted as outside."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from engine.core.ledger import PLATFORM
from engine.testing.stack import Stack, running_stack
from tests.integration.test_engine_movements import _subscribe

USD = "usd"


@pytest.fixture
async def shipped_stack(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Stack]:
    async with running_stack(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


@pytest.fixture
async def bare_stack(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url, nats_url, unique_name.upper(), plugins=()
    ) as running:
        yield running


async def _keys(stack: Stack) -> list[str]:
    rows = await stack.services.db.pool.fetch(
        "SELECT idempotency_key FROM marketplace_ledger_transactions"
    )
    return [str(row["idempotency_key"]) for row in rows]


async def test_a_subscription_made_in_stripe_naming_an_enabled_plugin_is_posted_once(
    shipped_stack: Stack,
) -> None:
    """A subscription made directly in Stripe (outside every plugin) whose metadata names
    the enabled creator_subscriptions (copied from one of its subscriptions, say) but
    which that plugin has no row for: the plugin's ``invoice.paid`` handler finds no
    subscription of its own and posts nothing, so the engine, after the plugins'
    handlers, posts the charge as a movement made outside it, once."""
    stack = shipped_stack
    client = stack.stripe()

    def outside() -> str:
        _, charge_id = _subscribe(
            client,
            amount=2_000,
            metadata={
                "marketplace_plugin": "creator_subscriptions",
                "marketplace_reference": "creator_subscriptions:subscription:999",
            },
        )
        return charge_id

    charge_id = await asyncio.to_thread(outside)
    await stack.settle()
    assert (await _keys(stack)).count(f"charge:{charge_id}") == 1
    await stack.assert_ledger_is_stripe(PLATFORM, currency=USD)


async def test_an_intent_naming_a_plugin_not_enabled_is_posted_once(bare_stack: Stack) -> None:
    """A PaymentIntent whose ``MEANING_METADATA`` names a plugin that is not enabled
    (made by that plugin before it was disabled and confirmed by the customer after: 3D
    Secure) is no money call of an enabled plugin's: the engine posts it as a movement
    made outside it, once, named as its metadata says (as its refunds are)."""
    stack = bare_stack
    client = stack.stripe()

    def outside() -> tuple[str, str]:
        intent = client.v1.payment_intents.create(
            params={
                "amount": 1_500,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                "metadata": {"marketplace_plugin": "gone", "marketplace_reference": "gone:7"},
            }
        )
        refund = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 500})
        return str(intent.latest_charge), refund.id

    charge_id, refund_id = await asyncio.to_thread(outside)
    await stack.settle()
    assert (await _keys(stack)).count(f"charge:{charge_id}") == 1
    rows = await stack.services.db.pool.fetch(
        "SELECT idempotency_key, plugin, reference FROM marketplace_ledger_transactions"
    )
    meanings = {row["idempotency_key"]: (row["plugin"], row["reference"]) for row in rows}
    assert meanings[f"charge:{charge_id}"] == ("gone", "gone:7")
    assert meanings[f"refund:{refund_id}"] == ("gone", "gone:7")
    await stack.assert_ledger_is_stripe(PLATFORM, currency=USD)
