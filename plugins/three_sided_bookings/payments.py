"""Money movements of a booking on Stripe: charges, captures, refunds, transfers, reversals.

Separate charges and transfers: every PaymentIntent is a platform charge with
``transfer_group = booking:<id>``; settlement makes one transfer per
beneficiary and charge with ``source_transaction`` = that charge; refunds do
not touch transfers for this charge type, so the platform reverses each
beneficiary's proportional share itself (``POST /v1/transfers/{id}/reversals``).

Each operation (1) calls Stripe through the engine's gateway with an
idempotency key derived from the business operation, (2) records the Stripe
object in the plugin's tables (unique on the key and on Stripe's id), and
(3) posts the movement to the ledger keyed by the Stripe object id, all inside
the caller's transaction. A retried or re-run operation therefore finds its
row, or gets Stripe's stored answer for the same key, and never moves money
twice. Transfers additionally carry their key in ``metadata`` so a re-run
after Stripe forgot the key (24 h) adopts the transfer it already made.

Transfer keys: ``booking:<id>:transfer:<role>`` (``:deposit`` / ``:balance``
appended for the two charges of the deposit model; ``:attempt:<n>`` for the
n-th retry of a transfer Stripe refused).

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
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, NamedTuple

import msgspec

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
from engine.core.ledger import stripe_time
from engine.core.money import Money
from engine.core.orders import Commission, Order, PayoutFailure, SplitPlan
from engine.gateway import idempotency_key
from engine.payments.pricing import PricedOrder, record_payment
from engine.payments.records import lock_charge_movements, update_payment
from plugins.three_sided_bookings.config import PLUGIN
from plugins.three_sided_bookings.context import BookingContext, Notices
from plugins.three_sided_bookings.policy import ChargeState, plan_collection
from plugins.three_sided_bookings.postings import (
    charge_posting,
    refund_posting,
    reversal_posting,
    transfer_posting,
)
from plugins.three_sided_bookings.split import (
    BENEFICIARIES,
    plan_minus,
    plan_plus,
    plan_to_json,
    refund_plan,
)
from plugins.three_sided_bookings.store import (
    BookingRecord,
    ChargeRecord,
    Connection,
    TransferRecord,
    captured_charges,
    load_booking,
    load_charges,
    load_transfers,
)

__all__ = [
    "account_can_receive",
    "action_json",
    "charge",
    "collect_to",
    "ensure_customer",
    "intent_authenticated",
    "release_held_transfers",
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


def transfer_key(booking: BookingRecord, charge: ChargeRecord, role: str) -> str:
    """The idempotency key of a beneficiary's transfer of one charge's share."""
    suffix = (charge.kind,) if charge.kind in _SPLIT_KINDS else ()
    return _booking_key(booking, "transfer", role, *suffix)


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
            remaining = plan_minus(remaining, plan)
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


async def _sync_payment(ctx: BookingContext, charge: ChargeRecord) -> None:
    """Keep the engine's payment record in step with the charge (id, status, amount)."""
    if charge.payment_id is None:
        return
    plan = charge.plan
    await update_payment(
        ctx.conn,
        payment_id=charge.payment_id,
        charge_id=charge.charge_id,
        status="succeeded" if charge.is_captured else charge.status,
        amount=charge.captured or charge.amount,
        fee_amount=0 if plan is None else plan.platform_amount.amount,
        split={} if plan is None else _priced(ctx.booking, plan, charge.kind).split_json(),
    )


async def _post_charge(ctx: BookingContext, charge: ChargeRecord, facts: ChargeFacts) -> None:
    if charge.charge_id is None or not charge.is_captured:
        return
    await ctx.post(
        charge_posting(
            ctx.booking.reference,
            charge.charge_id,
            _money(ctx.booking, charge.captured),
            _money(ctx.booking, charge.stripe_fee),
            occurred_at=facts.captured_at,
        )
    )


class ChargeFacts(NamedTuple):
    """What a PaymentIntent (with its charge's balance transaction expanded) says."""

    charge_id: str | None
    captured: int
    fee: int
    balance_transaction: str
    captured_at: datetime
    """Stripe's time of the capture (the balance transaction's, else the intent's)."""


