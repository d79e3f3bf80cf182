"""Subscriptions: subscribe, change tier (prorated), pause, resume, cancel.

A subscription is a Stripe subscription on the platform with
``transfer_data[destination]`` = the creator's account and
``application_fee_percent`` from the commission hooks (``pricing.fee_percent``),
so every invoice is a destination charge that pays the creator and the
platform in one go. Stripe's answer to each call is applied at once
(``force``: it is Stripe's state at that moment); the webhooks that follow
keep the row in step order-insensitively (``sync``).

Idempotency keys name the row's ``uid`` and its ``revision`` (bumped by every
change), so a retried change is one Stripe operation and two changes are two.

Authentication (3D Secure): a first invoice whose payment waits for the fan leaves
the subscription ``incomplete`` with the ``customer_action`` in its view; a renewal
that does (``invoice.payment_action_required``) marks it ``action_required`` with the
hosted invoice page and the client secret. Either clears when the invoice is paid.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from engine.core.authentication import CustomerAction, customer_action
from engine.core.contributions import MAILBOX_ACCOUNT_METADATA
from engine.core.errors import CardDeclined, Conflict, InvalidInput, MarketplaceError, NotFound
from engine.core.money import Money
from engine.core.orders import LifecycleEvent
from engine.payments.records import meaning_metadata
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import (
    Env,
    creator_by_id,
    op_key,
    require_selling,
)
from plugins.creator_subscriptions.fans import action_json, fan_row, stored_action
from plugins.creator_subscriptions.pricing import fee_percent, priced, subscription_order
from plugins.creator_subscriptions.schemas import (
    ChangeTier,
    InvoiceIds,
    NewSubscription,
    SubscriptionView,
)
from plugins.creator_subscriptions.sync import (
    TERMINAL_STATUSES,
    SubscriptionState,
    merge,
    snapshot_of,
)
from plugins.creator_subscriptions.tiers import TIER_METADATA, tier_row

__all__ = [
    "SUBSCRIPTION_METADATA",
    "cancel_subscription",
    "change_tier",
    "get_subscription",
    "pause_subscription",
    "resume_subscription",
    "save_state",
    "state_of",
    "subscribe",
    "subscription_view",
]

SUBSCRIPTION_METADATA = f"{PLUGIN}_subscription_id"
"""Metadata key on Stripe subscriptions (and so their invoices) naming our row id."""

LIVE = ("pending", "incomplete", "trialing", "active", "past_due", "unpaid", "paused")


def state_of(row: Mapping[str, Any]) -> SubscriptionState:
    """The mirrored state held in a subscription row."""
    return SubscriptionState(
        status=str(row["status"]),
        status_at_event=int(row["status_at_event"]),
        stripe_price_id=str(row["stripe_price_id"]),
        price_at_event=int(row["price_at_event"]),
        current_period_start=int(row["current_period_start"]),
        current_period_end=int(row["current_period_end"]),
        cancel_at_period_end=bool(row["cancel_at_period_end"]),
        cancel_at=row["cancel_at"],
        canceled_at=row["canceled_at"],
        cancel_at_event=int(row["cancel_at_event"]),
        paused=bool(row["paused"]),
        pause_behavior=str(row["pause_behavior"]),
        pause_at_event=int(row["pause_at_event"]),
    )


async def save_state(
    conn: asyncpg.Connection, row_id: int, state: SubscriptionState, *, tier_id: int | None = None
) -> asyncpg.Record:
    """Write the mirrored state (and the tier the price belongs to, when known)."""
    updated: asyncpg.Record = await conn.fetchrow(
        """
        UPDATE creator_subscriptions_subscriptions
        SET status = $2, status_at_event = $3, stripe_price_id = $4, price_at_event = $5,
            current_period_start = $6, current_period_end = $7, cancel_at_period_end = $8,
            cancel_at = $9, canceled_at = $10, cancel_at_event = $11, paused = $12,
            pause_behavior = $13, pause_at_event = $14, tier = COALESCE($15, tier),
            updated_at = now()
        WHERE id = $1
        RETURNING *
        """,
        row_id,
        state.status,
        state.status_at_event,
        state.stripe_price_id,
        state.price_at_event,
        state.current_period_start,
        state.current_period_end,
        state.cancel_at_period_end,
        state.cancel_at,
        state.canceled_at,
        state.cancel_at_event,
        state.paused,
        state.pause_behavior,
        state.pause_at_event,
        tier_id,
    )
    return updated


def subscription_view(row: Mapping[str, Any]) -> SubscriptionView:
    """The API view of a subscription row."""
    return SubscriptionView(
        id=int(row["id"]),
        stripe_subscription_id=row["stripe_subscription_id"],
        fan_id=int(row["fan"]),
        creator_account_id=str(row["account_id"]),
        tier_id=int(row["tier"]),
        status=str(row["status"]),
        currency=str(row["currency"]),
        current_period_start=int(row["current_period_start"]),
        current_period_end=int(row["current_period_end"]),
        cancel_at_period_end=bool(row["cancel_at_period_end"]),
        canceled_at=row["canceled_at"],
        paused=bool(row["paused"]),
        application_fee_percent=str(row["application_fee_percent"]),
        rule_id=str(row["rule_id"]),
        rule_version=int(row["rule_version"]),
        action_required=row["customer_action"] is not None,
        customer_action=stored_action(row["customer_action"]),
    )


async def invoice_intent(
    env: Env, invoice_id: str, *, status: str | None = None
) -> dict[str, Any] | None:
    """The invoice's PaymentIntent, through its InvoicePayments (``payment.payment_intent``).

    The engine's API version keeps an invoice's payments in InvoicePayment objects
    (``GET /v1/invoice_payments?invoice=``), not on the invoice.
    """
    params: dict[str, Any] = {
        "invoice": invoice_id,
        "payment": {"type": "payment_intent"},
        "expand": ["data.payment.payment_intent"],
        "limit": 10,
    }
    if status is not None:
        params["status"] = status
    page = await env.gateway.call("invoice_payments", "list", params=params)
    for payment in page.get("data") or []:
        intent = (payment.get("payment") or {}).get("payment_intent")
        if isinstance(intent, Mapping):
            return dict(intent)
    return None


async def invoice_action(env: Env, invoice: Mapping[str, Any]) -> CustomerAction | None:
    """What the fan must do to pay an open invoice (None if its payment waits for nothing)."""
    intent = await invoice_intent(env, str(invoice["id"]), status="open")
    if intent is None:
        return None
    return customer_action(intent, hosted_invoice_url=invoice.get("hosted_invoice_url"))


async def save_action(
    conn: asyncpg.Connection, row_id: int, invoice_id: str, action: CustomerAction | None
) -> asyncpg.Record:
    """Mark the subscription "action required" for ``invoice_id`` (or clear it: None)."""
    updated: asyncpg.Record = await conn.fetchrow(
        """
        UPDATE creator_subscriptions_subscriptions
        SET customer_action = $3::jsonb, action_invoice = $2, updated_at = now()
        WHERE id = $1 RETURNING *
        """,
        row_id,
        invoice_id if action is not None else None,
        action_json(action),
    )
    return updated


async def _row(conn: asyncpg.Connection, subscription_id: int, *, lock: bool = False) -> Any:
    query = "SELECT * FROM creator_subscriptions_subscriptions WHERE id = $1"
    row = await conn.fetchrow(query + (" FOR UPDATE" if lock else ""), subscription_id)
    if row is None:
        raise NotFound(f"no subscription {subscription_id}")
    return row


async def get_subscription(env: Env, subscription_id: int) -> SubscriptionView:
    """One subscription as mirrored, with its invoices' Stripe ids."""
    async with env.pool.acquire() as conn:
        row = await _row(conn, subscription_id)
        invoices = await conn.fetch(
            """
            SELECT stripe_invoice_id, status, amount_paid, application_fee, creator_earnings,
                   payment_intent_id, charge_id, transfer_id, period_start, period_end
            FROM creator_subscriptions_invoices WHERE subscription = $1
            ORDER BY stripe_created DESC, id DESC LIMIT 100
            """,
            subscription_id,
        )
    return msgspec.structs.replace(
        subscription_view(row),
        invoices=[
            InvoiceIds(
                invoice=str(invoice["stripe_invoice_id"]),
                status=str(invoice["status"]),
                amount_paid=int(invoice["amount_paid"]),
                application_fee=int(invoice["application_fee"]),
                creator_earnings=int(invoice["creator_earnings"]),
                payment_intent=invoice["payment_intent_id"] or None,
                charge=invoice["charge_id"] or None,
                transfer=invoice["transfer_id"] or None,
                period_start=int(invoice["period_start"]),
                period_end=int(invoice["period_end"]),
            )
            for invoice in invoices
        ],
    )


