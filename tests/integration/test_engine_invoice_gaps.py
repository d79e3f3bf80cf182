"""Charges the engine once left to nobody: an invoice an enabled plugin names but does
not settle, a PaymentIntent naming a plugin that is not enabled, and the reversal and
application fee refund of a charge a plugin records after it was posted as outside."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.outside import OutsideOrders, connected_account, subscribe_outside, usd

from engine.core.ledger import PLATFORM, stripe_time
from engine.core.orders import Commission, Order, SplitLeg, SplitPlan
from engine.payments import movements
from engine.payments.movements import MoneyScope
from engine.payments.pricing import PricedOrder
from engine.reconciliation.service import run_reconciliation
from engine.testing.stack import Stack, running_stack

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
        _, charge_id = subscribe_outside(
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


async def test_a_refunds_reversal_and_fee_refund_are_named_with_theinvoice_charge(
    bare_stack: Stack,
) -> None:
    """An invoice charge posted as made outside the engine, refunded in Stripe with the
    transfer reversed and the application fee refunded, then recorded by a plugin as its
    own (``post_destination_charge`` with ``priced``, as at ``invoice.paid``): the charge,
    the refund, the refund's transfer reversal and application fee refund all take the
    plugin's meaning, so its commission and refunds per plugin miss none of them."""
    stack = bare_stack
    creator = await connected_account(stack, "creator")
    client = stack.stripe()

    def outside() -> str:
        _, charge_id = subscribe_outside(
            client,
            amount=3_000,
            transfer_data={"destination": creator},
            application_fee_percent="10",
        )
        client.v1.refunds.create(
            params={
                "charge": charge_id,
                "amount": 1_000,
                "reverse_transfer": True,
                "refund_application_fee": True,
            }
        )
        return charge_id

    charge_id = await asyncio.to_thread(outside)
    await stack.settle()
    order = Order(
        plugin="subs",
        kind="subscription",
        amount=usd(3_000),
        reference="subs:1",
        beneficiaries={"creator": creator},
        occurred_at=stripe_time(1_767_225_600),
    )
    priced = PricedOrder(
        order=order,
        price=usd(3_000),
        commission=Commission(amount=usd(300), rule_id="flat", rule_version=1),
        split=SplitPlan(
            total=usd(3_000),
            legs=(SplitLeg("platform", usd(300)), SplitLeg("creator", usd(2_700), creator)),
        ),
    )
    pool = stack.services.db.pool
    async with pool.acquire() as conn, conn.transaction():
        scope = MoneyScope(stack.services.gateway, stack.ledger, conn, "subs", "subs:1")
        await movements.post_destination_charge(
            scope, charge_id, kind="subscription_invoice", priced=priced
        )
    rows = await pool.fetch(
        "SELECT split_part(idempotency_key, ':', 1) AS kind, plugin FROM "
        "marketplace_ledger_transactions ORDER BY id"
    )
    kinds = sorted(str(row["kind"]) for row in rows)
    assert kinds == ["application_fee_refund", "charge", "refund", "reversal"], kinds
    unnamed = sorted(str(row["kind"]) for row in rows if not row["plugin"])
    assert unnamed == [], unnamed


def _priced(creator: str, amount: int, reference: str) -> PricedOrder:
    """A subscription's order of ``amount`` for ``creator``, 10 % to the platform."""
    order = Order(
        plugin="subs",
        kind="subscription",
        amount=usd(amount),
        reference=reference,
        beneficiaries={"creator": creator},
        occurred_at=stripe_time(1_767_225_600),
    )
    fee = amount // 10
    return PricedOrder(
        order=order,
        price=usd(amount),
        commission=Commission(amount=usd(fee), rule_id="flat", rule_version=1),
        split=SplitPlan(
            total=usd(amount),
            legs=(
                SplitLeg("platform", usd(fee)),
                SplitLeg("creator", usd(amount - fee), creator),
            ),
        ),
    )


def _last_request(stack: Stack) -> int:
    data = stack.sandbox.control("GET", "/_sandbox/requests")["data"]
    return int(data[-1]["seq"]) if data else 0


def _share_reads(stack: Stack, after: int) -> list[str]:
    """The sandbox's log of reads of transfers and application fees (their reversals and
    refunds) after request ``after``."""
    data = stack.sandbox.control("GET", f"/_sandbox/requests?after={after}")["data"]
    return [
        str(entry["path"])
        for entry in data
        if entry["method"] == "GET"
        and str(entry["path"]).startswith(("/v1/transfers", "/v1/application_fees"))
    ]


