"""The engine's money calls (engine.payments.movements) with no business plugin at all.

A separate charge of 100.00 is authorised, 80.00 of it captured, the two
beneficiaries' shares transferred with ``source_transaction``, then refunded in
two parts, each reversing the shares by the stored split's proportional part
(``allocate()`` over what each leg still holds). Another authorisation is
released. A destination charge (a tip) is made, posted with its transfer and
application fee, and partly refunded with Stripe reversing both in proportion.
The whole stack runs (worker, webhooks): the engine's handlers post the same
refunds, reversals and fee refunds from Stripe's events without a conflict, and
per account the ledger is Stripe's balance (available + pending) to the cent.
Money moved directly with Stripe's API (charges, transfers, Billing subscriptions
and their invoices) is posted once by the engine as made outside it, unless an
enabled plugin owns it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from support.outside import (
    Orders,
    OutsideOrders,
    connected_account,
    invoice_charge,
    subscribe_outside,
    usd,
)

from engine.core.errors import InvalidAmount
from engine.core.ledger import PLATFORM, stripe_time
from engine.core.orders import Commission, Order, SplitLeg, SplitPlan
from engine.payments import movements
from engine.payments.movements import MoneyScope, PaidShare
from engine.payments.pricing import PricedOrder
from engine.reconciliation.service import run_reconciliation
from engine.testing.stack import Stack, running_stack

USD = "usd"
REFERENCE = "order:1"


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=(),
        extra_plugins={"orders": Orders()},
    ) as running:
        yield running


def priced_order(provider: str, venue: str, reference: str = REFERENCE) -> PricedOrder:
    split = SplitPlan(
        total=usd(10_000),
        legs=(
            SplitLeg("platform", usd(1_500)),
            SplitLeg("provider", usd(6_000), provider),
            SplitLeg("venue", usd(2_500), venue),
        ),
    )
    order = Order(
        plugin="orders",
        kind="order",
        amount=usd(10_000),
        reference=reference,
        beneficiaries={"provider": provider, "venue": venue},
        occurred_at=stripe_time(1_767_225_600),
    )
    commission = Commission(amount=usd(1_500), rule_id="flat", rule_version=1)
    return PricedOrder(order=order, price=usd(10_000), commission=commission, split=split)


async def test_charge_capture_transfer_refund_and_release_keep_ledger_equal_to_stripe(
    stack: Stack,
) -> None:
    provider, venue = (
        await connected_account(stack, "provider"),
        await connected_account(stack, "venue"),
    )
    priced = priced_order(provider, venue)
    pool = stack.services.db.pool

    def scope(conn: object) -> MoneyScope:
        return MoneyScope(
            stack.services.gateway,
            stack.services.ledger,
            conn,
            "orders",
            REFERENCE,  # type: ignore[arg-type]
        )

    async with pool.acquire() as conn, conn.transaction():
        authorised = await movements.charge(
            scope(conn),
            priced,
            operation=("full",),
            payment_method="pm_card_visa",
            account_id=provider,
            capture_method="manual",
            transfer_group=REFERENCE,
        )
        assert authorised.key == "order:1:charge:full"
        assert (authorised.status, authorised.is_captured) == ("requires_capture", False)
        captured = await movements.capture(
            scope(conn),
            priced,
            authorised.payment_intent_id,
            usd(8_000),
            payment_id=authorised.payment_id,
        )
        assert captured.is_captured
        assert captured.charge_id is not None
        # The authorised split's proportional part of what was captured.
        assert [leg.amount.amount for leg in captured.priced.split.legs] == [1_200, 4_800, 2_000]
        charge_id = captured.charge_id
        paid = []
        for role, account in (("provider", provider), ("venue", venue)):
            leg = captured.priced.split.leg(role).amount
            made = await movements.transfer(
                scope(conn),
                destination=account,
                amount=leg,
                source_transaction=charge_id,
                role=role,
                operation=(role,),
                transfer_group=REFERENCE,
            )
            again = await movements.transfer(
                scope(conn),
                destination=account,
                amount=leg,
                source_transaction=charge_id,
                role=role,
                operation=(role,),
                transfer_group=REFERENCE,
            )
            assert again.transfer_id == made.transfer_id  # one business operation, one transfer
            paid.append(PaidShare(role, made.transfer_id, account, leg))

    async with pool.acquire() as conn, conn.transaction():
        first = await movements.refund(
            scope(conn),
            charge_id=charge_id,
            amount=usd(2_000),
            split=captured.priced.split,
            refunded=None,
            operation=(authorised.payment_intent_id, 1),
            payment_id=authorised.payment_id,
            refunded_before=usd(0),
            paid_shares=paid,
        )
        assert [leg.amount.amount for leg in first.share.legs] == [300, 1_200, 500]
        assert [(r.role, r.amount.amount) for r in first.reversals] == [
            ("provider", 1_200),
            ("venue", 500),
        ]
        with pytest.raises(InvalidAmount):
            movements.refund_share(captured.priced.split, first.share, usd(6_001))
        rest = [
            PaidShare(share.role, share.transfer_id, share.destination, share.reversible - r.amount)
            for share, r in zip(paid, first.reversals, strict=True)
        ]
        second = await movements.refund(
            scope(conn),
            charge_id=charge_id,
            amount=usd(6_000),
            split=captured.priced.split,
            refunded=first.share,
            operation=(authorised.payment_intent_id, 2),
            payment_id=authorised.payment_id,
            refunded_before=usd(2_000),
            paid_shares=rest,
        )
        # Refunding the rest returns exactly what is left of each leg.
        assert [leg.amount.amount for leg in second.share.legs] == [900, 3_600, 1_500]
        assert [r.amount.amount for r in second.reversals] == [3_600, 1_500]

        held = await movements.charge(
            scope(conn),
            priced,
            operation=("hold",),
            payment_method="pm_card_visa",
            account_id=provider,
            capture_method="manual",
        )
        status = await movements.release(
            scope(conn), held.payment_intent_id, payment_id=held.payment_id
        )
        assert status == "canceled"

    await stack.settle()
    balances = await stack.assert_ledger_is_stripe(provider, venue, PLATFORM, currency=USD)
    assert (balances[provider], balances[venue]) == (0, 0)  # every share reversed
    await stack.assert_ledger_balanced()
    payments = await pool.fetch(
        "SELECT stripe_payment_intent_id, status, amount, fee_amount "
        "FROM marketplace_payments WHERE reference = $1 ORDER BY id",
        REFERENCE,
    )
    # Stripe's later charge.refunded events (the uncaptured rest, the released hold) are
    # the engine's handlers' to apply; what the calls recorded is the split and fee.
    assert [tuple(row)[2:] for row in payments] == [(8_000, 1_200), (10_000, 1_500)]
    assert payments[0]["status"] == "refunded"
    transfers = await pool.fetch(
        "SELECT role, amount, amount_reversed FROM marketplace_transfers ORDER BY id"
    )
    assert [tuple(row) for row in transfers] == [
        ("provider", 4_800, 4_800),
        ("venue", 2_000, 2_000),
    ]
    keys = {
        row["idempotency_key"]
        for row in await pool.fetch(
            "SELECT idempotency_key FROM marketplace_ledger_transactions WHERE reference = $1",
            REFERENCE,
        )
    }
    assert keys == {
        f"charge:{charge_id}",
        *(f"transfer:{share.transfer_id}" for share in paid),
        f"refund:{first.refund_id}",
        f"refund:{second.refund_id}",
        *(f"reversal:{r.reversal_id}" for r in (*first.reversals, *second.reversals)),
    }


async def test_a_destination_charge_made_and_refunded_keeps_ledger_equal_to_stripe(
    stack: Stack,
) -> None:
    creator = await connected_account(stack, "creator")
    pool = stack.services.db.pool
    reference = "tip:1"
    split = SplitPlan(
        total=usd(5_000), legs=(SplitLeg("platform", usd(500)), SplitLeg("creator", usd(4_500)))
    )
    tip = PricedOrder(
        order=Order(
            plugin="orders",  # enabled: the engine's handlers leave its money call's charge
            kind="tip",
            amount=usd(5_000),
            reference=reference,
            beneficiaries={"creator": creator},
            occurred_at=stripe_time(1_767_225_600),
        ),
        price=usd(5_000),
        commission=Commission(amount=usd(500), rule_id="tip", rule_version=1),
        split=split,
    )
    async with pool.acquire() as conn, conn.transaction():
        scope = MoneyScope(stack.services.gateway, stack.services.ledger, conn, "orders", reference)
        charged = await movements.charge(
            scope,
            tip,
            operation=(creator,),
            payment_method="pm_card_visa",
            account_id=creator,
            destination=creator,
        )
        assert charged.is_captured
        assert charged.charge_id is not None
        # Posted at once with its transfer and application fee; posting it again is a no-op.
        facts = await movements.post_destination_charge(scope, charged.charge_id)
        assert (facts.amount, facts.application_fee, facts.account_share) == (
            usd(5_000),
            usd(500),
            usd(4_500),
        )
        refunded, _ = await movements.refund_destination_charge(
            scope,
            charge_id=facts.charge_id,
            amount=usd(2_000),
            destination=creator,
            application_fee_id=facts.application_fee_id,
            operation=(1,),
            refunded_before=usd(0),
            fee_refunded_before=usd(0),
        )
        # Stripe reverses the transfer and refunds the fee in proportion: 2/5 of each.
        assert (refunded.transfer_reversed, refunded.fee_refunded) == (usd(2_000), usd(200))

    await stack.settle()
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    assert (await stack.ledger.balances(creator))[USD] == 4_500 - 2_000 + 200
    await stack.assert_ledger_balanced()
    count = await pool.fetchval(
        "SELECT count(*) FROM marketplace_ledger_transactions WHERE idempotency_key = $1",
        f"charge:{facts.charge_id}",
    )
    assert count == 1


async def test_a_retried_charge_is_one_intent_one_payment_one_posting(stack: Stack) -> None:
    provider, venue = (
        await connected_account(stack, "provider"),
        await connected_account(stack, "venue"),
    )
    priced = priced_order(provider, venue)
    pool = stack.services.db.pool
    charges = []
    for _ in range(2):  # the same business operation, retried (a crash, a re-run job)
        async with pool.acquire() as conn, conn.transaction():
            scope = MoneyScope(
                stack.services.gateway, stack.services.ledger, conn, "orders", REFERENCE
            )
            charges.append(
                await movements.charge(
                    scope,
                    priced,
                    operation=("full",),
                    payment_method="pm_card_visa",
                    account_id=provider,
                )
            )
    first, again = charges
    assert again.payment_intent_id == first.payment_intent_id
    assert again.payment_id == first.payment_id
    assert first.charge_id is not None
    payments = await pool.fetchval(
        "SELECT count(*) FROM marketplace_payments WHERE reference = $1", REFERENCE
    )
    postings = await pool.fetchval(
        "SELECT count(*) FROM marketplace_ledger_transactions WHERE reference = $1", REFERENCE
    )
    assert (payments, postings) == (1, 1)
    await stack.settle()
    await stack.assert_ledger_is_stripe(PLATFORM, currency=USD)


async def test_a_partial_capture_and_a_released_authorisation_are_not_refunds(
    stack: Stack,
) -> None:
    """Releasing the uncaptured rest, canceling or letting an authorisation expire moves no
    money back: the payment's refunded amount counts refunds only, a partial capture refunded
    to what was captured is ``refunded``, and an expired authorisation's payment is
    ``canceled`` (``payment_intent.canceled``), not left ``requires_capture``."""
    provider, venue = (
        await connected_account(stack, "provider"),
        await connected_account(stack, "venue"),
    )
    pool = stack.services.db.pool

    def scope(conn: object, reference: str) -> MoneyScope:
        return MoneyScope(
            stack.services.gateway,
            stack.services.ledger,
            conn,  # type: ignore[arg-type]
            "orders",
            reference,
        )

    async def authorise(conn: object, reference: str) -> movements.Charged:
        return await movements.charge(
            scope(conn, reference),
            priced_order(provider, venue, reference),
            operation=("full",),
            payment_method="pm_card_visa",
            account_id=provider,
            capture_method="manual",
        )

    async with pool.acquire() as conn, conn.transaction():
        partly = await authorise(conn, "order:partly")
        captured = await movements.capture(
            scope(conn, "order:partly"),
            priced_order(provider, venue, "order:partly"),
            partly.payment_intent_id,
            usd(6_000),
            payment_id=partly.payment_id,
        )
        released = await authorise(conn, "order:released")
        await movements.release(
            scope(conn, "order:released"),
            released.payment_intent_id,
            payment_id=released.payment_id,
        )
        await authorise(conn, "order:expiring")
    await stack.settle()
    await stack.advance(7 * 86_400 + 60)

    async def payment(reference: str) -> tuple[str, int, int]:
        row = await pool.fetchrow(
            "SELECT status, amount, amount_refunded FROM marketplace_payments WHERE reference = $1",
            reference,
        )
        assert row is not None
        return str(row["status"]), int(row["amount"]), int(row["amount_refunded"])

    assert await payment("order:partly") == ("succeeded", 6_000, 0)
    assert await payment("order:released") == ("canceled", 10_000, 0)
    assert await payment("order:expiring") == ("canceled", 10_000, 0)

    # A charge.refunded for a charge never captured (as Stripe sent for a release before
    # 2025-03-31.basil) is no refund either.
    charge = stack.stripe().v1.charges.retrieve(released.charge_id).to_dict()
    await stack.send_event(
        "charge.refunded", {**charge, "amount_refunded": 10_000, "refunded": True}
    )
    assert await payment("order:released") == ("canceled", 10_000, 0)

    assert captured.charge_id is not None
    async with pool.acquire() as conn, conn.transaction():
        refunded = await movements.refund(
            scope(conn, "order:partly"),
            charge_id=captured.charge_id,
            amount=usd(6_000),
            split=captured.priced.split,
            refunded=None,
            operation=(partly.payment_intent_id, 1),
            payment_id=partly.payment_id,
            refunded_before=usd(0),
        )
        assert refunded.amount == usd(6_000)
    await stack.settle()
    assert await payment("order:partly") == ("refunded", 6_000, 6_000)
    await stack.assert_ledger_is_stripe(PLATFORM, currency=USD)
    await stack.assert_ledger_balanced()


async def test_a_held_share_is_released_once_and_refunds_take_it_off_the_hold(
    stack: Stack,
) -> None:
    """A venue that cannot be paid yet gets its share held (nothing moves); a refund of the
    charge takes the venue's part off the hold; two releases racing make one transfer,
    with ``source_transaction``; a cancelled share is never released. The ledger is
    Stripe's balance throughout."""
    provider, venue = (
        await connected_account(stack, "provider"),
        await connected_account(stack, "venue"),
    )
    reference = "order:held"
    priced = priced_order(provider, venue, reference)
    pool = stack.services.db.pool

    def scope(conn: object) -> MoneyScope:
        return MoneyScope(
            stack.services.gateway,
            stack.services.ledger,
            conn,  # type: ignore[arg-type]
            "orders",
            reference,
        )

    async with pool.acquire() as conn, conn.transaction():
        charged = await movements.charge(
            scope(conn),
            priced,
            operation=("full",),
            payment_method="pm_card_bypassPending",
            account_id=provider,
            transfer_group=reference,
        )
        charge_id = charged.charge_id
        assert charge_id is not None
        made = await movements.transfer(
            scope(conn),
            destination=provider,
            amount=usd(6_000),
            source_transaction=charge_id,
            role="provider",
            operation=("provider",),
            transfer_group=reference,
        )
        held = await movements.hold_share(
            scope(conn),
            charge_id=charge_id,
            role="venue",
            destination=venue,
            amount=usd(2_500),
            reason="account restricted",
            transfer_group=reference,
        )
        assert held.key == f"{reference}:share:{charge_id}:venue"
        assert (held.status, held.amount, held.attempts) == ("held", usd(2_500), 0)
        again = await movements.hold_share(
            scope(conn),
            charge_id=charge_id,
            role="venue",
            destination=venue,
            amount=usd(2_500),
            reason="still restricted",
        )
        assert (again.amount, again.reason) == (usd(2_500), "still restricted")
        # Another share (a courier's) is held, then cancelled (as a lost dispute does).
        await movements.hold_share(
            scope(conn),
            charge_id=charge_id,
            role="courier",
            destination=provider,
            amount=usd(100),
            reason="test",
        )
        cancelled = await movements.cancel_share(scope(conn), charge_id=charge_id, role="courier")
        assert cancelled is not None
        assert cancelled.status == "cancelled"

        refunded = await movements.refund(
            scope(conn),
            charge_id=charge_id,
            amount=usd(2_000),
            split=priced.split,
            refunded=None,
            operation=(charged.payment_intent_id, 1),
            payment_id=charged.payment_id,
            refunded_before=usd(0),
            paid_shares=[PaidShare("provider", made.transfer_id, provider, usd(6_000))],
        )
        assert [(h.role, h.amount) for h in refunded.held_reduced] == [("venue", usd(2_000))]
        assert [(r.role, r.amount) for r in refunded.reversals] == [("provider", usd(1_200))]
    assert await movements.held_shares(pool, destination=venue) == [
        replace(held, amount=usd(2_000), reason="still restricted")
    ]
    await stack.settle()
    assert (await stack.ledger.balances(venue)).get(USD, 0) == 0  # nothing moved yet

    async def release() -> movements.Transferred | None:
        async with pool.acquire() as conn, conn.transaction():
            return await movements.release_share(scope(conn), charge_id=charge_id, role="venue")

    first, second = await asyncio.gather(release(), release())
    released = [made for made in (first, second) if made is not None]
    assert len(released) == 1
    assert released[0].amount == usd(2_000)
    assert released[0].transfer["source_transaction"] == charge_id
    async with pool.acquire() as conn, conn.transaction():
        assert await movements.release_share(scope(conn), charge_id=charge_id, role="venue") is None
        assert (
            await movements.release_share(scope(conn), charge_id=charge_id, role="courier")
        ) is None
    assert await movements.held_shares(pool, destination=venue) == []
    [done] = await movements.held_shares(pool, reference=reference, status="released")
    assert (done.role, done.transfer_id) == ("venue", released[0].transfer_id)
    transfers = stack.stripe().v1.transfers.list(params={"destination": venue}).data
    assert [t.amount for t in transfers] == [2_000]

    await stack.settle()
    await stack.assert_ledger_is_stripe(provider, venue, currency=USD)
    assert (await stack.ledger.balances(venue))[USD] == 2_000
    await stack.assert_ledger_is_stripe(PLATFORM, currency=USD)
    await stack.assert_ledger_balanced()


