"""Stripe event handlers of the plugin (run by the worker after the engine's own).

- ``charge.dispute.*``: a dispute on a booking's charge moves the booking to
  ``disputed`` (and back, or to ``dispute_lost``, when it closes); every
  dispute balance transaction is posted once.
- ``account.updated``: a provider or venue that can receive funds again gets
  its held shares transferred (the engine's handler has already updated the
  account's flags in the same transaction).
- ``payment_intent.succeeded`` / ``amount_capturable_updated``, ``setup_intent.succeeded``:
  a payment (or a card's set-up) the customer had to authenticate went through: the
  transition it completes is taken (``pay``), or the off-session charge waiting for
  it is recorded and settled; ``payment_intent.payment_failed`` /
  ``setup_intent.setup_failed`` show the failure in the booking's ``customer_action``.
- ``charge.succeeded``/``charge.captured``, ``transfer.created``: the ledger
  postings of a booking's charges and transfers, the engine's (keyed by the
  Stripe object), so a movement whose request died after Stripe answered is
  still in the ledger exactly once. Refunds, reversals and disputes are posted
  by the engine's own handlers, which run first.
- ``refund.created`` / ``refund.updated``: a refund of a booking's charge made
  outside the plugin (Stripe's dashboard) is recorded on the booking by the
  ``refunded_in_stripe`` transition (``payments.refund_made_in_stripe``), which puts
  the booking where the API's refund would (``partially_refunded``, ``refunded``);
  one the plugin made is found recorded.
  ``refund.failed`` (and ``refund.updated``/``charge.refund.updated`` saying
  ``failed``): the refund is taken off the booking (``payments.refund_failed_in_stripe``).
- ``transfer.reversed`` / ``transfer.updated``: a reversal of a booking's transfer
  its rows do not show (Stripe's dashboard, or a request whose transaction rolled
  back after Stripe reversed) is recorded (``payments.reversals_made_in_stripe``).

Each handler is idempotent (a repeated event finds its work done) and joins
the event's transaction (``ctx.conn``); notifications wait for the commit.

``mailbox_key`` (the plugin's ``resolve_mailbox_key``) queues every platform
event about one booking in that booking's own mailbox,
``three_sided_bookings:booking:<id>``: its charges, payment intents and
transfers by their ``transfer_group``, its refunds and the SetupIntents saving
its card by their ``metadata.booking_id``. A booking's events are applied in
order, and a booking whose event keeps failing parks alone. A refund made in
Stripe's dashboard names only its charge (no ``metadata.booking_id``), so it
goes to the engine's default mailbox for it (``refund:<charge id>``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Final

from engine.core.authentication import customer_action
from engine.core.contributions import HandlerContext, StripeEvent, WebhookRegistration
from engine.core.errors import IllegalTransition, MarketplaceError
from engine.payments import movements
from plugins.three_sided_bookings.bookings import BookingService
from plugins.three_sided_bookings.config import PLUGIN
from plugins.three_sided_bookings.context import ActionParams, Notices
from plugins.three_sided_bookings.payments import (
    action_json,
    booking_of_new_stripe_refund,
    clear_action,
    intent_authenticated,
    refund_failed_in_stripe,
    refund_made_in_stripe,
    reversals_made_in_stripe,
)
from plugins.three_sided_bookings.store import BookingRecord, load_booking

__all__ = ["mailbox_key", "movement_meaning", "registrations"]

log = logging.getLogger(__name__)

_GROUP: Final = re.compile(r"^booking:(\d+)$")
_CLOSED: Final = frozenset({"won", "lost"})
_BY_METADATA: Final = frozenset({"refund", "setup_intent"})
"""Objects of a booking that carry no ``transfer_group``: keyed by the ``metadata.booking_id``
the plugin sets when it creates them."""


def _object(event: StripeEvent) -> dict[str, Any]:
    data = event.get("data") or {}
    obj = data.get("object") if isinstance(data, Mapping) else None
    return dict(obj) if isinstance(obj, Mapping) else {}


def _booking_reference(group: object) -> str | None:
    """``booking:<id>`` when a transfer group is one of this plugin's bookings."""
    return group if isinstance(group, str) and _GROUP.match(group) else None


