"""A booking's money decisions: what to charge, capture, refund, transfer and reverse, when.

Separate charges and transfers: every PaymentIntent is a platform charge with
``transfer_group = booking:<id>``; settlement makes one transfer per
beneficiary and charge with ``source_transaction`` = that charge; refunds do
not touch transfers for this charge type, so the platform reverses each
beneficiary's proportional share itself.

The money moves through the engine (``engine.payments.movements`` on
``ctx.money``, the booking's ``MoneyScope``): each call derives its idempotency
key from the business operation (``booking:<id>:charge:<kind>:<card>`` ...),
calls Stripe through the gateway, records the payment or transfer and posts the
movement keyed by the Stripe object, all inside the transition's transaction.
This module decides the business (each charge's split, which shares to take
back, held shares, 3D Secure waits) and keeps the booking's own rows (unique on
the key and on Stripe's id) from what the calls return. A retried or re-run
operation therefore finds its row, or gets Stripe's stored answer for the same
key, and never moves money twice. Transfers additionally carry their first
key in ``metadata`` so a re-run after Stripe forgot the key (24 h) adopts the
transfer it already made (``movements.record_transfer_made``).

Transfer keys: ``booking:<id>:transfer:<role>`` (``:deposit`` / ``:balance``
appended for the two charges of the deposit model).

A beneficiary that cannot be paid yet gets its share held by the engine
(``movements.hold_share``, key ``booking:<id>:share:<charge>:<role>``): a refund
of the charge takes the share's part off the hold (``movements.refund``), a lost
dispute cancels it (``movements.cancel_share``), and ``release_held_transfers``
releases it once the account can receive (``movements.release_share``: once,
with ``source_transaction``, else from the platform's balance when the charge
can no longer cover it). The booking's transfer row shows the share ``held``.

Authentication (3D Secure): an on-session charge (or a card's set-up) the card
wants authenticated raises ``PaymentActionRequired`` with the customer's action,
so the transition waits (the booking stays where it was); the transition is taken
again with the authenticated intent (``ActionParams.intent``) when it succeeds. An
off-session charge that needs authentication is confirmed again on-session and
recorded as ``requires_action``, the booking showing the ``customer_action``;
``intent_authenticated`` records the charge (and settles it) when the customer has.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from engine.accounts.queries import account_by_id
from engine.core.authentication import CustomerAction, customer_action
from engine.core.errors import (
    AccountRestricted,
    CardDeclined,
    Conflict,
    InsufficientBalance,
    InvalidAmount,
    InvalidInput,
    MarketplaceError,
    PaymentActionRequired,
)
from engine.core.money import Money
from engine.core.orders import Commission, Order, PayoutFailure, SplitPlan
from engine.gateway import idempotency_key
from engine.payments import movements
from engine.payments.movements import split_minus, split_plus
from engine.payments.pricing import PricedOrder
from engine.payments.records import advance_status_sql
from plugins.three_sided_bookings.config import PLUGIN
from plugins.three_sided_bookings.context import BookingContext, Notices
from plugins.three_sided_bookings.policy import ChargeState, plan_collection
from plugins.three_sided_bookings.split import (
    BENEFICIARIES,
    plan_from_json,
    plan_to_json,
)
from plugins.three_sided_bookings.store import (
    BookingRecord,
    ChargeRecord,
    Connection,
    TransferRecord,
    captured_charges,
    jsonb,
    load_booking,
    load_charges,
    load_transfers,
)

__all__ = [
    "account_can_receive",
    "action_json",
    "booking_of_new_stripe_refund",
    "charge",
    "collect_to",
    "due",
    "ensure_customer",
    "intent_authenticated",
    "refund_failed_in_stripe",
    "refund_made_in_stripe",
    "release_held_transfers",
    "reversals_made_in_stripe",
    "reverse_all_shares",
    "save_card",
    "settle",
    "transfer_key",
]

CANNOT_RECEIVE_CODES: Final = frozenset(
    {
        "account_invalid",
        "account_restricted",
        "insufficient_capabilities_for_transfer",
        "transfers_not_allowed",
        "payouts_not_allowed",
    }
)
"""Stripe error codes meaning "this account cannot take a transfer now": hold, don't fail."""

_SPLIT_KINDS: Final = frozenset({"deposit", "balance"})


def _booking_key(booking: BookingRecord, *parts: object) -> str:
    return idempotency_key("booking", booking.id, *parts)


def _transfer_operation(charge: ChargeRecord, role: str) -> tuple[str, ...]:
    """What makes a beneficiary's transfer of one charge's share one operation."""
    return (role, charge.kind) if charge.kind in _SPLIT_KINDS else (role,)


def transfer_key(booking: BookingRecord, charge: ChargeRecord, role: str) -> str:
    """The idempotency key of a beneficiary's transfer of one charge's share."""
    return _booking_key(booking, "transfer", *_transfer_operation(charge, role))


def _captured(charge: ChargeRecord) -> tuple[SplitPlan, str]:
    """The split and Stripe charge id of a captured charge (both recorded at capture)."""
    if charge.plan is None or charge.charge_id is None:
        raise Conflict(f"charge {charge.payment_intent_id} is not captured")
    return charge.plan, charge.charge_id


def _money(booking: BookingRecord, amount: int) -> Money:
    return Money(amount, booking.currency)


# ---------------------------------------------------------------- customer and card


async def ensure_customer(ctx: BookingContext) -> str:
    """The booking's Stripe customer (created once, for saved cards and dispute evidence)."""
    booking = ctx.booking
    if booking.stripe_customer_id:
        return booking.stripe_customer_id
    customer = await ctx.gateway.call(
        "customers",
        "create",
        params={
            "email": booking.customer_email or None,
            "name": booking.customer_name or None,
            "metadata": {"booking_id": str(booking.id), "reference": booking.customer_reference},
            # The customer's payments then happen on the booking's test clock.
            **({"test_clock": booking.test_clock} if booking.test_clock else {}),
        },
        idempotency_key=_booking_key(booking, "customer"),
    )
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_bookings SET stripe_customer_id = $2, updated_at = now() "
        "WHERE id = $1",
        booking.id,
        customer["id"],
    )
    await ctx.reload()
    return str(customer["id"])


def action_json(action: CustomerAction | None) -> str | None:
    """A ``CustomerAction`` for the booking's ``customer_action`` column."""
    return None if action is None else msgspec.json.encode(action).decode()