async def test_a_failed_refund_is_returned_to_the_balance_and_to_the_ledger(stack: Stack) -> None:
    """``pm_card_refundFail``: the refund succeeds, then fails; Stripe returns its money
    (a ``refund_failure`` balance transaction) and the engine posts it back
    (``refund_failure:<re>``), so the ledger stays Stripe's balance."""
    provider, venue = (
        await connected_account(stack, "provider"),
        await connected_account(stack, "venue"),
    )
    priced = priced_order(provider, venue)
    pool = stack.services.db.pool
    async with pool.acquire() as conn, conn.transaction():
        scope = MoneyScope(stack.services.gateway, stack.services.ledger, conn, "orders", REFERENCE)
        charged = await movements.charge(
            scope,
            priced,
            operation=("full",),
            payment_method="pm_card_refundFail",
            account_id=provider,
        )
        assert charged.charge_id is not None
        refunded = await movements.refund(
            scope,
            charge_id=charged.charge_id,
            amount=usd(3_000),
            split=charged.priced.split,
            refunded=None,
            operation=("request", "r1"),
            payment_id=charged.payment_id,
            refunded_before=usd(0),
        )
    await stack.settle()
    assert (await stack.ledger.balances(PLATFORM))[USD] == await stack.stripe_balance(None, USD)
    refunds_of = "SELECT status, amount_refunded FROM marketplace_payments WHERE id = $1"
    payment = await pool.fetchrow(refunds_of, charged.payment_id)
    assert (payment["status"], payment["amount_refunded"]) == ("partially_refunded", 3_000)
    stack.sandbox.advance(86_400)  # the card's refund fails
    await stack.settle()
    # The money is back with the seller: the payment's refunded amount and status say so.
    payment = await pool.fetchrow(refunds_of, charged.payment_id)
    assert (payment["status"], payment["amount_refunded"]) == ("succeeded", 0)
    assert (await stack.ledger.balances(PLATFORM))[USD] == await stack.stripe_balance(None, USD)
    assert await stack.stripe_balance(None, USD) == 10_000 - (10_000 * 29 // 1000 + 30)
    posted = await pool.fetchval(
        "SELECT count(*) FROM marketplace_ledger_transactions WHERE idempotency_key = $1",
        f"refund_failure:{refunded.refund_id}",
    )
    assert posted == 1
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_a_dispute_handled_before_the_charge_committed_still_names_its_business(
    stack: Stack,
) -> None:
    """A dispute's events may be handled while the transaction that made the charge is
    still open (its payment record not visible yet): the dispute is posted under the
    charge's plugin and business object all the same, read from the metadata the
    engine writes on every intent it creates."""
    provider, venue = (
        await connected_account(stack, "provider"),
        await connected_account(stack, "venue"),
    )
    reference = "order:early-dispute"
    pool = stack.services.db.pool
    async with pool.acquire() as conn, conn.transaction():
        charged = await movements.charge(
            MoneyScope(
                stack.services.gateway,
                stack.services.ledger,
                conn,  # type: ignore[arg-type]
                "orders",
                reference,
            ),
            priced_order(provider, venue, reference),
            operation=("full",),
            payment_method="pm_card_createDispute",
            account_id=provider,
            transfer_group=reference,
        )
        intent = await stack.services.gateway.call(
            "payment_intents", "retrieve", charged.payment_intent_id
        )
        assert intent["metadata"]["marketplace_plugin"] == "orders"
        assert intent["metadata"]["marketplace_reference"] == reference
        await stack.settle()  # the dispute's events, handled before this commits
        async with pool.acquire() as other:
            disputes = await other.fetch(
                "SELECT plugin, reference FROM marketplace_ledger_transactions "
                "WHERE kind = 'dispute'"
            )
    assert disputes
    assert {(row["plugin"], row["reference"]) for row in disputes} == {("orders", reference)}


async def test_movements_made_outside_the_engine_are_posted_once_and_reconcile(
    stack: Stack,
) -> None:
    """Money moved directly with Stripe's API (its dashboard, a script), not through the
    engine: a charge on the platform, a destination charge (then refunded in part, with
    its transfer reversed and fee refunded), a transfer to a connected account and a
    reversal of it, and an authorisation captured in part. The engine posts each once
    from Stripe's events, with the builders and keys of its own movements; per account
    the ledger is Stripe's balance and a full reconciliation matches every balance
    transaction."""
    creator = await connected_account(stack, "creator")
    client = stack.stripe()

    def outside() -> tuple[str, str, str, str]:
        platform = client.v1.payment_intents.create(
            params={
                "amount": 5_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
            }
        )
        destination = client.v1.payment_intents.create(
            params={
                "amount": 3_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "application_fee_amount": 300,
                "transfer_data": {"destination": creator},
            }
        )
        transfer = client.v1.transfers.create(
            params={
                "amount": 2_000,
                "currency": USD,
                "destination": creator,
                "source_transaction": str(platform.latest_charge),
            }
        )
        reversal = client.v1.transfers.reversals.create(transfer.id, params={"amount": 500})
        # Refunded in part with Stripe reversing the transfer and refunding the fee.
        client.v1.refunds.create(
            params={
                "charge": str(destination.latest_charge),
                "amount": 1_000,
                "reverse_transfer": True,
                "refund_application_fee": True,
            }
        )
        # Authorised, then captured in part.
        held = client.v1.payment_intents.create(
            params={
                "amount": 2_500,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "capture_method": "manual",
            }
        )
        client.v1.payment_intents.capture(held.id, params={"amount_to_capture": 1_500})
        return str(platform.latest_charge), str(destination.latest_charge), transfer.id, reversal.id

    platform_charge, destination_charge, transfer_id, reversal_id = await asyncio.to_thread(outside)
    await stack.settle()
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    await stack.assert_ledger_balanced()
    pool = stack.services.db.pool
    keys = [
        row["idempotency_key"]
        for row in await pool.fetch(
            "SELECT idempotency_key FROM marketplace_ledger_transactions ORDER BY id"
        )
    ]
    for key in (
        f"charge:{platform_charge}",
        f"charge:{destination_charge}",
        f"transfer:{transfer_id}",
        f"reversal:{reversal_id}",
    ):
        assert keys.count(key) == 1, key
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.problems == 0, [item.detail for item in run.problem_items()]


@pytest.fixture
async def meaning_stack(
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


async def test_a_plugin_names_the_business_of_movements_made_outside_the_engine(
    meaning_stack: Stack,
) -> None:
    """``resolve_movement_meaning``: a charge made directly on Stripe, its refund and a
    transfer are posted under the reference and plugin the plugin names; a charge it
    does not name is posted all the same, with no meaning."""
    stack = meaning_stack
    creator = await connected_account(stack, "creator")
    client = stack.stripe()

    def outside() -> tuple[str, str, str, str]:
        named = client.v1.payment_intents.create(
            params={
                "amount": 4_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "metadata": {"outside_order": "7"},
            }
        )
        unnamed = client.v1.payment_intents.create(
            params={
                "amount": 1_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
            }
        )
        refund = client.v1.refunds.create(params={"payment_intent": named.id, "amount": 1_500})
        transfer = client.v1.transfers.create(
            params={
                "amount": 1_000,
                "currency": USD,
                "destination": creator,
                "source_transaction": str(named.latest_charge),
                "metadata": {"outside_order": "7"},
            }
        )
        return str(named.latest_charge), str(unnamed.latest_charge), refund.id, transfer.id

    named, unnamed, refund_id, transfer_id = await asyncio.to_thread(outside)
    await stack.settle()
    pool = stack.services.db.pool
    rows = await pool.fetch(
        "SELECT idempotency_key, plugin, reference FROM marketplace_ledger_transactions"
    )
    meanings = {row["idempotency_key"]: (row["plugin"], row["reference"]) for row in rows}
    order = ("outside_orders", "outside:order:7")
    assert meanings[f"charge:{named}"] == order
    assert meanings[f"refund:{refund_id}"] == order
    assert meanings[f"transfer:{transfer_id}"] == order
    assert meanings[f"charge:{unnamed}"] == ("", "")
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_a_direct_charge_on_a_connected_account_is_posted_once_and_reconciles(
    stack: Stack,
) -> None:
    """A direct charge made with Stripe's API on a connected account's own balance (the
    ``Stripe-Account`` header), with an application fee, then refunded in part with the
    fee refunded, and another authorised and captured in part: the engine posts each
    charge (``charge:<ch>``: the amount and Stripe's fee on the account, the application
    fee to the platform), the refund and the fee refund once each; per account the
    ledger is Stripe's balance and a full reconciliation matches every balance
    transaction, the platform's ``application_fee`` and ``application_fee_refund``
    included."""
    creator = await connected_account(stack, "creator")
    as_creator = stack.stripe(creator)

    def direct() -> tuple[str, str]:
        intent = as_creator.v1.payment_intents.create(
            params={
                "amount": 4_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "application_fee_amount": 400,
            }
        )
        refund = as_creator.v1.refunds.create(
            params={
                "charge": str(intent.latest_charge),
                "amount": 1_000,
                "refund_application_fee": True,
            }
        )
        # Authorised on the account, then captured in part.
        held = as_creator.v1.payment_intents.create(
            params={
                "amount": 3_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "capture_method": "manual",
                "application_fee_amount": 300,
            }
        )
        as_creator.v1.payment_intents.capture(
            held.id, params={"amount_to_capture": 2_000, "application_fee_amount": 200}
        )
        return str(intent.latest_charge), refund.id

    charge_id, refund_id = await asyncio.to_thread(direct)
    await stack.settle()
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    await stack.assert_ledger_balanced()
    pool = stack.services.db.pool
    keys = [
        row["idempotency_key"]
        for row in await pool.fetch("SELECT idempotency_key FROM marketplace_ledger_transactions")
    ]
    assert keys.count(f"charge:{charge_id}") == 1
    assert keys.count(f"refund:{refund_id}") == 1
    assert len([key for key in keys if key.startswith("application_fee_refund:")]) == 1
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_a_plugin_names_a_direct_charge_its_refund_and_its_fee_refund(
    meaning_stack: Stack,
) -> None:
    """``resolve_movement_meaning`` names a direct charge made on a connected account,
    and its refund and application fee refund are posted under the same meaning."""
    stack = meaning_stack
    creator = await connected_account(stack, "creator")
    as_creator = stack.stripe(creator)

    def direct() -> tuple[str, str]:
        intent = as_creator.v1.payment_intents.create(
            params={
                "amount": 2_000,
                "currency": USD,
                "payment_method": "pm_card_visa",
                "confirm": True,
                "application_fee_amount": 200,
                "metadata": {"outside_order": "9"},
            }
        )
        refund = as_creator.v1.refunds.create(
            params={"payment_intent": intent.id, "refund_application_fee": True}
        )
        return str(intent.latest_charge), refund.id

    charge_id, refund_id = await asyncio.to_thread(direct)
    await stack.settle()
    rows = await stack.services.db.pool.fetch(
        "SELECT idempotency_key, plugin, reference FROM marketplace_ledger_transactions"
    )
    meanings = {row["idempotency_key"]: (row["plugin"], row["reference"]) for row in rows}
    order = ("outside_orders", "outside:order:9")
    assert meanings[f"charge:{charge_id}"] == order
    assert meanings[f"refund:{refund_id}"] == order
    fee_refunds = [key for key in meanings if key.startswith("application_fee_refund:")]
    assert len(fee_refunds) == 1
    assert meanings[fee_refunds[0]] == order
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_stripes_own_adjustments_are_posted_once_and_reconcile(stack: Stack) -> None:
    """Stripe corrects a balance on its own (an ``adjustment`` that is no dispute's; no
    event announces it): reconciliation finds it in the listing, posts it once
    (``adjustment:<txn>``), matches it, and the ledger is Stripe's balance again."""
    creator = await connected_account(stack, "creator")
    made = [
        stack.sandbox.control("POST", f"/_sandbox/accounts/{account}/adjustments", amount=amount)
        for account, amount in ((creator, 250), (creator, -100), ("platform", -75))
    ]
    assert {txn["type"] for txn in made} == {"adjustment"}
    assert {txn["source"] for txn in made} == {None}

    first = await run_reconciliation(stack.services, trigger="test")
    assert first.problems == 0, [item.detail for item in first.problem_items()]
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    assert (await stack.ledger.balances(creator)).get(USD, 0) == 150
    await stack.assert_ledger_balanced()
    pool = stack.services.db.pool
    keys = [
        row["idempotency_key"]
        for row in await pool.fetch(
            "SELECT idempotency_key FROM marketplace_ledger_transactions WHERE kind = 'adjustment'"
        )
    ]
    assert sorted(keys) == sorted(f"adjustment:{txn['id']}" for txn in made)

    again = await run_reconciliation(stack.services, trigger="test", full=True)
    assert again.problems == 0, [item.detail for item in again.problem_items()]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM marketplace_ledger_transactions WHERE kind = 'adjustment'"
        )
        == 3
    )


