"""What the dashboards show, read from the ledger and the engine's tables (asyncpg, no HTML).

Every query is bounded: one account's lines through the index on
``(account, ledger_transaction)``, pages by cursor (a ledger transaction id),
time series over a fixed window. Amounts stay integer minor units with their
currency; the templates format them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal

from engine.core.ledger import CUSTOMERS, DISPUTES
from engine.core.money import Money

__all__ = [
    "FINANCE_PERIODS",
    "PAGE_SIZE",
    "Balance",
    "EarningsPoint",
    "EarningsSeries",
    "FinanceRow",
    "OrderSummary",
    "PayoutRow",
    "TransactionFilters",
    "TransactionPage",
    "TransactionRow",
    "account_kinds",
    "dead_letter_counts",
    "earnings_series",
    "finance_summary",
    "ledger_balances",
    "order_summaries",
    "payouts",
    "period_of",
    "transactions",
    "window_end",
]

PAGE_SIZE: Final = 25
Period = Literal["day", "week", "month"]
_PAYOUT_KINDS: Final = ("payout", "payout_failure")
# Payment statuses that moved money (pending attempts and failures did not).
_SETTLED_PAYMENTS: Final = (
    "succeeded",
    "captured",
    "paid",
    "partially_refunded",
    "refunded",
    "disputed",
    "dispute_won",
    "dispute_lost",
)


@dataclass(frozen=True, slots=True)
class Balance:
    """A balance in one currency: Stripe's available and pending, and the ledger's total."""

    currency: str
    available: int | None
    pending: int | None
    ledger: int

    def money(self, amount: int | None) -> str:
        """``amount`` formatted in this currency (``-`` when unknown)."""
        return "-" if amount is None else Money(amount, self.currency).format()


@dataclass(frozen=True, slots=True)
class TransactionRow:
    """One ledger transaction as it moved one account's balance."""

    id: int
    kind: str
    description: str
    reference: str
    stripe_object_id: str
    occurred_at: datetime
    currency: str
    amount: int
    plugin: str

    @property
    def formatted(self) -> str:
        """The amount with its currency."""
        return Money(self.amount, self.currency).format()


@dataclass(frozen=True, slots=True)
class TransactionFilters:
    """The transactions page's filters (all optional)."""

    kind: str | None = None
    currency: str | None = None
    since: date | None = None
    until: date | None = None
    before: int | None = None

    def query(self, **changes: Any) -> dict[str, str]:
        """The filters as query parameters (for links), with ``changes`` applied."""
        values: dict[str, Any] = {
            "kind": self.kind,
            "currency": self.currency,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "before": self.before,
        }
        values.update(changes)
        return {key: str(value) for key, value in values.items() if value not in (None, "")}


@dataclass(frozen=True, slots=True)
class TransactionPage:
    """A page of transactions, newest first; ``next_before`` continues it."""

    rows: list[TransactionRow]
    next_before: int | None


@dataclass(frozen=True, slots=True)
class EarningsPoint:
    """What an account earned in one period and currency (payouts excluded)."""

    period: date
    currency: str
    amount: int


@dataclass(frozen=True, slots=True)
class EarningsSeries:
    """An account's earnings over the periods of a chart (oldest first)."""

    periods: list[date]
    points: list[EarningsPoint]


