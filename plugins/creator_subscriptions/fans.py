"""Fans: the platform's Stripe customers, with a default payment method for renewals.

Destination charges live on the platform, so a fan is one platform customer
whatever creators they support. A fan is known by the integrating service's
own reference (``external_ref``); registering the same reference again
returns the same fan (and sets a new payment method if one is given).

A card is saved with a SetupIntent (``usage=off_session``), so renewals can be
charged without the fan. A card that asks for authentication to be saved leaves
the SetupIntent in ``requires_action``: the fan view carries the ``customer_action``
and the card becomes the default when ``setup_intent.succeeded`` arrives
(``card_saved``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec

from engine.core.authentication import CustomerAction, customer_action
from engine.core.errors import CardDeclined, Conflict, NotFound
from engine.payments import movements
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env, money_scope, op_key
from plugins.creator_subscriptions.schemas import FanView, NewFan

log = logging.getLogger(__name__)

__all__ = [
    "FAN_METADATA",
    "FanRow",
    "card_saved",
    "fan_row",
    "fan_view",
    "register_fan",
    "set_payment_method",
    "stored_action",
]

FanRow = asyncpg.Record
FAN_METADATA = f"{PLUGIN}_fan_id"
"""Metadata key on the fan's customer and SetupIntents naming our fan id."""


def stored_action(value: Any) -> CustomerAction | None:
    """A ``customer_action`` column (JSON) as the API shows it."""
    if value is None:
        return None
    raw = json.loads(value) if isinstance(value, str) else value
    return msgspec.convert(raw, CustomerAction)


def action_json(action: CustomerAction | None) -> str | None:
    """A ``CustomerAction`` for a ``customer_action`` column."""
    return None if action is None else msgspec.json.encode(action).decode()


def fan_view(row: asyncpg.Record) -> FanView:
    """The API view of a fan row."""
    return FanView(
        id=int(row["id"]),
        external_ref=str(row["external_ref"]),
        email=str(row["email"]),
        name=str(row["name"]),
        stripe_customer_id=row["stripe_customer_id"],
        has_payment_method=bool(row["default_payment_method"]),
        customer_action=stored_action(row["customer_action"]),
    )


async def fan_row(conn: asyncpg.Connection, fan_id: int) -> asyncpg.Record:
    """The fan row, or ``NotFound``."""
    row = await conn.fetchrow("SELECT * FROM creator_subscriptions_fans WHERE id = $1", fan_id)
    if row is None:
        raise NotFound(f"no fan {fan_id}")
    return row


