"""What incremental reconciliation remembers between runs (asyncpg): cursors, transactions, claims.

Per Stripe balance (``platform`` or ``acct_...``):

- the cursor: the newest balance transaction listed so far (Stripe's ``created``
  and id); the next run lists only the newer ones (``ending_before``);
- every balance transaction reconciled so far (``marketplace_reconciliation_txns``)
  and its status: ``matched`` ones are done; ``pending`` (just listed, or
  re-opened), ``missing_in_ledger`` and ``amount_mismatch`` ones are matched
  again on every run, so a posting that arrives late or a ledger mended by hand
  resolves them;
- the ledger entries each transaction claimed (``marketplace_reconciliation_claims``)
  with the amount the entry had. An exact claim is kept; a mismatch's claim is
  dropped at the start of the next run. A claimed entry changed or removed
  afterwards re-opens its transaction (``reopen_changed``);
- the ledger entries to look at (``marketplace_reconciliation_ledger_changes``):
  triggers on ``marketplace_ledger_entries`` note every entry on a Stripe
  balance's account (``platform``, ``acct_...``) inserted, updated (under both
  accounts when it moved) or deleted, and the migration that made
  them noted the ledger as it stood. A run reads only the claims of noted
  entries and looks for unclaimed lines only among them; at its end it forgets
  those it need not read again (``forget_changes``), keeping the lines still
  unclaimed (open) and the claims changed since. So the ledger side of a run
  reads new, changed and open lines, not the whole ledger.

A ledger line is *unclaimed* when no claim names its entry: what the matching
passes may still pair, and, after them, what Stripe never showed
(``missing_in_stripe``). Every query reads a bounded page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from engine.reconciliation.links import Edge, Links
from engine.reconciliation.matching import MATCHED, BalanceTxn, ItemResult, LedgerLine

__all__ = [
    "PENDING",
    "Cursor",
    "Leftovers",
    "Reopened",
    "add_txns",
    "claim",
    "cursor",
    "forget_changes",
    "forget_everything",
    "leftover_lines",
    "load_links",
    "open_lines",
    "open_txns",
    "reopen_changed",
    "save_cursor",
    "save_links",
    "set_status",
]

PENDING: Final = "pending"
_LINK_DEPTH: Final = 8

_LINE_COLUMNS = """e.id, e.ledger_transaction, e.amount, e.currency, t.idempotency_key, t.kind,
       t.stripe_object_id"""


@dataclass(frozen=True, slots=True)
class Cursor:
    """The newest balance transaction of one Stripe balance listed so far."""

    balance_transaction_id: str
    created: int


async def cursor(pool: Any, account: str) -> Cursor | None:
    """Where the next listing of ``account``'s balance starts (``None``: from the beginning)."""
    row = await pool.fetchrow(
        "SELECT balance_transaction_id, created FROM marketplace_reconciliation_cursors "
        "WHERE account = $1",
        account,
    )
    return None if row is None else Cursor(str(row[0]), int(row[1]))


async def save_cursor(pool: Any, account: str, newest: Cursor) -> None:
    """Remember ``newest`` as the last balance transaction of ``account`` listed."""
    await pool.execute(
        """
        INSERT INTO marketplace_reconciliation_cursors
            (account, balance_transaction_id, created, updated_at)
        VALUES ($1, $2, $3, now())
        ON CONFLICT (account) DO UPDATE SET
            balance_transaction_id = EXCLUDED.balance_transaction_id,
            created = EXCLUDED.created, updated_at = now()
        """,
        account,
        newest.balance_transaction_id,
        newest.created,
    )