def _charge_facts(intent: dict[str, Any]) -> ChargeFacts:
    latest = intent.get("latest_charge")
    if not isinstance(latest, dict):
        charge_id = latest if isinstance(latest, str) else None
        return ChargeFacts(charge_id, 0, 0, "", stripe_time(intent.get("created")))
    captured = int(intent.get("amount_received") or 0)
    txn = latest.get("balance_transaction")
    if isinstance(txn, dict):
        return ChargeFacts(
            str(latest["id"]),
            captured,
            int(txn.get("fee") or 0),
            str(txn.get("id")),
            stripe_time(txn.get("created")),
        )
    return ChargeFacts(
        str(latest["id"]), captured, 0, str(txn or ""), stripe_time(latest.get("created"))
    )


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
    """Create and confirm one PaymentIntent of the booking on the platform.

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
    charges = await load_charges(ctx.conn, booking.id)
    plan = _next_plan(booking, charges, amount)
    key = _booking_key(booking, "charge", kind, payment_method)
    authenticated = ctx.params.intent
    if authenticated and authenticated.startswith("pi_") and not off_session:
        intent = await _authenticated_intent(ctx, authenticated)
        return await _record_charge(ctx, intent, kind, key, capture_method, amount, plan)
    params: dict[str, Any] = {
        "amount": amount,
        "currency": booking.currency,
        "payment_method": payment_method,
        # Confirmed server-side with no return_url: cards only, never a redirect.
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "confirm": True,
        "capture_method": capture_method,
        "transfer_group": booking.transfer_group,
        "description": f"{booking.service_name} ({kind}), booking {booking.id}",
        "metadata": {"booking_id": str(booking.id), "charge": kind},
        "expand": ["latest_charge.balance_transaction"],
    }
    if booking.stripe_customer_id:
        params["customer"] = booking.stripe_customer_id
    if save_for_later:
        params["setup_future_usage"] = "off_session"
    if off_session:
        params["off_session"] = True
    try:
        intent = await ctx.gateway.call(
            "payment_intents", "create", params=params, idempotency_key=key
        )
    except CardDeclined as declined:
        pending = declined.extra.get("payment_intent")
        if not (off_session and declined.extra.get("decline_code") == "authentication_required"):
            raise
        if not pending:
            raise
        intent = await _ask_customer(ctx, str(pending), payment_method)
    if intent.get("status") == "requires_action" and not off_session:
        action = customer_action(intent)
        assert action is not None  # requires_action always has one
        raise PaymentActionRequired(f"the {kind} payment needs the customer", action=action)
    return await _record_charge(ctx, intent, kind, key, capture_method, amount, plan)


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


async def _ask_customer(ctx: BookingContext, intent_id: str, payment_method: str) -> dict[str, Any]:
    """An off-session payment needs authentication: confirm it again for the customer.

    Confirmed without ``off_session`` (Stripe's way to bring the customer back), the
    intent waits in ``requires_action`` with a ``next_action`` the customer completes
    later; the booking shows it as its ``customer_action``.
    """
    intent = await ctx.gateway.call(
        "payment_intents",
        "confirm",
        intent_id,
        params={"payment_method": payment_method},
        idempotency_key=_booking_key(ctx.booking, "ask_customer", intent_id),
    )
    action = customer_action(intent)
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
    return intent


async def _record_charge(  # noqa: PLR0917 - one charge row's facts, as charge() has them
    ctx: BookingContext,
    intent: dict[str, Any],
    kind: str,
    key: str,
    capture_method: str,
    amount: int,
    plan: SplitPlan,
) -> ChargeRecord:
    """Record a booking's PaymentIntent (and its payment), post it when captured."""
    booking = ctx.booking
    facts = _charge_facts(intent)
    charge_id, captured, fee, txn_id = facts[:4]
    status = str(intent["status"])
    payment_id = await record_payment(
        ctx.conn,
        _priced(booking, plan, kind),
        account_id=booking.provider_account,
        customer_id=booking.stripe_customer_id,
        payment_intent_id=str(intent["id"]),
        status=status,
    )
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
        key,
        intent["id"],
        charge_id,
        txn_id,
        capture_method,
        status,
        amount,
        captured,
        booking.currency,
        fee,
        json.dumps(plan_to_json(plan)),
        payment_id,
    )
    record = ChargeRecord.from_row(row)
    await _sync_payment(ctx, record)
    await _post_charge(ctx, record, facts)
    ctx.add("charges", {"kind": kind, "payment_intent": intent["id"], "amount": amount})
    return record


