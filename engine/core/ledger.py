"""The double-entry ledger: balanced postings per currency, idempotent per operation.

Every money movement (charge, application fee, transfer, refund, reversal,
dispute, payout, payout failure) is one ``Posting``: entries on named ledger
accounts whose amounts sum to zero per currency. A posting carries the key of
the business operation (``"charge:ch_123"``); posting the same key twice
records it once, so a retried job can never double-count. A second posting
under a key with *different* entries is refused loudly (``LedgerConflict``,
after telling the ledger's conflict observers: a metric, an admin alert),
never dropped: two code paths disagreeing about one movement is a bug.

Ledger account names (positive = money held by that party):

- ``platform`` the platform's Stripe balance (its commission and application fees
  stay there: no engine posting separates them); ``platform:stripe_fees`` Stripe's
  processing fees paid. ``platform:fees`` (``PLATFORM_FEES``) is a name a platform's
  own postings may use; the engine posts nothing to it.
- ``acct_...`` a connected account's Stripe balance; ``acct_...:bank`` its paid-out money.
- ``customers`` the outside world paying in (goes negative as customers pay).
- ``disputes`` money held back by disputes.
- ``stripe_adjustments`` Stripe's own corrections of a balance (adjustments that are no
  dispute's), the other side of ``adjustment:<txn>``.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from engine.core.errors import LedgerConflict, LedgerImbalance, RecordConflict
from engine.core.money import Money

__all__ = [
    "ADJUSTMENTS",
    "CUSTOMERS",
    "DISPUTES",
    "PLATFORM",
    "PLATFORM_FEES",
    "PLATFORM_STRIPE_FEES",
    "ConflictObserver",
    "Entry",
    "Ledger",
    "LedgerLine",
    "Posting",
    "bank_of",
    "stripe_time",
]

log = logging.getLogger(__name__)

PLATFORM = "platform"
PLATFORM_FEES = "platform:fees"
PLATFORM_STRIPE_FEES = "platform:stripe_fees"
CUSTOMERS = "customers"
DISPUTES = "disputes"
ADJUSTMENTS = "stripe_adjustments"


def bank_of(account_id: str) -> str:
    """The ledger account for money paid out from ``account_id`` to its bank."""
    return f"{account_id}:bank"


@dataclass(frozen=True, slots=True)
class Entry:
    """A signed amount on one ledger account."""

    account: str
    amount: Money


@dataclass(frozen=True, slots=True)
class Posting:
    """One business operation's entries; refused unless balanced per currency.

    Attributes:
        key: the operation's idempotency key (``"refund:re_1"``); unique forever.
        kind: ``charge``, ``application_fee``, ``transfer``, ``refund``, ``reversal``,
            ``dispute``, ``payout``, ``payout_failure`` ...
        entries: at least two entries summing to zero per currency.
        reference: the business object (``"subscription:7"``, ``"booking:42"``).
        stripe_object_id: the Stripe object the movement mirrors.
        occurred_at: Stripe's time of the movement (the object's ``created``,
            see ``stripe_time``), never the clock of the machine posting it:
            under a test clock the two are months apart.
    """

    key: str
    kind: str
    entries: tuple[Entry, ...]
    occurred_at: datetime
    reference: str = ""
    stripe_object_id: str = ""
    plugin: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            raise LedgerImbalance("a posting needs an idempotency key")
        if len(self.entries) < 2:
            raise LedgerImbalance(f"posting {self.key} needs at least two entries")
        totals: dict[str, int] = defaultdict(int)
        for entry in self.entries:
            totals[entry.amount.currency] += entry.amount.amount
        unbalanced = {currency: total for currency, total in totals.items() if total}
        if unbalanced:
            raise LedgerImbalance(f"posting {self.key} does not balance: {unbalanced}")

    @classmethod
    def transfer(
        cls,
        key: str,
        kind: str,
        source: str,
        destination: str,
        amount: Money,
        *,
        occurred_at: datetime,
        **extra: Any,
    ) -> Posting:
        """A two-entry posting moving ``amount`` from ``source`` to ``destination``."""
        return cls(
            key=key,
            kind=kind,
            entries=(Entry(source, -amount), Entry(destination, amount)),
            occurred_at=occurred_at,
            **extra,
        )


def stripe_time(unix: int | float | str | None) -> datetime:
    """A Stripe timestamp (``created``, ``arrival_date``: unix seconds) as an aware datetime.

    Raises:
        LedgerImbalance: the object carries no time (every Stripe money object does).
    """
    if unix is None or unix == "":
        raise LedgerImbalance("a Stripe object without a time cannot be posted")
    return datetime.fromtimestamp(int(unix), UTC)


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One entry as read back, with its transaction's details."""

    transaction_id: int
    key: str
    kind: str
    account: str
    amount: Money
    reference: str
    stripe_object_id: str
    description: str
    occurred_at: datetime