async def forget_everything(pool: Any) -> None:
    """A full run starts from nothing: cursors, transactions and claims (links stay: facts).

    Every ledger entry is noted as changed, so the run's ledger check reads the
    whole ledger once.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM marketplace_reconciliation_claims")
        await conn.execute("DELETE FROM marketplace_reconciliation_txns")
        await conn.execute("DELETE FROM marketplace_reconciliation_cursors")
        await conn.execute("DELETE FROM marketplace_reconciliation_ledger_changes")
        await conn.execute(
            "INSERT INTO marketplace_reconciliation_ledger_changes (entry_id, account) "
            "SELECT id, account FROM marketplace_ledger_entries "
            "WHERE marketplace_reconciliation_is_balance(account)"
        )


async def _note(conn: Any, account: str, entry_ids: Sequence[int]) -> None:
    """Note entries whose claims were dropped: the ledger check reads them again."""
    if entry_ids:
        await conn.execute(
            "INSERT INTO marketplace_reconciliation_ledger_changes (entry_id, account) "
            "SELECT unnest($2::bigint[]), $1",
            account,
            list(entry_ids),
        )


async def save_links(pool: Any, links: Links) -> None:
    """Store the relations ``links`` learnt (those already known are kept as they were)."""
    rows = links.edges()
    if rows:
        await pool.executemany(
            "INSERT INTO marketplace_reconciliation_links (child, relation, parent, position) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            rows,
        )


async def load_links(pool: Any, sources: Sequence[str]) -> Links:
    """The stored relations reachable from ``sources`` (what their candidates need)."""
    wanted = sorted({source for source in sources if source})
    if not wanted:
        return Links()
    rows = await pool.fetch(
        """
        WITH RECURSIVE reach(id, depth) AS (
            SELECT unnest($1::text[]), 0
            UNION
            SELECT l.parent, r.depth + 1
            FROM marketplace_reconciliation_links l JOIN reach r ON l.child = r.id
            WHERE r.depth < $2
        )
        SELECT l.child, l.relation, l.parent, l.position
        FROM marketplace_reconciliation_links l
        WHERE l.child IN (SELECT id FROM reach)
        """,
        wanted,
        _LINK_DEPTH,
    )
    edges: list[Edge] = [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]
    return Links.from_edges(edges)


async def add_txns(pool: Any, run_id: int, txns: Sequence[BalanceTxn]) -> list[BalanceTxn]:
    """Record newly listed transactions as ``pending``; return those not known before."""
    if not txns:
        return []
    rows = await pool.fetch(
        """
        INSERT INTO marketplace_reconciliation_txns
            (account, balance_transaction_id, type, source, amount, fee, currency, created,
             status, run)
        SELECT u.account, u.id, u.type, u.source, u.amount, u.fee, u.currency, u.created,
               $9::text, $10::bigint
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                    $7::text[], $8::bigint[])
            AS u(account, id, type, source, amount, fee, currency, created)
        ON CONFLICT (account, balance_transaction_id) DO NOTHING
        RETURNING balance_transaction_id
        """,
        [txn.account for txn in txns],
        [txn.id for txn in txns],
        [txn.type for txn in txns],
        [txn.source for txn in txns],
        [txn.amount for txn in txns],
        [txn.fee for txn in txns],
        [txn.currency for txn in txns],
        [txn.created for txn in txns],
        PENDING,
        run_id,
    )
    added = {str(row[0]) for row in rows}
    return [txn for txn in txns if txn.id in added]


async def open_txns(pool: Any, account: str, *, after: int, limit: int) -> list[tuple[int, Any]]:
    """One page of ``account``'s transactions not matched yet: ``(row id, record)``."""
    rows = await pool.fetch(
        """
        SELECT id, balance_transaction_id, type, source, amount, fee, currency, created
        FROM marketplace_reconciliation_txns
        WHERE account = $1 AND status <> $2 AND id > $3 ORDER BY id LIMIT $4
        """,
        account,
        MATCHED,
        after,
        limit,
    )
    return [(int(row["id"]), row) for row in rows]


def _line(row: Any, account: str) -> LedgerLine:
    return LedgerLine(
        entry_id=int(row["id"]),
        transaction_id=int(row["ledger_transaction"]),
        key=str(row["idempotency_key"]),
        kind=str(row["kind"]),
        stripe_object_id=str(row["stripe_object_id"] or ""),
        account=account,
        currency=str(row["currency"]).lower(),
        amount=int(row["amount"]),
    )


async def open_lines(pool: Any, account: str, object_ids: Sequence[str]) -> list[LedgerLine]:
    """Unclaimed lines on ledger ``account`` of the ledger transactions named by ``object_ids``."""
    wanted = sorted({object_id for object_id in object_ids if object_id})
    if not wanted:
        return []
    rows = await pool.fetch(
        f"""
        SELECT {_LINE_COLUMNS}
        FROM marketplace_ledger_transactions t
        JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
        WHERE t.stripe_object_id = ANY($2::text[]) AND e.account = $1
          AND NOT EXISTS (SELECT 1 FROM marketplace_reconciliation_claims c
                          WHERE c.entry_id = e.id)
        """,  # noqa: S608 - _LINE_COLUMNS is a constant of this module
        account,
        wanted,
    )
    return [_line(row, account) for row in rows]