async def _retrieve_intent(ctx: BookingContext, charge: ChargeRecord) -> dict[str, Any]:
    return await ctx.gateway.call(
        "payment_intents",
        "retrieve",
        charge.payment_intent_id,
        params={"expand": ["latest_charge.balance_transaction"]},
    )


async def capture(ctx: BookingContext, charge: ChargeRecord, amount: int) -> ChargeRecord | None:
    """Capture ``amount`` of an open authorisation; ``None`` if it had lapsed meanwhile."""
    intent = await _retrieve_intent(ctx, charge)
    if intent["status"] == "requires_capture":
        intent = await ctx.gateway.call(
            "payment_intents",
            "capture",
            charge.payment_intent_id,
            params={
                "amount_to_capture": amount,
                "expand": ["latest_charge.balance_transaction"],
            },
            idempotency_key=_booking_key(ctx.booking, "capture", charge.payment_intent_id),
        )
    if intent["status"] != "succeeded":
        await _set_charge_status(ctx, charge, str(intent["status"]))
        ctx.add("authorisation_lapsed", charge.payment_intent_id)
        return None
    facts = _charge_facts(intent)
    charge_id, captured, fee, txn_id = facts[:4]
    authorised = charge.plan
    if authorised is None:
        raise Conflict(f"authorisation {charge.payment_intent_id} has no recorded split")
    plan = authorised.proportional(_money(ctx.booking, captured))
    row = await ctx.conn.fetchrow(
        """
        UPDATE three_sided_bookings_charges
        SET status = 'succeeded', stripe_charge_id = $2, captured = $3, stripe_fee = $4,
            balance_transaction = $5, split = $6::jsonb, updated_at = now()
        WHERE id = $1 RETURNING *
        """,
        charge.id,
        charge_id,
        captured,
        fee,
        txn_id,
        json.dumps(plan_to_json(plan)),
    )
    record = ChargeRecord.from_row(row)
    await _sync_payment(ctx, record)
    await _post_charge(ctx, record, facts)
    ctx.add("captured", {"payment_intent": charge.payment_intent_id, "amount": captured})
    return record


async def release(ctx: BookingContext, charge: ChargeRecord) -> None:
    """Cancel an open authorisation (nothing was captured; the hold on the card ends)."""
    intent = await _retrieve_intent(ctx, charge)
    if intent["status"] == "requires_capture":
        intent = await ctx.gateway.call(
            "payment_intents",
            "cancel",
            charge.payment_intent_id,
            params={"cancellation_reason": "requested_by_customer"},
            idempotency_key=_booking_key(ctx.booking, "release", charge.payment_intent_id),
        )
    await _set_charge_status(ctx, charge, str(intent["status"]))
    ctx.add("released", charge.payment_intent_id)


async def _set_charge_status(ctx: BookingContext, charge: ChargeRecord, status: str) -> None:
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_charges SET status = $2, updated_at = now() WHERE id = $1",
        charge.id,
        status,
    )
    if charge.payment_id is not None:
        await update_payment(ctx.conn, payment_id=charge.payment_id, status=status)


# ---------------------------------------------------------------- collecting to a target