async def save_card(ctx: BookingContext, payment_method: str, *, setup: bool = False) -> str:
    """Keep the card on the booking's customer for off-session charges; return its id.

    Stripe's test values (``pm_card_visa``) become a real ``pm_...`` here,
    which every later charge of the booking reuses. With ``setup`` (no payment
    now) the card is saved with a SetupIntent for off-session use, which may wait
    for the customer (``PaymentActionRequired``); otherwise it is attached and the
    payment that follows saves it (``setup_future_usage``).
    """
    customer = await ensure_customer(ctx)
    if setup:
        attached = await _set_up_card(ctx, customer, payment_method)
    else:
        attached = await ctx.gateway.call(
            "payment_methods",
            "attach",
            payment_method,
            params={"customer": customer},
            idempotency_key=_booking_key(ctx.booking, "save_card", payment_method),
        )
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_bookings SET saved_payment_method = $2, updated_at = now() "
        "WHERE id = $1",
        ctx.booking.id,
        attached["id"],
    )
    await ctx.reload()
    ctx.record("saved_card", attached["id"])
    return str(attached["id"])


async def _set_up_card(ctx: BookingContext, customer: str, payment_method: str) -> dict[str, Any]:
    """A SetupIntent saving the card for off-session use; its payment method once it succeeded."""
    intent_id = ctx.params.intent
    if intent_id and intent_id.startswith("seti_"):
        setup = await ctx.gateway.call("setup_intents", "retrieve", intent_id)
        if (setup.get("metadata") or {}).get("booking_id") != str(ctx.booking.id):
            raise Conflict(f"{intent_id} is not booking {ctx.booking.id}'s")
    else:
        setup = await ctx.gateway.call(
            "setup_intents",
            "create",
            params={
                "customer": customer,
                "payment_method": payment_method,
                "usage": "off_session",
                "confirm": True,
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                "metadata": {"booking_id": str(ctx.booking.id)},
            },
            idempotency_key=_booking_key(ctx.booking, "setup_card", payment_method),
        )
    if setup.get("status") != "succeeded":
        action = customer_action(setup)
        if action is None:
            raise Conflict(f"setting up the card is {setup.get('status')}")
        raise PaymentActionRequired("saving the card needs the customer", action=action)
    return {"id": setup["payment_method"]}


# ---------------------------------------------------------------- charges


def _next_plan(booking: BookingRecord, charges: list[ChargeRecord], amount: int) -> SplitPlan:
    """The split of a new charge: a proportional part of what earlier charges left over."""
    remaining = booking.plan
    for existing in charges:
        plan = existing.plan
        if plan is not None and existing.status != "canceled":
            remaining = split_minus(remaining, plan)
    if amount > remaining.total.amount:
        raise InvalidAmount(
            f"a charge of {amount} exceeds what is left of booking {booking.id}'s value"
        )
    return remaining.proportional(_money(booking, amount))


def _priced(booking: BookingRecord, plan: SplitPlan, kind: str) -> PricedOrder:
    """The payment record's priced order: the stored split, never recomputed."""
    order = Order(
        plugin=PLUGIN,
        kind=f"booking_{kind}",
        amount=plan.total,
        reference=booking.reference,
        beneficiaries={"provider": booking.provider_account, "venue": booking.venue_account},
        attributes={"service_type": booking.service_type, "charge": kind},
        occurred_at=booking.created_at,
    )
    commission = Commission(
        amount=plan.platform_amount,
        rule_id=str(booking.split.get("rule_id", "")),
        rule_version=int(booking.split.get("rule_version", 1)),
    )
    return PricedOrder(order=order, price=plan.total, commission=commission, split=plan)


async def charge(
    ctx: BookingContext,
    *,
    kind: str,
    amount: int,
    payment_method: str,
    capture_method: str = "automatic",
    off_session: bool = False,
    save_for_later: bool = False,
) -> ChargeRecord:
    """Charge (or authorise) one part of the booking through the engine; record the charge.

    The plugin decides the business: the split of this charge (``_next_plan``,
    what earlier charges left), when, and with which card. The engine's
    ``movements.charge`` creates and confirms the PaymentIntent on the platform
    (key ``booking:<id>:charge:<kind>:<card>``), records the payment with its
    split and posts the capture (``charge:<ch>``, with Stripe's fee); this
    function then keeps the booking's own charge row.

    Args:
        kind: ``full``, ``deposit``, ``balance``, ``authorization``, ``arrival`` or ``fee``.
        amount: what to charge (or authorise, with ``capture_method="manual"``).
        payment_method: the card (a saved ``pm_`` for off-session charges).
        off_session: the customer is not present (a saved card at completion).
        save_for_later: ``setup_future_usage=off_session`` (the balance comes later).

    Raises:
        CardDeclined: the card was declined (nothing is recorded; the caller's
            transaction rolls back and the customer may try another card).
    """
    booking = ctx.booking
    priced = _priced(
        booking, _next_plan(booking, await load_charges(ctx.conn, booking.id), amount), kind
    )
    operation = (kind, payment_method)
    authenticated = ctx.params.intent
    if authenticated and authenticated.startswith("pi_") and not off_session:
        intent = await _authenticated_intent(ctx, authenticated)
        charged = await movements.record_charge(
            ctx.money,
            priced,
            intent,
            operation=operation,
            account_id=booking.provider_account,
            customer=booking.stripe_customer_id,
        )
        return await _record_charge(ctx, charged, kind, capture_method, amount)
    try:
        charged = await movements.charge(
            ctx.money,
            priced,
            operation=operation,
            payment_method=payment_method,
            capture_method=capture_method,
            off_session=off_session,
            save_for_later=save_for_later,
            transfer_group=booking.transfer_group,
            description=f"{booking.service_name} ({kind}), booking {booking.id}",
            metadata={"booking_id": str(booking.id), "charge": kind},
            account_id=booking.provider_account,
            customer=booking.stripe_customer_id,
        )
    except PaymentActionRequired as waiting:
        raise PaymentActionRequired(
            f"the {kind} payment needs the customer", action=waiting.action
        ) from None
    except CardDeclined as declined:
        pending = declined.extra.get("payment_intent")
        if not (off_session and declined.extra.get("decline_code") == "authentication_required"):
            raise
        if not pending:
            raise
        charged = await _ask_customer(ctx, priced, str(pending), payment_method, operation)
    return await _record_charge(ctx, charged, kind, capture_method, amount)