@dataclass(frozen=True, slots=True)
class Leftovers:
    """One page of ``leftover_lines``: its lines, the last entry id read, rows read."""

    lines: list[LedgerLine]
    last: int | None
    rows_read: int = 0


async def leftover_lines(pool: Any, account: str, *, after: int, limit: int) -> Leftovers:
    """Unclaimed lines of the ledger transactions of the next ``limit`` noted entries.

    Only entries noted in ``marketplace_reconciliation_ledger_changes`` are
    looked at (new and changed ones, and those still unclaimed after an earlier
    run: ``forget_changes`` keeps those), ``limit`` at a time in entry id order
    after ``after``, each found by its key. For each ledger transaction with an
    unclaimed line among them, every unclaimed line it has on ``account`` is
    returned, once: by the page of its first such line (every unclaimed line is
    noted, so that page sees it). ``last`` is the last entry id read (``None``:
    no more).
    """
    noted = [
        int(row[0])
        for row in await pool.fetch(
            "SELECT DISTINCT entry_id FROM marketplace_reconciliation_ledger_changes "
            "WHERE account = $1 AND entry_id > $2 ORDER BY 1 LIMIT $3",
            account,
            after,
            limit,
        )
    ]
    if not noted:
        return Leftovers([], None)
    rows = await pool.fetch(
        f"""
        SELECT {_LINE_COLUMNS}
        FROM marketplace_ledger_entries e
        JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
        WHERE e.account = $1 AND e.amount <> 0
          AND e.ledger_transaction IN (
              SELECT o.ledger_transaction FROM marketplace_ledger_entries o
              WHERE o.id = ANY($2::bigint[]) AND o.account = $1 AND o.amount <> 0)
          AND NOT EXISTS (SELECT 1 FROM marketplace_reconciliation_claims c
                          WHERE c.entry_id = e.id)
        """,  # noqa: S608 - _LINE_COLUMNS is a constant of this module
        account,
        noted,
    )
    lines = [_line(row, account) for row in rows]
    first: dict[int, int] = {}
    for line in lines:
        known = first.get(line.transaction_id, line.entry_id)
        first[line.transaction_id] = min(known, line.entry_id)
    # A transaction is this page's when its first unclaimed line is (an earlier or
    # later page, which also sees that line, takes it otherwise).
    mine = [line for line in lines if noted[0] <= first[line.transaction_id] <= noted[-1]]
    return Leftovers(mine, noted[-1], len(lines))


async def claim(pool: Any, account: str, items: Sequence[ItemResult], *, exact: bool) -> None:
    """Record the lines each item's transaction claimed, and the transaction's status."""
    settled = [item for item in items if item.txn is not None]
    if not settled:
        return
    async with pool.acquire() as conn, conn.transaction():
        ids = {
            str(row[1]): int(row[0])
            for row in await conn.fetch(
                "SELECT id, balance_transaction_id FROM marketplace_reconciliation_txns "
                "WHERE account = $1 AND balance_transaction_id = ANY($2::text[])",
                account,
                [item.txn.id for item in settled if item.txn is not None],
            )
        }
        claims = [
            (line.entry_id, ids[item.txn.id], line.amount, exact)
            for item in settled
            if item.txn is not None
            for line in item.lines
        ]
        if claims:
            await conn.executemany(
                "INSERT INTO marketplace_reconciliation_claims (entry_id, txn, amount, exact) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (entry_id) DO NOTHING",
                claims,
            )
        await conn.executemany(
            "UPDATE marketplace_reconciliation_txns SET status = $2 WHERE id = $1",
            [(ids[item.txn.id], item.status) for item in settled if item.txn is not None],
        )


async def set_status(pool: Any, txn_ids: Sequence[int], status: str) -> None:
    """Set the status of some transactions (by row id)."""
    if txn_ids:
        await pool.execute(
            "UPDATE marketplace_reconciliation_txns SET status = $2 WHERE id = ANY($1::bigint[])",
            list(txn_ids),
            status,
        )