async def test_invoices_made_outside_every_plugin_are_posted_once_and_reconcile(
    stack: Stack,
) -> None:
    """Stripe Billing used directly, outside every plugin: a subscription on the
    platform (renewed a month later), one paid to a connected account
    (``transfer_data``, ``application_fee_percent``; its first invoice refunded in part
    with the transfer reversed and the fee refunded), one made on the connected account
    itself (a direct charge), and one whose charge is disputed. No plugin posts these
    invoices' charges: the engine posts each once (``charge:<ch>``) as a movement made
    outside it; per account the ledger is Stripe's balance and a full reconciliation
    matches every balance transaction."""
    creator = await connected_account(stack, "creator")
    client = stack.stripe()
    as_creator = stack.stripe(creator)

    def outside() -> tuple[str, list[str]]:
        now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
        clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": now})
        _, platform = subscribe_outside(client, amount=2_000, clock=clock.id)
        _, paid_out = subscribe_outside(
            client,
            amount=3_000,
            clock=clock.id,
            transfer_data={"destination": creator},
            application_fee_percent="10",
        )
        client.v1.refunds.create(
            params={
                "charge": paid_out,
                "amount": 1_000,
                "reverse_transfer": True,
                "refund_application_fee": True,
            }
        )
        _, direct = subscribe_outside(as_creator, amount=4_000, application_fee_percent="5")
        _, disputed = subscribe_outside(client, amount=1_500, card="pm_card_createDispute")
        return clock.id, [platform, paid_out, direct, disputed]

    clock, charges = await asyncio.to_thread(outside)
    await stack.settle()
    await stack.advance_test_clock(clock, 32 * 86_400)
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    await stack.assert_ledger_balanced()
    pool = stack.services.db.pool
    keys = [
        row["idempotency_key"]
        for row in await pool.fetch("SELECT idempotency_key FROM marketplace_ledger_transactions")
    ]
    for charge_id in charges:
        assert keys.count(f"charge:{charge_id}") == 1, charge_id
    # The two subscriptions on the test clock renewed: their charges are posted too.
    assert len([key for key in keys if key.startswith("charge:")]) == len(charges) + 2
    assert len([key for key in keys if key.startswith("dispute")]) >= 1
    run = await run_reconciliation(stack.services, trigger="test", full=True)
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_an_invoice_an_enabled_plugin_owns_but_does_not_settle_is_posted_once(
    meaning_stack: Stack,
) -> None:
    """Whose invoice it is comes from Stripe's data: a subscription whose metadata names
    an enabled plugin (``marketplace_plugin``) has its invoices' charges left to that
    plugin by the charge's events; this one settles no invoices, so the engine's
    ``invoice.paid`` fallback, after the plugins' handlers, posts the charge once as a
    movement made outside the engine. One naming a plugin that is not enabled is
    posted by the engine too, once."""
    stack = meaning_stack
    client = stack.stripe()

    def outside() -> tuple[str, str]:
        _, owned = subscribe_outside(
            client,
            amount=2_000,
            metadata={
                "marketplace_plugin": "outside_orders",
                "marketplace_reference": "outside:order:3",
            },
        )
        _, orphan = subscribe_outside(
            client,
            amount=1_000,
            metadata={"marketplace_plugin": "gone", "marketplace_reference": "gone:1"},
        )
        return owned, orphan

    await _posted_once_as_outside(stack, *await asyncio.to_thread(outside))


