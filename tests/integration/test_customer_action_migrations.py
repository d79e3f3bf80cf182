"""A database made before the 3D Secure (and refund request) columns gets them from the
plugins' migrations."""

from __future__ import annotations

import asyncpg

from engine.core.db import migrate
from engine.core.plugins import build_plugins
from engine.core.settings import settings_from_mapping

COLUMNS = {
    "creator_subscriptions_fans": {"customer_action"},
    "creator_subscriptions_subscriptions": {"customer_action", "action_invoice"},
    "creator_subscriptions_payments": {"customer_action"},
    "three_sided_bookings_bookings": {"customer_action", "action_transition", "test_clock"},
    "creator_subscriptions_refunds": {"operation"},
    "creator_subscriptions_invoice_refunds": {"operation"},
}


async def _columns(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
    )
    return {row["column_name"] for row in rows}


async def test_old_tables_get_the_new_columns(fresh_database_url: str) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        for table, columns in COLUMNS.items():  # as the tables were before
            for column in columns:
                await conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        await conn.execute(
            "DELETE FROM marketplace_migrations "
            "WHERE name IN ('m0001_customer_actions', 'm0002_booking_test_clock', "
            "'m0003_refund_operations')"
        )
    finally:
        await conn.close()
    settings = settings_from_mapping(
        {"plugins": {"enabled": ["creator_subscriptions", "three_sided_bookings"]}}
    )
    ran = await migrate(fresh_database_url, build_plugins(settings).table_apps())
    assert sorted(ran) == [
        "creator_subscriptions:m0001_customer_actions",
        "creator_subscriptions:m0003_refund_operations",
        "three_sided_bookings:m0001_customer_actions",
        "three_sided_bookings:m0002_booking_test_clock",
    ]
    conn = await asyncpg.connect(fresh_database_url)
    try:
        for table, columns in COLUMNS.items():
            assert columns <= await _columns(conn, table), table
    finally:
        await conn.close()
    assert await migrate(fresh_database_url, build_plugins(settings).table_apps()) == []


async def test_subscriptions_made_before_meaning_marked_are_left_to_mark(
    fresh_database_url: str,
) -> None:
    """``m0004_meaning_marked``: a subscription a database held before the column is
    not marked (the plugin writes ``meaning_metadata`` on it at startup); the column's
    default stays false, so a row inserted without it (an older process) is not either."""
    settings = settings_from_mapping({"plugins": {"enabled": ["creator_subscriptions"]}})
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(
            "ALTER TABLE creator_subscriptions_subscriptions DROP COLUMN meaning_marked"
        )
        await conn.execute("DELETE FROM marketplace_migrations WHERE name = 'm0004_meaning_marked'")
        creator = await conn.fetchval(
            "INSERT INTO creator_subscriptions_creators (account_id, handle, display_name, "
            "created_at) VALUES ('acct_old', 'old', 'Old', now()) RETURNING id"
        )
        tier = await conn.fetchval(
            "INSERT INTO creator_subscriptions_tiers (creator, account_id, name, amount, "
            "currency, interval, created_at, updated_at) "
            "VALUES ($1, 'acct_old', 'Gold', 1000, 'usd', 'month', now(), now()) RETURNING id",
            creator,
        )
        fan = await conn.fetchval(
            "INSERT INTO creator_subscriptions_fans (external_ref, created_at) "
            "VALUES ('old-fan', now()) RETURNING id"
        )
        insert = (
            "INSERT INTO creator_subscriptions_subscriptions (fan, creator, tier, account_id, "
            "customer_id, currency, status, application_fee_percent, stripe_subscription_id, "
            "created_at, updated_at) "
            "VALUES ($1, $2, $3, 'acct_old', 'cus_old', 'usd', 'active', 10, $4, now(), now())"
        )
        await conn.execute(insert, fan, creator, tier, "sub_old")
    finally:
        await conn.close()
    ran = await migrate(fresh_database_url, build_plugins(settings).table_apps())
    assert ran == ["creator_subscriptions:m0004_meaning_marked"]
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await conn.execute(insert, fan, creator, tier, "sub_older_process")
        marked = await conn.fetch(
            "SELECT meaning_marked FROM creator_subscriptions_subscriptions ORDER BY id"
        )
        assert [row["meaning_marked"] for row in marked] == [False, False]
    finally:
        await conn.close()