# The transaction and its entries in one statement (one round trip per posting). A
# key already posted inserts nothing (``ON CONFLICT DO NOTHING`` yields no row, so
# no entry is inserted) and returns no id; then ``_check_same`` reads what was
# posted in a statement of its own, whose snapshot sees a concurrent posting of
# the same key that this statement waited for.
_POST = """
WITH tx AS (
    INSERT INTO marketplace_ledger_transactions
        (idempotency_key, kind, description, reference, stripe_object_id, plugin,
         occurred_at, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, now())
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), entries AS (
    INSERT INTO marketplace_ledger_entries (ledger_transaction, account, amount, currency)
    SELECT tx.id, e.account, e.amount, e.currency
    FROM tx, unnest($8::text[], $9::bigint[], $10::text[]) WITH ORDINALITY
        AS e(account, amount, currency, position)
    ORDER BY e.position
    RETURNING 1
)
SELECT id FROM tx
"""

_EXISTING_ENTRIES = """
SELECT e.account, e.amount, e.currency FROM marketplace_ledger_entries e
JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
WHERE t.idempotency_key = $1
"""

ConflictObserver = Callable[[LedgerConflict | RecordConflict], Awaitable[None] | None]
"""Told of each refused posting before ``LedgerConflict`` is raised, and of each record
the engine refused (``RecordConflict``, through ``Ledger.report_conflict``): a metric,
an alert.

It runs inside the failing call, whose transaction is about to roll back:
anything it records durably it writes on a connection of its own."""


