"""``/v1/reconciliation``: reconciliation runs and their findings, and starting a run.

The JSON beside the admin panel's reconciliation page (``/dashboard/admin/reconciliation``),
read from the same store (``engine.reconciliation.store``). Admin and service keys
read; only an admin key starts a run. A run goes on in the API process after
the ``202`` answers; ``409 conflict`` while another run (from anywhere: the CLI,
the workers, the panel) holds the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Controller, Litestar, Request, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.auth import Principal, requires_scope
from engine.api.fields import RequestBody
from engine.api.idempotency import IdempotencyKeyHeader
from engine.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from engine.api.problems import problem_responses
from engine.core.errors import Conflict, NotFound
from engine.reconciliation import store
from engine.services import Services

__all__ = [
    "Finding",
    "FindingPage",
    "ReconciliationController",
    "Run",
    "RunPage",
    "StartRun",
    "stop_runs_at_shutdown",
]

log = logging.getLogger(__name__)

TASKS_STATE_KEY: Final = "reconciliation_runs"
"""Where the app keeps the runs it started (a task is dropped once done)."""

RunId = Annotated[int, PathParameter(ge=1, le=2**63 - 1, description="A run's id")]
FindingStatus = Literal["missing_in_ledger", "missing_in_stripe", "amount_mismatch"]


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """A reconciliation run and its counts.

    ``status``: ``running``, ``completed``, ``incomplete`` (some account could
    not be listed: ``failed_accounts``) or ``failed`` (``error``). ``mode``:
    ``incremental`` (only new balance transactions listed) or ``full``.
    ``balance_transactions``: listed from Stripe by this run; ``ledger_rows_read``: ledger
    entries it read (new, changed and open lines; the whole ledger on a full run);
    ``matched``: matched by it;
    the three problem counts are the findings outstanding after it.
    """

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
    problems: int
    new_alerts: int
    failed_accounts: list[str]
    error: str
    started_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: store.RunRow) -> Run:
        """The view of a stored run."""
        return cls(
            id=row.id,
            trigger=row.trigger,
            mode=row.mode,
            status=row.status,
            accounts=row.accounts,
            balance_transactions=row.balance_transactions,
            ledger_rows_read=row.ledger_rows_read,
            matched=row.matched,
            missing_in_ledger=row.missing_in_ledger,
            missing_in_stripe=row.missing_in_stripe,
            amount_mismatch=row.amount_mismatch,
            problems=row.problems,
            new_alerts=row.new_alerts,
            failed_accounts=row.failed_accounts,
            error=row.error,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    """Runs, newest first; pass ``next_cursor`` as ``cursor`` for older ones."""

    data: list[Run]
    next_cursor: str | None


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a run found unmatched (amounts in minor units of ``currency``).

    ``missing_in_ledger``: Stripe's balance transaction has no posting;
    ``missing_in_stripe``: a posting (``ledger_key``) no balance transaction shows;
    ``amount_mismatch``: both exist, amount or fee differ.
    """

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


class FindingPage(msgspec.Struct, frozen=True, kw_only=True):
    """A run's findings in the order found; pass ``next_cursor`` as ``cursor`` for more."""

    data: list[Finding]
    next_cursor: str | None


class StartRun(RequestBody, frozen=True):
    """How to run: ``full`` forgets what earlier runs reconciled and lists everything again."""

    full: bool = False


async def _run_in_background(
    services: Services, trigger: str, full: bool, started: asyncio.Future[int]
) -> None:
    from engine.reconciliation.service import run_reconciliation

    def announce(run_id: int) -> None:
        if not started.done():
            started.set_result(run_id)

    try:
        await run_reconciliation(services, trigger=trigger, full=full, on_started=announce)
    except Exception as exc:  # the request awaits the start; a later failure is the run's
        if not started.done():
            started.set_exception(exc)
        elif not isinstance(exc, Conflict):
            log.exception("reconciliation started through the API failed")


