"""The indexes of the webhook path (core step ``0009_webhook_indexes``), on real PostgreSQL.

An event's row is written twice on its way (accepted, then handled): every index
it carries is written each time, so it keeps only those its readers use. And a
payout event reads its account's latest payout: with an account's payouts in the
thousands (a flood, or years of daily payouts) that read must be one index probe,
not a sort of every payout the account ever had.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from engine.core.db import migrate

EVENT_INDEXES = {
    "marketplace_webhook_events_pkey",
    "marketplace_webhook_events_event_id_key",
    "marketplace_webhook_events_mailbox_pending",
    "marketplace_webhook_events_dead",
}

LATEST_PAYOUT = """
SELECT CASE WHEN status = 'failed' THEN COALESCE(failure_code, 'unknown') END AS code
FROM marketplace_payouts WHERE account_id = $1
ORDER BY created_at DESC, stripe_payout_id DESC LIMIT 1
"""


@pytest.fixture
async def conn(fresh_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(fresh_database_url)
    yield connection
    await connection.close()


async def _indexes(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1", table)
    return {str(row["indexname"]) for row in rows}


async def test_an_event_carries_only_the_indexes_its_readers_use(
    conn: asyncpg.Connection,
) -> None:
    assert await _indexes(conn, "marketplace_webhook_events") == EVENT_INDEXES
    assert "marketplace_payouts_account_latest" in await _indexes(conn, "marketplace_payouts")


async def test_a_database_from_before_the_step_gets_the_same_indexes(
    conn: asyncpg.Connection, fresh_database_url: str
) -> None:
    """A database migrated before ``0009`` had every event indexed by account and by
    status (Piccolo's ``index=True``), and no latest-payout index."""
    await conn.execute(
        "DROP INDEX marketplace_webhook_events_dead; DROP INDEX marketplace_payouts_account_latest;"
        "CREATE INDEX marketplace_webhook_events_account ON marketplace_webhook_events (account);"
        "CREATE INDEX marketplace_webhook_events_status ON marketplace_webhook_events (status);"
        "DELETE FROM marketplace_migrations"
        " WHERE app = 'marketplace' AND name = '0009_webhook_indexes'"
    )
    ran = await migrate(fresh_database_url)
    assert "marketplace:0009_webhook_indexes" in ran
    assert await _indexes(conn, "marketplace_webhook_events") == EVENT_INDEXES
    assert "marketplace_payouts_account_latest" in await _indexes(conn, "marketplace_payouts")


async def test_an_accounts_latest_payout_is_one_index_probe_however_many_it_has(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        """
        INSERT INTO marketplace_payouts
            (stripe_payout_id, account_id, amount, currency, status, failure_code,
             failure_message, arrival_date, created_at, updated_at)
        SELECT 'po_' || n, 'acct_' || (n % 4), 1000, 'usd', 'paid', NULL, '', 0,
               timestamptz '2026-01-01' + make_interval(secs => n), now()
        FROM generate_series(1, 20000) AS n
        """
    )
    await conn.execute("ANALYZE marketplace_payouts")
    plan = "\n".join(
        str(row[0])
        for row in await conn.fetch(f"EXPLAIN {LATEST_PAYOUT}".replace("$1", "'acct_1'"))
    )
    assert "marketplace_payouts_account_latest" in plan, plan
    assert "Sort" not in plan, plan
    assert await conn.fetchval(LATEST_PAYOUT, "acct_1") is None  # paid: no failure code