def _entry_set(entries: Iterable[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    return sorted((account, int(amount), currency.lower()) for account, amount, currency in entries)


class Ledger:
    """Reads and writes the ledger tables through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, *, on_conflict: Sequence[ConflictObserver] = ()) -> None:
        self._pool = pool
        self._conflict_observers: list[ConflictObserver] = list(on_conflict)

    def observe_conflicts(self, observer: ConflictObserver) -> None:
        """Add an observer told of every refused posting (a process's metrics); once each."""
        if observer not in self._conflict_observers:
            self._conflict_observers.append(observer)

    async def post(self, posting: Posting, *, conn: asyncpg.Connection | None = None) -> bool:
        """Record ``posting`` once; return False if its key was already posted alike.

        Pass ``conn`` to post inside the caller's transaction (so the business
        change and its money movement commit together).

        Raises:
            LedgerConflict: the key was posted before with other entries (the
                observers were told first; nothing of this posting is written).
        """
        if conn is None:
            async with self._pool.acquire() as own, own.transaction():
                return await self._post(own, posting)
        return await self._post(conn, posting)

    async def post_many(self, postings: Iterable[Posting]) -> int:
        """Post several in one database transaction; return how many were new."""
        async with self._pool.acquire() as conn, conn.transaction():
            return sum([await self._post(conn, posting) for posting in postings])

    async def _post(self, conn: asyncpg.Connection, posting: Posting) -> bool:
        tx_id = await conn.fetchval(
            _POST,
            posting.key,
            posting.kind,
            posting.description,
            posting.reference,
            posting.stripe_object_id,
            posting.plugin,
            posting.occurred_at,
            [entry.account for entry in posting.entries],
            [entry.amount.amount for entry in posting.entries],
            [entry.amount.currency for entry in posting.entries],
        )
        if tx_id is None:
            await self._check_same(conn, posting)
            return False
        return True

    async def _check_same(self, conn: asyncpg.Connection, posting: Posting) -> None:
        """A repeated key is a no-op only when it repeats the same entries."""
        existing = _entry_set(
            (row["account"], row["amount"], row["currency"])
            for row in await conn.fetch(_EXISTING_ENTRIES, posting.key)
        )
        refused = _entry_set(
            (entry.account, entry.amount.amount, entry.amount.currency) for entry in posting.entries
        )
        if existing == refused:
            return
        conflict = LedgerConflict(
            f"ledger key {posting.key} was posted with other entries: "
            f"posted {existing}, refused {refused}",
            key=posting.key,
            kind=posting.kind,
            existing=existing,
            refused=refused,
        )
        await self.report_conflict(conflict)
        raise conflict

    async def report_conflict(self, conflict: LedgerConflict | RecordConflict) -> None:
        """Log ``conflict`` and tell the conflict observers (a metric, an admin alert).

        The ledger does so for each posting it refuses; the engine's money calls
        for a record they refuse (``RecordConflict``), before raising it. Never
        raises: an observer failing must not turn the refusal into another error.
        """
        log.error("%s", conflict.detail)
        for observer in self._conflict_observers:
            try:
                outcome = observer(conflict)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("conflict observer failed for %s", conflict.key)

    async def name_movements(
        self,
        stripe_object_ids: Iterable[str],
        *,
        plugin: str,
        reference: str,
        conn: asyncpg.Connection,
    ) -> int:
        """Name the business of movements posted before it was known; how many were named.

        A refund or dispute can be handled before the payment it belongs to is
        recorded (a Billing invoice's charge is recorded when ``invoice.paid`` is
        handled): it is posted with no plugin and no reference. Once the payment
        is recorded, the ledger transactions of those Stripe objects that name
        nothing get ``plugin`` and ``reference``; nothing else changes (not a
        named transaction, never an entry, so the money and reconciliation stay
        as they were).
        """
        ids = sorted({str(object_id) for object_id in stripe_object_ids if object_id})
        if not ids:
            return 0
        status = await conn.execute(
            "UPDATE marketplace_ledger_transactions SET plugin = $1, reference = $2 "
            "WHERE stripe_object_id = ANY($3::text[]) "
            "AND coalesce(plugin, '') = '' AND coalesce(reference, '') = ''",
            plugin,
            reference,
            ids,
        )
        return int(status.split()[-1])

    async def name_transaction(self, posting: Posting, *, conn: asyncpg.Connection) -> bool:
        """Give the transaction already posted under ``posting.key`` the business of
        ``posting`` (its kind, description, plugin and reference) if it names none;
        whether it did.

        A movement is posted as made outside the engine, naming nothing, when no
        payment record or metadata said whose it was yet (a Billing invoice of a
        subscription that named no owner). The plugin that records it later posts
        the same entries under the same key, which ``post`` leaves as they were;
        this names them then, so the ledger ends the same whichever came first.
        Never an entry, never a named transaction.
        """
        status: str = await conn.execute(
            "UPDATE marketplace_ledger_transactions "
            "SET kind = $2, description = $3, plugin = $4, reference = $5 "
            "WHERE idempotency_key = $1 "
            "AND coalesce(plugin, '') = '' AND coalesce(reference, '') = ''",
            posting.key,
            posting.kind,
            posting.description,
            posting.plugin,
            posting.reference,
        )
        return status.rsplit(maxsplit=1)[-1] != "0"

    async def is_posted(self, key: str) -> bool:
        """Whether an operation key has been posted."""
        async with self._pool.acquire() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM marketplace_ledger_transactions WHERE idempotency_key = $1", key
            )
            return found is not None

    async def balances(self, account: str) -> dict[str, int]:
        """The account's balance per currency, from its entries."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT currency, sum(amount)::bigint AS total FROM marketplace_ledger_entries "
                "WHERE account = $1 GROUP BY currency",
                account,
            )
        return {row["currency"]: int(row["total"]) for row in rows}

    async def balance(self, account: str, currency: str) -> Money:
        """The account's balance in one currency."""
        return Money((await self.balances(account)).get(currency.lower(), 0), currency)

    async def lines(
        self,
        account: str,
        *,
        limit: int = 50,
        before_id: int | None = None,
        kinds: Sequence[str] = (),
    ) -> list[LedgerLine]:
        """The account's entries, newest transaction first; ``before_id`` is the cursor.

        ``limit`` counts transactions, so a page never splits one: pass the
        last line's ``transaction_id`` as ``before_id`` for the next page.
        """
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                WITH page AS (
                    SELECT DISTINCT t.id FROM marketplace_ledger_entries e
                    JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
                    WHERE e.account = $1
                      AND ($2::bigint IS NULL OR t.id < $2)
                      AND (cardinality($3::text[]) = 0 OR t.kind = ANY($3))
                    ORDER BY t.id DESC
                    LIMIT $4
                )
                SELECT t.id, t.idempotency_key, t.kind, e.account, e.amount, e.currency,
                       t.reference, t.stripe_object_id, t.description, t.occurred_at
                FROM page
                JOIN marketplace_ledger_transactions t ON t.id = page.id
                JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
                WHERE e.account = $1
                ORDER BY t.id DESC, e.id
                """,
                account,
                before_id,
                list(kinds),
                limit,
            )
        return [
            LedgerLine(
                transaction_id=row["id"],
                key=row["idempotency_key"],
                kind=row["kind"],
                account=row["account"],
                amount=Money(int(row["amount"]), row["currency"]),
                reference=row["reference"],
                stripe_object_id=row["stripe_object_id"],
                description=row["description"],
                occurred_at=row["occurred_at"],
            )
            for row in rows
        ]

    async def unbalanced_transactions(self) -> list[str]:
        """Keys of transactions whose entries do not sum to zero (should be none)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT t.idempotency_key FROM marketplace_ledger_transactions t
                JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
                GROUP BY t.id, e.currency HAVING sum(e.amount) <> 0
                """
            )
        return [row["idempotency_key"] for row in rows]
