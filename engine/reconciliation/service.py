"""One reconciliation run: list Stripe's new balance transactions, match them, record and alert.

``run_reconciliation(services)`` reconciles the platform's Stripe balance and
every connected account's (the accounts in ``marketplace_accounts`` plus any
``acct_...`` the ledger mentions) against the ledger accounts of the same name.

It is incremental and bounded in memory. Per account it lists only the balance
transactions newer than the last one reconciled (``ending_before`` the
account's cursor; the first run walks the whole history with
``starting_after``), ``page_size`` at a time, with the ``Stripe-Account``
header for connected accounts. Each page is matched and stored before the next
is listed, so at most one page of transactions per account is held at once
(``AccountProgress.most_held``). Then, in pages too: the transactions still
unmatched from any run are matched again (a posting that arrived late, a
ledger mended by hand), the rest become ``amount_mismatch`` or
``missing_in_ledger``, and the ledger lines no transaction ever claimed are
``missing_in_stripe``: reconciliation stays a completeness check over the
whole ledger although it fetches only what is new. A claimed ledger entry
changed afterwards re-opens its transaction (``engine.reconciliation.state``).
``full=True`` (``marketplace reconcile --full``) forgets every cursor and claim
and lists everything again.

Then it opens one alert per new finding, resolves alerts no longer found, and
announces each new alert as the lifecycle event ``engine.reconciliation.mismatch``.
It never changes a ledger entry or moves money: fixing a difference is a
person's decision.

Only one run at a time (a PostgreSQL advisory lock); a second one raises
``Conflict``. A connected account Stripe will not list is named in the run
(``incomplete``); if the platform's own list fails, the run fails (the
platform's objects are what link the connected accounts' transactions).
The function is a plain ``async def`` of the services, so the CLI, a taskiq
task, the admin panel or the API can run it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from engine.core.errors import Conflict, InvalidInput, MarketplaceError
from engine.core.ledger import stripe_time
from engine.core.money import Money
from engine.core.orders import LifecycleEvent
from engine.core.postings import adjustment_posting
from engine.reconciliation import state, store
from engine.reconciliation.links import Links, object_id
from engine.reconciliation.matching import (
    MATCHED,
    PROBLEMS,
    BalanceTxn,
    ItemResult,
    LedgerLine,
    leftover_items,
    match_exact,
    pair_mismatches,
)

__all__ = [
    "CONCURRENT_ACCOUNTS",
    "FULL",
    "INCREMENTAL",
    "MISMATCH_EVENT",
    "PAGE_SIZE",
    "PLATFORM",
    "AccountProgress",
    "ReconciliationRun",
    "is_running",
    "reconciliation_task",
    "run_reconciliation",
]

log = logging.getLogger(__name__)

PLATFORM: Final = "platform"
MISMATCH_EVENT: Final = "engine.reconciliation.mismatch"
CONCURRENT_ACCOUNTS: Final = 8
"""Connected accounts listed from Stripe at the same time."""
PAGE_SIZE: Final = 100
"""Balance transactions per list request and per matching step (Stripe's largest page)."""
INCREMENTAL: Final = "incremental"
FULL: Final = "full"
_LOCK_KEY: Final = 727_275  # the advisory lock id of reconciliation runs

Progress = Callable[["AccountProgress"], None]


@dataclass(frozen=True, slots=True)
class AccountProgress:
    """One account reconciled (or not): what the CLI prints per account.

    Attributes:
        balance_transactions: listed from Stripe by this run (new ones only,
            unless the run is full).
        matched: transactions this run matched (new ones, and earlier ones
            whose posting arrived since).
        problems: findings outstanding on the account after this run.
        pages: list requests made to Stripe for the account.
        most_held: the most balance transactions held in memory at once.
        reopened: earlier matches re-opened because a claimed ledger entry changed.
        ledger_rows_read: ledger entries the run read for the account: the
            claims of new and changed entries checked, the candidate lines of
            the transactions matched, and the unclaimed new, changed and open
            lines looked at for ``missing_in_stripe`` (an entry read by two of
            these steps counts twice).
    """

    account: str
    position: int
    total: int
    balance_transactions: int = 0
    matched: int = 0
    problems: int = 0
    error: str = ""
    pages: int = 0
    most_held: int = 0
    reopened: int = 0
    ledger_rows_read: int = 0


@dataclass(frozen=True, slots=True)
class ReconciliationRun:
    """The outcome of ``run_reconciliation``.

    Attributes:
        status: ``completed``; ``incomplete`` when some account could not be
            fetched (its alerts are left as they were); ``failed`` on an error.
        mode: ``incremental`` or ``full``.
        counts: items per status (``matched`` counts what this run matched;
            the problems are every finding outstanding).
        new_alerts: alerts this run opened or re-opened.
        items: the findings (unmatched items), in the order found.
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
    mode: str = INCREMENTAL

    @property
    def problems(self) -> int:
        """Items that are not matched."""
        return sum(self.counts.get(status, 0) for status in PROBLEMS)

    @property
    def balance_transactions(self) -> int:
        """Balance transactions listed from Stripe by this run."""
        return sum(account.balance_transactions for account in self.accounts)

    @property
    def ledger_rows_read(self) -> int:
        """Ledger entries read by this run (``AccountProgress.ledger_rows_read``)."""
        return sum(account.ledger_rows_read for account in self.accounts)

    def problem_items(self) -> list[ItemResult]:
        """Every unmatched item, in the order found."""
        return [item for item in self.items if item.status != MATCHED]


async def _stripe_accounts(pool: Any) -> list[str]:
    """Connected accounts to reconcile: known ones and any the ledger mentions.

    The ledger's are found without reading it: an account with entries has
    notes of them (``marketplace_reconciliation_ledger_changes``) until a run
    reconciled it, and a cursor once one has.
    """
    rows = await pool.fetch(
        """
        SELECT stripe_account_id AS account FROM marketplace_accounts
        UNION
        SELECT account FROM marketplace_reconciliation_cursors WHERE account <> 'platform'
        UNION
        SELECT DISTINCT account FROM marketplace_reconciliation_ledger_changes
        WHERE account <> 'platform'
        ORDER BY 1
        """
    )
    return [str(row["account"]) for row in rows]


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
        # Stripe's own adjustment has no object behind it: its posting names the
        # transaction itself (``adjustment:<txn>``).
        candidates=(
            (str(raw["id"]),) if _is_stripes_own_adjustment(raw) else links.candidates(source)
        ),
    )


def _is_stripes_own_adjustment(raw: Mapping[str, Any]) -> bool:
    """An ``adjustment`` that is no dispute's: Stripe's correction of the balance."""
    source = object_id(raw.get("source"))
    return raw.get("type") == "adjustment" and not source.startswith(("du_", "dp_"))


async def _post_adjustments(services: Any, account: str, data: Sequence[Mapping[str, Any]]) -> int:
    """Post Stripe's own adjustments of ``account``'s balance, once each (no event
    announces them, so the listing is where the engine learns of them)."""
    posted = 0
    for raw in data:
        if not _is_stripes_own_adjustment(raw):
            continue
        currency = str(raw.get("currency") or "usd").lower()
        posting = adjustment_posting(
            account,
            str(raw["id"]),
            Money(int(raw.get("amount") or 0), currency),
            Money(int(raw.get("fee") or 0), currency),
            occurred_at=stripe_time(raw.get("created")),
        )
        posted += int(await services.ledger.post(posting))
    return posted


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


class _CursorGone(Exception):
    """Stripe no longer knows the cursor's balance transaction (another account, a reset)."""


@dataclass
class _Account:
    """One Stripe balance's part of a run: list, match and find, page by page."""

    services: Any
    run_id: int
    account: str
    page_size: int
    listed: int = 0
    pages: int = 0
    most_held: int = 0
    matched: int = 0
    reopened: int = 0
    ledger_rows_read: int = 0
    problems: list[ItemResult] = field(default_factory=list)

    @property
    def pool(self) -> Any:
        return self.services.db.pool

    def _hold(self, count: int) -> None:
        self.most_held = max(self.most_held, count)

    async def reconcile(self) -> None:
        """Every step for this account; Stripe's errors propagate (``MarketplaceError``)."""
        reopened = await state.reopen_changed(self.pool, self.account, page=self.page_size)
        self.reopened = reopened.transactions
        self.ledger_rows_read += reopened.entries_read
        try:
            await self._list_new()
        except _CursorGone:
            log.warning(
                "reconciliation: Stripe no longer lists %s's cursor; listing all again",
                self.account,
            )
            await self._list_pages(None)
        await self._match_open()
        await self._pair_open()
        await self._find_leftovers()
        await state.forget_changes(self.pool, self.account)

    async def _open_lines(self, candidates: Sequence[str]) -> list[LedgerLine]:
        lines = await state.open_lines(self.pool, self.account, candidates)
        self.ledger_rows_read += len(lines)
        return lines

    async def _list(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        query = {**params, "limit": self.page_size}
        if self.account == PLATFORM:
            query["expand"] = ["data.source"]
        self.pages += 1
        page: Mapping[str, Any] = await self.services.gateway.call(
            "balance_transactions",
            "list",
            params=query,
            account=None if self.account == PLATFORM else self.account,
        )
        return page

    async def _list_new(self) -> None:
        start = await state.cursor(self.pool, self.account)
        await self._list_pages(start)

    async def _list_pages(self, start: state.Cursor | None) -> None:
        """List the transactions newer than ``start`` (all when ``None``), one page at a time.

        Stripe lists newest first. From a cursor, ``ending_before`` returns the
        page just newer than it, so the walk goes forward in time and the
        cursor moves after each page; without one, ``starting_after`` walks
        back through the whole history and the cursor is the newest seen.
        """
        if start is None:
            newest: state.Cursor | None = None
            params: dict[str, Any] = {}
            while True:
                page = await self._list(params)
                data = list(page.get("data") or [])
                if data and newest is None:
                    newest = state.Cursor(str(data[0]["id"]), int(data[0].get("created") or 0))
                await self._take(data)
                if not page.get("has_more") or not data:
                    break
                params = {"starting_after": data[-1]["id"]}
            if newest is not None:
                await state.save_cursor(self.pool, self.account, newest)
            return
        before = start.balance_transaction_id
        while True:
            try:
                page = await self._list({"ending_before": before})
            except InvalidInput as exc:
                if exc.field == "ending_before":  # Stripe: resource_missing, param ending_before
                    raise _CursorGone from exc
                raise
            data = list(page.get("data") or [])
            if not data:
                return
            await self._take(data)
            before = str(data[0]["id"])
            await state.save_cursor(
                self.pool, self.account, state.Cursor(before, int(data[0].get("created") or 0))
            )
            if not page.get("has_more"):
                return

    async def _take(self, data: Sequence[Mapping[str, Any]]) -> None:
        """One listed page: learn its relations, record its transactions, match them exactly."""
        self.listed += len(data)
        self._hold(len(data))
        if not data:
            return
        if self.account == PLATFORM:
            learnt = Links()
            for raw in data:
                learnt.learn(raw.get("source"))
            await state.save_links(self.pool, learnt)
        await _post_adjustments(self.services, self.account, data)
        links = await state.load_links(self.pool, [object_id(raw.get("source")) for raw in data])
        txns = [_to_txn(raw, self.account, links) for raw in data]
        await self._match_exactly(await state.add_txns(self.pool, self.run_id, txns))

    async def _match_exactly(self, txns: Sequence[BalanceTxn]) -> None:
        if not txns:
            return
        candidates = [candidate for txn in txns for candidate in txn.candidates]
        lines = await self._open_lines(candidates)
        matched, _ = match_exact(self.account, txns, lines)
        await state.claim(self.pool, self.account, matched, exact=True)
        await store.save_items(self.pool, self.run_id, matched)
        self.matched += len(matched)

    async def _open_pages(self) -> AsyncIterator[list[BalanceTxn]]:
        """The account's transactions not matched yet, a page at a time (as ``BalanceTxn``)."""
        after = 0
        while True:
            rows = await state.open_txns(self.pool, self.account, after=after, limit=self.page_size)
            if not rows:
                return
            after = rows[-1][0]
            links = await state.load_links(self.pool, [str(row["source"]) for _, row in rows])
            txns = [
                _to_txn(dict(row) | {"id": row["balance_transaction_id"]}, self.account, links)
                for _, row in rows
            ]
            self._hold(len(txns))
            yield txns

    async def _match_open(self) -> None:
        """Earlier transactions still unmatched: their posting may have arrived since."""
        async for txns in self._open_pages():
            await self._match_exactly(txns)

    async def _pair_open(self) -> None:
        """What no exact match took: an amount mismatch, or missing in the ledger."""
        async for txns in self._open_pages():
            candidates = [candidate for txn in txns for candidate in txn.candidates]
            lines = await self._open_lines(candidates)
            found = pair_mismatches(self.account, txns, lines)
            await state.claim(self.pool, self.account, found, exact=False)
            await store.save_items(self.pool, self.run_id, found)
            self.problems += found

    async def _find_leftovers(self) -> None:
        """Ledger lines no balance transaction ever claimed: missing at Stripe."""
        after = 0
        while True:
            page = await state.leftover_lines(
                self.pool, self.account, after=after, limit=self.page_size
            )
            if page.last is None:
                return
            after = page.last
            self.ledger_rows_read += page.rows_read
            found = leftover_items(self.account, page.lines)
            await store.save_items(self.pool, self.run_id, found)
            self.problems += found


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One account's part of the run, or why it could not be listed."""

    account: str
    part: _Account | None = None
    error: str = ""


class _Run:
    """The state of one run while it goes through the accounts."""

    def __init__(
        self, services: Any, run_id: int, progress: Progress | None, page_size: int
    ) -> None:
        self.services = services
        self.run_id = run_id
        self.progress = progress
        self.page_size = page_size
        self.items: list[ItemResult] = []
        self.matched = 0
        self.reports: list[AccountProgress] = []
        self.reconciled: list[str] = []
        self.failed: list[str] = []
        self._slots = asyncio.Semaphore(CONCURRENT_ACCOUNTS)

    async def _reconcile(self, account: str) -> _Outcome:
        async with self._slots:
            part = _Account(self.services, self.run_id, account, self.page_size)
            try:
                await part.reconcile()
            except MarketplaceError as exc:
                if account == PLATFORM:
                    raise  # without the platform's objects nothing else can be linked
                log.warning("reconciliation: cannot list %s's transactions: %s", account, exc)
                return _Outcome(account, error=str(exc.detail))
            return _Outcome(account, part)

    def _record(self, outcome: _Outcome, position: int, total: int) -> None:
        part = outcome.part
        if part is None:
            self.failed.append(outcome.account)
            report = AccountProgress(outcome.account, position, total, error=outcome.error)
        else:
            self.items += part.problems
            self.matched += part.matched
            self.reconciled.append(outcome.account)
            report = AccountProgress(
                outcome.account,
                position,
                total,
                balance_transactions=part.listed,
                matched=part.matched,
                problems=len(part.problems),
                pages=part.pages,
                most_held=part.most_held,
                reopened=part.reopened,
                ledger_rows_read=part.ledger_rows_read,
            )
        self.reports.append(report)
        if self.progress is not None:
            self.progress(report)

    async def accounts(self, connected: Sequence[str]) -> None:
        """The platform first (its objects link the rest), then the connected accounts.

        Connected accounts are reconciled ``CONCURRENT_ACCOUNTS`` at a time and
        reported in order, so the progress reads the same on every run.
        """
        total = len(connected) + 1
        self._record(await self._reconcile(PLATFORM), 1, total)
        tasks = [asyncio.create_task(self._reconcile(account)) for account in connected]
        try:
            for position, task in enumerate(tasks, start=2):
                self._record(await task, position, total)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def counts(self) -> dict[str, int]:
        counted: Counter[str] = Counter(str(item.status) for item in self.items)
        return {MATCHED: self.matched, **counted} if self.matched else dict(counted)


async def run_reconciliation(
    services: Any,
    *,
    progress: Progress | None = None,
    trigger: str = "task",
    full: bool = False,
    page_size: int = PAGE_SIZE,
    on_started: Callable[[int], None] | None = None,
) -> ReconciliationRun:
    """Reconcile every Stripe balance with the ledger; record items and alerts.

    Args:
        services: the engine's ``Services`` (database, gateway, plugins).
        progress: called once per account, platform first, as each finishes.
        trigger: who started the run (``cli``, ``task``, ``admin:<key>``), stored.
        full: forget what earlier runs reconciled and list every transaction again.
        page_size: transactions per list request (1-100): the most held per account.
        on_started: called with the run's id once it holds the lock and is recorded
            (``POST /v1/reconciliation/runs`` answers then, while the run goes on).

    Raises:
        Conflict: another run holds the lock.
    """
    if not 1 <= page_size <= PAGE_SIZE:
        raise InvalidInput(f"page_size must be 1-{PAGE_SIZE}", field="page_size")
    pool = services.db.pool
    async with pool.acquire() as lock:
        if not await lock.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            raise Conflict("a reconciliation run is already in progress")
        try:
            return await _reconcile(
                services, progress, trigger, full=full, page_size=page_size, on_started=on_started
            )
        finally:
            await lock.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def is_running(pool: Any) -> bool:
    """Whether a run holds the lock now (in any process)."""
    held = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = 0 AND objid = $1 AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()))",
        _LOCK_KEY,
    )
    return bool(held)


