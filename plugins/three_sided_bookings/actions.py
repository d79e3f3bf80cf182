"""The process's action names, implemented: what each transition does with money.

A process (``process.py``) names actions; :data:`ACTION_IMPLEMENTATIONS` maps
each name in ``process.ACTIONS`` to an ``async def action(ctx)``. Every money
action is "bring what the booking holds to a target" (``payments.collect_to``):
the full value at completion, the policy's fee on a customer cancellation, zero
on a business cancellation, the value less a refund.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Final

from engine.core.errors import CardDeclined, InvalidInput
from engine.core.money import apply_rate
from plugins.three_sided_bookings import disputes, payments
from plugins.three_sided_bookings.context import BookingContext
from plugins.three_sided_bookings.policy import cancellation_fee
from plugins.three_sided_bookings.store import load_charges

__all__ = ["ACTION_FIELDS", "ACTION_IMPLEMENTATIONS", "Action"]

Action = Callable[[BookingContext], Awaitable[None]]


def _payment_method(ctx: BookingContext) -> str:
    if not ctx.params.payment_method:
        raise InvalidInput("paying needs a payment_method (pm_...)", field="payment_method")
    return ctx.params.payment_method


def _later_kind(ctx: BookingContext) -> str:
    """The kind of an off-session charge at completion for the booking's payment model."""
    return "balance" if ctx.booking.payment_model == "deposit" else "arrival"


async def charge_in_full(ctx: BookingContext) -> None:
    """Full prepayment: one charge of the whole value now."""
    await payments.ensure_customer(ctx)
    await payments.charge(
        ctx, kind="full", amount=ctx.booking.amount, payment_method=_payment_method(ctx)
    )


async def charge_deposit(ctx: BookingContext) -> None:
    """Deposit + balance: charge the deposit now and keep the card for the balance."""
    card = await payments.save_card(ctx, _payment_method(ctx))
    await payments.charge(
        ctx,
        kind="deposit",
        amount=ctx.booking.deposit_amount,
        payment_method=card,
        save_for_later=True,
    )


async def secure_payment_on_arrival(ctx: BookingContext) -> None:
    """Pay on arrival: authorise now, or only save the card when the service is far away.

    Card authorisations lapse after 7 days, so a service starting more than
    ``off_session_after_days`` ahead is charged off-session at completion instead.
    """
    ahead = ctx.booking.starts_at - ctx.now
    if ahead > timedelta(days=ctx.config.off_session_after_days):
        # No payment now: a SetupIntent saves the card for the off-session charge.
        await payments.save_card(ctx, _payment_method(ctx), setup=True)
        ctx.record("payment_on_arrival", "card saved; charged off-session at completion")
        return
    card = await payments.save_card(ctx, _payment_method(ctx))
    await payments.charge(
        ctx,
        kind="authorization",
        amount=ctx.booking.amount,
        payment_method=card,
        capture_method="manual",
        save_for_later=True,
    )


async def collect_payment(ctx: BookingContext) -> None:
    """Completion: collect everything (balance, capture, or an off-session charge), less
    what was refunded in Stripe's dashboard (``payments.due``)."""
    target = await payments.due(ctx, ctx.booking.amount)
    await payments.collect_to(ctx, target, kind=_later_kind(ctx))


async def _collect_fee(ctx: BookingContext, fee: int) -> None:
    """Keep ``fee`` (at most what is due after refunds made in Stripe); a declined
    off-session fee charge is recorded, not fatal."""
    target = min(fee, await payments.due(ctx, ctx.booking.amount))
    try:
        await payments.collect_to(ctx, target, kind="fee", best_effort=True)
    except CardDeclined as declined:
        ctx.record("fee_not_collected", {"fee": fee, "reason": declined.detail})


async def apply_cancellation_policy(ctx: BookingContext) -> None:
    """A customer cancels: keep the fee of the policy window it falls in, refund the rest."""
    booking = ctx.booking
    policy = booking.policy
    decision = cancellation_fee(
        booking.amount,
        [(int(hours), int(fee)) for hours, fee in policy["windows"]],
        starts_at=booking.starts_at,
        now=ctx.now,
        no_show_fee_bps=int(policy["no_show_fee_bps"]),
    )
    ctx.record(
        "cancellation_fee",
        {"amount": decision.amount, "fee_bps": decision.fee_bps, "window": decision.window},
    )
    await _collect_fee(ctx, decision.amount)