def _metadata(row: Mapping[str, Any], tier_id: int) -> dict[str, str]:
    return {
        # The engine leaves the subscription's invoices to this plugin, which records and
        # posts each paid one (``invoice.paid``): without it their charges would be
        # movements made outside the engine, posted with no business meaning.
        **meaning_metadata(PLUGIN, f"{PLUGIN}:subscription:{row['id']}"),
        "plugin": PLUGIN,
        SUBSCRIPTION_METADATA: str(row["id"]),
        "creator_account": str(row["account_id"]),
        TIER_METADATA: str(tier_id),
        # Its invoices' events then share the creator's mailbox with the subscription's.
        MAILBOX_ACCOUNT_METADATA: str(row["account_id"]),
    }


async def _apply_answer(
    conn: asyncpg.Connection,
    row: Mapping[str, Any],
    answer: Mapping[str, Any],
    *,
    tier_id: int | None = None,
    percent: Decimal | None = None,
    rule: tuple[str, int] | None = None,
) -> asyncpg.Record:
    """Apply Stripe's answer to a call: Stripe's state now, so it wins what it can."""
    state = state_of(row)
    newest = max(
        state.status_at_event, state.price_at_event, state.cancel_at_event, state.pause_at_event
    )
    result = merge(state, snapshot_of(answer), newest, force=True)
    await save_state(conn, int(row["id"]), result.state)
    updated: asyncpg.Record = await conn.fetchrow(
        """
        UPDATE creator_subscriptions_subscriptions
        SET stripe_subscription_id = COALESCE(stripe_subscription_id, $2),
            tier = COALESCE($3, tier),
            application_fee_percent = COALESCE($4, application_fee_percent),
            rule_id = COALESCE($5, rule_id), rule_version = COALESCE($6, rule_version),
            updated_at = now()
        WHERE id = $1
        RETURNING *
        """,
        row["id"],
        answer["id"],
        tier_id,
        percent,
        rule[0] if rule else None,
        rule[1] if rule else None,
    )
    return updated