async def _authenticated_intent(ctx: BookingContext, intent_id: str) -> dict[str, Any]:
    """The intent the customer authenticated for this booking (checked, with its charge)."""
    intent = await ctx.gateway.call(
        "payment_intents",
        "retrieve",
        intent_id,
        params={"expand": ["latest_charge.balance_transaction"]},
    )
    if (intent.get("metadata") or {}).get("booking_id") != str(ctx.booking.id):
        raise Conflict(f"{intent_id} is not booking {ctx.booking.id}'s")
    if intent["status"] not in {"succeeded", "requires_capture"}:
        raise Conflict(f"{intent_id} is {intent['status']}, not paid")
    return intent


async def _ask_customer(
    ctx: BookingContext,
    priced: PricedOrder,
    intent_id: str,
    payment_method: str,
    operation: tuple[str, ...],
) -> movements.Charged:
    """An off-session payment needs authentication: confirm it again for the customer.

    Confirmed by the engine without ``off_session`` (``movements.confirm``: Stripe's
    way to bring the customer back), the intent waits in ``requires_action`` with a
    ``next_action`` the customer completes later; the booking shows it as its
    ``customer_action``.
    """
    booking = ctx.booking
    charged = await movements.confirm(
        ctx.money,
        priced,
        intent_id,
        payment_method=payment_method,
        operation=operation,
        account_id=booking.provider_account,
        customer=booking.stripe_customer_id,
    )
    action = customer_action(charged.intent)
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_bookings SET customer_action = $2::jsonb, "
        "action_transition = '', updated_at = now() WHERE id = $1",
        ctx.booking.id,
        action_json(action),
    )
    ctx.record("action_required", {"payment_intent": intent_id})
    ctx.notify.lifecycle(
        "booking.action_required",
        ctx.booking.reference,
        payment_intent=intent_id,
        reason="authentication_required",
    )
    return charged


async def _record_charge(
    ctx: BookingContext, charged: movements.Charged, kind: str, capture_method: str, amount: int
) -> ChargeRecord:
    """Keep the booking's row of a charge the engine made, recorded and posted."""
    booking = ctx.booking
    row = await ctx.conn.fetchrow(
        """
        INSERT INTO three_sided_bookings_charges
            (booking, kind, idempotency_key, stripe_payment_intent_id, stripe_charge_id,
             balance_transaction, capture_method, status, amount, captured, refunded,
             currency, stripe_fee, split, refunded_split, payment_id, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, $13::jsonb, NULL, $14,
                now(), now())
        ON CONFLICT (idempotency_key) DO UPDATE SET updated_at = now()
        RETURNING *
        """,
        booking.id,
        kind,
        charged.key,
        charged.payment_intent_id,
        charged.charge_id,
        charged.balance_transaction,
        capture_method,
        charged.status,
        amount,
        charged.captured.amount,
        booking.currency,
        charged.stripe_fee.amount,
        json.dumps(plan_to_json(charged.priced.split)),
        charged.payment_id,
    )
    ctx.add(
        "charges", {"kind": kind, "payment_intent": charged.payment_intent_id, "amount": amount}
    )
    return ChargeRecord.from_row(row)


async def capture(ctx: BookingContext, charge: ChargeRecord, amount: int) -> ChargeRecord | None:
    """Capture ``amount`` of an open authorisation; ``None`` if it had lapsed meanwhile.

    The engine's ``movements.capture`` captures, records the payment with the
    authorised split's proportional part and posts the capture.
    """
    authorised = charge.plan
    if authorised is None:
        raise Conflict(f"authorisation {charge.payment_intent_id} has no recorded split")
    captured = await movements.capture(
        ctx.money,
        _priced(ctx.booking, authorised, charge.kind),
        charge.payment_intent_id,
        _money(ctx.booking, amount),
        payment_id=charge.payment_id,
    )
    if not captured.is_captured:
        await _set_charge_status(ctx, charge, captured.status)
        ctx.add("authorisation_lapsed", charge.payment_intent_id)
        return None
    row = await ctx.conn.fetchrow(
        """
        UPDATE three_sided_bookings_charges
        SET status = 'succeeded', stripe_charge_id = $2, captured = $3, stripe_fee = $4,
            balance_transaction = $5, split = $6::jsonb, updated_at = now()
        WHERE id = $1 RETURNING *
        """,
        charge.id,
        captured.charge_id,
        captured.captured.amount,
        captured.stripe_fee.amount,
        captured.balance_transaction,
        json.dumps(plan_to_json(captured.priced.split)),
    )
    ctx.add(
        "captured", {"payment_intent": charge.payment_intent_id, "amount": captured.captured.amount}
    )
    return ChargeRecord.from_row(row)


async def release(ctx: BookingContext, charge: ChargeRecord) -> None:
    """Cancel an open authorisation (nothing was captured; the hold on the card ends)."""
    status = await movements.release(
        ctx.money, charge.payment_intent_id, payment_id=charge.payment_id
    )
    await _set_charge_status(ctx, charge, status)
    ctx.add("released", charge.payment_intent_id)


_ADVANCE_CHARGE_STATUS: Final = (
    "UPDATE three_sided_bookings_charges "  # noqa: S608 - the engine's constant status order
    f"SET status = {advance_status_sql('status', '$2::text')}, updated_at = now() "
    "WHERE id = $1"
)


async def _set_charge_status(ctx: BookingContext, charge: ChargeRecord, status: str) -> None:
    """The booking's row follows Stripe's status, forward only (``PAYMENT_STATUS_ORDER``,
    as the engine's payment record): a status read before a release or capture
    committed never takes it back."""
    await ctx.conn.execute(_ADVANCE_CHARGE_STATUS, charge.id, status)


# ---------------------------------------------------------------- collecting to a target


def collected(charges: list[ChargeRecord]) -> int:
    """Money the booking holds: captured and not refunded."""
    return sum(charge.captured - charge.refunded for charge in captured_charges(charges))


async def due(ctx: BookingContext, amount: int) -> int:
    """What of ``amount`` the booking still has to hold: less what was refunded in Stripe.

    A refund made in Stripe's dashboard before settlement (recorded by
    ``refund_made_in_stripe``, ``reason = 'stripe'``, not failed) is money the business
    gave back: completion, a no-show or a cancellation fee never collects it again.
    """
    given_back = await ctx.conn.fetchval(
        "SELECT COALESCE(sum(amount), 0) FROM three_sided_bookings_refunds "
        "WHERE booking = $1 AND reason = 'stripe' AND status <> 'failed'",
        ctx.booking.id,
    )
    return max(amount - int(given_back), 0)