@dataclass(frozen=True, slots=True)
class PayoutRow:
    """A payout to the account's bank."""

    stripe_payout_id: str
    amount: int
    currency: str
    status: str
    failure_code: str | None
    failure_message: str
    arrival_date: int
    created_at: datetime

    @property
    def formatted(self) -> str:
        """The amount with its currency."""
        return Money(self.amount, self.currency).format()

    @property
    def arrival(self) -> str:
        """The expected or actual arrival day."""
        if not self.arrival_date:
            return "-"
        return datetime.fromtimestamp(self.arrival_date, UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class OrderSummary:
    """One business object (subscription, booking ...) as seen on an account's ledger."""

    reference: str
    label: str
    transactions: int
    currency: str
    amount: int
    last_at: datetime

    @property
    def formatted(self) -> str:
        """The net amount with its currency."""
        return Money(self.amount, self.currency).format()


@dataclass
class FinanceRow:
    """Money through the platform in one period, for one plugin and currency."""

    period: date
    plugin: str
    currency: str
    payments: int = 0
    gross: int = 0
    commission: int = 0
    refunds: int = 0
    refunded: int = 0
    disputes: int = 0
    disputed: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def money(self, amount: int) -> str:
        """``amount`` formatted in this row's currency."""
        return Money(amount, self.currency).format()


def _stripe_amounts(balance: Any, bucket: str) -> dict[str, int]:
    amounts: dict[str, int] = defaultdict(int)
    for item in balance.get(bucket) or []:
        amounts[str(item["currency"]).lower()] += int(item["amount"])
    return amounts


async def ledger_balances(pool: Any, account: str) -> dict[str, int]:
    """The ledger's balance of ``account`` per currency."""
    rows = await pool.fetch(
        "SELECT currency, sum(amount)::bigint AS total FROM marketplace_ledger_entries "
        "WHERE account = $1 GROUP BY currency ORDER BY currency",
        account,
    )
    return {str(row["currency"]): int(row["total"]) for row in rows}


def merge_balances(stripe_balance: Any | None, ledger: dict[str, int]) -> list[Balance]:
    """Stripe's balance object (or ``None`` when Stripe was unreachable) beside the ledger's."""
    available = _stripe_amounts(stripe_balance or {}, "available")
    pending = _stripe_amounts(stripe_balance or {}, "pending")
    currencies = sorted(set(ledger) | set(available) | set(pending))
    return [
        Balance(
            currency=currency,
            available=available.get(currency, 0) if stripe_balance is not None else None,
            pending=pending.get(currency, 0) if stripe_balance is not None else None,
            ledger=ledger.get(currency, 0),
        )
        for currency in currencies
    ]


async def transactions(
    pool: Any, account: str, filters: TransactionFilters, *, limit: int = PAGE_SIZE
) -> TransactionPage:
    """One page of the account's ledger transactions, newest first, net per currency."""
    since = datetime.combine(filters.since, datetime.min.time(), UTC) if filters.since else None
    until = (
        datetime.combine(filters.until + timedelta(days=1), datetime.min.time(), UTC)
        if filters.until
        else None
    )
    # Grouped by the entry's transaction id, which the (account, ledger_transaction)
    # index yields in order: the page stops after ``limit`` groups.
    rows = await pool.fetch(
        """
        SELECT g.ledger_transaction AS id, g.currency, g.amount, t.kind, t.description,
               t.reference, t.stripe_object_id, t.occurred_at, t.plugin
        FROM (
            SELECT e.ledger_transaction, e.currency, sum(e.amount)::bigint AS amount
            FROM marketplace_ledger_entries e
            JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
            WHERE e.account = $1
              AND ($2::bigint IS NULL OR e.ledger_transaction < $2)
              AND ($3::text IS NULL OR t.kind = $3)
              AND ($4::text IS NULL OR e.currency = $4)
              AND ($5::timestamptz IS NULL OR t.occurred_at >= $5)
              AND ($6::timestamptz IS NULL OR t.occurred_at < $6)
            GROUP BY e.ledger_transaction, e.currency
            ORDER BY e.ledger_transaction DESC, e.currency
            LIMIT $7
        ) g
        JOIN marketplace_ledger_transactions t ON t.id = g.ledger_transaction
        ORDER BY g.ledger_transaction DESC, g.currency
        """,
        account,
        filters.before,
        filters.kind,
        filters.currency,
        since,
        until,
        limit + 1,
    )
    page = [
        TransactionRow(
            id=int(row["id"]),
            kind=str(row["kind"]),
            description=str(row["description"]),
            reference=str(row["reference"]),
            stripe_object_id=str(row["stripe_object_id"]),
            occurred_at=row["occurred_at"],
            currency=str(row["currency"]),
            amount=int(row["amount"]),
            plugin=str(row["plugin"]),
        )
        for row in rows[:limit]
    ]
    next_before = page[-1].id if len(rows) > limit and page else None
    return TransactionPage(rows=page, next_before=next_before)


async def account_kinds(pool: Any, account: str) -> list[str]:
    """The kinds of ledger transaction on an account (for the filter)."""
    rows = await pool.fetch(
        """
        SELECT DISTINCT t.kind FROM marketplace_ledger_entries e
        JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
        WHERE e.account = $1 ORDER BY t.kind
        """,
        account,
    )
    return [str(row["kind"]) for row in rows]


def period_of(value: str | None) -> Period:
    """A query parameter as a period (``month`` unless it names another)."""
    if value == "day":
        return "day"
    if value == "week":
        return "week"
    return "month"


def _period_start(period: Period, now: datetime, count: int) -> datetime:
    if period == "month":
        year, month = now.year, now.month - (count - 1)
        while month <= 0:
            year, month = year - 1, month + 12
        return datetime(year, month, 1, tzinfo=UTC)
    days = count * (7 if period == "week" else 1)
    start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        start -= timedelta(days=start.weekday())
    return start


def periods(period: Period, count: int, *, now: datetime | None = None) -> list[date]:
    """The starts of the last ``count`` periods, oldest first."""
    now = now or datetime.now(UTC)
    start = _period_start(period, now, count)
    found: list[date] = []
    current = start.date()
    while len(found) < count:
        found.append(current)
        if period == "month":
            current = date(current.year + current.month // 12, current.month % 12 + 1, 1)
        else:
            current += timedelta(days=7 if period == "week" else 1)
    return found


# When a payment happened: Stripe's time of its charge (the ledger transaction mirroring
# the charge, posted at the charge's balance transaction time); a payment not charged
# yet has no Stripe time and keeps the time it was recorded.
_PAYMENT_TIME = """COALESCE(
    (SELECT min(c.occurred_at) FROM marketplace_ledger_transactions c
     WHERE p.stripe_charge_id IS NOT NULL AND c.stripe_object_id = p.stripe_charge_id),
    p.created_at)"""


async def window_end(pool: Any, account: str | None = None) -> datetime:
    """Where charts end: now, or the latest movement when Stripe's clock is ahead of ours.

    Every movement is dated by Stripe's clock; under a test clock (or the
    sandbox's) that runs months ahead, a window ending at this machine's "now"
    would leave the latest movements out.
    """
    latest = await pool.fetchval(
        """
        SELECT max(t.occurred_at) FROM marketplace_ledger_transactions t
        WHERE $1::text IS NULL OR EXISTS (
            SELECT 1 FROM marketplace_ledger_entries e
            WHERE e.ledger_transaction = t.id AND e.account = $1)
        """,
        account,
    )
    now = datetime.now(UTC)
    return max(now, latest) if latest is not None else now


async def earnings_series(pool: Any, account: str, period: Period, count: int) -> EarningsSeries:
    """Net earnings per period and currency over the last ``count`` periods (payouts excluded)."""
    until = await window_end(pool, account)
    start = _period_start(period, until, count)
    rows = await pool.fetch(
        """
        SELECT date_trunc($2, t.occurred_at AT TIME ZONE 'UTC')::date AS period, e.currency,
               sum(e.amount)::bigint AS amount
        FROM marketplace_ledger_entries e
        JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
        WHERE e.account = $1 AND t.occurred_at >= $3 AND NOT (t.kind = ANY($4::text[]))
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        account,
        period,
        start,
        list(_PAYOUT_KINDS),
    )
    points = [
        EarningsPoint(
            period=row["period"], currency=str(row["currency"]), amount=int(row["amount"])
        )
        for row in rows
    ]
    return EarningsSeries(periods=periods(period, count, now=until), points=points)


async def payouts(pool: Any, account: str, *, limit: int = 10) -> list[PayoutRow]:
    """The account's latest payouts, newest first."""
    rows = await pool.fetch(
        """
        SELECT stripe_payout_id, amount, currency, status, failure_code, failure_message,
               arrival_date, created_at
        FROM marketplace_payouts WHERE account_id = $1 ORDER BY id DESC LIMIT $2
        """,
        account,
        limit,
    )
    return [PayoutRow(**dict(row)) for row in rows]


def reference_label(reference: str) -> str:
    """``"creator_subscriptions:subscription:7"`` -> ``"subscription 7"``; ``"booking:42"`` kept."""
    parts = [part for part in reference.split(":") if part]
    if len(parts) >= 2:
        return f"{parts[-2].replace('_', ' ')} {parts[-1]}"
    return reference


async def order_summaries(pool: Any, account: str, *, limit: int = 20) -> list[OrderSummary]:
    """The business objects (subscriptions, bookings ...) that moved the account's money."""
    rows = await pool.fetch(
        """
        SELECT t.reference, e.currency, count(DISTINCT t.id) AS transactions,
               sum(e.amount)::bigint AS amount, max(t.occurred_at) AS last_at
        FROM marketplace_ledger_entries e
        JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
        WHERE e.account = $1 AND t.reference <> '' AND NOT (t.kind = ANY($2::text[]))
        GROUP BY t.reference, e.currency
        ORDER BY max(t.id) DESC LIMIT $3
        """,
        account,
        list(_PAYOUT_KINDS),
        limit,
    )
    return [
        OrderSummary(
            reference=str(row["reference"]),
            label=reference_label(str(row["reference"])),
            transactions=int(row["transactions"]),
            currency=str(row["currency"]),
            amount=int(row["amount"]),
            last_at=row["last_at"],
        )
        for row in rows
    ]


async def dead_letter_counts(pool: Any) -> dict[str, int]:
    """Dead-lettered webhook events per mailbox account."""
    rows = await pool.fetch(
        "SELECT account, count(*) AS n FROM marketplace_webhook_events "
        "WHERE status = 'dead' GROUP BY account"
    )
    return {str(row["account"]): int(row["n"]) for row in rows}


FINANCE_PERIODS: Final[dict[str, int]] = {"month": 12, "week": 12, "day": 31}
"""How many periods the finance panel (and ``GET /v1/finance/figures`` by default) shows."""


def _finance_row(found: dict[tuple[date, str, str], FinanceRow], row: Any) -> FinanceRow:
    key = (row["period"], str(row["plugin"]), str(row["currency"]))
    return found.setdefault(key, FinanceRow(period=key[0], plugin=key[1], currency=key[2]))


async def finance_summary(pool: Any, period: Period, count: int) -> list[FinanceRow]:
    """Gross volume, commission, refunds and disputes per period, plugin and currency.

    Each figure falls in the period of Stripe's time of its own movement: a
    payment's volume and commission when it was charged (``marketplace_payments``,
    with the commission that priced it, dated by its charge's posting), a
    refund when it was refunded and a dispute when its funds were withdrawn
    (both from the ledger, posted at the balance transaction's time). So a
    January payment refunded in February counts in January's volume and in
    February's refunds. The finance panel and ``GET /v1/finance/figures`` both
    read this.
    """
    start = _period_start(period, await window_end(pool), count)
    rows = await pool.fetch(
        f"""
        SELECT date_trunc($1, paid_at AT TIME ZONE 'UTC')::date AS period, plugin, currency,
               count(*) AS payments, sum(amount)::bigint AS gross,
               sum(fee_amount)::bigint AS commission
        FROM (SELECT p.*, {_PAYMENT_TIME} AS paid_at FROM marketplace_payments p
              WHERE p.status = ANY($3::text[])) AS paid
        WHERE paid_at >= $2
        GROUP BY 1, 2, 3
        """,  # noqa: S608 - _PAYMENT_TIME is a constant of this module
        period,
        start,
        list(_SETTLED_PAYMENTS),
    )
    found: dict[tuple[date, str, str], FinanceRow] = {}
    for row in rows:
        entry = _finance_row(found, row)
        entry.payments = int(row["payments"])
        entry.gross = int(row["gross"])
        entry.commission = int(row["commission"])
    # Refunds (money back to customers) and dispute withdrawals, at Stripe's time of each.
    movements = await pool.fetch(
        """
        SELECT date_trunc($1, t.occurred_at AT TIME ZONE 'UTC')::date AS period, t.plugin,
               e.currency, e.account, count(DISTINCT t.stripe_object_id) AS movements,
               sum(e.amount)::bigint AS amount
        FROM marketplace_ledger_entries e
        JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
        WHERE t.occurred_at >= $2 AND e.amount > 0
          AND ((e.account = $3 AND t.kind = 'refund') OR e.account = $4)
        GROUP BY 1, 2, 3, 4
        """,
        period,
        start,
        CUSTOMERS,
        DISPUTES,
    )
    for row in movements:
        entry = _finance_row(found, row)
        if row["account"] == DISPUTES:
            entry.disputes += int(row["movements"])
            entry.disputed += int(row["amount"])
        else:
            entry.refunds += int(row["movements"])
            entry.refunded += int(row["amount"])
    return sorted(
        found.values(), key=lambda item: (item.period, item.plugin, item.currency), reverse=True
    )


def totals_by_plugin(rows: Sequence[FinanceRow]) -> list[FinanceRow]:
    """The rows summed over periods, per plugin and currency (``period`` is the oldest)."""
    totals: dict[tuple[str, str], FinanceRow] = {}
    for row in rows:
        total = totals.setdefault(
            (row.plugin, row.currency),
            FinanceRow(period=row.period, plugin=row.plugin, currency=row.currency),
        )
        total.period = min(total.period, row.period)
        total.payments += row.payments
        total.gross += row.gross
        total.commission += row.commission
        total.refunds += row.refunds
        total.refunded += row.refunded
        total.disputes += row.disputes
        total.disputed += row.disputed
    return [totals[key] for key in sorted(totals)]
