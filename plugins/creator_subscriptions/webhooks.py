"""Stripe event handlers: subscriptions, invoices and one-time payments.

Every handler runs inside the mailbox transaction (``ctx.conn``) and is
idempotent: ledger postings are keyed by the Stripe object, rows are upserted
by Stripe id, and state only moves forward (``plugins.creator_subscriptions.sync``
for subscriptions, ``INVOICE_RANK`` for invoices). Lifecycle notifications go
out after commit. A handler ignores objects that are not this plugin's (the
metadata says whose they are), because every subscription on the platform
arrives here.

Destination charges live on the platform, so all of these are platform events:
one creator's trouble (a restricted account, a failing card) never raises here,
it is recorded, so the platform mailbox keeps flowing for every other creator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import asyncpg

from engine.core.authentication import customer_action
from engine.core.contributions import (
    HandlerContext,
    StripeEvent,
    WebhookHandler,
    WebhookRegistration,
)
from engine.core.errors import InvalidInput, NotFound
from engine.core.orders import Commission, LifecycleEvent
from engine.core.postings import destination_charge_from
from engine.payments import movements
from engine.payments.pricing import PricedOrder
from engine.payments.records import advance_status_sql, dispute_payment_status, refund_status
from plugins.creator_subscriptions.adoption import mark_if_unmarked
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env, money_scope, op_key
from plugins.creator_subscriptions.fans import FAN_METADATA, action_json, card_saved
from plugins.creator_subscriptions.one_time import (
    PAYMENT_METADATA,
    payment_failed,
    settle_one_time_payment,
)
from plugins.creator_subscriptions.pricing import subscription_order
from plugins.creator_subscriptions.subscriptions import (
    SUBSCRIPTION_METADATA,
    invoice_action,
    invoice_intent,
    save_action,
    save_state,
    state_of,
)
from plugins.creator_subscriptions.sync import TERMINAL_STATUSES, merge, merge_status, snapshot_of
from plugins.creator_subscriptions.tiers import TIER_METADATA

__all__ = ["INVOICE_RANK", "registrations"]

log = logging.getLogger(__name__)

INVOICE_RANK: Mapping[str, int] = {
    "draft": 0,
    "open": 1,
    "uncollectible": 2,
    "void": 3,
    "paid": 3,
}
"""How far along an invoice is; an invoice never moves back (``paid`` and ``void`` are final)."""

_STATUS_NOTICE = {
    "active": "activated",
    "past_due": "past_due",
    "unpaid": "unpaid",
    "canceled": "canceled",
    "incomplete_expired": "expired",
}


def _object(event: StripeEvent) -> dict[str, Any]:
    data = event.get("data") or {}
    obj = data.get("object") if isinstance(data, Mapping) else None
    return dict(obj) if isinstance(obj, Mapping) else {}


def _id(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


def _announce(ctx: HandlerContext, env: Env, notices: list[LifecycleEvent]) -> None:
    plugins = env.plugins

    def sender(notice: LifecycleEvent) -> Callable[[], None]:
        return lambda: plugins.notify_lifecycle(notice)

    for notice in notices:
        ctx.after_commit(sender(notice))


def _notice(name: str, row: Mapping[str, Any], **data: Any) -> LifecycleEvent:
    return LifecycleEvent(
        f"{PLUGIN}.subscription.{name}",
        subject_id=f"{PLUGIN}:subscription:{row['id']}",
        account_id=str(row["account_id"]),
        data={"fan_id": int(row["fan"]), "tier_id": int(row["tier"]), **data},
    )


async def _subscription_row(
    conn: asyncpg.Connection, stripe_id: str, metadata: Mapping[str, Any]
) -> asyncpg.Record | None:
    """Our row for a Stripe subscription, locked; claimed by metadata if the API has not yet.

    The API stores the Stripe id after Stripe answers, so the first events can
    be handled before that: the metadata names our row, and the first of the
    two to get there records the id.
    """
    if not stripe_id:
        return None
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM creator_subscriptions_subscriptions WHERE stripe_subscription_id = $1 "
        "FOR UPDATE",
        stripe_id,
    )
    if row is not None:
        return row
    if metadata.get("plugin") != PLUGIN or not str(metadata.get(SUBSCRIPTION_METADATA, "")):
        return None
    ours = int(metadata[SUBSCRIPTION_METADATA])
    claimed: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE creator_subscriptions_subscriptions SET stripe_subscription_id = $2 "
        "WHERE id = $1 AND stripe_subscription_id IS NULL AND status <> 'failed' RETURNING *",
        ours,
        stripe_id,
    )
    return claimed


async def _tier_of_price(conn: asyncpg.Connection, price: Mapping[str, Any]) -> int | None:
    """Our tier for a Stripe price (its metadata, else the tier that sells it now)."""
    metadata = price.get("metadata") or {}
    if str(metadata.get(TIER_METADATA, "")).isdigit():
        return int(metadata[TIER_METADATA])
    found = await conn.fetchval(
        "SELECT id FROM creator_subscriptions_tiers WHERE stripe_price_id = $1", _id(price)
    )
    return None if found is None else int(found)


# ---------------------------------------------------------------- subscriptions


async def on_subscription(event: StripeEvent, ctx: HandlerContext) -> None:
    """Mirror ``customer.subscription.*`` into our row, order-insensitively."""
    subscription = _object(event)
    conn = ctx.conn
    row = await _subscription_row(
        conn, str(subscription.get("id") or ""), subscription.get("metadata") or {}
    )
    if row is None:
        return
    env = Env.of(ctx.services)
    await mark_if_unmarked(env, conn, row, subscription.get("metadata") or {})
    created = int(event.get("created") or 0)
    held = state_of(row)
    result = merge(held, snapshot_of(subscription), created)
    source = subscription
    if result.ambiguous:
        # Two different values stamped with the same second: Stripe decides.
        source = await env.gateway.call("subscriptions", "retrieve", str(subscription["id"]))
        forced = merge(result.state, snapshot_of(source), created, force=True)
        result = replace(forced, changed=forced.changed | result.changed)
    if not result.changed and result.state == held:
        return
    tier_id = None
    if "price" in result.changed:
        items = (source.get("items") or {}).get("data") or []
        if items:
            tier_id = await _tier_of_price(conn, items[0].get("price") or {})
    updated = await save_state(conn, int(row["id"]), result.state, tier_id=tier_id)
    notices: list[LifecycleEvent] = []
    if "status" in result.changed and result.state.status in _STATUS_NOTICE:
        notices.append(_notice(_STATUS_NOTICE[result.state.status], updated))
    if "cancel" in result.changed and result.state.status not in TERMINAL_STATUSES:
        name = "cancel_scheduled" if result.state.cancel_at_period_end else "cancel_unscheduled"
        notices.append(_notice(name, updated, cancel_at=result.state.cancel_at))
    if "pause" in result.changed:
        notices.append(_notice("paused" if result.state.paused else "resumed", updated))
    if "price" in result.changed and tier_id is not None and tier_id != int(row["tier"]):
        notices.append(_notice("tier_changed", updated, from_tier_id=int(row["tier"])))
    _announce(ctx, env, notices)


# ---------------------------------------------------------------- invoices


def _invoice_subscription(invoice: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    """The invoice's subscription id and the subscription metadata it carries.

    Both are under ``parent.subscription_details`` (the invoice has no ``subscription``
    field in the engine's API version).
    """
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {} if isinstance(parent, Mapping) else {}
    return _id(details.get("subscription")), details.get("metadata") or {}


async def _upsert_invoice(
    conn: asyncpg.Connection, invoice: Mapping[str, Any], sub_row: Mapping[str, Any], created: int
) -> tuple[asyncpg.Record, bool]:
    """Insert or advance our invoice row (a status never moves back); say if anything changed."""
    existing = await conn.fetchrow(
        "SELECT * FROM creator_subscriptions_invoices WHERE stripe_invoice_id = $1 FOR UPDATE",
        invoice["id"],
    )
    status = str(invoice.get("status") or "draft")
    if existing is not None:
        held = str(existing["status"])
        forward = INVOICE_RANK.get(status, 0) > INVOICE_RANK.get(held, 0)
        new_status = status if forward else held
        amount_due = existing["amount_due"]
        if forward or INVOICE_RANK.get(held, 0) == 0:
            amount_due = int(invoice.get("amount_due") or 0)
        attempts = max(int(existing["attempt_count"]), int(invoice.get("attempt_count") or 0))
        intent = existing["payment_intent_id"]
        if (new_status, amount_due, attempts, intent) == (
            held,
            existing["amount_due"],
            existing["attempt_count"],
            existing["payment_intent_id"],
        ):
            return existing, False  # a repeat, or an older view of it: nothing to do
        updated: asyncpg.Record = await conn.fetchrow(
            """
            UPDATE creator_subscriptions_invoices
            SET status = $2, status_at_event = GREATEST(status_at_event, $3), amount_due = $4,
                attempt_count = $5, payment_intent_id = $6, updated_at = now()
            WHERE id = $1
            RETURNING *
            """,
            existing["id"],
            new_status,
            created,
            amount_due,
            attempts,
            intent,
        )
        return updated, True
    inserted: asyncpg.Record = await conn.fetchrow(
        """
        INSERT INTO creator_subscriptions_invoices
            (stripe_invoice_id, subscription, stripe_subscription_id, account_id, customer_id,
             billing_reason, status, status_at_event, currency, amount_due, attempt_count,
             period_start, period_end, payment_intent_id, stripe_created, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now(), now())
        RETURNING *
        """,
        invoice["id"],
        sub_row["id"],
        sub_row["stripe_subscription_id"],
        sub_row["account_id"],
        _id(invoice.get("customer")),
        str(invoice.get("billing_reason") or ""),
        status,
        created,
        str(invoice.get("currency") or sub_row["currency"]),
        int(invoice.get("amount_due") or 0),
        int(invoice.get("attempt_count") or 0),
        int(invoice.get("period_start") or 0),
        int(invoice.get("period_end") or 0),
        "",  # the invoice's PaymentIntent is read from its payments when it matters
        int(invoice.get("created") or 0),
    )
    return inserted, True


async def _count_failures(conn: asyncpg.Connection, subscription_id: int) -> asyncpg.Record:
    """Set ``failed_payments`` from the invoices: attempts on the one still open, else 0."""
    updated: asyncpg.Record = await conn.fetchrow(
        """
        UPDATE creator_subscriptions_subscriptions s
        SET failed_payments = COALESCE((
            SELECT max(i.attempt_count) FROM creator_subscriptions_invoices i
            WHERE i.subscription = s.id AND i.status = 'open'), 0)
        WHERE s.id = $1
        RETURNING *
        """,
        subscription_id,
    )
    return updated


async def _charge_of(env: Env, invoice: Mapping[str, Any]) -> dict[str, Any] | None:
    """The invoice's charge with its balance transaction, transfer and application fee
    (what ``post_destination_charge`` reads the charge's share movements from, so it asks
    Stripe nothing more), or None if nothing was charged."""
    intent = await invoice_intent(env, str(invoice["id"]), status="paid")
    charge_id = _id(intent.get("latest_charge")) if intent is not None else ""
    if not charge_id:
        return None
    return await env.gateway.call(
        "charges",
        "retrieve",
        charge_id,
        params={"expand": ["balance_transaction", "transfer", "application_fee"]},
    )


async def _settle_invoice(
    env: Env,
    conn: asyncpg.Connection,
    invoice: Mapping[str, Any],
    inv_row: Mapping[str, Any],
    sub_row: Mapping[str, Any],
) -> list[LifecycleEvent]:
    """Post a paid invoice once: its one ledger transaction, its split, the renewal notice."""
    if inv_row["ledger_key"] or inv_row["paid_at"] is not None:
        return []
    amount_paid = int(invoice.get("amount_paid") or 0)
    currency = str(invoice.get("currency") or sub_row["currency"])
    charge = await _charge_of(env, invoice) if amount_paid > 0 else None
    reference = f"{PLUGIN}:subscription:{sub_row['id']}"
    ledger_key = ""
    fee = earnings = stripe_fee = 0
    charge_id = transfer_id = ""
    if charge is not None:
        charged = destination_charge_from(charge)
        tier = await conn.fetchrow(
            "SELECT name, interval FROM creator_subscriptions_tiers WHERE id = $1",
            sub_row["tier"],
        )
        order = subscription_order(
            account_id=str(sub_row["account_id"]),
            tier_id=int(sub_row["tier"]),
            tier_name=str(tier["name"]) if tier else "",
            interval=str(tier["interval"]) if tier else "",
            price=charged.amount,
            reference=reference,
        )
        commission = Commission(
            amount=charged.platform_fee,
            rule_id=str(sub_row["rule_id"]),
            rule_version=int(sub_row["rule_version"]),
        )
        # Posted once, and the engine's payment recorded with the fee Stripe charged.
        facts = await movements.post_destination_charge(
            money_scope(env, conn, reference),
            charge,
            kind="subscription_invoice",
            description=f"invoice {invoice['id']} ({invoice.get('billing_reason')})",
            priced=PricedOrder(
                order=order,
                price=order.amount,
                commission=commission,
                split=env.plugins.split(order, order.amount, commission),
            ),
            customer=_id(invoice.get("customer")),
            invoice=str(invoice["id"]),
        )
        ledger_key = f"charge:{facts.charge_id}"
        fee, earnings = facts.platform_fee.amount, facts.account_share.amount
        stripe_fee, charge_id, transfer_id = (
            facts.stripe_fee.amount,
            facts.charge_id,
            facts.transfer_id,
        )
    paid_at = int((invoice.get("status_transitions") or {}).get("paid_at") or 0)
    await conn.execute(
        """
        UPDATE creator_subscriptions_invoices
        SET status = 'paid', amount_paid = $2, application_fee = $3, creator_earnings = $4,
            stripe_fee = $5, charge_id = $6, transfer_id = $7, ledger_key = $8, paid_at = $9,
            payment_intent_id = COALESCE(NULLIF($10, ''), payment_intent_id),
            updated_at = now()
        WHERE id = $1
        """,
        inv_row["id"],
        amount_paid,
        fee,
        earnings,
        stripe_fee,
        charge_id,
        transfer_id,
        ledger_key,
        paid_at,
        _id(charge.get("payment_intent")) if charge is not None else "",
    )
    reason = str(invoice.get("billing_reason") or "")
    name = {"subscription_cycle": "renewed", "subscription_create": "started"}.get(
        reason, "invoice_paid"
    )
    return [
        _notice(
            name,
            sub_row,
            invoice=str(invoice["id"]),
            billing_reason=reason,
            amount=amount_paid,
            currency=currency,
            application_fee=fee,
            creator_earnings=earnings,
        )
    ]


async def _payment_failed(
    env: Env,
    conn: asyncpg.Connection,
    invoice: Mapping[str, Any],
    inv_row: Mapping[str, Any],
    sub_row: Mapping[str, Any],
    *,
    created: int,
) -> list[LifecycleEvent]:
    """A failed (renewal) payment: ``past_due``, the dunning count, and the dunning's end."""
    if inv_row["status"] in {"paid", "void"}:
        return []  # a late failure of an invoice a retry has since paid (or voided)
    attempts = int(invoice.get("attempt_count") or 0)
    notices: list[LifecycleEvent] = []
    state = state_of(sub_row)
    if invoice.get("billing_reason") != "subscription_create":
        state, ambiguous = merge_status(state, "past_due", created)
        if ambiguous:
            # A status of the same second (a retry that succeeded?): Stripe decides.
            current = await env.gateway.call(
                "subscriptions", "retrieve", str(sub_row["stripe_subscription_id"])
            )
            state = merge(state, snapshot_of(current), created, force=True).state
    await save_state(conn, int(sub_row["id"]), state)
    updated = await _count_failures(conn, int(sub_row["id"]))
    next_attempt = invoice.get("next_payment_attempt")
    notices.append(
        _notice(
            "payment_failed",
            updated,
            invoice=str(invoice["id"]),
            attempt_count=attempts,
            next_payment_attempt=next_attempt,
            retry_interval_days=env.config.dunning_interval_days,
        )
    )
    if updated["status"] == "past_due" and sub_row["status"] != "past_due":
        notices.append(_notice("past_due", updated, invoice=str(invoice["id"])))
    config = env.config
    exhausted = attempts > config.dunning_retries
    if (
        exhausted
        and config.cancel_after_failed_retries
        and updated["status"] not in TERMINAL_STATUSES
        and invoice.get("billing_reason") != "subscription_create"
    ):
        try:
            await env.gateway.call(
                "subscriptions",
                "cancel",
                str(sub_row["stripe_subscription_id"]),
                idempotency_key=op_key("subscription", sub_row["uid"], "dunning_cancel"),
            )
        except (NotFound, InvalidInput) as exc:
            # Already cancelled (Stripe's own dunning, or a replayed event): nothing to do.
            log.info("dunning cancel of %s skipped: %s", sub_row["stripe_subscription_id"], exc)
        notices.append(_notice("dunning_exhausted", updated, attempt_count=attempts))
    return notices


async def _action_required(
    env: Env,
    conn: asyncpg.Connection,
    invoice: Mapping[str, Any],
    inv_row: Mapping[str, Any],
    sub_row: Mapping[str, Any],
) -> list[LifecycleEvent]:
    """An invoice's payment waits for the fan (3D Secure): "action required", with what to do."""
    if inv_row["status"] in {"paid", "void"}:
        return []  # already paid (the fan was quick) or voided: nothing to ask
    action = await invoice_action(env, invoice)
    if action is None:
        return []
    updated = await save_action(conn, int(sub_row["id"]), str(invoice["id"]), action)
    await conn.execute(
        "UPDATE creator_subscriptions_invoices SET payment_intent_id = $2 WHERE id = $1",
        inv_row["id"],
        action.intent_id,
    )
    return [
        _notice(
            "action_required",
            updated,
            invoice=str(invoice["id"]),
            payment_intent=action.intent_id,
            hosted_invoice_url=action.hosted_invoice_url,
            reason=action.reason,
        )
    ]


async def _action_done(
    conn: asyncpg.Connection, invoice: Mapping[str, Any], sub_row: Mapping[str, Any], name: str
) -> list[LifecycleEvent]:
    """The invoice the fan had to act on is paid (or void): the subscription recovers."""
    if sub_row["action_invoice"] != invoice.get("id"):
        return []
    updated = await save_action(conn, int(sub_row["id"]), str(invoice["id"]), None)
    return [_notice(name, updated, invoice=str(invoice["id"]))]


async def on_invoice(event: StripeEvent, ctx: HandlerContext) -> None:
    """Record every invoice of our subscriptions; settle it when paid; dun when it fails."""
    invoice = _object(event)
    if not invoice.get("id"):
        return
    conn = ctx.conn
    stripe_id, metadata = _invoice_subscription(invoice)
    sub_row = await _subscription_row(conn, stripe_id, metadata)
    if sub_row is None:
        return
    env = Env.of(ctx.services)
    created = int(event.get("created") or 0)
    inv_row, changed = await _upsert_invoice(conn, invoice, sub_row, created)
    notices: list[LifecycleEvent] = []
    kind = str(event.get("type"))
    if kind in {"invoice.paid", "invoice.payment_succeeded"} or invoice.get("status") == "paid":
        notices += await _settle_invoice(env, conn, invoice, inv_row, sub_row)
        notices += await _action_done(conn, invoice, sub_row, "action_completed")
    elif kind == "invoice.payment_failed":
        notices += await _payment_failed(env, conn, invoice, inv_row, sub_row, created=created)
    elif kind == "invoice.payment_action_required":
        notices += await _action_required(env, conn, invoice, inv_row, sub_row)
    elif kind in {"invoice.voided", "invoice.marked_uncollectible"}:
        notices += await _action_done(conn, invoice, sub_row, "action_dropped")
    failing = inv_row["status"] == "open" and int(inv_row["attempt_count"]) > 0
    if changed and (failing or int(sub_row["failed_payments"]) > 0):
        await _count_failures(conn, int(sub_row["id"]))
    _announce(ctx, env, notices)


# ---------------------------------------------------------------- one-time payments


async def on_payment_intent_succeeded(event: StripeEvent, ctx: HandlerContext) -> None:
    """Settle a tip or pay-per-view whose API call did not finish (a no-op otherwise)."""
    intent = _object(event)
    if (intent.get("metadata") or {}).get("plugin") != PLUGIN:
        return
    env = Env.of(ctx.services)
    notices = await settle_one_time_payment(env, ctx.conn, intent)
    _announce(ctx, env, notices)


async def on_payment_intent_failed(event: StripeEvent, ctx: HandlerContext) -> None:
    """A tip or pay-per-view that waited for the fan failed: it is ``failed``."""
    await payment_failed(ctx.conn, _object(event))


async def on_setup_intent(event: StripeEvent, ctx: HandlerContext) -> None:
    """A fan's card set-up finished: the card becomes the default, or the failure shows."""
    setup = _object(event)
    metadata = setup.get("metadata") or {}
    if metadata.get("plugin") != PLUGIN or not str(metadata.get(FAN_METADATA, "")).isdigit():
        return
    fan_id = int(metadata[FAN_METADATA])
    env = Env.of(ctx.services)
    if event.get("type") == "setup_intent.succeeded":
        await card_saved(env, fan_id, setup, ctx.conn)
        return
    await ctx.conn.execute(
        "UPDATE creator_subscriptions_fans SET customer_action = $3::jsonb "
        "WHERE id = $1 AND customer_action->>'intent_id' = $2",
        fan_id,
        str(setup.get("id") or ""),
        action_json(customer_action(setup)),
    )


async def on_account_updated(event: StripeEvent, ctx: HandlerContext) -> None:
    """Remember that a creator could sell (after the core mirrored ``account.updated``)."""
    account = _object(event)
    if account.get("charges_enabled"):
        await ctx.conn.execute(
            "UPDATE creator_subscriptions_creators SET selling_since = now() "
            "WHERE account_id = $1 AND selling_since IS NULL",
            str(account.get("id") or ""),
        )


# ---------------------------------------------------------------- refunds and disputes


_ADVANCE = advance_status_sql("status", "$2::text")


async def _payment_of_charge(
    env: Env, conn: asyncpg.Connection, charge_id: str, intent_id: str
) -> int | None:
    """Our one-time payment of a charge (its row id), None if the charge is not a tip's.

    The API path records the charge id when it settles the payment, after the
    charge's own transaction has committed, and a refund's or dispute's event
    may be handled before that (a dispute has its own mailbox, and Stripe
    does not promise any order): the row is then found by its PaymentIntent,
    and failing that by the PaymentIntent's metadata, which names our row.
    """
    if charge_id:
        found = await conn.fetchval(
            "SELECT id FROM creator_subscriptions_payments WHERE charge_id = $1", charge_id
        )
        if found is not None:
            return int(found)
    if not intent_id:
        return None
    found = await conn.fetchval(
        "SELECT id FROM creator_subscriptions_payments WHERE payment_intent_id = $1", intent_id
    )
    if found is not None:
        return int(found)
    try:
        intent = await env.gateway.call("payment_intents", "retrieve", intent_id)
    except NotFound:
        return None  # not the platform's PaymentIntent, so not a tip's
    metadata = intent.get("metadata") or {}
    ours = str(metadata.get(PAYMENT_METADATA) or "")
    if metadata.get("plugin") != PLUGIN or not ours.isdigit():
        return None
    return int(ours)


async def on_charge_refunded(event: StripeEvent, ctx: HandlerContext) -> None:
    """A tip's charge refunded, through the API or in Stripe's dashboard: its refunded amount
    and status follow Stripe's (forward only; ``refund_status``: a charge never captured
    has nothing refunded). The engine posts the refund itself. Handled before the API
    path settled the tip, the refund shows all the same (``_payment_of_charge``), and
    the settle keeps it (its status only moves forward)."""
    charge = _object(event)
    status = refund_status(charge)
    if status is None or event.get("account"):
        return  # nothing refunded, or a connected account's charge (a tip is the platform's)
    env = Env.of(ctx.services)
    payment = await _payment_of_charge(
        env, ctx.conn, str(charge.get("id") or ""), _id(charge.get("payment_intent"))
    )
    if payment is None:
        return
    refunded = int(charge.get("amount_refunded") or 0)
    await ctx.conn.execute(
        f"""
        UPDATE creator_subscriptions_payments
        SET amount_refunded = GREATEST(amount_refunded, $3),
            status = {_ADVANCE}, updated_at = now()
        WHERE id = $1 AND amount_refunded < $3
        """,  # noqa: S608 - _ADVANCE is built from the engine's constant status names
        payment,
        status,
        refunded,
    )


async def on_refund_failed(event: StripeEvent, ctx: HandlerContext) -> None:
    """A refund of a tip's charge failed (``refund.failed``; ``refund.updated`` and
    ``charge.refund.updated`` saying ``failed``): its money is back, so the tip's
    refunded amount is Stripe's charge's again and a refund status goes back with
    it (``partially_refunded`` or ``succeeded``; a dispute's stays). The charge is
    read from Stripe, so the amount is right whichever of the refund's events comes
    first and however often. A refund the plugin made is marked ``failed``. The
    engine posts the money coming back (``refund_failure:<re>``)."""
    refund = _object(event)
    if refund.get("status") != "failed":
        return
    charge_id = _id(refund.get("charge"))
    payment = await ctx.conn.fetchrow(
        "SELECT id FROM creator_subscriptions_payments WHERE charge_id = $1 AND charge_id <> '' "
        "FOR UPDATE",
        charge_id,
    )
    if payment is None:
        return  # not a tip's or pay-per-view's charge
    await ctx.conn.execute(
        "UPDATE creator_subscriptions_refunds SET status = 'failed' WHERE stripe_refund_id = $1",
        str(refund.get("id") or ""),
    )
    charge = await Env.of(ctx.services).gateway.call("charges", "retrieve", charge_id)
    await ctx.conn.execute(
        """
        UPDATE creator_subscriptions_payments
        SET amount_refunded = $2,
            status = CASE
                WHEN status NOT IN ('partially_refunded', 'refunded') THEN status
                WHEN $2 <= 0 THEN 'succeeded'
                WHEN $2 >= amount THEN 'refunded'
                ELSE 'partially_refunded' END,
            updated_at = now()
        WHERE id = $1 AND amount_refunded > $2
        """,
        payment["id"],
        int(charge.get("amount_refunded") or 0),
    )


async def on_dispute(event: StripeEvent, ctx: HandlerContext) -> None:
    """A tip's charge disputed: its status shows it (``disputed``, then ``dispute_won`` or
    ``dispute_lost``; forward only). The engine posts the dispute's money. Handled
    before the API path settled the tip, the dispute shows all the same
    (``_payment_of_charge``), and the settle keeps it."""
    dispute = _object(event)
    if event.get("account"):
        return  # a connected account's charge: a tip is the platform's
    env = Env.of(ctx.services)
    payment = await _payment_of_charge(
        env, ctx.conn, _id(dispute.get("charge")), _id(dispute.get("payment_intent"))
    )
    if payment is None:
        return
    await ctx.conn.execute(
        f"""
        UPDATE creator_subscriptions_payments SET status = {_ADVANCE}, updated_at = now()
        WHERE id = $1
        """,  # noqa: S608 - _ADVANCE is built from the engine's constant status names
        payment,
        dispute_payment_status(str(event.get("type")), dispute),
    )


def registrations() -> list[WebhookRegistration]:
    """Every handler of the plugin, by Stripe event type."""
    table: list[tuple[str, WebhookHandler]] = [
        ("customer.subscription.created", on_subscription),
        ("customer.subscription.updated", on_subscription),
        ("customer.subscription.deleted", on_subscription),
        ("customer.subscription.paused", on_subscription),
        ("customer.subscription.resumed", on_subscription),
        ("invoice.finalized", on_invoice),
        ("invoice.updated", on_invoice),
        ("invoice.paid", on_invoice),
        ("invoice.payment_succeeded", on_invoice),
        ("invoice.payment_failed", on_invoice),
        ("invoice.payment_action_required", on_invoice),
        ("invoice.voided", on_invoice),
        ("invoice.marked_uncollectible", on_invoice),
        ("payment_intent.succeeded", on_payment_intent_succeeded),
        ("payment_intent.payment_failed", on_payment_intent_failed),
        ("setup_intent.succeeded", on_setup_intent),
        ("setup_intent.setup_failed", on_setup_intent),
        ("account.updated", on_account_updated),
        ("charge.refunded", on_charge_refunded),
        ("refund.failed", on_refund_failed),
        ("refund.updated", on_refund_failed),
        ("charge.refund.updated", on_refund_failed),
        ("charge.dispute.created", on_dispute),
        ("charge.dispute.updated", on_dispute),
        ("charge.dispute.closed", on_dispute),
        ("charge.dispute.funds_withdrawn", on_dispute),
        ("charge.dispute.funds_reinstated", on_dispute),
    ]
    return [
        WebhookRegistration(event_type, handler, f"{PLUGIN}.{handler.__name__}")
        for event_type, handler in table
    ]