async def collect_to(
    ctx: BookingContext, target: int, *, kind: str, best_effort: bool = False
) -> None:
    """Make the booking hold exactly ``target``: capture, release, charge or refund.

    ``kind`` names a new off-session charge when one is needed (``balance``,
    ``arrival``, ``fee``). Refunds reverse the beneficiaries' shares of
    settled charges proportionally. With ``best_effort`` (a fee), money that
    would need a card the booking does not have is recorded as not collected
    instead of refusing the transition (an unpaid booking cancelled late).
    """
    charges = await load_charges(ctx.conn, ctx.booking.id)
    open_auth = next((c for c in charges if c.is_open_authorisation), None)
    plan = plan_collection(
        target,
        [ChargeState(str(c.id), c.captured, c.refunded) for c in captured_charges(charges)],
        authorized=open_auth.amount if open_auth else 0,
    )
    ctx.record("collection", {"target": target, "before": collected(charges)})
    missing = plan.charge
    lapsed = (
        open_auth is not None and plan.capture and not await capture(ctx, open_auth, plan.capture)
    )
    if lapsed:
        missing += plan.capture  # the authorisation lapsed: charge the saved card instead
    if open_auth is not None and plan.release:
        await release(ctx, open_auth)
    card = ctx.booking.saved_payment_method
    if missing and card is None and best_effort:
        ctx.record("not_collected", {"amount": missing, "reason": "no saved card"})
    elif missing:
        if card is None:
            raise InvalidAmount(
                f"booking {ctx.booking.id} needs {missing} more but has no saved card"
            )
        await charge(ctx, kind=kind, amount=missing, payment_method=card, off_session=True)
    by_id = {str(c.id): c for c in charges}
    for charge_id, amount in plan.refunds:
        await refund(ctx, by_id[charge_id], amount)


# ---------------------------------------------------------------- refunds and reversals


async def refund(ctx: BookingContext, charge: ChargeRecord, amount: int) -> None:
    """Refund ``amount`` of a charge; take each beneficiary's proportional share back.

    The engine's ``movements.refund`` refunds, splits the refund by the charge's
    stored split (``refund_share``: ``allocate()`` over what each leg still
    holds), reverses each paid share's part and posts it all. A share still held
    (not transferred) loses its part of the engine's hold instead (``held_reduced``;
    the booking's row follows); one not settled yet is left to settlement, which
    transfers what is left of its leg.
    """
    booking = ctx.booking
    plan, charge_id = _captured(charge)
    transfers = {transfer.role: transfer for transfer in await _charge_transfers(ctx, charge)}
    refunded = await movements.refund(
        ctx.money,
        charge_id=charge_id,
        amount=_money(booking, amount),
        split=plan,
        refunded=charge.refunded_plan,
        operation=(charge.payment_intent_id, *await _refund_request(ctx)),
        payment_id=charge.payment_id,
        refunded_before=_money(booking, charge.refunded),
        paid_shares=[
            _paid_share(booking, transfer)
            for transfer in transfers.values()
            if transfer.status == "paid" and transfer.stripe_transfer_id is not None
        ],
        metadata={"booking_id": str(booking.id), "reason": ctx.params.reason[:400]},
    )
    share = refunded.share
    total = share if charge.refunded_plan is None else split_plus(charge.refunded_plan, share)
    inserted = await ctx.conn.execute(
        """
        INSERT INTO three_sided_bookings_refunds
            (booking, charge, idempotency_key, stripe_refund_id, amount, currency, split,
             reason, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, now())
        ON CONFLICT DO NOTHING
        """,
        booking.id,
        charge.id,
        refunded.key,
        refunded.refund_id,
        amount,
        booking.currency,
        json.dumps(plan_to_json(share)),
        ctx.actor,
    )
    if not str(inserted).endswith(" 1"):
        # Stripe's answer to a refund this booking recorded already (under this key,
        # or by its id: ``refund_made_in_stripe`` took it in first)
        return
    await ctx.conn.execute(
        """
        UPDATE three_sided_bookings_charges
        SET refunded = refunded + $2, refunded_split = $3::jsonb, updated_at = now()
        WHERE id = $1
        """,
        charge.id,
        amount,
        json.dumps(plan_to_json(total)),
    )
    ctx.add(
        "refunds", {"refund": refunded.refund_id, "amount": amount, "split": plan_to_json(share)}
    )
    for reversed_ in refunded.reversals:
        await _record_reversal(ctx, transfers[reversed_.role], reversed_, refunded.refund_id)
    for held in refunded.held_reduced:
        transfer = transfers.get(held.role)
        if transfer is not None and transfer.status == "held":
            await _reduce_held(ctx, transfer, held, share.leg(held.role).amount.amount)


async def booking_of_new_stripe_refund(conn: Connection, refund: Mapping[str, Any]) -> int | None:
    """The booking a refund made outside the plugin is new to (``refund_made_in_stripe``
    would record it), else None: not a booking's captured charge, failed or canceled,
    or recorded already."""
    refund_id = str(refund.get("id") or "")
    charge_id = _stripe_id(refund.get("charge"))
    if not refund_id or not charge_id or refund.get("status") in {"failed", "canceled"}:
        return None
    booking_id = await conn.fetchval(
        "SELECT booking FROM three_sided_bookings_charges "
        "WHERE stripe_charge_id = $1 AND split IS NOT NULL",
        charge_id,
    )
    if booking_id is None or await conn.fetchval(
        "SELECT 1 FROM three_sided_bookings_refunds WHERE stripe_refund_id = $1", refund_id
    ):
        return None
    return int(booking_id)