def collected(charges: list[ChargeRecord]) -> int:
    """Money the booking holds: captured and not refunded."""
    return sum(charge.captured - charge.refunded for charge in captured_charges(charges))


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
    """Refund ``amount`` of a charge; take each beneficiary's proportional share back."""
    booking = ctx.booking
    plan, charge_id = _captured(charge)
    share = refund_plan(plan, charge.refunded_plan, _money(booking, amount))
    count = await ctx.conn.fetchval(
        "SELECT count(*) FROM three_sided_bookings_refunds WHERE charge = $1", charge.id
    )
    key = _booking_key(booking, "refund", charge.payment_intent_id, int(count) + 1)
    # The engine's refund handler waits for this transaction rather than posting
    # the same refund first (and deadlocking with it).
    await lock_charge_movements(ctx.conn, charge_id)
    stripe_refund = await ctx.gateway.call(
        "refunds",
        "create",
        params={
            "charge": charge_id,
            "amount": amount,
            "reason": "requested_by_customer",
            "metadata": {"booking_id": str(booking.id), "reason": ctx.params.reason[:400]},
        },
        idempotency_key=key,
    )
    refund_id = str(stripe_refund["id"])
    refunded = share if charge.refunded_plan is None else plan_plus(charge.refunded_plan, share)
    await ctx.conn.execute(
        """
        INSERT INTO three_sided_bookings_refunds
            (booking, charge, idempotency_key, stripe_refund_id, amount, currency, split,
             reason, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, now())
        ON CONFLICT (idempotency_key) DO NOTHING
        """,
        booking.id,
        charge.id,
        key,
        refund_id,
        amount,
        booking.currency,
        json.dumps(plan_to_json(share)),
        ctx.actor,
    )
    await ctx.conn.execute(
        """
        UPDATE three_sided_bookings_charges
        SET refunded = refunded + $2, refunded_split = $3::jsonb, updated_at = now()
        WHERE id = $1
        """,
        charge.id,
        amount,
        json.dumps(plan_to_json(refunded)),
    )
    if charge.payment_id is not None:
        await update_payment(
            ctx.conn, payment_id=charge.payment_id, amount_refunded=charge.refunded + amount
        )
    await ctx.post(
        refund_posting(
            booking.reference,
            refund_id,
            _money(booking, amount),
            occurred_at=stripe_time(stripe_refund.get("created")),
        )
    )
    ctx.add("refunds", {"refund": refund_id, "amount": amount, "split": plan_to_json(share)})
    for role in BENEFICIARIES:
        part = share.leg(role).amount.amount
        if part:
            await _take_back(ctx, charge, role, part, cause=refund_id)


async def _take_back(
    ctx: BookingContext, charge: ChargeRecord, role: str, amount: int, *, cause: str
) -> None:
    """Take ``amount`` of ``role``'s share of ``charge`` back from the beneficiary."""
    row = await ctx.conn.fetchrow(
        "SELECT * FROM three_sided_bookings_transfers WHERE charge = $1 AND role = $2 FOR UPDATE",
        charge.id,
        role,
    )
    if row is None:
        return  # not settled yet: settlement transfers what is left of the leg
    transfer = TransferRecord.from_row(row)
    if transfer.status == "held":
        left = transfer.amount - amount
        await ctx.conn.execute(
            "UPDATE three_sided_bookings_transfers SET amount = $2::bigint, "
            "status = CASE WHEN $2::bigint = 0 THEN 'cancelled' ELSE status END, "
            "updated_at = now() "
            "WHERE id = $1",
            transfer.id,
            left,
        )
        if left == 0:
            await ctx.conn.execute(
                "UPDATE three_sided_bookings_held_transfers SET status = 'cancelled' "
                "WHERE transfer = $1",
                transfer.id,
            )
        ctx.add("held_reduced", {"role": role, "amount": amount})
        return
    if transfer.status == "paid":
        await reverse(ctx, transfer, min(amount, transfer.amount - transfer.amount_reversed), cause)


async def reverse(ctx: BookingContext, transfer: TransferRecord, amount: int, cause: str) -> None:
    """Reverse ``amount`` of a paid transfer (``cause``: the refund or dispute behind it)."""
    if amount <= 0 or transfer.stripe_transfer_id is None:
        return
    booking = ctx.booking
    key = _booking_key(booking, "reversal", transfer.role, transfer.charge_id, cause)
    source_charge = await ctx.conn.fetchval(
        "SELECT stripe_charge_id FROM three_sided_bookings_charges WHERE id = $1",
        transfer.charge_id,
    )
    await lock_charge_movements(ctx.conn, str(source_charge or ""))
    try:
        reversal = await ctx.gateway.call(
            "transfers.reversals",
            "create",
            transfer.stripe_transfer_id,
            params={
                "amount": amount,
                "metadata": {"booking_id": str(booking.id), "cause": cause},
            },
            idempotency_key=key,
        )
    except InsufficientBalance as short:
        # The beneficiary already paid the money out: Stripe reverses a transfer_group
        # transfer only from the destination's balance. The platform carries the loss;
        # the audit trail keeps what is owed so an operator can recover it.
        ctx.add(
            "reversal_failed",
            {"role": transfer.role, "amount": amount, "reason": short.detail},
        )
        return
    await ctx.conn.execute(
        """
        INSERT INTO three_sided_bookings_reversals
            (booking, transfer, idempotency_key, stripe_reversal_id, amount, currency, reason,
             created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, now())
        ON CONFLICT (idempotency_key) DO NOTHING
        """,
        booking.id,
        transfer.id,
        key,
        reversal["id"],
        amount,
        booking.currency,
        "dispute" if cause.startswith("dp_") else "refund",
    )
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_transfers SET amount_reversed = amount_reversed + $2, "
        "updated_at = now() WHERE id = $1",
        transfer.id,
        amount,
    )
    await ctx.post(
        reversal_posting(
            booking.reference,
            str(reversal["id"]),
            transfer.account_id,
            _money(booking, amount),
            occurred_at=stripe_time(reversal.get("created")),
        )
    )
    ctx.add("reversals", {"reversal": reversal["id"], "role": transfer.role, "amount": amount})


