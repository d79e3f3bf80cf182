"""Tiers: a creator's membership levels as Stripe products and recurring prices.

Stripe prices are immutable, so re-pricing a tier creates a new price (its
``price_version`` goes up) and deactivates the old one; subscribers keep the
price they have. Archiving deactivates the price and the product: nobody new
can subscribe, existing subscriptions keep renewing on their price.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from engine.core.errors import Conflict, InvalidInput, NotFound
from engine.core.money import Money, normalize_currency
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env, creator_by_account, op_key
from plugins.creator_subscriptions.schemas import NewTier, TierUpdate, TierView

__all__ = ["TIER_METADATA", "archive_tier", "create_tier", "get_tier", "list_tiers", "update_tier"]

TIER_METADATA = f"{PLUGIN}_tier_id"
"""Metadata key on Stripe products and prices naming our tier id."""

_SELECT = """
SELECT id, uid, account_id, name, description, amount, currency, interval, archived,
       stripe_product_id, stripe_price_id, price_version
FROM creator_subscriptions_tiers
"""


def tier_view(row: asyncpg.Record) -> TierView:
    """The API view of a tier row."""
    return TierView(
        id=int(row["id"]),
        creator_account_id=str(row["account_id"]),
        name=str(row["name"]),
        description=str(row["description"]),
        amount=int(row["amount"]),
        currency=str(row["currency"]),
        interval=str(row["interval"]),
        archived=bool(row["archived"]),
        stripe_product_id=row["stripe_product_id"],
        stripe_price_id=row["stripe_price_id"],
    )


async def tier_row(conn: asyncpg.Connection, tier_id: int) -> asyncpg.Record:
    """The tier row, or ``NotFound``."""
    row = await conn.fetchrow(_SELECT + " WHERE id = $1", tier_id)
    if row is None:
        raise NotFound(f"no tier {tier_id}")
    return row


async def get_tier(env: Env, tier_id: int) -> TierView:
    """One tier."""
    async with env.pool.acquire() as conn:
        return tier_view(await tier_row(conn, tier_id))


async def list_tiers(
    env: Env, account_id: str, *, include_archived: bool = False
) -> list[TierView]:
    """A creator's tiers, cheapest first."""
    async with env.pool.acquire() as conn:
        await creator_by_account(conn, account_id)
        rows = await conn.fetch(
            _SELECT + " WHERE account_id = $1 AND ($2 OR NOT archived) ORDER BY amount, id",
            account_id,
            include_archived,
        )
    return [tier_view(row) for row in rows]


def _metadata(account_id: str, tier_id: int) -> dict[str, str]:
    return {"plugin": PLUGIN, "creator_account": account_id, TIER_METADATA: str(tier_id)}


async def _create_price(
    env: Env, row: asyncpg.Record, product_id: str, amount: int, key: str
) -> str:
    price = await env.gateway.call(
        "prices",
        "create",
        params={
            "product": product_id,
            "unit_amount": amount,
            "currency": row["currency"],
            "recurring": {"interval": row["interval"]},
            "metadata": _metadata(row["account_id"], row["id"]),
        },
        idempotency_key=key,
    )
    return str(price["id"])


async def create_tier(env: Env, account_id: str, new: NewTier) -> TierView:
    """Create the tier, its Stripe product and its first price.

    Without ``currency`` the tier is priced in the creator's account's default
    currency (Stripe's ``default_currency`` of the connected account), and in the
    plugin's ``default_currency`` only when the account has none.
    """
    if new.interval not in env.config.intervals:
        raise InvalidInput(
            f"interval {new.interval!r} is not offered "
            f"(allowed: {', '.join(env.config.intervals)})",
            field="interval",
        )
    async with env.pool.acquire() as conn:
        creator = await creator_by_account(conn, account_id)
        currency = normalize_currency(
            new.currency or creator.default_currency or env.config.default_currency
        )
        Money(new.amount, currency)  # validates the amount as minor units
        row = await conn.fetchrow(
            """
            INSERT INTO creator_subscriptions_tiers
                (creator, account_id, name, description, amount, currency, interval,
                 price_version, archived, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, 1, false, now(), now())
            RETURNING id, uid, account_id, currency, interval
            """,
            creator.id,
            account_id,
            new.name,
            new.description,
            new.amount,
            currency,
            new.interval,
        )
    product = await env.gateway.call(
        "products",
        "create",
        params={
            "name": f"{creator.display_name}: {new.name}",
            "description": new.description or None,
            "metadata": _metadata(account_id, row["id"]),
        },
        idempotency_key=op_key("tier", row["uid"], "product"),
    )
    price_id = await _create_price(
        env, row, str(product["id"]), new.amount, op_key("tier", row["uid"], "price", 1)
    )
    async with env.pool.acquire() as conn:
        updated = await conn.fetchrow(
            """
            UPDATE creator_subscriptions_tiers
            SET stripe_product_id = $2, stripe_price_id = $3, updated_at = now()
            WHERE id = $1
            RETURNING *
            """,
            row["id"],
            product["id"],
            price_id,
        )
    return tier_view(updated)