async def refund_made_in_stripe(conn: Connection, refund: Mapping[str, Any]) -> bool:
    """Take in a refund of a booking's charge that this plugin did not make (Stripe's
    dashboard, another integration); return whether it was new to the booking.

    Called by the plugin's ``refund.*`` handler, after the engine's (which posted
    the refund and holds the charge's movements: ``lock_charge_movements``). A
    refund the booking recorded already (by ``stripe_refund_id``: its own API path,
    which holds the same lock while it refunds, or an earlier event) changes
    nothing, so whichever of the two runs first, the refund counts once. A new one
    is recorded under ``stripe:<re>`` and added to the charge's ``refunded`` (and so
    to the booking's); its split is what a refund through the API would take of
    each leg (``refund_share``), so later refunds never take a leg below zero. No
    transfer is reversed: Stripe does not reverse the transfers of separate
    charges, and taking a beneficiary's share back is the business's decision
    (``refund`` through the API does it); until then the platform carries it.
    A refund that is already failed or canceled moved no money: nothing is recorded.

    A refund the plugin made whose transaction rolled back after Stripe refunded
    carries the engine's key in its ``metadata[idempotency_key]``: it is recorded
    under that key, so the request retried finds its refund made (``bookings``:
    a request whose refund is recorded is not taken again).
    """
    refund_id = str(refund.get("id") or "")
    charge_id = _stripe_id(refund.get("charge"))
    if not refund_id or not charge_id or refund.get("status") in {"failed", "canceled"}:
        return False
    row = await conn.fetchrow(
        "SELECT * FROM three_sided_bookings_charges WHERE stripe_charge_id = $1 FOR UPDATE",
        charge_id,
    )
    if row is None:
        return False  # not a booking's charge
    charge = ChargeRecord.from_row(row)
    if charge.plan is None:
        return False  # never captured here: nothing of it can have been refunded
    if await conn.fetchval(
        "SELECT 1 FROM three_sided_bookings_refunds WHERE stripe_refund_id = $1", refund_id
    ):
        return False  # recorded already (the plugin's own, or an earlier event)
    amount = int(refund.get("amount") or 0)
    share = movements.refund_share(
        charge.plan, charge.refunded_plan, Money(amount, charge.currency)
    )
    key = _own_key(refund, charge.booking_id) or f"stripe:{refund_id}"
    inserted = await conn.execute(
        """
        INSERT INTO three_sided_bookings_refunds
            (booking, charge, idempotency_key, stripe_refund_id, amount, currency, split,
             reason, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, 'stripe', now())
        ON CONFLICT DO NOTHING
        """,
        charge.booking_id,
        charge.id,
        key,
        refund_id,
        amount,
        charge.currency,
        json.dumps(plan_to_json(share)),
    )
    if not str(inserted).endswith(" 1"):
        return False
    total = share if charge.refunded_plan is None else split_plus(charge.refunded_plan, share)
    await conn.execute(
        """
        UPDATE three_sided_bookings_charges
        SET refunded = refunded + $2, refunded_split = $3::jsonb, updated_at = now()
        WHERE id = $1
        """,
        charge.id,
        amount,
        json.dumps(plan_to_json(total)),
    )
    return True


async def refund_failed_in_stripe(conn: Connection, refund: Mapping[str, Any]) -> bool:
    """Take a refund of a booking's charge that failed off the booking; return whether
    this call did.

    Stripe's ``refund.failed`` (also ``refund.updated``/``charge.refund.updated``
    with ``status=failed``): the refund's money came back to the platform's
    balance, so the recorded refund becomes ``failed`` and its amount and split
    leave the charge's ``refunded`` and ``refunded_split`` (the booking's
    ``refunded`` drops, its ``collected`` rises), once. A transfer reversal made
    with it stays, as at Stripe. A failed refund the booking never recorded (its
    ``refund.created`` not handled yet) is recorded ``failed``, counting nothing, so
    the later event does not count it either. The booking's state stays.
    """
    refund_id = str(refund.get("id") or "")
    charge_id = _stripe_id(refund.get("charge"))
    if not refund_id or not charge_id or refund.get("status") != "failed":
        return False
    row = await conn.fetchrow(
        "SELECT * FROM three_sided_bookings_charges WHERE stripe_charge_id = $1 FOR UPDATE",
        charge_id,
    )
    if row is None or row["split"] is None:
        return False  # not a booking's charge (or never captured here)
    charge = ChargeRecord.from_row(row)
    recorded = await conn.fetchrow(
        "SELECT id, amount, split, status FROM three_sided_bookings_refunds "
        "WHERE stripe_refund_id = $1 FOR UPDATE",
        refund_id,
    )
    if recorded is None:
        assert charge.plan is not None
        nothing = movements.refund_share(
            charge.plan, charge.refunded_plan, Money(0, charge.currency)
        )
        await conn.execute(
            """
            INSERT INTO three_sided_bookings_refunds
                (booking, charge, idempotency_key, stripe_refund_id, amount, currency, split,
                 reason, status, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, 'stripe', 'failed', now())
            ON CONFLICT DO NOTHING
            """,
            charge.booking_id,
            charge.id,
            f"stripe:{refund_id}",
            refund_id,
            int(refund.get("amount") or 0),
            charge.currency,
            json.dumps(plan_to_json(nothing)),
        )
        return False
    if recorded["status"] == "failed":
        return False  # taken off already
    await conn.execute(
        "UPDATE three_sided_bookings_refunds SET status = 'failed' WHERE id = $1", recorded["id"]
    )
    given_back = plan_from_json(jsonb(recorded["split"]))
    left = None if charge.refunded_plan is None else split_minus(charge.refunded_plan, given_back)
    await conn.execute(
        """
        UPDATE three_sided_bookings_charges
        SET refunded = GREATEST(refunded - $2, 0), refunded_split = $3::jsonb, updated_at = now()
        WHERE id = $1
        """,
        charge.id,
        int(recorded["amount"]),
        None if left is None else json.dumps(plan_to_json(left)),
    )
    return True


def _own_key(made: Mapping[str, Any], booking_id: int) -> str | None:
    """The engine's idempotency key a refund or reversal of this booking carries in its
    metadata (``movements.refund``/``reverse`` put it there), else None."""
    key = str((made.get("metadata") or {}).get("idempotency_key") or "")
    return key if key.startswith(f"booking:{booking_id}:") else None


async def reversals_made_in_stripe(conn: Connection, transfer: Mapping[str, Any]) -> int:
    """Record the reversals of a booking's transfer its rows do not show; return how many.

    Called by the plugin's ``transfer.reversed``/``transfer.updated`` handler, after
    the engine's (which posted them). A reversal the plugin made is found recorded by
    its ``trr_`` id; one whose transaction rolled back after Stripe reversed (its
    metadata carries the engine's key) is recorded under that key, one made in
    Stripe's dashboard under ``stripe:<trr>``; each adds to the transfer row's
    ``amount_reversed``, once, so the booking shows exactly what Stripe reversed.
    """
    row = await conn.fetchrow(
        "SELECT id, booking FROM three_sided_bookings_transfers WHERE stripe_transfer_id = $1",
        str(transfer.get("id") or ""),
    )
    if row is None:
        return 0  # not a booking's transfer (or not recorded yet: its event comes first)
    recorded = 0
    for reversal in (transfer.get("reversals") or {}).get("data") or []:
        if not isinstance(reversal, Mapping) or not reversal.get("id"):
            continue
        cause = str((reversal.get("metadata") or {}).get("cause") or "")
        inserted = await conn.execute(
            """
            INSERT INTO three_sided_bookings_reversals
                (booking, transfer, idempotency_key, stripe_reversal_id, amount, currency,
                 reason, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, now())
            ON CONFLICT DO NOTHING
            """,
            row["booking"],
            row["id"],
            _own_key(reversal, int(row["booking"])) or f"stripe:{reversal['id']}",
            str(reversal["id"]),
            int(reversal.get("amount") or 0),
            str(reversal.get("currency") or ""),
            "dispute" if cause.startswith("dp_") else "refund" if cause else "stripe",
        )
        if str(inserted).endswith(" 1"):
            await conn.execute(
                "UPDATE three_sided_bookings_transfers "
                "SET amount_reversed = amount_reversed + $2, updated_at = now() WHERE id = $1",
                row["id"],
                int(reversal.get("amount") or 0),
            )
            recorded += 1
    return recorded