async def refund_in_full(ctx: BookingContext) -> None:
    """The business cancels: refund everything, release any authorisation."""
    await payments.collect_to(ctx, 0, kind="fee")


async def charge_no_show_fee(ctx: BookingContext) -> None:
    """A no-show: keep (or collect) the no-show fee; refund anything above it."""
    fee = apply_rate(ctx.booking.amount, int(ctx.booking.policy["no_show_fee_bps"]))
    ctx.record("no_show_fee", fee)
    await _collect_fee(ctx, fee)


async def refund_amount(ctx: BookingContext) -> None:
    """Refund the requested amount (everything left when none), split proportionally."""
    held = payments.collected(await load_charges(ctx.conn, ctx.booking.id))
    amount = held if ctx.params.amount is None else ctx.params.amount
    ctx.record("refund_requested", amount)
    await payments.collect_to(ctx, held - amount, kind="fee")


async def settle(ctx: BookingContext) -> None:
    """Transfer each beneficiary's share of each charge (held when it cannot receive)."""
    await payments.settle(ctx)


async def record_dispute(ctx: BookingContext) -> None:
    """Remember the dispute and post the withdrawn funds."""
    await disputes.record_dispute(ctx)


async def submit_dispute_evidence(ctx: BookingContext) -> None:
    """Assemble the evidence from the booking and submit it."""
    await disputes.submit_evidence(ctx)


async def record_dispute_outcome(ctx: BookingContext) -> None:
    """Post the outcome; reverse the shares of a lost dispute if configured."""
    await disputes.record_outcome(ctx)


async def record_stripe_refund(ctx: BookingContext) -> None:
    """A refund made in Stripe (the dashboard): record it on the booking, move no money.

    The refund is Stripe's already (and posted by the engine); the booking takes
    it in (``payments.refund_made_in_stripe``) so its amounts follow and the
    transition's guards (``partial_refund``/``full_refund`` on its amount) put the
    booking where a refund through the API would.
    """
    refund = ctx.params.refund
    amount = ctx.params.amount  # what the guards judged: the refund's own amount
    if refund is None or amount != int(refund.get("amount") or 0):
        raise InvalidInput("refunded_in_stripe needs the Stripe refund and its amount")
    if await payments.refund_made_in_stripe(ctx.conn, refund):
        ctx.add("refunds", {"refund": refund.get("id"), "amount": amount, "made_in": "stripe"})


async def replace_saved_card(ctx: BookingContext) -> None:
    """The customer gives a new card for what is charged later (a balance, an arrival).

    Saved with a SetupIntent for off-session use (it may ask for authentication
    first); every later charge of the booking uses it. Nothing is charged now.
    """
    previous = ctx.booking.saved_payment_method
    card = await payments.save_card(ctx, _payment_method(ctx), setup=True)
    ctx.record("replaced_card", {"previous": previous, "card": card})


ACTION_IMPLEMENTATIONS: Final[Mapping[str, Action]] = {
    "charge_in_full": charge_in_full,
    "charge_deposit": charge_deposit,
    "secure_payment_on_arrival": secure_payment_on_arrival,
    "collect_payment": collect_payment,
    "apply_cancellation_policy": apply_cancellation_policy,
    "refund_in_full": refund_in_full,
    "charge_no_show_fee": charge_no_show_fee,
    "refund_amount": refund_amount,
    "settle": settle,
    "record_dispute": record_dispute,
    "submit_dispute_evidence": submit_dispute_evidence,
    "record_dispute_outcome": record_dispute_outcome,
    "replace_saved_card": replace_saved_card,
    "record_stripe_refund": record_stripe_refund,
}
"""Every name in ``process.ACTIONS`` (a unit test checks both lists agree)."""

ACTION_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "charge_in_full": frozenset({"payment_method"}),
    "charge_deposit": frozenset({"payment_method"}),
    "secure_payment_on_arrival": frozenset({"payment_method"}),
    "replace_saved_card": frozenset({"payment_method"}),
    "refund_amount": frozenset({"amount"}),
    "record_stripe_refund": frozenset({"amount"}),
    "submit_dispute_evidence": frozenset({"statement"}),
}
"""The request fields (``BookingAction``) each action reads; ``reason`` goes to every
transition's audit trail. A field none of a transition's actions reads is refused."""