async def _reconcile(
    services: Any,
    progress: Progress | None,
    trigger: str,
    *,
    full: bool,
    page_size: int,
    on_started: Callable[[int], None] | None,
) -> ReconciliationRun:
    pool = services.db.pool
    started = datetime.now(UTC)
    mode = FULL if full else INCREMENTAL
    async with pool.acquire() as conn:
        run_id = await store.start_run(conn, trigger, mode=mode)
        await store.close_interrupted_runs(conn, run_id)
    if on_started is not None:
        on_started(run_id)
    run = _Run(services, run_id, progress, page_size)
    try:
        if full:
            await state.forget_everything(pool)
        connected = await _stripe_accounts(pool)
        await run.accounts(connected)
    except Exception as exc:
        async with pool.acquire() as conn:
            await store.finish_run(
                conn,
                run_id,
                status="failed",
                counts=run.counts(),
                accounts=len(run.reports),
                balance_transactions=sum(r.balance_transactions for r in run.reports),
                ledger_rows_read=sum(r.ledger_rows_read for r in run.reports),
                new_alerts=0,
                failed_accounts=run.failed,
                error=f"{type(exc).__name__}: {exc}",
            )
        raise
    counts = run.counts()
    status = "incomplete" if run.failed else "completed"
    async with pool.acquire() as conn, conn.transaction():
        opened = await store.upsert_alerts(conn, run_id, run.items)
        await store.resolve_alerts(conn, run_id, run.reconciled)
        await store.finish_run(
            conn,
            run_id,
            status=status,
            counts=counts,
            accounts=len(connected) + 1,
            balance_transactions=sum(r.balance_transactions for r in run.reports),
            ledger_rows_read=sum(r.ledger_rows_read for r in run.reports),
            new_alerts=len(opened),
            failed_accounts=run.failed,
        )
        await store.prune_matched_items(conn)
    _announce(services, run_id, opened)
    log.info(
        "reconciliation run %d %s (%s): %d listed, %d ledger rows read, %d matched, "
        "%d problems, %d new alerts",
        run_id,
        status,
        mode,
        sum(r.balance_transactions for r in run.reports),
        sum(r.ledger_rows_read for r in run.reports),
        run.matched,
        sum(counts.get(problem, 0) for problem in PROBLEMS),
        len(opened),
    )
    return ReconciliationRun(
        id=run_id,
        trigger=trigger,
        status=status,
        started_at=started,
        finished_at=datetime.now(UTC),
        accounts=tuple(run.reports),
        counts=counts,
        new_alerts=len(opened),
        items=tuple(run.items),
        mode=mode,
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