def _notify(env: Env, name: str, row: Mapping[str, Any], **data: Any) -> None:
    env.plugins.notify_lifecycle(
        LifecycleEvent(
            f"{PLUGIN}.subscription.{name}",
            subject_id=f"{PLUGIN}:subscription:{row['id']}",
            account_id=str(row["account_id"]),
            data={"fan_id": int(row["fan"]), "tier_id": int(row["tier"]), **data},
        )
    )


async def subscribe(
    env: Env, new: NewSubscription, *, operation: str | None = None
) -> SubscriptionView:
    """Subscribe a fan to a tier; the first period is charged at once.

    Args:
        env: the plugin's environment.
        new: the fan and the tier.
        operation: the request's identity (API key + ``Idempotency-Key``): a
            retry after an error of ours (5xx) repeats the same Stripe
            operation instead of starting a second subscription.

    Raises:
        AccountNotReady: the creator cannot take charges yet (409).
        Conflict: the tier is archived, or the fan already has a live
            subscription to this creator (change its tier instead).
        CardDeclined: the first payment failed (402); nothing is subscribed (the
            incomplete Stripe subscription is cancelled).

    A first payment that waits for the fan's authentication leaves the subscription
    ``incomplete`` with its ``customer_action``; it becomes ``active`` (webhooks) once
    the fan has authenticated.
    """
    row = None
    if operation is not None:
        async with env.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM creator_subscriptions_subscriptions WHERE operation = $1", operation
            )
        if row is not None and (int(row["fan"]), int(row["tier"])) != (new.fan_id, new.tier_id):
            raise Conflict("this operation subscribed another fan or tier", field="operation")
        if row is not None and row["stripe_subscription_id"]:
            return subscription_view(row)
    async with env.pool.acquire() as conn:
        tier = await tier_row(conn, new.tier_id)
        if tier["archived"] or not tier["stripe_price_id"]:
            raise Conflict(f"tier {new.tier_id} is not on sale", field="tier_id")
        creator = await creator_by_id(conn, await _tier_creator(conn, new.tier_id))
        await require_selling(conn, creator)
        fan = await fan_row(conn, new.fan_id)
        if not fan["default_payment_method"] or not fan["stripe_customer_id"]:
            raise Conflict(f"fan {new.fan_id} has no payment method", field="fan_id")
        if row is None:
            row = await _new_subscription_row(env, conn, fan, creator, tier, operation=operation)
    try:
        answer = await env.gateway.call(
            "subscriptions",
            "create",
            params={
                "customer": fan["stripe_customer_id"],
                "items": [{"price": tier["stripe_price_id"]}],
                "default_payment_method": fan["default_payment_method"],
                "transfer_data": {"destination": creator.account_id},
                "application_fee_percent": str(row["application_fee_percent"]),
                # Not error_if_incomplete: a payment that needs the fan's authentication
                # must leave an incomplete subscription to authenticate, not an error.
                "payment_behavior": "allow_incomplete",
                "metadata": _metadata(row, int(tier["id"])),
                "expand": ["latest_invoice"],
            },
            idempotency_key=op_key("subscription", row["uid"], "create"),
        )
    except MarketplaceError as exc:
        if exc.status < 500:
            # Stripe refused it (declined, invalid): nothing exists there to mirror.
            async with env.pool.acquire() as conn:
                await conn.execute(
                    "UPDATE creator_subscriptions_subscriptions SET status = 'failed', "
                    "updated_at = now() WHERE id = $1 AND stripe_subscription_id IS NULL",
                    row["id"],
                )
        # Otherwise the outcome is unknown: the row stays pending, a webhook claims it
        # if Stripe made the subscription, and a retry of the request repeats the call.
        raise
    invoice = answer.get("latest_invoice")
    action = None
    if answer.get("status") == "incomplete" and isinstance(invoice, Mapping):
        action = await invoice_action(env, invoice)
        if action is None or action.status != "requires_action":
            await _give_up(env, row, answer, action)
    async with env.pool.acquire() as conn, conn.transaction():
        locked = await _row(conn, int(row["id"]), lock=True)
        updated = await _apply_answer(conn, locked, answer)
        if action is not None and isinstance(invoice, Mapping):
            updated = await save_action(conn, int(row["id"]), str(invoice["id"]), action)
    _notify(env, "created", updated, application_fee_percent=str(row["application_fee_percent"]))
    if action is not None:
        _notify(env, "action_required", updated, **_action_data(action))
    return subscription_view(updated)