def _stripe_id(value: object) -> str:
    """The id of an expandable field (an id or an expanded object)."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


async def _refund_request(ctx: BookingContext) -> tuple[str, object]:
    """What makes a refund one business operation: the request, else the transition.

    ``("request", <API key>:<Idempotency-Key>)`` when the caller sent one (a retry
    gets Stripe's stored refund), else ``("transition", <n>)``, the number of the
    booking's transition being taken (a transition retried after a rollback has
    the same number, so it gets Stripe's refund again rather than a second one).
    """
    if ctx.params.request is not None:
        return "request", ctx.params.request
    taken = await ctx.conn.fetchval(
        "SELECT count(*) FROM three_sided_bookings_transitions WHERE booking = $1",
        ctx.booking.id,
    )
    return "transition", int(taken) + 1


async def _charge_transfers(ctx: BookingContext, charge: ChargeRecord) -> list[TransferRecord]:
    """The charge's transfer rows, locked (a refund or reversal changes them)."""
    rows = await ctx.conn.fetch(
        "SELECT * FROM three_sided_bookings_transfers WHERE charge = $1 ORDER BY id FOR UPDATE",
        charge.id,
    )
    return [TransferRecord.from_row(row) for row in rows]


def _paid_share(booking: BookingRecord, transfer: TransferRecord) -> movements.PaidShare:
    return movements.PaidShare(
        role=transfer.role,
        transfer_id=str(transfer.stripe_transfer_id),
        destination=transfer.account_id,
        reversible=_money(booking, transfer.amount - transfer.amount_reversed),
    )


async def _reduce_held(
    ctx: BookingContext, transfer: TransferRecord, held: movements.HeldShare, amount: int
) -> None:
    """A refund took ``amount`` off the engine's hold of a share: the booking's row follows
    (less to transfer later; cancelled at zero)."""
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_transfers SET amount = $2::bigint, "
        "status = CASE WHEN $3 = 'cancelled' THEN 'cancelled' ELSE status END, "
        "updated_at = now() "
        "WHERE id = $1",
        transfer.id,
        held.amount.amount,
        held.status,
    )
    ctx.add("held_reduced", {"role": transfer.role, "amount": amount})


async def _record_reversal(
    ctx: BookingContext, transfer: TransferRecord, reversed_: movements.Reversed, cause: str
) -> None:
    """Keep the booking's row of a reversal the engine made (or the failure to make it)."""
    amount = reversed_.amount.amount
    if reversed_.failure:
        # The beneficiary already paid the money out: Stripe reverses a transfer_group
        # transfer only from the destination's balance. The platform carries the loss;
        # the audit trail keeps what is owed so an operator can recover it.
        ctx.add(
            "reversal_failed",
            {"role": transfer.role, "amount": amount, "reason": reversed_.failure},
        )
        return
    inserted = await ctx.conn.execute(
        """
        INSERT INTO three_sided_bookings_reversals
            (booking, transfer, idempotency_key, stripe_reversal_id, amount, currency, reason,
             created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, now())
        ON CONFLICT DO NOTHING
        """,
        ctx.booking.id,
        transfer.id,
        reversed_.key,
        reversed_.reversal_id,
        amount,
        ctx.booking.currency,
        "dispute" if cause.startswith("dp_") else "refund",
    )
    if not str(inserted).endswith(" 1"):
        return  # recorded already (by its key, or by its id from Stripe's event)
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_transfers SET amount_reversed = amount_reversed + $2, "
        "updated_at = now() WHERE id = $1",
        transfer.id,
        amount,
    )
    ctx.add(
        "reversals", {"reversal": reversed_.reversal_id, "role": transfer.role, "amount": amount}
    )


async def reverse(ctx: BookingContext, transfer: TransferRecord, amount: int, cause: str) -> None:
    """Reverse ``amount`` of a paid transfer (``cause``: the refund or dispute behind it)."""
    if amount <= 0 or transfer.stripe_transfer_id is None:
        return
    booking = ctx.booking
    source_charge = await ctx.conn.fetchval(
        "SELECT stripe_charge_id FROM three_sided_bookings_charges WHERE id = $1",
        transfer.charge_id,
    )
    share = _paid_share(booking, transfer)
    try:
        reversed_ = await movements.reverse(
            ctx.money,
            share,
            _money(booking, amount),
            charge_id=str(source_charge or ""),
            operation=(transfer.role, source_charge or transfer.charge_id, cause),
            metadata={"booking_id": str(booking.id), "cause": cause},
        )
    except InsufficientBalance as short:
        reversed_ = movements.Reversed(
            role=transfer.role,
            transfer_id=share.transfer_id,
            destination=share.destination,
            amount=_money(booking, amount),
            key="",
            failure=short.detail,
        )
    await _record_reversal(ctx, transfer, reversed_, cause)


async def reverse_all_shares(ctx: BookingContext, cause: str) -> None:
    """Pull every beneficiary's remaining share back (a lost dispute); cancel held shares
    (``movements.cancel_share``)."""
    for transfer in await load_transfers(ctx.conn, ctx.booking.id):
        if transfer.status == "paid":
            await reverse(ctx, transfer, transfer.amount - transfer.amount_reversed, cause)
        elif transfer.status == "held":
            source_charge = await ctx.conn.fetchval(
                "SELECT stripe_charge_id FROM three_sided_bookings_charges WHERE id = $1",
                transfer.charge_id,
            )
            await movements.cancel_share(
                ctx.money, charge_id=str(source_charge or ""), role=transfer.role
            )
            await ctx.conn.execute(
                "UPDATE three_sided_bookings_transfers SET status = 'cancelled', "
                "updated_at = now() WHERE id = $1",
                transfer.id,
            )
            ctx.add("held_cancelled", {"role": transfer.role, "amount": transfer.amount})


