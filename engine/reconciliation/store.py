"""Reading and writing reconciliation results: runs, items and alerts (asyncpg).

Writes are idempotent: an item is keyed by its run and identity, an alert by
its fingerprint (one alert per distinct finding however many runs report it).
Reads serve the admin panel: the latest run, its problem items, open alerts.

Besides a run's findings, the ledger itself opens ``ledger_conflict`` alerts
(``open_ledger_conflict_alert``: a posting refused because its key was posted
with other entries), and ``record_conflict`` ones (a transfer recorded again with
other facts, ``RecordConflict``). Runs never resolve those: no balance transaction
shows them gone; an admin who has looked at one resolves it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from engine.core.errors import LedgerConflict, RecordConflict
from engine.reconciliation.matching import (
    MISMATCH,
    MISSING_IN_LEDGER,
    MISSING_IN_STRIPE,
    ItemResult,
)

__all__ = [
    "KEEP_MATCHED_RUNS",
    "LEDGER_CONFLICT",
    "RECORD_CONFLICT",
    "Alert",
    "NewAlert",
    "ProblemItem",
    "RunRow",
    "alert_fingerprint",
    "close_interrupted_runs",
    "find_run",
    "findings",
    "finish_run",
    "latest_run",
    "list_alerts",
    "open_ledger_conflict_alert",
    "problem_items",
    "prune_matched_items",
    "recent_runs",
    "resolve_alerts",
    "runs_before",
    "save_items",
    "start_run",
    "upsert_alerts",
]

KEEP_MATCHED_RUNS: Final = 10
"""Matched items are kept for this many latest runs; problem items are kept for good."""

LEDGER_CONFLICT: Final = "ledger_conflict"
RECORD_CONFLICT: Final = "record_conflict"
"""The status of an alert the ledger opened for a refused posting."""

_RUN_FINDINGS: Final = (MISSING_IN_LEDGER, MISSING_IN_STRIPE, MISMATCH)

_RUN_COLUMNS = (
    "id, trigger, mode, status, accounts, balance_transactions, ledger_rows_read, matched, "
    "missing_in_ledger, "
    "missing_in_stripe, amount_mismatch, new_alerts, failed_accounts, error, started_at, "
    "finished_at"
)


@dataclass(frozen=True, slots=True)
class RunRow:
    """A stored run (``status`` running, completed, incomplete or failed; ``mode``
    incremental or full)."""

    id: int
    trigger: str
    mode: str
    status: str
    accounts: int
    balance_transactions: int
    ledger_rows_read: int
    matched: int
    missing_in_ledger: int
    missing_in_stripe: int
    amount_mismatch: int
    new_alerts: int
    failed_accounts: list[str]
    error: str
    started_at: datetime
    finished_at: datetime | None

    @property
    def problems(self) -> int:
        """Items that are not matched."""
        return self.missing_in_ledger + self.missing_in_stripe + self.amount_mismatch

    @classmethod
    def from_record(cls, record: Any) -> RunRow:
        """Build from a record of ``_RUN_COLUMNS``."""
        failed = record["failed_accounts"]
        if isinstance(failed, str):
            failed = json.loads(failed)
        data = dict(record)
        data["failed_accounts"] = [str(item) for item in failed or []]
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ProblemItem:
    """One unmatched item of a run, for the admin panel."""

    id: int
    account: str
    status: str
    currency: str
    balance_transaction_id: str
    stripe_type: str
    stripe_source: str
    stripe_amount: int | None
    stripe_fee: int | None
    ledger_key: str
    ledger_amount: int | None
    ledger_fee: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class Alert:
    """An admin-visible reconciliation alert."""

    id: int
    fingerprint: str
    status: str
    account: str
    currency: str
    summary: str
    first_run: int
    last_run: int
    occurrences: int
    first_seen_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewAlert:
    """An alert a run opened (or re-opened): what the lifecycle event announces."""

    id: int
    status: str
    account: str
    currency: str
    summary: str
    balance_transaction_id: str
    ledger_key: str


def alert_fingerprint(item: ItemResult) -> str:
    """One finding's identity across runs (a balance transaction, or a ledger posting)."""
    if item.txn is not None:
        return f"{item.status}:{item.account}:{item.txn.id}"
    first = item.lines[0]
    return f"{item.status}:{item.account}:{first.key}:{item.currency}"