def _action_data(action: CustomerAction) -> dict[str, Any]:
    """What a lifecycle notice says about an action (no client secret: notices travel)."""
    return {
        "payment_intent": action.intent_id,
        "hosted_invoice_url": action.hosted_invoice_url,
        "reason": action.reason,
    }


async def _give_up(
    env: Env, row: Mapping[str, Any], answer: Mapping[str, Any], action: CustomerAction | None
) -> None:
    """The first payment was declined: cancel the incomplete subscription, raise the decline."""
    await env.gateway.call(
        "subscriptions",
        "cancel",
        str(answer["id"]),
        idempotency_key=op_key("subscription", row["uid"], "declined_cancel"),
    )
    async with env.pool.acquire() as conn:
        await conn.execute(
            # Whether or not a webhook already claimed the row: nothing is subscribed.
            "UPDATE creator_subscriptions_subscriptions SET status = 'failed', "
            "updated_at = now() WHERE id = $1",
            row["id"],
        )
    reason = action.reason if action is not None else None
    raise CardDeclined(
        "the first payment of the subscription was declined",
        decline_code=reason or "generic_decline",
    )


async def _new_subscription_row(
    env: Env,
    conn: asyncpg.Connection,
    fan: Mapping[str, Any],
    creator: Any,
    tier: Mapping[str, Any],
    *,
    operation: str | None,
) -> asyncpg.Record:
    """Insert the pending row, priced, unless the fan already has a live one for the creator."""
    async with conn.transaction():
        # One live membership per fan and creator (serialised per fan). A pending row
        # whose Stripe call never answered stops counting after an hour.
        await conn.execute(
            "SELECT 1 FROM creator_subscriptions_fans WHERE id = $1 FOR UPDATE", fan["id"]
        )
        existing = await conn.fetchval(
            """
            SELECT id FROM creator_subscriptions_subscriptions
            WHERE fan = $1 AND creator = $2 AND status = ANY($3::text[])
              AND NOT (status = 'pending' AND stripe_subscription_id IS NULL
                       AND created_at < now() - interval '1 hour')
            """,
            fan["id"],
            creator.id,
            list(LIVE),
        )
        if existing is not None:
            raise Conflict(
                f"fan {fan['id']} already subscribes to this creator (subscription "
                f"{existing}); change its tier instead",
                subscription_id=int(existing),
            )
        row = await conn.fetchrow(
            """
            INSERT INTO creator_subscriptions_subscriptions
                (fan, creator, tier, account_id, customer_id, currency, status,
                 application_fee_percent, operation, meaning_marked, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, true, now(), now())
            RETURNING *
            """,
            fan["id"],
            creator.id,
            tier["id"],
            creator.account_id,
            fan["stripe_customer_id"],
            tier["currency"],
            operation,
        )
        pricing = await priced(env, conn, _order(row, tier))
        priced_row: asyncpg.Record = await conn.fetchrow(
            """
            UPDATE creator_subscriptions_subscriptions
            SET application_fee_percent = $2, rule_id = $3, rule_version = $4
            WHERE id = $1 RETURNING *
            """,
            row["id"],
            fee_percent(pricing),
            pricing.commission.rule_id,
            pricing.commission.rule_version,
        )
        return priced_row