async def reverse_all_shares(ctx: BookingContext, cause: str) -> None:
    """Pull every beneficiary's remaining share back (a lost dispute); cancel held shares."""
    for transfer in await load_transfers(ctx.conn, ctx.booking.id):
        if transfer.status == "paid":
            await reverse(ctx, transfer, transfer.amount - transfer.amount_reversed, cause)
        elif transfer.status == "held":
            await ctx.conn.execute(
                "UPDATE three_sided_bookings_transfers SET status = 'cancelled', "
                "updated_at = now() WHERE id = $1",
                transfer.id,
            )
            await ctx.conn.execute(
                "UPDATE three_sided_bookings_held_transfers SET status = 'cancelled' "
                "WHERE transfer = $1",
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
    row = await conn.fetchrow(
        "SELECT status, payouts_enabled, payout_failure_code, suspended "
        "FROM marketplace_accounts WHERE stripe_account_id = $1",
        account_id,
    )
    if row is None:
        return True, ""
    if row["suspended"]:
        return False, "account suspended"
    if row["payout_failure_code"]:
        return False, f"payout failed: {row['payout_failure_code']}"
    if not row["payouts_enabled"]:
        return False, f"payouts disabled ({row['status']})"
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
        await _record_paid(ctx, transfer, adopted)
        return
    able, why = await account_can_receive(ctx.conn, account)
    if not able:
        await _hold(ctx, transfer, why, attempts=0)
        return
    await attempt_transfer(ctx, transfer, charge_record, attempts=0)


async def attempt_transfer(
    ctx: BookingContext, transfer: TransferRecord, charge_record: ChargeRecord, *, attempts: int
) -> bool:
    """Create the Stripe transfer for a pending or held share; hold it if Stripe refuses.

    Normally the transfer is tied to its charge (``source_transaction``). When
    Stripe says the charge can no longer cover it (a refund came in while the
    share was held), it is made from the platform's balance instead, in the
    same transfer group; if that balance is short, the share stays held.
    """
    booking = ctx.booking
    key = transfer.idempotency_key
    if attempts:
        key = f"{key}:attempt:{attempts}"
    params: dict[str, Any] = {
        "amount": transfer.amount,
        "currency": transfer.currency,
        "destination": transfer.account_id,
        "source_transaction": charge_record.charge_id,
        "transfer_group": booking.transfer_group,
        "description": f"{transfer.role} share of booking {booking.id}",
        "metadata": {
            "booking_id": str(booking.id),
            "role": transfer.role,
            "idempotency_key": transfer.idempotency_key,
        },
    }
    try:
        try:
            created = await ctx.gateway.call(
                "transfers", "create", params=params, idempotency_key=key
            )
        except InvalidInput as error:
            if error.extra.get("stripe_code") != "amount_too_large":
                raise
            del params["source_transaction"]
            created = await ctx.gateway.call(
                "transfers", "create", params=params, idempotency_key=f"{key}:unsourced"
            )
    except MarketplaceError as error:
        if not _cannot_receive(error):
            raise
        await _hold(ctx, transfer, error.detail, attempts=attempts + 1)
        return False
    await _record_paid(ctx, transfer, created)
    return True


async def _record_paid(
    ctx: BookingContext, transfer: TransferRecord, created: dict[str, Any]
) -> None:
    amount = int(created["amount"])
    await ctx.conn.execute(
        """
        UPDATE three_sided_bookings_transfers
        SET status = 'paid', stripe_transfer_id = $2, amount = $3, updated_at = now()
        WHERE id = $1
        """,
        transfer.id,
        created["id"],
        amount,
    )
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_held_transfers SET status = 'released', released_at = now() "
        "WHERE transfer = $1 AND status = 'held'",
        transfer.id,
    )
    await ctx.post(
        transfer_posting(
            ctx.booking.reference,
            str(created["id"]),
            transfer.account_id,
            _money(ctx.booking, amount),
            occurred_at=stripe_time(created.get("created")),
        )
    )
    ctx.add("transfers", {"transfer": created["id"], "role": transfer.role, "amount": amount})
    ctx.notify.lifecycle(
        "transfer.paid",
        ctx.booking.reference,
        account_id=transfer.account_id,
        role=transfer.role,
        amount=amount,
        currency=transfer.currency,
        transfer=created["id"],
    )