async def start_run(conn: Any, trigger: str, *, mode: str = "incremental") -> int:
    """Insert a running run; return its id."""
    run_id: int = await conn.fetchval(
        "INSERT INTO marketplace_reconciliation_runs (trigger, mode, status, failed_accounts, "
        "started_at) VALUES ($1, $2, 'running', '[]'::jsonb, now()) RETURNING id",
        trigger,
        mode,
    )
    return run_id


async def close_interrupted_runs(conn: Any, run_id: int) -> int:
    """Mark ``failed`` the runs still ``running`` besides ``run_id`` (called under the run lock:
    no other run can be going, so those were interrupted: a process stopped mid-run)."""
    result: str = await conn.execute(
        "UPDATE marketplace_reconciliation_runs SET status = 'failed', finished_at = now(), "
        "error = 'interrupted: the process running it stopped' "
        "WHERE status = 'running' AND id <> $1",
        run_id,
    )
    return int(result.rsplit(maxsplit=1)[-1])


def _item_row(run_id: int, item: ItemResult) -> tuple[Any, ...]:
    txn = item.txn
    first = item.ledger_transaction
    return (
        run_id,
        f"{run_id}:{item.item_key}",
        item.account,
        item.status,
        item.currency,
        txn.id if txn else "",
        txn.type if txn else "",
        txn.source if txn else "",
        txn.amount if txn else None,
        txn.fee if txn else None,
        txn.net if txn else None,
        first.transaction_id if first else None,
        first.key if first else "",
        item.ledger_amount,
        item.ledger_fee,
        item.ledger_net,
        item.detail,
    )


async def save_items(conn: Any, run_id: int, items: Iterable[ItemResult]) -> None:
    """Store a run's items (saving the same item of the same run again changes nothing)."""
    rows = [_item_row(run_id, item) for item in items]
    if not rows:
        return
    await conn.executemany(
        """
        INSERT INTO marketplace_reconciliation_items
            (run, item_key, account, status, currency, balance_transaction_id, stripe_type,
             stripe_source, stripe_amount, stripe_fee, stripe_net, ledger_transaction_id,
             ledger_key, ledger_amount, ledger_fee, ledger_net, detail, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                now())
        ON CONFLICT (item_key) DO NOTHING
        """,
        rows,
    )


async def upsert_alerts(conn: Any, run_id: int, items: Sequence[ItemResult]) -> list[NewAlert]:
    """Open or refresh one alert per problem item; return those newly opened or re-opened."""
    problems = [
        item for item in items if item.status in {MISSING_IN_LEDGER, MISSING_IN_STRIPE, MISMATCH}
    ]
    if not problems:
        return []
    fingerprints = [alert_fingerprint(item) for item in problems]
    existing = {
        row["fingerprint"]: row["resolved_at"]
        for row in await conn.fetch(
            "SELECT fingerprint, resolved_at FROM marketplace_reconciliation_alerts "
            "WHERE fingerprint = ANY($1::text[])",
            fingerprints,
        )
    }
    opened: list[NewAlert] = []
    for item, fingerprint in zip(problems, fingerprints, strict=True):
        alert_id = await conn.fetchval(
            """
            INSERT INTO marketplace_reconciliation_alerts AS a
                (fingerprint, status, account, currency, summary, first_run, last_run,
                 occurrences, first_seen_at, last_seen_at, resolved_at)
            VALUES ($1, $2, $3, $4, $5, $6, $6, 1, now(), now(), NULL)
            ON CONFLICT (fingerprint) DO UPDATE SET
                summary = EXCLUDED.summary,
                last_run = GREATEST(a.last_run, EXCLUDED.last_run),
                last_seen_at = now(),
                occurrences = a.occurrences
                    + CASE WHEN a.last_run < EXCLUDED.last_run THEN 1 ELSE 0 END,
                resolved_at = NULL
            RETURNING id
            """,
            fingerprint,
            item.status,
            item.account,
            item.currency,
            item.detail,
            run_id,
        )
        if fingerprint not in existing or existing[fingerprint] is not None:
            first = item.ledger_transaction
            opened.append(
                NewAlert(
                    id=int(alert_id),
                    status=item.status,
                    account=item.account,
                    currency=item.currency,
                    summary=item.detail,
                    balance_transaction_id=item.txn.id if item.txn else "",
                    ledger_key=first.key if first else "",
                )
            )
    return opened