@dataclass(frozen=True, slots=True)
class Reopened:
    """What ``reopen_changed`` did: transactions re-opened, claimed entries it read."""

    transactions: int
    entries_read: int


async def reopen_changed(pool: Any, account: str, *, page: int) -> Reopened:
    """Start ``account``'s run: release mismatch claims; re-open matches whose entries changed.

    A matched transaction whose claimed ledger entry was changed (amount or
    account) or removed since is ``pending`` again, its claims dropped, so this
    run matches it afresh. Only the claims of entries noted in
    ``marketplace_reconciliation_ledger_changes`` are read (``page`` entries at
    a time), not every claim. Every entry whose claim is dropped is noted, so
    the ledger check looks at it again.
    """
    async with pool.acquire() as conn, conn.transaction():
        released = await conn.fetch(
            """
            DELETE FROM marketplace_reconciliation_claims c
            USING marketplace_reconciliation_txns x
            WHERE c.txn = x.id AND x.account = $1 AND NOT c.exact
            RETURNING c.entry_id
            """,
            account,
        )
        await _note(conn, account, [int(row[0]) for row in released])
    reopened = 0
    read = 0
    after = 0
    while True:
        noted = [
            int(row[0])
            for row in await pool.fetch(
                "SELECT DISTINCT entry_id FROM marketplace_reconciliation_ledger_changes "
                "WHERE account = $1 AND entry_id > $2 ORDER BY 1 LIMIT $3",
                account,
                after,
                page,
            )
        ]
        if not noted:
            return Reopened(reopened, read)
        after = noted[-1]
        claims = await pool.fetch(
            """
            SELECT c.txn, (e.id IS NULL OR e.amount <> c.amount OR e.account <> x.account)
            FROM marketplace_reconciliation_claims c
            JOIN marketplace_reconciliation_txns x ON x.id = c.txn
            LEFT JOIN marketplace_ledger_entries e ON e.id = c.entry_id
            WHERE c.entry_id = ANY($2::bigint[]) AND x.account = $1
            """,
            account,
            noted,
        )
        read += len(claims)
        changed = sorted({int(row[0]) for row in claims if row[1]})
        if not changed:
            continue
        async with pool.acquire() as conn, conn.transaction():
            dropped = await conn.fetch(
                "DELETE FROM marketplace_reconciliation_claims WHERE txn = ANY($1::bigint[]) "
                "RETURNING entry_id",
                changed,
            )
            await _note(conn, account, [int(row[0]) for row in dropped])
            await conn.execute(
                "UPDATE marketplace_reconciliation_txns SET status = $2 "
                "WHERE id = ANY($1::bigint[])",
                changed,
                PENDING,
            )
        reopened += len(changed)


async def forget_changes(pool: Any, account: str) -> None:
    """End ``account``'s run: forget the noted entries the next run need not read.

    Kept: entries on ``account`` still unclaimed (open: read again until a
    balance transaction claims them) and claimed entries changed since their
    claim (re-opened by the next run). Forgotten: entries whose claim still
    holds, and those gone, moved to another account or zero, with no claim.
    Each note's entry and claim are found by their keys (one lookup each).
    """
    await pool.execute(
        """
        DELETE FROM marketplace_reconciliation_ledger_changes g
        USING (
            SELECT n.id
            FROM marketplace_reconciliation_ledger_changes n
            LEFT JOIN LATERAL (
                SELECT c.amount, x.account FROM marketplace_reconciliation_claims c
                JOIN marketplace_reconciliation_txns x ON x.id = c.txn
                WHERE c.entry_id = n.entry_id LIMIT 1
            ) k ON true
            LEFT JOIN LATERAL (
                SELECT e.account, e.amount FROM marketplace_ledger_entries e
                WHERE e.id = n.entry_id LIMIT 1
            ) e ON true
            WHERE n.account = $1 AND (
                (k.amount IS NOT NULL AND k.account = $1
                 AND e.account = $1 AND e.amount = k.amount)
                OR (k.amount IS NULL
                    AND (e.account IS NULL OR e.account <> $1 OR e.amount = 0))
            )
        ) d
        WHERE g.id = d.id
        """,
        account,
    )