async def _hold(ctx: BookingContext, transfer: TransferRecord, why: str, *, attempts: int) -> None:
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_transfers SET status = 'held', updated_at = now() "
        "WHERE id = $1",
        transfer.id,
    )
    await ctx.conn.execute(
        """
        INSERT INTO three_sided_bookings_held_transfers
            (transfer, account_id, reason, attempts, status, held_at, released_at)
        VALUES ($1, $2, $3, $4, 'held', now(), NULL)
        ON CONFLICT (transfer) DO UPDATE
        SET reason = EXCLUDED.reason, attempts = EXCLUDED.attempts, status = 'held'
        """,
        transfer.id,
        transfer.account_id,
        why[:1000],
        attempts,
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
    """Retry every share held for ``account_id`` (it can receive funds again).

    Args:
        ctx_factory: ``(conn, booking) -> BookingContext`` for the retries.
        conn: a connection inside the caller's transaction.
        account_id: the connected account that recovered.
        notices: where the retries' notifications go.

    Returns:
        The ids of the transfers paid now; those Stripe still refuses stay held.
    """
    able, _ = await account_can_receive(conn, account_id)
    if not able:
        return []
    rows = await conn.fetch(
        """
        SELECT h.attempts, t.* FROM three_sided_bookings_held_transfers h
        JOIN three_sided_bookings_transfers t ON t.id = h.transfer
        WHERE h.account_id = $1 AND h.status = 'held' AND t.status = 'held'
        ORDER BY h.id
        FOR UPDATE OF h SKIP LOCKED
        """,
        account_id,
    )
    paid: list[int] = []
    for row in rows:
        transfer = TransferRecord.from_row(row)
        booking = await load_booking(conn, transfer.booking_id)
        await conn.fetchrow(
            "SELECT id FROM three_sided_bookings_bookings WHERE id = $1 FOR UPDATE", booking.id
        )
        ctx = ctx_factory(conn, booking)
        charge_row = await conn.fetchrow(
            "SELECT * FROM three_sided_bookings_charges WHERE id = $1", transfer.charge_id
        )
        if await attempt_transfer(
            ctx, transfer, ChargeRecord.from_row(charge_row), attempts=int(row["attempts"])
        ):
            paid.append(transfer.id)
        notices.extend(ctx.notify)
    return paid


# ---------------------------------------------------------------- authentication afterwards

_AFTER_SETTLEMENT: Final = frozenset({"settled", "partially_refunded"})


async def intent_authenticated(ctx: BookingContext, intent: dict[str, Any]) -> ChargeRecord | None:
    """The customer authenticated an off-session charge recorded as ``requires_action``.

    Records its capture and posts it, clears the booking's ``customer_action`` and,
    when the booking was already settled, transfers the new charge's shares. Returns
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
    facts = _charge_facts(current)
    charge_id, captured, fee, txn_id = facts[:4]
    updated = await ctx.conn.fetchrow(
        """
        UPDATE three_sided_bookings_charges
        SET status = $2, stripe_charge_id = $3, captured = $4, stripe_fee = $5,
            balance_transaction = $6, updated_at = now()
        WHERE id = $1 RETURNING *
        """,
        row["id"],
        str(current["status"]),
        charge_id,
        captured,
        fee,
        txn_id,
    )
    record = ChargeRecord.from_row(updated)
    await _sync_payment(ctx, record)
    await _post_charge(ctx, record, facts)
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