def mailbox_key(event: StripeEvent) -> str | None:
    """The mailbox of a platform event about one booking, or None (not this plugin's).

    Per booking rather than per provider: a booking is what its events change
    together (charge, transfers, refunds, reversals move one booking's money and
    state, so they must apply in order), and what fails alone (one bad record).
    A provider's key would queue every booking of a busy therapist behind one
    poisoned booking, and would need the provider in every payload, which
    Stripe's charges of separate charges and transfers do not carry.
    """
    if event.get("account"):
        return None  # a connected account's own events stay in its mailbox
    obj = _object(event)
    reference = _booking_reference(obj.get("transfer_group"))
    if reference is None and obj.get("object") in _BY_METADATA:
        booking_id = str((obj.get("metadata") or {}).get("booking_id") or "")
        reference = f"booking:{booking_id}" if booking_id.isdigit() else None
    return f"{PLUGIN}:{reference}" if reference else None


def movement_meaning(stripe_object: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(booking:<id>, plugin)`` for a charge or transfer made outside the engine about one
    of this plugin's bookings (the plugin's ``resolve_movement_meaning``), else None.

    Named as the plugin names its own: by ``transfer_group = booking:<id>`` (what its
    charges and transfers carry), else by ``metadata[booking_id]``. Pure: a booking
    of another installation sharing the database's numbering is named all the same.
    """
    reference = _booking_reference(stripe_object.get("transfer_group"))
    if reference is None:
        booking_id = str((stripe_object.get("metadata") or {}).get("booking_id") or "")
        reference = f"booking:{booking_id}" if booking_id.isdigit() else None
    return None if reference is None else (reference, PLUGIN)


def _conn(ctx: HandlerContext) -> Any:
    """The event's transaction."""
    return ctx.conn


def _after_commit(ctx: HandlerContext, notices: Notices) -> None:
    for notify in notices.drain():
        ctx.after_commit(notify)


# ---------------------------------------------------------------- disputes


async def on_dispute(event: StripeEvent, ctx: HandlerContext) -> None:
    """Open, follow and close a dispute on one of a booking's charges."""
    dispute = _object(event)
    conn = _conn(ctx)
    booking_id = await conn.fetchval(
        "SELECT booking FROM three_sided_bookings_charges WHERE stripe_charge_id = $1",
        dispute.get("charge"),
    )
    if booking_id is None:
        return  # not a booking's charge
    service = BookingService(ctx.services)
    params = ActionParams(dispute=dispute)
    notices = Notices(ctx.services)
    known = await conn.fetchval(
        "SELECT status FROM three_sided_bookings_disputes WHERE stripe_dispute_id = $1",
        dispute.get("id"),
    )
    try:
        if known is None:
            opened = await service.act_in(
                conn, booking_id, "dispute_opened", "system", params=params
            )
            notices.extend(opened.notices)
            known = "needs_response"
        status = str(dispute.get("status"))
        closing = event.get("type") == "charge.dispute.closed" and status in _CLOSED
        if closing and known not in _CLOSED:
            name = "dispute_won" if status == "won" else "dispute_lost"
            closed = await service.act_in(conn, booking_id, name, "system", params=params)
            notices.extend(closed.notices)
            # Won: back to where it was; a settlement held up by the dispute runs now.
            notices.extend(await service.run_due_in(conn, closed.booking))
    except IllegalTransition as refused:
        # The booking's process has no way into (or out of) disputed from where it is;
        # the money still moved, so the ledger follows Stripe regardless.
        log.warning("dispute %s on booking %s: %s", dispute.get("id"), booking_id, refused)
    _after_commit(ctx, notices)


# ---------------------------------------------------------------- authentication