async def test_an_invoice_charge_posted_as_outside_is_named_when_a_plugin_records_it(
    stack: Stack,
) -> None:
    """A subscription whose metadata names no owner (one a plugin made before it wrote
    ``meaning_metadata``) has its invoice's charge posted by the engine as a movement
    made outside it. When the plugin then records the charge as its own
    (``post_destination_charge`` with ``priced``, as at ``invoice.paid``), the one
    posting takes the plugin's kind and meaning: no conflict, no second posting, the
    entries unchanged, so whichever comes first the ledger ends the same."""
    creator = await connected_account(stack, "creator")
    client = stack.stripe()

    def outside() -> str:
        _, charge_id = subscribe_outside(
            client,
            amount=3_000,
            transfer_data={"destination": creator},
            application_fee_percent="10",
        )
        return charge_id

    charge_id = await asyncio.to_thread(outside)
    await stack.settle()
    pool = stack.services.db.pool
    query = (
        "SELECT kind, plugin, reference FROM marketplace_ledger_transactions "
        "WHERE idempotency_key = $1"
    )
    assert [tuple(row) for row in await pool.fetch(query, f"charge:{charge_id}")] == [
        ("charge", "", "")
    ]
    split = SplitPlan(
        total=usd(3_000),
        legs=(SplitLeg("platform", usd(300)), SplitLeg("creator", usd(2_700), creator)),
    )
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
        split=split,
    )
    async with pool.acquire() as conn, conn.transaction():
        scope = MoneyScope(stack.services.gateway, stack.ledger, conn, "subs", "subs:1")
        await movements.post_destination_charge(
            scope, charge_id, kind="subscription_invoice", priced=priced
        )
    assert [tuple(row) for row in await pool.fetch(query, f"charge:{charge_id}")] == [
        ("subscription_invoice", "subs", "subs:1")
    ]
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.problems == 0, [item.detail for item in run.problem_items()]