async def resolve_alerts(conn: Any, run_id: int, accounts: Sequence[str]) -> int:
    """Resolve open alerts of ``accounts`` that run ``run_id`` no longer reported."""
    result: str = await conn.execute(
        "UPDATE marketplace_reconciliation_alerts SET resolved_at = now() "
        "WHERE resolved_at IS NULL AND last_run < $1 AND account = ANY($2::text[]) "
        "AND status = ANY($3::text[])",
        run_id,
        list(accounts),
        list(_RUN_FINDINGS),
    )
    return int(result.rsplit(maxsplit=1)[-1])


def _conflict_account(conflict: LedgerConflict) -> tuple[str, str]:
    """The connected account (else the platform) and currency a refused posting touches."""
    accounts = [account.split(":", 1)[0] for account, _, _ in conflict.refused]
    connected = [account for account in accounts if account.startswith("acct_")]
    currency = conflict.refused[0][2] if conflict.refused else ""
    return (connected[0] if connected else "platform"), currency


async def open_ledger_conflict_alert(pool: Any, conflict: LedgerConflict | RecordConflict) -> None:
    """Open (or count again) the admin alert for a refused posting (``ledger_conflict``)
    or a refused record (``record_conflict``), once per finding.

    Written on a connection of its own: the caller's transaction rolls back.
    The same refusal repeated (a retried event) counts an occurrence, never a
    second alert.
    """
    if isinstance(conflict, RecordConflict):
        status = RECORD_CONFLICT
        digest = hashlib.sha256(conflict.detail.encode()).hexdigest()[:16]
        account = conflict.account if conflict.account.startswith("acct_") else "platform"
        currency = conflict.currency
    else:
        status = LEDGER_CONFLICT
        digest = hashlib.sha256(json.dumps(conflict.refused).encode()).hexdigest()[:16]
        account, currency = _conflict_account(conflict)
    await pool.execute(
        """
        INSERT INTO marketplace_reconciliation_alerts AS a
            (fingerprint, status, account, currency, summary, first_run, last_run,
             occurrences, first_seen_at, last_seen_at, resolved_at)
        VALUES ($1, $2, $3, $4, $5, 0, 0, 1, now(), now(), NULL)
        ON CONFLICT (fingerprint) DO UPDATE SET
            occurrences = a.occurrences + 1, last_seen_at = now(), resolved_at = NULL
        """,
        f"{status}:{conflict.key}:{digest}",
        status,
        account,
        currency,
        conflict.detail,
    )


async def finish_run(
    conn: Any,
    run_id: int,
    *,
    status: str,
    counts: dict[str, int],
    accounts: int,
    balance_transactions: int,
    new_alerts: int,
    failed_accounts: Sequence[str],
    error: str = "",
    ledger_rows_read: int = 0,
) -> None:
    """Record a run's outcome."""
    await conn.execute(
        """
        UPDATE marketplace_reconciliation_runs
        SET status = $2, accounts = $3, balance_transactions = $4, matched = $5,
            missing_in_ledger = $6, missing_in_stripe = $7, amount_mismatch = $8,
            new_alerts = $9, failed_accounts = $10::jsonb, error = $11, ledger_rows_read = $12,
            finished_at = now()
        WHERE id = $1
        """,
        run_id,
        status,
        accounts,
        balance_transactions,
        counts.get("matched", 0),
        counts.get(MISSING_IN_LEDGER, 0),
        counts.get(MISSING_IN_STRIPE, 0),
        counts.get(MISMATCH, 0),
        new_alerts,
        json.dumps(list(failed_accounts)),
        error[:2000],
        ledger_rows_read,
    )