async def _booking_of(ctx: HandlerContext, intent: Mapping[str, Any]) -> BookingRecord | None:
    booking_id = str((intent.get("metadata") or {}).get("booking_id") or "")
    if not booking_id.isdigit():
        return None
    try:
        return await load_booking(_conn(ctx), int(booking_id))
    except MarketplaceError:
        return None  # not a booking of this installation


async def on_intent_authenticated(event: StripeEvent, ctx: HandlerContext) -> None:
    """A payment or set-up the customer authenticated went through: the booking moves on."""
    intent = _object(event)
    booking = await _booking_of(ctx, intent)
    if booking is None:
        return
    conn = _conn(ctx)
    service = BookingService(ctx.services)
    notices = Notices(ctx.services)
    action = booking.customer_action or {}
    if booking.action_transition and action.get("intent_id") == intent.get("id"):
        params = ActionParams(
            intent=str(intent["id"]), payment_method=str(intent.get("payment_method") or "")
        )
        try:
            outcome = await service.act_in(
                conn, booking.id, booking.action_transition, "system", params=params
            )
        except IllegalTransition as refused:
            log.warning("authenticated %s of booking %s: %s", intent["id"], booking.id, refused)
            return
        bctx = service.context(conn, outcome.booking)
        await clear_action(bctx, str(intent["id"]))
        notices.extend(outcome.notices)
        notices.extend(await service.run_due_in(conn, await load_booking(conn, booking.id)))
    elif intent.get("object") == "payment_intent":
        bctx = service.context(conn, booking, now=await service.now_for(booking))
        await intent_authenticated(bctx, intent)
        notices.extend(bctx.notify)
    _after_commit(ctx, notices)


async def on_intent_failed(event: StripeEvent, ctx: HandlerContext) -> None:
    """The customer's authentication failed (or the card declined after it): show it."""
    intent = _object(event)
    booking = await _booking_of(ctx, intent)
    if booking is None or (booking.customer_action or {}).get("intent_id") != intent.get("id"):
        return
    await _conn(ctx).execute(
        "UPDATE three_sided_bookings_bookings SET customer_action = $2::jsonb, "
        "updated_at = now() WHERE id = $1",
        booking.id,
        action_json(customer_action(intent)),
    )
    notices = Notices(ctx.services)
    notices.lifecycle(
        "booking.action_failed", booking.reference, intent=str(intent["id"]), state=booking.state
    )
    _after_commit(ctx, notices)


# ---------------------------------------------------------------- held transfers


async def on_account_updated(event: StripeEvent, ctx: HandlerContext) -> None:
    """Transfer the shares held for an account that can receive funds again."""
    account = _object(event)
    account_id = str(event.get("account") or account.get("id") or "")
    if not account_id or not account.get("payouts_enabled"):
        return
    paid, notices = await BookingService(ctx.services).release_held(_conn(ctx), account_id)
    if paid:
        log.info("released %d held transfer(s) to %s", len(paid), account_id)
    _after_commit(ctx, notices)


# ---------------------------------------------------------------- ledger follow-up


def _money(ctx: HandlerContext, reference: str) -> movements.MoneyScope:
    """The engine's money calls for a booking, in the event's transaction."""
    return movements.MoneyScope(
        ctx.services.gateway, ctx.services.ledger, _conn(ctx), PLUGIN, reference
    )


async def on_charge(event: StripeEvent, ctx: HandlerContext) -> None:
    """Post a captured booking charge (with Stripe's fee) if the API path did not."""
    charge = _object(event)
    reference = _booking_reference(charge.get("transfer_group"))
    if reference is None or not charge.get("captured") or not charge.get("balance_transaction"):
        return
    await movements.post_platform_charge(_money(ctx, reference), charge)