async def update_tier(env: Env, tier_id: int, change: TierUpdate) -> TierView:
    """Rename or re-describe the product; re-price with a new price (old one deactivated)."""
    async with env.pool.acquire() as conn:
        row = await tier_row(conn, tier_id)
        if row["archived"]:
            raise Conflict(f"tier {tier_id} is archived", tier_id=tier_id)
        # Each update is its own Stripe operation (renaming A -> B -> A is three).
        revision = await conn.fetchval(
            "UPDATE creator_subscriptions_tiers SET revision = revision + 1 WHERE id = $1 "
            "RETURNING revision",
            tier_id,
        )
    product_params: dict[str, Any] = {}
    if change.name is not None:
        product_params["name"] = change.name
    if change.description is not None:
        product_params["description"] = change.description or ""
    if product_params and row["stripe_product_id"]:
        await env.gateway.call(
            "products",
            "update",
            row["stripe_product_id"],
            params=product_params,
            idempotency_key=op_key("tier", row["uid"], "product", "update", revision),
        )
    price_id = row["stripe_price_id"]
    version = int(row["price_version"])
    amount = int(row["amount"])
    if change.amount is not None and change.amount != amount:
        version += 1
        amount = change.amount
        new_price = await _create_price(
            env,
            row,
            str(row["stripe_product_id"]),
            amount,
            op_key("tier", row["uid"], "price", "revision", revision),
        )
        if price_id:
            await env.gateway.call(
                "prices",
                "update",
                price_id,
                params={"active": False},
                idempotency_key=op_key("tier", row["uid"], "price", price_id, "deactivate"),
            )
        price_id = new_price
    async with env.pool.acquire() as conn:
        updated = await conn.fetchrow(
            """
            UPDATE creator_subscriptions_tiers
            SET name = COALESCE($2, name), description = COALESCE($3, description),
                amount = $4, stripe_price_id = $5, price_version = $6, updated_at = now()
            WHERE id = $1
            RETURNING *
            """,
            tier_id,
            change.name,
            change.description,
            amount,
            price_id,
            version,
        )
    return tier_view(updated)


async def archive_tier(env: Env, tier_id: int) -> TierView:
    """Stop selling the tier: deactivate its price and product; subscribers keep theirs."""
    async with env.pool.acquire() as conn:
        row = await tier_row(conn, tier_id)
    if row["stripe_price_id"]:
        await env.gateway.call(
            "prices",
            "update",
            row["stripe_price_id"],
            params={"active": False},
            idempotency_key=op_key(
                "tier", row["uid"], "price", row["stripe_price_id"], "deactivate"
            ),
        )
    if row["stripe_product_id"]:
        await env.gateway.call(
            "products",
            "update",
            row["stripe_product_id"],
            params={"active": False},
            idempotency_key=op_key("tier", row["uid"], "archive"),
        )
    async with env.pool.acquire() as conn:
        updated = await conn.fetchrow(
            """
            UPDATE creator_subscriptions_tiers
            SET archived = true, archived_at = COALESCE(archived_at, now()), updated_at = now()
            WHERE id = $1
            RETURNING *
            """,
            tier_id,
        )
    return tier_view(updated)
