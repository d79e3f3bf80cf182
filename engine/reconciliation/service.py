"""One reconciliation run: fetch Stripe's balance transactions, match them, record and alert.

``run_reconciliation(services)`` reconciles the platform's Stripe balance and
every connected account's (the accounts in ``marketplace_accounts`` plus any
``acct_...`` the ledger mentions) against the ledger accounts of the same name.
Per account it fetches every balance transaction (paginated, with the
``Stripe-Account`` header for connected accounts), matches them with
``engine.reconciliation.matching`` and stores the items; then it opens one alert
per new finding, resolves alerts no longer found, and announces each new alert
as the lifecycle event ``engine.reconciliation.mismatch``. It never changes a
ledger entry or moves money: fixing a difference is a person's decision.

Only one run at a time (a PostgreSQL advisory lock); a second one raises
``Conflict``. A connected account Stripe will not list is named in the run
(``incomplete``); if the platform's own list fails, the run fails (the
platform's objects are what link the connected accounts' transactions).
The function is a plain ``async def`` of the services, so the CLI, a taskiq
task or the admin panel can run it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from engine.core.errors import Conflict, MarketplaceError
from engine.core.orders import LifecycleEvent
from engine.reconciliation import store
from engine.reconciliation.links import Links, object_id
from engine.reconciliation.matching import (
    MATCHED,
    PROBLEMS,
    BalanceTxn,
    ItemResult,
    LedgerLine,
    match_account,
)

__all__ = [
    "CONCURRENT_ACCOUNTS",
    "MISMATCH_EVENT",
    "PLATFORM",
    "AccountProgress",
    "ReconciliationRun",
    "reconciliation_task",
    "run_reconciliation",
]

log = logging.getLogger(__name__)

PLATFORM: Final = "platform"
MISMATCH_EVENT: Final = "engine.reconciliation.mismatch"
CONCURRENT_ACCOUNTS: Final = 8
"""Connected accounts listed from Stripe at the same time."""
_LOCK_KEY: Final = 727_275  # the advisory lock id of reconciliation runs

Progress = Callable[["AccountProgress"], None]


@dataclass(frozen=True, slots=True)
class AccountProgress:
    """One account reconciled (or not): what the CLI prints per account."""

    account: str
    position: int
    total: int
    balance_transactions: int = 0
    matched: int = 0
    problems: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class ReconciliationRun:
    """The outcome of ``run_reconciliation``.

    Attributes:
        status: ``completed``; ``incomplete`` when some account could not be
            fetched (its alerts are left as they were); ``failed`` on an error.
        counts: items per status (``matched``, ``missing_in_ledger`` ...).
        new_alerts: alerts this run opened or re-opened.
    """

    id: int
    trigger: str
    status: str
    started_at: datetime
    finished_at: datetime
    accounts: tuple[AccountProgress, ...]
    counts: Mapping[str, int]
    new_alerts: int
    items: tuple[ItemResult, ...] = field(default=(), repr=False)

    @property
    def problems(self) -> int:
        """Items that are not matched."""
        return sum(self.counts.get(status, 0) for status in PROBLEMS)

    @property
    def balance_transactions(self) -> int:
        """Balance transactions fetched from Stripe."""
        return sum(account.balance_transactions for account in self.accounts)

    def problem_items(self) -> list[ItemResult]:
        """Every unmatched item, in the order found."""
        return [item for item in self.items if item.status != MATCHED]


async def _stripe_accounts(pool: Any) -> list[str]:
    """Connected accounts to reconcile: known ones and any the ledger mentions."""
    rows = await pool.fetch(
        """
        SELECT stripe_account_id AS account FROM marketplace_accounts
        UNION
        SELECT DISTINCT account FROM marketplace_ledger_entries
        WHERE account LIKE 'acct\\_%' AND strpos(account, ':') = 0
        ORDER BY 1
        """
    )
    return [str(row["account"]) for row in rows]


async def _ledger_lines(pool: Any, account: str) -> list[LedgerLine]:
    rows = await pool.fetch(
        """
        SELECT e.id, e.ledger_transaction, e.amount, e.currency,
               t.idempotency_key, t.kind, t.stripe_object_id
        FROM marketplace_ledger_entries e
        JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
        WHERE e.account = $1
        """,
        account,
    )
    return [
        LedgerLine(
            entry_id=int(row["id"]),
            transaction_id=int(row["ledger_transaction"]),
            key=str(row["idempotency_key"]),
            kind=str(row["kind"]),
            stripe_object_id=str(row["stripe_object_id"] or ""),
            account=account,
            currency=str(row["currency"]).lower(),
            amount=int(row["amount"]),
        )
        for row in rows
    ]


async def _balance_transactions(services: Any, account: str) -> list[dict[str, Any]]:
    """Every balance transaction of one Stripe balance (the platform's with sources expanded)."""
    if account == PLATFORM:
        found: list[dict[str, Any]] = await services.gateway.list_all(
            "balance_transactions", params={"expand": ["data.source"]}
        )
        return found
    connected: list[dict[str, Any]] = await services.gateway.list_all(
        "balance_transactions", account=account
    )
    return connected


def _to_txn(raw: Mapping[str, Any], account: str, links: Links) -> BalanceTxn:
    source = object_id(raw.get("source"))
    return BalanceTxn(
        id=str(raw["id"]),
        account=account,
        type=str(raw.get("type") or ""),
        source=source,
        amount=int(raw.get("amount") or 0),
        fee=int(raw.get("fee") or 0),
        currency=str(raw.get("currency") or "").lower(),
        created=int(raw.get("created") or 0),
        candidates=links.candidates(source),
    )


def _announce(services: Any, run_id: int, alerts: Sequence[store.NewAlert]) -> None:
    for alert in alerts:
        services.plugins.notify_lifecycle(
            LifecycleEvent(
                MISMATCH_EVENT,
                subject_id=f"reconciliation_alert:{alert.id}",
                account_id=None if alert.account == PLATFORM else alert.account,
                data={
                    "run": run_id,
                    "status": alert.status,
                    "account": alert.account,
                    "currency": alert.currency,
                    "summary": alert.summary,
                    "balance_transaction": alert.balance_transaction_id,
                    "ledger_key": alert.ledger_key,
                },
            )
        )


def _counts(items: Sequence[ItemResult]) -> dict[str, int]:
    counted: Counter[str] = Counter(str(item.status) for item in items)
    return dict(counted)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One account's matching, or why it could not be listed."""

    account: str
    items: list[ItemResult] = field(default_factory=list)
    balance_transactions: int = 0
    error: str = ""


class _Run:
    """The state of one run while it goes through the accounts."""

    def __init__(self, services: Any, run_id: int, progress: Progress | None) -> None:
        self.services = services
        self.pool = services.db.pool
        self.run_id = run_id
        self.progress = progress
        self.links = Links()
        self.items: list[ItemResult] = []
        self.reports: list[AccountProgress] = []
        self.reconciled: list[str] = []
        self.failed: list[str] = []
        self._slots = asyncio.Semaphore(CONCURRENT_ACCOUNTS)

    async def _match(self, account: str) -> _Outcome:
        """List one balance's transactions, match them and store the items."""
        async with self._slots:
            try:
                raw = await _balance_transactions(self.services, account)
            except MarketplaceError as exc:
                if account == PLATFORM:
                    raise  # without the platform's objects nothing else can be linked
                log.warning("reconciliation: cannot list %s's transactions: %s", account, exc)
                return _Outcome(account, error=str(exc.detail))
            if account == PLATFORM:
                for txn in raw:
                    self.links.learn(txn.get("source"))
            txns = [_to_txn(txn, account, self.links) for txn in raw]
            found = match_account(account, txns, await _ledger_lines(self.pool, account))
            async with self.pool.acquire() as conn, conn.transaction():
                await store.save_items(conn, self.run_id, found)
            return _Outcome(account, found, len(txns))

    def _record(self, outcome: _Outcome, position: int, total: int) -> None:
        if outcome.error:
            self.failed.append(outcome.account)
            report = AccountProgress(outcome.account, position, total, error=outcome.error)
        else:
            self.items += outcome.items
            self.reconciled.append(outcome.account)
            matched = sum(item.status == MATCHED for item in outcome.items)
            report = AccountProgress(
                outcome.account,
                position,
                total,
                balance_transactions=outcome.balance_transactions,
                matched=matched,
                problems=len(outcome.items) - matched,
            )
        self.reports.append(report)
        if self.progress is not None:
            self.progress(report)

    async def accounts(self, connected: Sequence[str]) -> None:
        """The platform first (its objects link the rest), then the connected accounts.

        Connected accounts are listed ``CONCURRENT_ACCOUNTS`` at a time and
        reported in order, so the progress reads the same on every run.
        """
        total = len(connected) + 1
        self._record(await self._match(PLATFORM), 1, total)
        tasks = [asyncio.create_task(self._match(account)) for account in connected]
        try:
            for position, task in enumerate(tasks, start=2):
                self._record(await task, position, total)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def run_reconciliation(
    services: Any, *, progress: Progress | None = None, trigger: str = "task"
) -> ReconciliationRun:
    """Reconcile every Stripe balance with the ledger; record items and alerts.

    Args:
        services: the engine's ``Services`` (database, gateway, plugins).
        progress: called once per account, platform first, as each finishes.
        trigger: who started the run (``cli``, ``task``, ``admin:<key>``), stored.

    Raises:
        Conflict: another run holds the lock.
    """
    pool = services.db.pool
    async with pool.acquire() as lock:
        if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            raise Conflict("a reconciliation run is already in progress")
        try:
            return await _reconcile(services, progress, trigger)
        finally:
            await lock.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def _reconcile(services: Any, progress: Progress | None, trigger: str) -> ReconciliationRun:
    pool = services.db.pool
    started = datetime.now(UTC)
    async with pool.acquire() as conn:
        run_id = await store.start_run(conn, trigger)
    state = _Run(services, run_id, progress)
    try:
        connected = await _stripe_accounts(pool)
        await state.accounts(connected)
    except Exception as exc:
        async with pool.acquire() as conn:
            await store.finish_run(
                conn,
                run_id,
                status="failed",
                counts=_counts(state.items),
                accounts=len(state.reports),
                balance_transactions=sum(r.balance_transactions for r in state.reports),
                new_alerts=0,
                failed_accounts=state.failed,
                error=f"{type(exc).__name__}: {exc}",
            )
        raise
    counts = _counts(state.items)
    status = "incomplete" if state.failed else "completed"
    async with pool.acquire() as conn, conn.transaction():
        opened = await store.upsert_alerts(conn, run_id, state.items)
        await store.resolve_alerts(conn, run_id, state.reconciled)
        await store.finish_run(
            conn,
            run_id,
            status=status,
            counts=counts,
            accounts=len(connected) + 1,
            balance_transactions=sum(r.balance_transactions for r in state.reports),
            new_alerts=len(opened),
            failed_accounts=state.failed,
        )
        await store.prune_matched_items(conn)
    _announce(services, run_id, opened)
    log.info(
        "reconciliation run %d %s: %d items, %d problems, %d new alerts",
        run_id,
        status,
        len(state.items),
        sum(counts.get(problem, 0) for problem in PROBLEMS),
        len(opened),
    )
    return ReconciliationRun(
        id=run_id,
        trigger=trigger,
        status=status,
        started_at=started,
        finished_at=datetime.now(UTC),
        accounts=tuple(state.reports),
        counts=counts,
        new_alerts=len(opened),
        items=tuple(state.items),
    )


async def reconciliation_task(services: Any) -> dict[str, Any]:
    """The scheduled form (a taskiq-compatible ``async def``): run, and return a summary."""
    try:
        run = await run_reconciliation(services, trigger="task")
    except Conflict:
        return {"skipped": "another run is in progress"}
    return {
        "run": run.id,
        "status": run.status,
        "problems": run.problems,
        "new_alerts": run.new_alerts,
    }