@contextlib.asynccontextmanager
async def stop_runs_at_shutdown(app: Litestar) -> AsyncIterator[None]:
    """A lifespan: runs this app started and still going are cancelled when it stops.

    A cancelled run stays ``running`` in the table; its lock goes with it, and
    the next run (whoever starts it) lists from the cursors it saved.
    """
    yield
    tasks: set[asyncio.Task[None]] = app.state.get(TASKS_STATE_KEY) or set()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ReconciliationController(Controller):
    """Reconciliation runs: list, read, findings, start."""

    path = "/v1/reconciliation"
    tags = ["reconciliation"]
    guards = [requires_scope("service")]

    @get(
        "/runs",
        operation_id="listReconciliationRuns",
        summary="List reconciliation runs",
        responses=problem_responses(400, 401, 403),
    )
    async def list_runs(
        self, services: NamedDependency[Services], limit: Limit = 20, cursor: Cursor = None
    ) -> RunPage:
        """Every run (from the CLI, the workers, the panel or this API), newest first."""
        before = decode_cursor(cursor) or None
        rows = await store.runs_before(services.db.pool, before=before, limit=limit + 1)
        page = rows[:limit]
        more = len(rows) > limit and page
        return RunPage(
            data=[Run.of(row) for row in page],
            next_cursor=encode_cursor(page[-1].id) if more else None,
        )

    @get(
        "/runs/{run_id:int}",
        operation_id="getReconciliationRun",
        summary="Get a reconciliation run",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def get_run(self, run_id: RunId, services: NamedDependency[Services]) -> Run:
        """A run's status and counts (poll it after starting one)."""
        row = await store.find_run(services.db.pool, run_id)
        if row is None:
            raise NotFound(f"no reconciliation run {run_id}")
        return Run.of(row)

    @get(
        "/runs/{run_id:int}/findings",
        operation_id="listReconciliationFindings",
        summary="List a reconciliation run's findings",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def list_findings(
        self,
        *,
        run_id: RunId,
        services: NamedDependency[Services],
        limit: Limit = 50,
        cursor: Cursor = None,
        status: Annotated[
            FindingStatus | None,
            QueryParameter(required=False, description="Only findings of this kind"),
        ] = None,
        account: Annotated[
            str | None,
            QueryParameter(
                required=False,
                pattern=r"^(platform|acct_[A-Za-z0-9]{1,60})$",
                description="Only this Stripe balance's (`platform` or `acct_...`)",
            ),
        ] = None,
    ) -> FindingPage:
        """What the run found unmatched, in the order found (matched items are not listed)."""
        pool = services.db.pool
        if await store.find_run(pool, run_id) is None:
            raise NotFound(f"no reconciliation run {run_id}")
        rows = await store.findings(
            pool,
            run_id,
            after=decode_cursor(cursor),
            limit=limit + 1,
            status=status,
            account=account,
        )
        page = rows[:limit]
        return FindingPage(
            data=[_finding(row) for row in page],
            next_cursor=encode_cursor(page[-1].id) if len(rows) > limit and page else None,
        )

    @post(
        "/runs",
        operation_id="startReconciliationRun",
        summary="Start a reconciliation run (admin)",
        status_code=202,
        guards=[requires_scope()],
        responses=problem_responses(
            400,
            401,
            403,
            409,
            422,
            descriptions={409: "A reconciliation run is already in progress (`conflict`)"},
        ),
    )
    async def start_run(
        self,
        *,
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
        data: JSONBody[StartRun | None] = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Run:
        """Start a run; it goes on after the answer (poll ``GET /runs/{id}`` for its outcome).

        Incremental unless ``full``. ``409 conflict`` while another run holds the lock.
        """
        full = data.full if data is not None else False
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            _run_in_background(services, f"api:{principal.key_id}", full, started)
        )
        tasks: set[asyncio.Task[None]] = request.app.state.setdefault(TASKS_STATE_KEY, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        run_id = await started
        row = await store.find_run(services.db.pool, run_id)
        if row is None:  # pragma: no cover - the run recorded itself before announcing
            raise NotFound(f"no reconciliation run {run_id}")
        return Run.of(row)


def _finding(row: store.ProblemItem) -> Finding:
    return Finding(
        id=row.id,
        account=row.account,
        status=row.status,
        currency=row.currency,
        balance_transaction_id=row.balance_transaction_id,
        stripe_type=row.stripe_type,
        stripe_source=row.stripe_source,
        stripe_amount=row.stripe_amount,
        stripe_fee=row.stripe_fee,
        ledger_key=row.ledger_key,
        ledger_amount=row.ledger_amount,
        ledger_fee=row.ledger_fee,
        detail=row.detail,
    )