async def register_fan(env: Env, new: NewFan) -> tuple[FanView, bool]:
    """Create (or find) the fan and their Stripe customer; attach ``payment_method`` if given.

    Returns the fan and whether it is new (``201``) or was found by ``external_ref`` (``200``).
    """
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            INSERT INTO creator_subscriptions_fans
                (external_ref, email, name, test_clock, created_at)
            VALUES ($1, $2, $3, $4, now())
            ON CONFLICT (external_ref) DO UPDATE SET external_ref = EXCLUDED.external_ref
            RETURNING *, (xmax = 0) AS created
            """,
            new.external_ref,
            new.email,
            new.name,
            new.test_clock,
        )
    created = bool(row["created"])
    if row["test_clock"] != new.test_clock and new.test_clock is not None:
        raise Conflict(f"fan {new.external_ref!r} exists on another test clock", field="test_clock")
    if row["stripe_customer_id"] is None:
        params: dict[str, object] = {
            "email": new.email or None,
            "name": new.name or None,
            "metadata": {"plugin": PLUGIN, FAN_METADATA: str(row["id"])},
        }
        if row["test_clock"]:
            params["test_clock"] = row["test_clock"]
        customer = await env.gateway.call(
            "customers",
            "create",
            params=params,
            idempotency_key=op_key("fan", row["uid"], "customer"),
        )
        async with env.pool.acquire() as conn:
            row = await conn.fetchrow(
                "UPDATE creator_subscriptions_fans SET stripe_customer_id = $2 WHERE id = $1 "
                "RETURNING *",
                row["id"],
                customer["id"],
            )
    if new.payment_method:
        return await set_payment_method(env, int(row["id"]), new.payment_method), created
    return fan_view(row), created


async def set_payment_method(env: Env, fan_id: int, payment_method: str) -> FanView:
    """Save ``payment_method`` for the fan with a SetupIntent and make it the default.

    If the card asks for authentication, the fan view carries the ``customer_action``
    and the current default stays until ``setup_intent.succeeded`` (``card_saved``).

    Raises:
        CardDeclined: the card cannot be saved (402); nothing changes.
    """
    async with env.pool.acquire() as conn:
        row = await fan_row(conn, fan_id)
    customer = str(row["stripe_customer_id"])
    setup = await env.gateway.call(
        "setup_intents",
        "create",
        params={
            "customer": customer,
            "payment_method": payment_method,
            # A saved card confirmed server-side: no redirect-based method applies.
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "usage": "off_session",
            "confirm": True,
            "metadata": {"plugin": PLUGIN, FAN_METADATA: str(fan_id)},
        },
        # Keyed by what it replaces too: re-sending a test value ("pm_card_visa")
        # after it became the default is a new card, as it is in Stripe.
        idempotency_key=op_key(
            "fan", row["uid"], "setup", payment_method, row["default_payment_method"] or "none"
        ),
    )
    if setup.get("status") == "succeeded":
        return fan_view(await card_saved(env, fan_id, setup))
    async with env.pool.acquire() as conn:
        updated = await conn.fetchrow(
            "UPDATE creator_subscriptions_fans SET customer_action = $2::jsonb WHERE id = $1 "
            "RETURNING *",
            fan_id,
            action_json(customer_action(setup)),
        )
    return fan_view(updated)


async def card_saved(
    env: Env, fan_id: int, setup: Mapping[str, Any], conn: asyncpg.Connection | None = None
) -> asyncpg.Record:
    """A SetupIntent of the fan succeeded: its card becomes the default for invoices.

    ``conn``: the webhook's transaction, when called from the ``setup_intent.succeeded``
    handler; else a connection of the pool.
    """
    if conn is None:
        async with env.pool.acquire() as own:
            return await card_saved(env, fan_id, setup, own)
    pm_id = str(setup.get("payment_method") or "")
    row = await fan_row(conn, fan_id)
    waiting = stored_action(row["customer_action"])
    if row["default_payment_method"] == pm_id and (
        waiting is None or waiting.intent_id != setup.get("id")
    ):
        return row  # already the default (the API saw it succeed): no write, no row lock
    if row["default_payment_method"] != pm_id:
        await env.gateway.call(
            "customers",
            "update",
            str(row["stripe_customer_id"]),
            params={"invoice_settings": {"default_payment_method": pm_id}},
            idempotency_key=op_key("fan", row["uid"], "default_payment_method", pm_id),
        )
        await card_reaches_subscriptions(env, conn, row, pm_id)
    updated: asyncpg.Record = await conn.fetchrow(
        """
        UPDATE creator_subscriptions_fans
        SET default_payment_method = $2,
            customer_action = CASE WHEN customer_action->>'intent_id' = $3
                                   THEN NULL ELSE customer_action END
        WHERE id = $1
        RETURNING *
        """,
        fan_id,
        pm_id,
        str(setup.get("id") or ""),
    )
    return updated


_LIVE_STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete")


async def card_reaches_subscriptions(
    env: Env, conn: asyncpg.Connection, fan: Mapping[str, Any], pm_id: str
) -> list[str]:
    """A new default card reaches what charges it later; past-due invoices retried at once.

    Each of the fan's live subscriptions keeps its own ``default_payment_method``
    (set when it was created), which Stripe prefers over the customer's: it is
    switched to ``pm_id``. Then every open invoice of the fan's customer is paid
    with the new card (``movements.pay_invoice``, key
    ``creator_subscriptions:fan:<id>:pay_invoice:<in>:retry_with:<pm>``), so a
    subscription in dunning recovers now instead of at Stripe's next retry. A retry
    the card declines again is left to dunning. Returns the ids of the invoices paid.
    """
    subscriptions = await conn.fetch(
        "SELECT stripe_subscription_id FROM creator_subscriptions_subscriptions "
        "WHERE fan = $1 AND stripe_subscription_id IS NOT NULL AND status = ANY($2::text[])",
        int(fan["id"]),
        list(_LIVE_STATUSES),
    )
    for row in subscriptions:
        await env.gateway.call(
            "subscriptions",
            "update",
            str(row["stripe_subscription_id"]),
            params={"default_payment_method": pm_id},
            idempotency_key=op_key(
                "subscription", row["stripe_subscription_id"], "default_payment_method", pm_id
            ),
        )
    customer = str(fan["stripe_customer_id"] or "")
    if not customer:
        return []
    invoices = await env.gateway.call(
        "invoices", "list", params={"customer": customer, "status": "open", "limit": 100}
    )
    paid: list[str] = []
    for invoice in invoices.get("data") or []:
        try:
            answer = await movements.pay_invoice(
                money_scope(env, conn, f"{PLUGIN}:fan:{fan['id']}"),
                str(invoice["id"]),
                operation=("retry_with", pm_id),
                payment_method=pm_id,
            )
        except CardDeclined as declined:
            log.info("invoice %s declined again with %s: %s", invoice["id"], pm_id, declined)
            continue
        if answer.get("status") == "paid":
            paid.append(str(invoice["id"]))
    return paid