# ---------------------------------------------------------------- settlement


async def account_can_receive(conn: Connection, account_id: str) -> tuple[bool, str]:
    """Whether a connected account can take a transfer now, and why not.

    Reads the engine's account record (kept in step by ``account.updated`` and
    ``payout.failed``): restricted, suspended, payouts disabled or a failed
    payout all hold the share. An account the engine does not know is left
    to Stripe to judge.
    """
    account = await account_by_id(conn, account_id)
    if account is None:
        return True, ""
    if account.suspended:
        return False, "account suspended"
    if account.payout_failure_code:
        return False, f"payout failed: {account.payout_failure_code}"
    if not account.payouts_enabled:
        return False, f"payouts disabled ({account.status})"
    return True, ""


def _cannot_receive(error: MarketplaceError) -> bool:
    """Errors that hold the share for a retry instead of failing the settlement."""
    return isinstance(error, AccountRestricted | InsufficientBalance) or (
        error.extra.get("stripe_code") in CANNOT_RECEIVE_CODES
    )


async def settle(ctx: BookingContext) -> None:
    """One transfer per beneficiary and captured charge, of what is left of its leg.

    Safe to run again at any point: a share already transferred (or held) is
    skipped; a transfer Stripe made before a crash is found by its key.
    A beneficiary that cannot receive funds gets its share held; the other
    beneficiary is paid all the same.
    """
    booking = ctx.booking
    existing = {(t.charge_id, t.role) for t in await load_transfers(ctx.conn, booking.id)}
    orphans: dict[str, dict[str, Any]] | None = None
    for charge_record in captured_charges(await load_charges(ctx.conn, booking.id)):
        plan, _ = _captured(charge_record)
        refunded = charge_record.refunded_plan
        for role in BENEFICIARIES:
            if (charge_record.id, role) in existing:
                continue
            amount = plan.leg(role).amount.amount
            if refunded is not None:
                amount -= refunded.leg(role).amount.amount
            if amount <= 0:
                continue
            if orphans is None:
                orphans = await _transfers_in_group(ctx)
            await _settle_share(ctx, charge_record, role, amount, orphans)
    ctx.record("settled_at", ctx.now.isoformat())


async def _transfers_in_group(ctx: BookingContext) -> dict[str, dict[str, Any]]:
    """Transfers Stripe already made for this booking, by the key in their metadata."""
    found = await ctx.gateway.list_all(
        "transfers", params={"transfer_group": ctx.booking.transfer_group}
    )
    return {
        str((item.get("metadata") or {}).get("idempotency_key")): item
        for item in found
        if (item.get("metadata") or {}).get("idempotency_key")
    }


async def _settle_share(
    ctx: BookingContext,
    charge_record: ChargeRecord,
    role: str,
    amount: int,
    orphans: dict[str, dict[str, Any]],
) -> None:
    booking = ctx.booking
    account = booking.account_of(role)
    key = transfer_key(booking, charge_record, role)
    row = await ctx.conn.fetchrow(
        """
        INSERT INTO three_sided_bookings_transfers
            (booking, charge, role, account_id, amount, currency, idempotency_key,
             stripe_transfer_id, amount_reversed, status, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, 0, 'pending', now(), now())
        RETURNING *
        """,
        booking.id,
        charge_record.id,
        role,
        account,
        amount,
        booking.currency,
        key,
    )
    transfer = TransferRecord.from_row(row)
    adopted = orphans.get(key)
    if adopted is not None:
        made = await movements.record_transfer_made(ctx.money, adopted, role=role, key=key)
        await _record_paid(ctx, transfer, made)
        return
    able, why = await account_can_receive(ctx.conn, account)
    if not able:
        await _hold(ctx, transfer, charge_record, why)
        return
    await attempt_transfer(ctx, transfer, charge_record)


async def attempt_transfer(
    ctx: BookingContext, transfer: TransferRecord, charge_record: ChargeRecord
) -> bool:
    """Transfer a pending share, or release a held one; hold it if Stripe refuses.

    Normally the transfer is tied to its charge (``source_transaction``). When
    Stripe says the charge can no longer cover it (a refund came in while the
    share was held), it is made from the platform's balance instead, in the
    same transfer group; if that balance is short, the share stays held. A held
    share is released by the engine (``movements.release_share``: once, under
    its hold's row lock). Returns whether it was paid now.
    """
    booking = ctx.booking
    metadata = {
        "booking_id": str(booking.id),
        "role": transfer.role,
        # The first attempt's key: a re-run finds the transfer by it.
        "idempotency_key": transfer.idempotency_key,
    }
    description = f"{transfer.role} share of booking {booking.id}"

    async def make(*, from_balance: bool) -> movements.Transferred | None:
        if transfer.status == "held":
            return await movements.release_share(
                ctx.money,
                charge_id=str(charge_record.charge_id),
                role=transfer.role,
                from_balance=from_balance,
                description=description,
                metadata=metadata,
            )
        operation = _transfer_operation(charge_record, transfer.role)
        return await movements.transfer(
            ctx.money,
            destination=transfer.account_id,
            amount=_money(booking, transfer.amount),
            source_transaction=None if from_balance else charge_record.charge_id,
            role=transfer.role,
            operation=(*operation, "unsourced") if from_balance else operation,
            transfer_group=booking.transfer_group,
            description=description,
            metadata=metadata,
        )

    try:
        try:
            made = await make(from_balance=False)
        except InvalidInput as error:
            if error.extra.get("stripe_code") != "amount_too_large":
                raise
            made = await make(from_balance=True)
    except MarketplaceError as error:
        if not _cannot_receive(error):
            raise
        await _hold(ctx, transfer, charge_record, error.detail)
        return False
    if made is None:
        return False  # released already, or nothing left to release
    await _record_paid(ctx, transfer, made)
    return True


async def _record_paid(
    ctx: BookingContext, transfer: TransferRecord, made: movements.Transferred
) -> None:
    """Keep the booking's row of a transfer the engine made, recorded and posted."""
    amount = made.amount.amount
    await ctx.conn.execute(
        """
        UPDATE three_sided_bookings_transfers
        SET status = 'paid', stripe_transfer_id = $2, amount = $3, updated_at = now()
        WHERE id = $1
        """,
        transfer.id,
        made.transfer_id,
        amount,
    )
    ctx.add("transfers", {"transfer": made.transfer_id, "role": transfer.role, "amount": amount})
    ctx.notify.lifecycle(
        "transfer.paid",
        ctx.booking.reference,
        account_id=transfer.account_id,
        role=transfer.role,
        amount=amount,
        currency=transfer.currency,
        transfer=made.transfer_id,
    )


