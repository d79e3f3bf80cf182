"""Reconciliation's migration step 0002_ledger_changes on a database with a ledger already.

A database made before the step has ledger entries; the step notes every one
of them in ``marketplace_reconciliation_ledger_changes`` (so the next run's
ledger check reads the ledger once) and installs the triggers that note every
entry posted, changed (under both accounts when it moves) or deleted afterwards.
Only entries on the balances reconciliation compares with Stripe's are noted
(``platform`` and each ``acct_...``, not ``customers`` or ``acct_...:bank``):
nothing would ever read the others' notes. Migrating again changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from engine.core.db import migrate
from engine.core.ledger import CUSTOMERS, Ledger, Posting
from engine.core.money import Money

AT = datetime(2026, 3, 1, tzinfo=UTC)
STEP = "0002_ledger_changes"
BEFORE_THE_STEP = (
    "DROP TRIGGER marketplace_reconciliation_entries_inserted ON marketplace_ledger_entries",
    "DROP TRIGGER marketplace_reconciliation_entries_updated ON marketplace_ledger_entries",
    "DROP TRIGGER marketplace_reconciliation_entries_deleted ON marketplace_ledger_entries",
    "DROP FUNCTION marketplace_reconciliation_note_entries()",
    "DROP FUNCTION marketplace_reconciliation_is_balance(TEXT)",
    "DROP TABLE marketplace_reconciliation_ledger_changes",
    "ALTER TABLE marketplace_reconciliation_runs DROP COLUMN ledger_rows_read",
    "DELETE FROM marketplace_migrations WHERE app = 'marketplace_reconciliation' "
    "AND name = '0002_ledger_changes'",
)


def charge(key: str, account: str, amount: int) -> Posting:
    return Posting.transfer(key, "charge", CUSTOMERS, account, Money(amount, "usd"), occurred_at=AT)


async def noted(pool: asyncpg.Pool) -> list[tuple[int, str]]:
    rows = await pool.fetch(
        "SELECT entry_id, account FROM marketplace_reconciliation_ledger_changes ORDER BY id"
    )
    return [(int(row[0]), str(row[1])) for row in rows]


async def entries(pool: asyncpg.Pool) -> list[tuple[int, str]]:
    """The entries on Stripe balances (``platform``, ``acct_...``)."""
    rows = await pool.fetch("SELECT id, account FROM marketplace_ledger_entries ORDER BY id")
    return [
        (int(row[0]), str(row[1]))
        for row in rows
        if row[1] == "platform" or (row[1].startswith("acct_") and ":" not in row[1])
    ]


async def test_an_existing_ledger_is_noted_and_later_entries_are_too(
    fresh_database_url: str,
) -> None:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    try:
        for statement in BEFORE_THE_STEP:  # the database as it was before the step
            await pool.execute(statement)
        ledger = Ledger(pool)
        assert await ledger.post(charge("charge:ch_1", "acct_1", 1000))
        assert await ledger.post(charge("charge:ch_2", "acct_2", 2000))
        assert await ledger.post(
            Posting.transfer(
                "payout:po_1", "payout", "acct_2", "acct_2:bank", Money(5, "usd"), occurred_at=AT
            )
        )
        existing = await entries(pool)
        assert [account for _, account in existing] == ["acct_1", "acct_2", "acct_2"]

        assert await migrate(fresh_database_url) == [f"marketplace_reconciliation:{STEP}"]
        assert sorted(await noted(pool)) == existing  # every entry there was
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM marketplace_reconciliation_runs WHERE ledger_rows_read <> 0"
            )
            == 0
        )

        await pool.execute("DELETE FROM marketplace_reconciliation_ledger_changes")
        assert await ledger.post(charge("charge:ch_3", "acct_1", 300))
        posted = [entry for entry in await entries(pool) if entry not in existing]
        assert sorted(await noted(pool)) == posted

        await pool.execute("DELETE FROM marketplace_reconciliation_ledger_changes")
        first_id = existing[0][0]  # acct_1's entry of ch_1
        await pool.execute(
            "UPDATE marketplace_ledger_entries SET amount = amount + 1 WHERE id = $1", first_id
        )
        assert await noted(pool) == [(first_id, "acct_1")]

        await pool.execute("DELETE FROM marketplace_reconciliation_ledger_changes")
        await pool.execute(
            "UPDATE marketplace_ledger_entries SET account = 'acct_9' WHERE id = $1", first_id
        )
        assert sorted(await noted(pool)) == [(first_id, "acct_1"), (first_id, "acct_9")]
        await pool.execute("DELETE FROM marketplace_reconciliation_ledger_changes")
        await pool.execute(
            "UPDATE marketplace_ledger_entries SET account = 'acct_9:bank' WHERE id = $1", first_id
        )
        assert await noted(pool) == [(first_id, "acct_9")]  # where it was, not where it went

        await pool.execute("DELETE FROM marketplace_reconciliation_ledger_changes")
        second_id = existing[1][0]  # acct_2's entry of ch_2
        await pool.execute("DELETE FROM marketplace_ledger_entries WHERE id = $1", second_id)
        assert await noted(pool) == [(second_id, "acct_2")]

        assert await migrate(fresh_database_url) == []
    finally:
        await pool.close()