async def test_an_old_unnamed_reversal_costs_a_later_charge_to_its_account_no_call(
    bare_stack: Stack,
) -> None:
    """A destination charge recorded by a plugin (``post_destination_charge`` with
    ``priced``) has its own transfer reversals and fee refunds named from its transfer
    and fee as Stripe's charge carries them: a second charge to an account that holds an
    old unnamed reversal and fee refund of another charge makes no call to list
    reversals or fee refunds. The first charge, recorded later from Stripe's charge
    expanded only on its balance transaction, still has them named (read back with its
    transfer and fee, once, since its account holds movements naming nothing)."""
    stack = bare_stack
    creator = await connected_account(stack, "creator")
    client = stack.stripe()

    def outside() -> tuple[str, str]:
        _, first = subscribe_outside(
            client,
            amount=3_000,
            transfer_data={"destination": creator},
            application_fee_percent="10",
        )
        client.v1.refunds.create(
            params={
                "charge": first,
                "amount": 1_000,
                "reverse_transfer": True,
                "refund_application_fee": True,
            }
        )
        _, second = subscribe_outside(
            client,
            amount=2_000,
            transfer_data={"destination": creator},
            application_fee_percent="10",
        )
        return first, second

    first, second = await asyncio.to_thread(outside)
    await stack.settle()
    pool = stack.services.db.pool
    unnamed = (
        "SELECT split_part(idempotency_key, ':', 1) AS kind FROM marketplace_ledger_transactions "
        "WHERE plugin = '' ORDER BY 1"
    )
    assert [row["kind"] for row in await pool.fetch(unnamed)] == [
        "application_fee_refund",
        "charge",
        "charge",
        "refund",
        "reversal",
    ]
    before = _last_request(stack)
    async with pool.acquire() as conn, conn.transaction():
        scope = MoneyScope(stack.services.gateway, stack.ledger, conn, "subs", "subs:2")
        await movements.post_destination_charge(
            scope, second, kind="subscription_invoice", priced=_priced(creator, 2_000, "subs:2")
        )
    assert _share_reads(stack, before) == []
    assert [row["kind"] for row in await pool.fetch(unnamed)] == [
        "application_fee_refund",
        "charge",
        "refund",
        "reversal",
    ]
    charge = await stack.services.gateway.call(
        "charges", "retrieve", first, params={"expand": ["balance_transaction"]}
    )
    async with pool.acquire() as conn, conn.transaction():
        scope = MoneyScope(stack.services.gateway, stack.ledger, conn, "subs", "subs:1")
        await movements.post_destination_charge(
            scope, charge, kind="subscription_invoice", priced=_priced(creator, 3_000, "subs:1")
        )
    assert [row["kind"] for row in await pool.fetch(unnamed)] == []
    named = await pool.fetch(
        "SELECT split_part(idempotency_key, ':', 1) AS kind, reference "
        "FROM marketplace_ledger_transactions ORDER BY 1, 2"
    )
    assert [tuple(row) for row in named] == [
        ("application_fee_refund", "subs:1"),
        ("charge", "subs:1"),
        ("charge", "subs:2"),
        ("refund", "subs:1"),
        ("reversal", "subs:1"),
    ]
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)


@pytest.fixture
async def naming_stack(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=(),
        extra_plugins={"outside_orders": OutsideOrders()},
    ) as running:
        yield running


async def test_a_destination_charges_reversal_is_named_from_the_charge(
    naming_stack: Stack,
) -> None:
    """``resolve_movement_meaning`` gets Stripe's charge for a charge and everything done
    to it: a destination charge made outside the engine, refunded with its transfer
    reversed and its fee refunded, has the charge, the refund, the reversal and the fee
    refund all named from the charge's metadata (the transfer Stripe made carries none)."""
    stack = naming_stack
    creator = await connected_account(stack, "creator")
    client = stack.stripe()

    def outside() -> str:
        intent = client.v1.payment_intents.create(
            params={
                "amount": 4_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                "transfer_data": {"destination": creator},
                "application_fee_amount": 400,
                "metadata": {"outside_order": "8"},
            }
        )
        client.v1.refunds.create(
            params={
                "payment_intent": intent.id,
                "amount": 1_000,
                "reverse_transfer": True,
                "refund_application_fee": True,
            }
        )
        return str(intent.latest_charge)

    await asyncio.to_thread(outside)
    await stack.settle()
    rows = await stack.services.db.pool.fetch(
        "SELECT split_part(idempotency_key, ':', 1) AS kind, plugin, reference "
        "FROM marketplace_ledger_transactions"
    )
    assert sorted((row["kind"], row["plugin"], row["reference"]) for row in rows) == [
        (kind, "outside_orders", "outside:order:8")
        for kind in ("application_fee_refund", "charge", "refund", "reversal")
    ]
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)


async def test_an_enabled_plugins_intent_its_call_never_posted_is_missing_in_the_ledger(
    naming_stack: Stack,
) -> None:
    """The case left to the plugin: an intent whose ``MEANING_METADATA`` names an enabled
    plugin (its money call made it, then its transaction rolled back after Stripe charged,
    and the request was never retried) is not posted by the engine's handlers; a
    reconciliation reports its charge ``missing_in_ledger``, and nothing else."""
    stack = naming_stack
    client = stack.stripe()

    def made_then_rolled_back() -> str:
        intent = client.v1.payment_intents.create(
            params={
                "amount": 2_500,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                "metadata": {
                    "marketplace_plugin": "outside_orders",
                    "marketplace_reference": "outside:order:9",
                },
            }
        )
        return str(intent.latest_charge)

    charge_id = await asyncio.to_thread(made_then_rolled_back)
    await stack.settle()
    assert f"charge:{charge_id}" not in await _keys(stack)
    run = await run_reconciliation(stack.services, trigger="test", full=True)
    problems = run.problem_items()
    assert [(item.status, item.txn.source if item.txn else None) for item in problems] == [
        ("missing_in_ledger", charge_id)
    ], [item.detail for item in problems]
