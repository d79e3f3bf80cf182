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