async def _tier_creator(conn: asyncpg.Connection, tier_id: int) -> int:
    return int(
        await conn.fetchval(
            "SELECT creator FROM creator_subscriptions_tiers WHERE id = $1", tier_id
        )
    )


def _order(row: Mapping[str, Any], tier: Mapping[str, Any]) -> Any:
    return subscription_order(
        account_id=str(row["account_id"]),
        tier_id=int(tier["id"]),
        tier_name=str(tier["name"]),
        interval=str(tier["interval"]),
        price=Money(int(tier["amount"]), str(tier["currency"])),
        reference=f"{PLUGIN}:subscription:{row['id']}",
    )


def _yearly(tier: Mapping[str, Any]) -> int:
    """What a tier costs over a year, to tell an upgrade from a downgrade."""
    return int(tier["amount"]) * (12 if tier["interval"] == "month" else 1)


async def _begin_change(conn: asyncpg.Connection, subscription_id: int) -> tuple[Any, int]:
    """Lock a live subscription and take the next revision for a Stripe change."""
    row = await _row(conn, subscription_id, lock=True)
    if row["status"] in TERMINAL_STATUSES or not row["stripe_subscription_id"]:
        raise Conflict(f"subscription {subscription_id} is {row['status']}", status=row["status"])
    revision = int(
        await conn.fetchval(
            "UPDATE creator_subscriptions_subscriptions SET revision = revision + 1 "
            "WHERE id = $1 RETURNING revision",
            subscription_id,
        )
    )
    return row, revision


