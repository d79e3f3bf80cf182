"""Read-only views of the ledger for plugins: an account's statement, a reference's entries.

A plugin never queries ``marketplace_ledger_transactions`` or
``marketplace_ledger_entries`` itself; it reads what it shows through these
functions, each one query, through the pool or connection it holds.

- ``statement_lines``: the transactions touching one ledger account, newest
  first, one line per transaction and currency with the account's net (an
  invoice moves ``+amount`` and ``-application fee`` on a creator's account;
  the line shows the difference), so a page never splits a transaction.
- ``reference_lines``: every entry posted under one business reference
  (``booking:42``), in posting order: what a reconciliation view lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from engine.core.errors import InvalidInput
from engine.core.ledger import LedgerLine
from engine.core.money import Money

__all__ = ["StatementLine", "reference_lines", "statement_lines"]


class _Fetcher(Protocol):
    async def fetch(self, query: str, *args: object) -> Any: ...


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One ledger transaction as it moved one account: its net ``amount`` on that account.

    ``id`` is the transaction's id, increasing with posting order (the
    statement's cursor); ``occurred_at`` is Stripe's time of the movement.
    """

    id: int
    key: str
    kind: str
    amount: Money
    reference: str
    stripe_object_id: str
    description: str
    occurred_at: datetime


async def statement_lines(
    db: _Fetcher,
    account: str,
    *,
    before: int | None = None,
    limit: int = 20,
    kinds: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[StatementLine]:
    """The transactions touching ledger ``account``, newest first.

    Args:
        db: an asyncpg pool or connection.
        account: a ledger account name (``acct_...``, ``platform``, ``platform:stripe_fees``...).
        before: only transactions with an id below this one (the cursor).
        limit: at most this many lines (fetch ``limit + 1`` to learn if more follow).
        kinds: only these transaction kinds (all when empty).
        since: only movements at or after this time (Stripe's).
        until: only movements before this time.

    Raises:
        InvalidInput: ``limit`` is not positive (``field="limit"``).
    """
    if limit < 1:
        raise InvalidInput("limit must be positive", field="limit")
    rows = await db.fetch(
        """
        SELECT t.id, t.idempotency_key, t.kind, t.reference, t.stripe_object_id,
               t.description, t.occurred_at, e.currency, sum(e.amount)::bigint AS amount
        FROM marketplace_ledger_transactions t
        JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
        WHERE e.account = $1
          AND ($2::bigint IS NULL OR t.id < $2)
          AND (cardinality($3::text[]) = 0 OR t.kind = ANY($3))
          AND ($4::timestamptz IS NULL OR t.occurred_at >= $4)
          AND ($5::timestamptz IS NULL OR t.occurred_at < $5)
        GROUP BY t.id, e.currency
        ORDER BY t.id DESC, e.currency
        LIMIT $6
        """,
        account,
        before,
        list(kinds),
        since,
        until,
        limit,
    )
    return [
        StatementLine(
            id=int(row["id"]),
            key=str(row["idempotency_key"]),
            kind=str(row["kind"]),
            amount=Money(int(row["amount"]), str(row["currency"])),
            reference=str(row["reference"]),
            stripe_object_id=str(row["stripe_object_id"]),
            description=str(row["description"]),
            occurred_at=row["occurred_at"],
        )
        for row in rows
    ]


async def reference_lines(db: _Fetcher, reference: str) -> list[LedgerLine]:
    """Every entry posted under ``reference``, in posting order (transaction, then entry)."""
    rows = await db.fetch(
        """
        SELECT t.id AS transaction_id, t.idempotency_key, t.kind, t.reference,
               t.stripe_object_id, t.description, t.occurred_at,
               e.account, e.amount, e.currency
        FROM marketplace_ledger_transactions t
        JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
        WHERE t.reference = $1 ORDER BY t.id, e.id
        """,
        reference,
    )
    return [
        LedgerLine(
            transaction_id=int(row["transaction_id"]),
            key=str(row["idempotency_key"]),
            kind=str(row["kind"]),
            account=str(row["account"]),
            amount=Money(int(row["amount"]), str(row["currency"])),
            reference=str(row["reference"]),
            stripe_object_id=str(row["stripe_object_id"]),
            description=str(row["description"]),
            occurred_at=row["occurred_at"],
        )
        for row in rows
    ]