async def prune_matched_items(conn: Any, keep_runs: int = KEEP_MATCHED_RUNS) -> None:
    """Drop matched items of older runs (problem items stay as the audit trail)."""
    await conn.execute(
        """
        DELETE FROM marketplace_reconciliation_items
        WHERE status = 'matched' AND run < (
            SELECT COALESCE(min(id), 0) FROM (
                SELECT id FROM marketplace_reconciliation_runs ORDER BY id DESC LIMIT $1
            ) kept
        )
        """,
        keep_runs,
    )


async def latest_run(pool: Any, *, finished: bool = True) -> RunRow | None:
    """The latest run (finished ones only by default): the reconciliation status."""
    where = "WHERE finished_at IS NOT NULL" if finished else ""
    record = await pool.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM marketplace_reconciliation_runs {where} "  # noqa: S608 - constant SQL
        "ORDER BY id DESC LIMIT 1"
    )
    return None if record is None else RunRow.from_record(record)


async def recent_runs(pool: Any, limit: int = 10) -> list[RunRow]:
    """The latest runs, newest first."""
    records = await pool.fetch(
        f"SELECT {_RUN_COLUMNS} FROM marketplace_reconciliation_runs "  # noqa: S608 - constant SQL
        "ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [RunRow.from_record(record) for record in records]


async def problem_items(pool: Any, run_id: int, *, limit: int = 200) -> list[ProblemItem]:
    """A run's unmatched items, in the order found."""
    records = await pool.fetch(
        """
        SELECT id, account, status, currency, balance_transaction_id, stripe_type, stripe_source,
               stripe_amount, stripe_fee, ledger_key, ledger_amount, ledger_fee, detail
        FROM marketplace_reconciliation_items
        WHERE run = $1 AND status <> 'matched' ORDER BY id LIMIT $2
        """,
        run_id,
        limit,
    )
    return [ProblemItem(**dict(record)) for record in records]


async def list_alerts(pool: Any, *, open_only: bool = True, limit: int = 100) -> list[Alert]:
    """Alerts, newest first (open ones only by default)."""
    records = await pool.fetch(
        """
        SELECT id, fingerprint, status, account, currency, summary, first_run, last_run,
               occurrences, first_seen_at, last_seen_at, resolved_at
        FROM marketplace_reconciliation_alerts
        WHERE NOT $1 OR resolved_at IS NULL
        ORDER BY id DESC LIMIT $2
        """,
        open_only,
        limit,
    )
    return [Alert(**dict(record)) for record in records]


async def runs_before(pool: Any, *, before: int | None, limit: int) -> list[RunRow]:
    """A page of runs, newest first, with ids below ``before`` (all when ``None``)."""
    records = await pool.fetch(
        f"SELECT {_RUN_COLUMNS} FROM marketplace_reconciliation_runs "  # noqa: S608 - constant SQL
        "WHERE $1::bigint IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        before,
        limit,
    )
    return [RunRow.from_record(record) for record in records]


async def find_run(pool: Any, run_id: int) -> RunRow | None:
    """One run, or ``None``."""
    record = await pool.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM marketplace_reconciliation_runs WHERE id = $1",  # noqa: S608
        run_id,
    )
    return None if record is None else RunRow.from_record(record)


async def findings(
    pool: Any,
    run_id: int,
    *,
    after: int,
    limit: int,
    status: str | None = None,
    account: str | None = None,
) -> list[ProblemItem]:
    """A page of a run's unmatched items after item id ``after``, in the order found."""
    records = await pool.fetch(
        """
        SELECT id, account, status, currency, balance_transaction_id, stripe_type, stripe_source,
               stripe_amount, stripe_fee, ledger_key, ledger_amount, ledger_fee, detail
        FROM marketplace_reconciliation_items
        WHERE run = $1 AND status <> 'matched' AND id > $2
          AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR account = $4)
        ORDER BY id LIMIT $5
        """,
        run_id,
        after,
        status,
        account,
        limit,
    )
    return [ProblemItem(**dict(record)) for record in records]
