"""Reconciliation results (Piccolo): runs, one row per matched or unmatched item, and alerts.

A run is one pass over Stripe and the ledger. Its items are keyed by run and
item (``item_key`` embeds the run id and is unique), so saving a run's items
again changes nothing. The latest finished run is the reconciliation status.
An alert is one distinct problem (``fingerprint``), opened the first time a
run reports it and resolved by the first complete run that no longer does;
re-running never duplicates it. Nothing here changes money.

Incremental runs keep their state in three more tables (``STEPS``, plain SQL):
``marketplace_reconciliation_cursors`` (per Stripe balance, the newest balance
transaction reconciled: where the next run's listing starts),
``marketplace_reconciliation_txns`` (every balance transaction reconciled so
far, with its status: ``matched`` ones are never fetched again, the others are
matched again on every run) and ``marketplace_reconciliation_claims`` (which
ledger entry each of them claimed, with the amount it had: an entry changed
afterwards re-opens its transaction). ``marketplace_reconciliation_links``
keeps the relations between Stripe objects learnt from the platform's
transactions (``engine.reconciliation.links``).

These tables form the engine app ``marketplace_reconciliation``, migrated by
``engine.core.db.migrate`` right after the core tables.
"""

from __future__ import annotations

from typing import Final

from piccolo.columns import (
    JSONB,
    BigInt,
    BigSerial,
    ForeignKey,
    Integer,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.table import Table

__all__ = [
    "APP_NAME",
    "EXTRA_DDL",
    "STEPS",
    "TABLES",
    "ReconciliationAlert",
    "ReconciliationItem",
    "ReconciliationRun",
]

APP_NAME: Final = "marketplace_reconciliation"


class ReconciliationRun(Table, tablename="marketplace_reconciliation_runs"):
    """One reconciliation pass: when, who started it, and what it found."""

    id = BigSerial(primary_key=True)
    trigger = Varchar(length=32, default="cli")
    status = Varchar(length=16, default="running", index=True)  # running, completed, failed
    accounts = Integer(default=0)
    balance_transactions = Integer(default=0)
    matched = Integer(default=0)
    missing_in_ledger = Integer(default=0)
    missing_in_stripe = Integer(default=0)
    amount_mismatch = Integer(default=0)
    new_alerts = Integer(default=0)
    failed_accounts = JSONB(default=[])
    error = Text(default="")
    started_at = Timestamptz()
    finished_at = Timestamptz(null=True, default=None)


class ReconciliationItem(Table, tablename="marketplace_reconciliation_items"):
    """One balance transaction, or one ledger line group, and how it matched.

    ``status`` is ``matched``, ``missing_in_ledger`` (Stripe moved money the
    ledger never recorded), ``missing_in_stripe`` (the ledger records money
    Stripe never moved) or ``amount_mismatch`` (both exist, amounts differ).
    """

    id = BigSerial(primary_key=True)
    run = ForeignKey(references=ReconciliationRun, index=True)
    item_key = Varchar(length=300, unique=True)
    account = Varchar(length=64, index=True)
    status = Varchar(length=24, index=True)
    currency = Varchar(length=3, default="")
    balance_transaction_id = Varchar(length=64, default="")
    stripe_type = Varchar(length=48, default="")
    stripe_source = Varchar(length=64, default="")
    stripe_amount = BigInt(null=True, default=None)
    stripe_fee = BigInt(null=True, default=None)
    stripe_net = BigInt(null=True, default=None)
    ledger_transaction_id = BigInt(null=True, default=None)
    ledger_key = Varchar(length=255, default="")
    ledger_amount = BigInt(null=True, default=None)
    ledger_fee = BigInt(null=True, default=None)
    ledger_net = BigInt(null=True, default=None)
    detail = Text(default="")
    created_at = Timestamptz()


class ReconciliationAlert(Table, tablename="marketplace_reconciliation_alerts"):
    """An admin-visible problem, one per distinct finding, open until a run no longer sees it."""

    id = BigSerial(primary_key=True)
    fingerprint = Varchar(length=400, unique=True)
    status = Varchar(length=24)
    account = Varchar(length=64, index=True)
    currency = Varchar(length=3, default="")
    summary = Text(default="")
    first_run = BigInt()
    last_run = BigInt(index=True)
    occurrences = Integer(default=1)
    first_seen_at = Timestamptz()
    last_seen_at = Timestamptz()
    resolved_at = Timestamptz(null=True, default=None, index=True)


TABLES: tuple[type[Table], ...] = (ReconciliationRun, ReconciliationItem, ReconciliationAlert)
"""In creation order."""

EXTRA_DDL: tuple[str, ...] = (
    # The admin panel lists a run's problems; matched items are most of the rows.
    "CREATE INDEX IF NOT EXISTS marketplace_reconciliation_items_problems "
    "ON marketplace_reconciliation_items (run, id) WHERE status <> 'matched'",
)
"""Indexes Piccolo's column API cannot express."""

STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_incremental",
        (
            "ALTER TABLE marketplace_reconciliation_runs "
            "ADD COLUMN IF NOT EXISTS mode VARCHAR(16) NOT NULL DEFAULT 'incremental'",
            """CREATE TABLE IF NOT EXISTS marketplace_reconciliation_cursors (
                account VARCHAR(64) PRIMARY KEY,
                balance_transaction_id VARCHAR(64) NOT NULL,
                created BIGINT NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE IF NOT EXISTS marketplace_reconciliation_txns (
                id BIGSERIAL PRIMARY KEY,
                account VARCHAR(64) NOT NULL,
                balance_transaction_id VARCHAR(64) NOT NULL,
                type VARCHAR(48) NOT NULL DEFAULT '',
                source VARCHAR(64) NOT NULL DEFAULT '',
                amount BIGINT NOT NULL,
                fee BIGINT NOT NULL DEFAULT 0,
                currency VARCHAR(3) NOT NULL,
                created BIGINT NOT NULL DEFAULT 0,
                status VARCHAR(24) NOT NULL DEFAULT 'pending',
                run BIGINT NOT NULL,
                UNIQUE (account, balance_transaction_id)
            )""",
            "CREATE INDEX IF NOT EXISTS marketplace_reconciliation_txns_open "
            "ON marketplace_reconciliation_txns (account, id) WHERE status <> 'matched'",
            """CREATE TABLE IF NOT EXISTS marketplace_reconciliation_claims (
                entry_id BIGINT PRIMARY KEY,
                txn BIGINT NOT NULL REFERENCES marketplace_reconciliation_txns (id)
                    ON DELETE CASCADE,
                amount BIGINT NOT NULL,
                exact BOOLEAN NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS marketplace_reconciliation_claims_txn "
            "ON marketplace_reconciliation_claims (txn)",
            """CREATE TABLE IF NOT EXISTS marketplace_reconciliation_links (
                child VARCHAR(64) NOT NULL,
                relation VARCHAR(16) NOT NULL,
                parent VARCHAR(64) NOT NULL,
                position INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (child, relation, parent)
            )""",
        ),
    ),
    (
        "0002_ledger_changes",
        (
            "ALTER TABLE marketplace_reconciliation_runs "
            "ADD COLUMN IF NOT EXISTS ledger_rows_read BIGINT NOT NULL DEFAULT 0",
            """CREATE TABLE IF NOT EXISTS marketplace_reconciliation_ledger_changes (
                id BIGSERIAL PRIMARY KEY,
                entry_id BIGINT NOT NULL,
                account VARCHAR(200) NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS marketplace_reconciliation_ledger_changes_account "
            "ON marketplace_reconciliation_ledger_changes (account, entry_id)",
            # The ledger accounts that are Stripe balances: ``platform`` and each
            # ``acct_...`` (not ``customers``, ``acct_...:bank`` ...). Only those are
            # reconciled: notes of other ledger accounts would never be read.
            r"""CREATE OR REPLACE FUNCTION marketplace_reconciliation_is_balance(name TEXT)
            RETURNS BOOLEAN LANGUAGE sql IMMUTABLE AS $$
                SELECT name = 'platform' OR (name LIKE 'acct\_%' AND strpos(name, ':') = 0)
            $$""",
            # An entry's line on each Stripe balance it was on: inserted, changed
            # (both accounts when moved) or deleted (so the claim of a deleted entry
            # is looked at again).
            """CREATE OR REPLACE FUNCTION marketplace_reconciliation_note_entries()
            RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    INSERT INTO marketplace_reconciliation_ledger_changes (entry_id, account)
                    SELECT id, account FROM new_entries
                    WHERE marketplace_reconciliation_is_balance(account);
                ELSIF TG_OP = 'UPDATE' THEN
                    INSERT INTO marketplace_reconciliation_ledger_changes (entry_id, account)
                    SELECT id, account FROM new_entries
                    WHERE marketplace_reconciliation_is_balance(account)
                    UNION
                    SELECT id, account FROM old_entries
                    WHERE marketplace_reconciliation_is_balance(account);
                ELSE
                    INSERT INTO marketplace_reconciliation_ledger_changes (entry_id, account)
                    SELECT id, account FROM old_entries
                    WHERE marketplace_reconciliation_is_balance(account);
                END IF;
                RETURN NULL;
            END
            $$""",
            "DROP TRIGGER IF EXISTS marketplace_reconciliation_entries_inserted "
            "ON marketplace_ledger_entries",
            "CREATE TRIGGER marketplace_reconciliation_entries_inserted "
            "AFTER INSERT ON marketplace_ledger_entries "
            "REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT "
            "EXECUTE FUNCTION marketplace_reconciliation_note_entries()",
            "DROP TRIGGER IF EXISTS marketplace_reconciliation_entries_updated "
            "ON marketplace_ledger_entries",
            "CREATE TRIGGER marketplace_reconciliation_entries_updated "
            "AFTER UPDATE ON marketplace_ledger_entries "
            "REFERENCING OLD TABLE AS old_entries NEW TABLE AS new_entries FOR EACH STATEMENT "
            "EXECUTE FUNCTION marketplace_reconciliation_note_entries()",
            "DROP TRIGGER IF EXISTS marketplace_reconciliation_entries_deleted "
            "ON marketplace_ledger_entries",
            "CREATE TRIGGER marketplace_reconciliation_entries_deleted "
            "AFTER DELETE ON marketplace_ledger_entries "
            "REFERENCING OLD TABLE AS old_entries FOR EACH STATEMENT "
            "EXECUTE FUNCTION marketplace_reconciliation_note_entries()",
            # The ledger as it is when the step runs: every entry is new to the ledger
            # check (the next run reads each once, then only what changes).
            "INSERT INTO marketplace_reconciliation_ledger_changes (entry_id, account) "
            "SELECT id, account FROM marketplace_ledger_entries "
            "WHERE marketplace_reconciliation_is_balance(account)",
        ),
    ),
)
"""Migrations after the tables, in order (``engine.core.db.engine_app_steps``)."""