async def change_tier(env: Env, subscription_id: int, change: ChangeTier) -> SubscriptionView:
    """Move to another tier of the same creator, prorated by seconds of the period.

    An upgrade (dearer per year) uses ``upgrade_proration`` (default: invoice
    the difference now), a downgrade ``downgrade_proration`` (default: credit
    the next renewal). The fee percentage is re-priced for the new tier and
    applies from the proration on. A declined upgrade leaves the subscription
    as it was (402).
    """
    async with env.pool.acquire() as conn, conn.transaction():
        row, revision = await _begin_change(conn, subscription_id)
        old_tier = await tier_row(conn, int(row["tier"]))
        tier = await tier_row(conn, change.tier_id)
        if int(tier["id"]) == int(old_tier["id"]):
            raise Conflict(f"subscription {subscription_id} is already on tier {tier['id']}")
        if tier["account_id"] != row["account_id"]:
            raise InvalidInput("the tier belongs to another creator", field="tier_id")
        if tier["archived"] or not tier["stripe_price_id"]:
            raise Conflict(f"tier {tier['id']} is not on sale", field="tier_id")
        if tier["currency"] != row["currency"]:
            raise InvalidInput("the tier is in another currency", field="tier_id")
        creator = await creator_by_id(conn, int(row["creator"]))
        await require_selling(conn, creator)
        pricing = await priced(env, conn, _order(row, tier))
        percent = fee_percent(pricing)
        upgrade = _yearly(tier) > _yearly(old_tier)
        proration = env.config.upgrade_proration if upgrade else env.config.downgrade_proration
        current = await env.gateway.call(
            "subscriptions", "retrieve", str(row["stripe_subscription_id"])
        )
        item_id = current["items"]["data"][0]["id"]
        answer = await env.gateway.call(
            "subscriptions",
            "update",
            str(row["stripe_subscription_id"]),
            params={
                "items": [{"id": item_id, "price": tier["stripe_price_id"]}],
                "proration_behavior": proration,
                "application_fee_percent": str(percent),
                "payment_behavior": "error_if_incomplete",
                "metadata": _metadata(row, int(tier["id"])),
            },
            idempotency_key=op_key("subscription", row["uid"], "change", revision),
        )
        updated = await _apply_answer(
            conn,
            row,
            answer,
            tier_id=int(tier["id"]),
            percent=percent,
            rule=(pricing.commission.rule_id, pricing.commission.rule_version),
        )
    _notify(
        env,
        "tier_changed",
        updated,
        from_tier_id=int(old_tier["id"]),
        upgrade=upgrade,
        proration=proration,
        application_fee_percent=str(percent),
    )
    return subscription_view(updated)


async def _update(
    env: Env, subscription_id: int, params: Mapping[str, Any], operation: str
) -> asyncpg.Record:
    async with env.pool.acquire() as conn, conn.transaction():
        row, revision = await _begin_change(conn, subscription_id)
        answer = await env.gateway.call(
            "subscriptions",
            "update",
            str(row["stripe_subscription_id"]),
            params=params,
            idempotency_key=op_key("subscription", row["uid"], operation, revision),
        )
        return await _apply_answer(conn, row, answer)


async def pause_subscription(env: Env, subscription_id: int) -> SubscriptionView:
    """Stop collecting (``pause_collection``); renewals are voided until resumed."""
    row = await _update(
        env,
        subscription_id,
        {"pause_collection": {"behavior": env.config.pause_behavior}},
        "pause",
    )
    _notify(env, "paused", row)
    return subscription_view(row)


async def resume_subscription(env: Env, subscription_id: int) -> SubscriptionView:
    """Collect again from the next renewal on."""
    row = await _update(env, subscription_id, {"pause_collection": ""}, "resume")
    _notify(env, "resumed", row)
    return subscription_view(row)


async def cancel_subscription(
    env: Env, subscription_id: int, *, at_period_end: bool
) -> SubscriptionView:
    """Cancel now, or at the end of the paid period (``at_period_end``; undo with ``keep``)."""
    if at_period_end:
        row = await _update(env, subscription_id, {"cancel_at_period_end": True}, "cancel_later")
        _notify(env, "cancel_scheduled", row, cancel_at=row["cancel_at"])
        return subscription_view(row)
    async with env.pool.acquire() as conn, conn.transaction():
        row, _ = await _begin_change(conn, subscription_id)
        answer = await env.gateway.call(
            "subscriptions",
            "cancel",
            str(row["stripe_subscription_id"]),
            idempotency_key=op_key("subscription", row["uid"], "cancel"),
        )
        updated = await _apply_answer(conn, row, answer)
    _notify(env, "canceled", updated, reason="requested")
    return subscription_view(updated)


async def keep_subscription(env: Env, subscription_id: int) -> SubscriptionView:
    """Undo a cancellation scheduled for the period's end."""
    row = await _update(env, subscription_id, {"cancel_at_period_end": False}, "keep")
    _notify(env, "cancel_unscheduled", row)
    return subscription_view(row)
