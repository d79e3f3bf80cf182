"""Fans: the platform's Stripe customers, with a default payment method for renewals.

Destination charges live on the platform, so a fan is one platform customer
whatever creators they support. A fan is known by the integrating service's
own reference (``external_ref``); registering the same reference again
returns the same fan (and sets a new payment method if one is given).
"""

from __future__ import annotations

import asyncpg

from engine.core.errors import Conflict, NotFound
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env, op_key
from plugins.creator_subscriptions.schemas import FanView, NewFan

__all__ = ["FanRow", "fan_row", "fan_view", "register_fan", "set_payment_method"]

FanRow = asyncpg.Record


def fan_view(row: asyncpg.Record) -> FanView:
    """The API view of a fan row."""
    return FanView(
        id=int(row["id"]),
        external_ref=str(row["external_ref"]),
        email=str(row["email"]),
        name=str(row["name"]),
        stripe_customer_id=row["stripe_customer_id"],
        has_payment_method=bool(row["default_payment_method"]),
    )


async def fan_row(conn: asyncpg.Connection, fan_id: int) -> asyncpg.Record:
    """The fan row, or ``NotFound``."""
    row = await conn.fetchrow("SELECT * FROM creator_subscriptions_fans WHERE id = $1", fan_id)
    if row is None:
        raise NotFound(f"no fan {fan_id}")
    return row


async def register_fan(env: Env, new: NewFan) -> FanView:
    """Create (or find) the fan and their Stripe customer; attach ``payment_method`` if given."""
    async with env.pool.acquire() as conn:
        row = await conn.fetchrow(
            """
            INSERT INTO creator_subscriptions_fans
                (external_ref, email, name, test_clock, created_at)
            VALUES ($1, $2, $3, $4, now())
            ON CONFLICT (external_ref) DO UPDATE SET external_ref = EXCLUDED.external_ref
            RETURNING *
            """,
            new.external_ref,
            new.email,
            new.name,
            new.test_clock,
        )
    if row["test_clock"] != new.test_clock and new.test_clock is not None:
        raise Conflict(f"fan {new.external_ref!r} exists on another test clock", field="test_clock")
    if row["stripe_customer_id"] is None:
        params: dict[str, object] = {
            "email": new.email or None,
            "name": new.name or None,
            "metadata": {"plugin": PLUGIN, f"{PLUGIN}_fan_id": str(row["id"])},
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
        return await set_payment_method(env, int(row["id"]), new.payment_method)
    return fan_view(row)


async def set_payment_method(env: Env, fan_id: int, payment_method: str) -> FanView:
    """Attach ``payment_method`` to the fan's customer and make it the default for invoices."""
    async with env.pool.acquire() as conn:
        row = await fan_row(conn, fan_id)
    customer = str(row["stripe_customer_id"])
    attached = await env.gateway.call(
        "payment_methods",
        "attach",
        payment_method,
        params={"customer": customer},
        # Keyed by what it replaces too: re-sending a test value ("pm_card_visa")
        # after it became the default is a new attachment, as it is in Stripe.
        idempotency_key=op_key(
            "fan", row["uid"], "attach", payment_method, row["default_payment_method"] or "none"
        ),
    )
    pm_id = str(attached["id"])
    await env.gateway.call(
        "customers",
        "update",
        customer,
        params={"invoice_settings": {"default_payment_method": pm_id}},
        idempotency_key=op_key("fan", row["uid"], "default_payment_method", pm_id),
    )
    async with env.pool.acquire() as conn:
        updated = await conn.fetchrow(
            "UPDATE creator_subscriptions_fans SET default_payment_method = $2 WHERE id = $1 "
            "RETURNING *",
            fan_id,
            pm_id,
        )
    return fan_view(updated)