async def _hold(
    ctx: BookingContext, transfer: TransferRecord, charge_record: ChargeRecord, why: str
) -> None:
    """Hold the share with the engine (``movements.hold_share``); the booking's row shows
    it ``held``; the plugins hear of it (``on_payout_failure``)."""
    await movements.hold_share(
        ctx.money,
        charge_id=str(charge_record.charge_id),
        role=transfer.role,
        destination=transfer.account_id,
        amount=_money(ctx.booking, transfer.amount),
        reason=why,
        transfer_group=ctx.booking.transfer_group,
    )
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_transfers SET status = 'held', updated_at = now() "
        "WHERE id = $1",
        transfer.id,
    )
    ctx.add("held", {"role": transfer.role, "amount": transfer.amount, "reason": why})
    ctx.notify.payout_failure(
        PayoutFailure(
            account_id=transfer.account_id,
            kind="transfer",
            failure_code="held",
            amount=_money(ctx.booking, transfer.amount),
            stripe_object_id=transfer.idempotency_key,
            reference=ctx.booking.reference,
            message=why,
        )
    )


ContextFactory = Callable[[Connection, BookingRecord], BookingContext]
"""Builds the context a retried transfer runs in (``BookingService.context``)."""


async def release_held_transfers(
    ctx_factory: ContextFactory, conn: Connection, account_id: str, notices: Notices
) -> list[int]:
    """Release every share the engine holds for ``account_id`` (it can receive funds again).

    Each booking is locked first (as every transition does), then its share is
    released by the engine (``movements.release_share``, once under the hold's
    row lock), so two runners racing pay it once.

    Args:
        ctx_factory: ``(conn, booking) -> BookingContext`` for the releases.
        conn: a connection inside the caller's transaction.
        account_id: the connected account that recovered.
        notices: where the releases' notifications go.

    Returns:
        The ids of the transfers paid now; those Stripe still refuses stay held.
    """
    able, _ = await account_can_receive(conn, account_id)
    if not able:
        return []
    paid: list[int] = []
    for share in await movements.held_shares(conn, destination=account_id, plugin=PLUGIN):
        found = await conn.fetchrow(
            "SELECT t.booking AS held_booking, c.* FROM three_sided_bookings_transfers t "
            "JOIN three_sided_bookings_charges c ON c.id = t.charge "
            "WHERE c.stripe_charge_id = $1 AND t.role = $2",
            share.charge_id,
            share.role,
        )
        if found is None:
            continue  # not a share of one of our bookings
        booking = await load_booking(conn, int(found["held_booking"]))
        await conn.fetchrow(
            "SELECT id FROM three_sided_bookings_bookings WHERE id = $1 FOR UPDATE", booking.id
        )
        charge_record = ChargeRecord.from_row(found)
        row = await conn.fetchrow(
            "SELECT * FROM three_sided_bookings_transfers "
            "WHERE charge = $1 AND role = $2 AND status = 'held'",
            charge_record.id,
            share.role,
        )
        if row is None:
            continue  # released or cancelled meanwhile
        transfer = TransferRecord.from_row(row)
        ctx = ctx_factory(conn, booking)
        if await attempt_transfer(ctx, transfer, charge_record):
            paid.append(transfer.id)
        notices.extend(ctx.notify)
    return paid


# ---------------------------------------------------------------- authentication afterwards

_AFTER_SETTLEMENT: Final = frozenset({"settled", "partially_refunded"})


async def intent_authenticated(ctx: BookingContext, intent: dict[str, Any]) -> ChargeRecord | None:
    """The customer authenticated an off-session charge recorded as ``requires_action``.

    Records its capture and posts it (``movements.record_charge``), clears the
    booking's ``customer_action`` and, when the booking was already settled,
    transfers the new charge's shares. Returns
    the charge, or None if ``intent`` is no such charge of the booking (or not paid).
    """
    row = await ctx.conn.fetchrow(
        "SELECT * FROM three_sided_bookings_charges WHERE stripe_payment_intent_id = $1 "
        "AND booking = $2 AND status = 'requires_action' FOR UPDATE",
        intent["id"],
        ctx.booking.id,
    )
    if row is None:
        return None
    current = await ctx.gateway.call(
        "payment_intents",
        "retrieve",
        str(intent["id"]),
        params={"expand": ["latest_charge.balance_transaction"]},
    )
    if current["status"] not in {"succeeded", "requires_capture"}:
        return None
    waiting = ChargeRecord.from_row(row)
    if waiting.plan is None:
        raise Conflict(f"charge {waiting.payment_intent_id} has no recorded split")
    charged = await movements.record_charge(
        ctx.money,
        _priced(ctx.booking, waiting.plan, waiting.kind),
        current,
        operation=(waiting.kind,),
        account_id=ctx.booking.provider_account,
        customer=ctx.booking.stripe_customer_id,
    )
    captured = charged.captured.amount
    updated = await ctx.conn.fetchrow(
        """
        UPDATE three_sided_bookings_charges
        SET status = $2, stripe_charge_id = $3, captured = $4, stripe_fee = $5,
            balance_transaction = $6, updated_at = now()
        WHERE id = $1 RETURNING *
        """,
        row["id"],
        charged.status,
        charged.charge_id,
        captured,
        charged.stripe_fee.amount,
        charged.balance_transaction,
    )
    record = ChargeRecord.from_row(updated)
    await clear_action(ctx, str(intent["id"]))
    ctx.record("authenticated", {"payment_intent": intent["id"], "amount": captured})
    ctx.notify.lifecycle(
        "booking.action_completed",
        ctx.booking.reference,
        payment_intent=str(intent["id"]),
        amount=captured,
        state=ctx.booking.state,
    )
    if ctx.booking.state in _AFTER_SETTLEMENT:
        await settle(ctx)
    return record


async def clear_action(ctx: BookingContext, intent_id: str) -> None:
    """The booking no longer waits for the customer on ``intent_id``."""
    await ctx.conn.execute(
        """
        UPDATE three_sided_bookings_bookings
        SET customer_action = NULL, action_transition = '', updated_at = now()
        WHERE id = $1 AND customer_action->>'intent_id' = $2
        """,
        ctx.booking.id,
        intent_id,
    )
    await ctx.reload()