def _one_off_invoice(client: Any, *, amount: int, **params: Any) -> tuple[str, str]:
    """A customer with a card and a one-off invoice of ``amount`` (one invoice item),
    made with Stripe's API directly: drafted, finalised, paid. The invoice and the
    charge that paid it."""
    customer = client.v1.customers.create(params={"email": "one-off@example.com"})
    card = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id}).id
    invoice = client.v1.invoices.create(
        params={"customer": customer.id, "default_payment_method": card, **params}
    )
    client.v1.invoice_items.create(
        params={"customer": customer.id, "invoice": invoice.id, "amount": amount, "currency": USD}
    )
    client.v1.invoices.finalize_invoice(invoice.id)
    client.v1.invoices.pay(invoice.id)
    return str(invoice.id), invoice_charge(client, str(invoice.id))


async def test_one_off_invoices_made_outside_every_plugin_are_posted_once_and_reconcile(
    stack: Stack,
) -> None:
    """One-off invoices (not from a subscription) made with Stripe's API directly: one on
    the platform, one paid to a connected account (``transfer_data``,
    ``application_fee_amount``; refunded in part with the transfer reversed and the fee
    refunded) and one made on the connected account itself. No plugin owns them: the
    engine posts each charge once as a movement made outside it; per account the ledger
    is Stripe's balance and a full reconciliation matches every balance transaction."""
    creator = await connected_account(stack, "creator")
    client = stack.stripe()

    def outside() -> list[str]:
        _, platform = _one_off_invoice(client, amount=2_500)
        _, paid_out = _one_off_invoice(
            client,
            amount=4_000,
            transfer_data={"destination": creator},
            application_fee_amount=400,
        )
        client.v1.refunds.create(
            params={
                "charge": paid_out,
                "amount": 1_000,
                "reverse_transfer": True,
                "refund_application_fee": True,
            }
        )
        _, direct = _one_off_invoice(
            stack.stripe(creator), amount=3_000, application_fee_amount=150
        )
        return [platform, paid_out, direct]

    charges = await asyncio.to_thread(outside)
    await stack.settle()
    await stack.assert_ledger_is_stripe(creator, PLATFORM, currency=USD)
    await stack.assert_ledger_balanced()
    keys = [
        row["idempotency_key"]
        for row in await stack.services.db.pool.fetch(
            "SELECT idempotency_key FROM marketplace_ledger_transactions"
        )
    ]
    for charge_id in charges:
        assert keys.count(f"charge:{charge_id}") == 1, charge_id
    run = await run_reconciliation(stack.services, trigger="test", full=True)
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_a_one_off_invoice_naming_an_enabled_plugin_that_does_not_settle_it_is_posted(
    meaning_stack: Stack,
) -> None:
    """A one-off invoice whose own metadata names an enabled plugin
    (``marketplace_plugin``) is left to that plugin by its charge's events; the plugin
    settles no invoices, so the engine's ``invoice.paid`` fallback posts the charge
    once, as made outside the engine; one naming a plugin that is not enabled is
    posted by the engine too, once."""
    stack = meaning_stack
    client = stack.stripe()

    def outside() -> tuple[str, str]:
        _, owned = _one_off_invoice(
            client,
            amount=2_000,
            metadata={
                "marketplace_plugin": "outside_orders",
                "marketplace_reference": "outside:order:11",
            },
        )
        _, orphan = _one_off_invoice(
            client,
            amount=1_200,
            metadata={"marketplace_plugin": "gone", "marketplace_reference": "gone:2"},
        )
        return owned, orphan

    await _posted_once_as_outside(stack, *await asyncio.to_thread(outside))


async def _posted_once_as_outside(stack: Stack, *charges: str) -> None:
    """Once settled, each of ``charges`` is posted once, every charge naming no plugin,
    and the platform's ledger is Stripe's."""
    await stack.settle()
    rows = await stack.services.db.pool.fetch(
        "SELECT idempotency_key, plugin FROM marketplace_ledger_transactions"
    )
    keys = [row["idempotency_key"] for row in rows]
    assert [keys.count(f"charge:{charge}") for charge in charges] == [1] * len(charges)
    assert {row["plugin"] for row in rows if row["idempotency_key"].startswith("charge:")} == {""}
    await stack.assert_ledger_is_stripe(PLATFORM, currency=USD)