async def on_transfer(event: StripeEvent, ctx: HandlerContext) -> None:
    """Record and post a booking's transfer (its reversals are the engine's handler's)."""
    transfer = _object(event)
    reference = _booking_reference(transfer.get("transfer_group"))
    if reference is None:
        return
    metadata = transfer.get("metadata") or {}
    await movements.record_transfer_made(
        _money(ctx, reference),
        transfer,
        role=str(metadata.get("role") or ""),
        key=str(metadata.get("idempotency_key") or f"{reference}:transfer:{transfer['id']}"),
    )


async def on_refund(event: StripeEvent, ctx: HandlerContext) -> None:
    """A refund of a booking's charge made outside the plugin (Stripe's dashboard) moves
    the booking as the API's refund would: the ``refunded_in_stripe`` transition records
    it (``refund_made_in_stripe``) and, by its amount, leaves the booking
    ``partially_refunded`` or ``refunded`` (once: the plugin's own refunds, recorded by
    its API path, and repeated events find it recorded). A process with no such
    transition from the booking's state records it and keeps the state. One that
    failed is taken off the booking (``refund_failed_in_stripe``: once)."""
    refund = _object(event)
    conn = _conn(ctx)
    if refund.get("status") == "failed":
        if await refund_failed_in_stripe(conn, refund):
            log.info("failed refund %s taken off its booking", refund.get("id"))
        return
    booking_id = await booking_of_new_stripe_refund(conn, refund)
    if booking_id is None:
        return
    service = BookingService(ctx.services)
    params = ActionParams(refund=refund, amount=int(refund.get("amount") or 0))
    notices = Notices(ctx.services)
    try:
        outcome = await service.act_in(
            conn, booking_id, "refunded_in_stripe", "system", params=params
        )
        notices.extend(outcome.notices)
    except IllegalTransition as refused:
        # The money moved regardless: the booking's amounts follow Stripe, its state stays.
        log.warning("refund %s of booking %s: %s", refund.get("id"), booking_id, refused)
        await refund_made_in_stripe(conn, refund)
    log.info("refund %s made in Stripe recorded on booking %s", refund.get("id"), booking_id)
    _after_commit(ctx, notices)


async def on_transfer_reversed(event: StripeEvent, ctx: HandlerContext) -> None:
    """A reversal of a booking's transfer its rows do not show (made in Stripe's
    dashboard, or by a request whose transaction rolled back) is recorded on the
    booking (``reversals_made_in_stripe``: once)."""
    transfer = _object(event)
    if _booking_reference(transfer.get("transfer_group")) is None:
        return
    recorded = await reversals_made_in_stripe(_conn(ctx), transfer)
    if recorded:
        log.info("%d reversal(s) of %s recorded on its booking", recorded, transfer.get("id"))


def registrations() -> list[WebhookRegistration]:
    """The plugin's handlers, for ``register_webhook_handlers``."""
    table: list[tuple[str, Any]] = [
        ("charge.dispute.created", on_dispute),
        ("charge.dispute.updated", on_dispute),
        ("charge.dispute.funds_withdrawn", on_dispute),
        ("charge.dispute.funds_reinstated", on_dispute),
        ("charge.dispute.closed", on_dispute),
        ("account.updated", on_account_updated),
        ("payment_intent.succeeded", on_intent_authenticated),
        ("payment_intent.amount_capturable_updated", on_intent_authenticated),
        ("setup_intent.succeeded", on_intent_authenticated),
        ("payment_intent.payment_failed", on_intent_failed),
        ("setup_intent.setup_failed", on_intent_failed),
        ("charge.succeeded", on_charge),
        ("charge.captured", on_charge),
        ("transfer.created", on_transfer),
        ("transfer.reversed", on_transfer_reversed),
        ("transfer.updated", on_transfer_reversed),
        ("refund.created", on_refund),
        ("refund.updated", on_refund),
        ("charge.refund.updated", on_refund),
        ("refund.failed", on_refund),
    ]
    return [
        WebhookRegistration(event_type, handler, f"{PLUGIN}.{handler.__name__}")
        for event_type, handler in table
    ]
