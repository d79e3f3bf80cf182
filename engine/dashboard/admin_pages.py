"""The admin finance panel: accounts and their health, money per period, webhooks, reconciliation.

Admins only. Shows every connected account (charges/payouts enabled,
requirements due, failing payouts in plain words, dead-lettered webhooks) with
suspend/resume through the accounts service and one-time login links;
commission, gross volume, refunds and disputes per period and plugin; the
dead-letter queue with replay; the reconciliation status, open alerts and a
button to run it. Every action is a POST form with a CSRF token, answered by a
redirect (so reloading never repeats it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Final

from litestar import Controller, Request, Response, get, post
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect

from engine.accounts.service import ACCOUNT_COLUMNS, AccountService, account_from_row
from engine.core.errors import Conflict, NotFound
from engine.dashboard import queries
from engine.dashboard.account_pages import render_panels
from engine.dashboard.context import BASE, Page, page_context, verified_form
from engine.dashboard.rendering import redirect
from engine.dashboard.security import create_login_link
from engine.reconciliation import store as reconciliation_store
from engine.webhooks.mailbox import Mailbox

__all__ = ["AdminPagesController"]

log = logging.getLogger(__name__)

AccountId = Annotated[str, PathParameter(pattern=r"^acct_[A-Za-z0-9]{1,60}$")]
MailboxAccount = Annotated[str, PathParameter(max_length=64)]
EventId = Annotated[str, PathParameter(max_length=255)]

ACCOUNTS_PER_PAGE: Final = 50
NOTICES: Final = {
    "suspended": "The account is suspended: it takes no new payments; its history, balance "
    "and payouts are unchanged.",
    "resumed": "The account is resumed.",
    "replayed": "Replaying: the event is pending again and its account's mailbox is queued.",
    "reconciling": "Reconciliation started; reload this page in a moment for the result.",
    "already_reconciling": "A reconciliation is already running.",
}


async def _failing_accounts(pool: Any) -> list[Any]:
    rows = await pool.fetch(
        f"SELECT {ACCOUNT_COLUMNS} FROM marketplace_accounts "  # noqa: S608 - constant columns
        "WHERE payout_failure_code IS NOT NULL OR status = 'restricted' OR "
        "(NOT payouts_enabled AND details_submitted) ORDER BY id LIMIT 100"
    )
    return [account_from_row(row) for row in rows]


async def _reconcile_in_background(page: Page, trigger: str) -> None:
    from engine.reconciliation.service import run_reconciliation

    try:
        await run_reconciliation(page.services, trigger=trigger)
    except Conflict:
        log.info("reconciliation from the admin panel skipped: another run is in progress")
    except Exception:  # a background run must log, never crash the API process
        log.exception("reconciliation from the admin panel failed")


def _notice(code: str | None) -> str:
    return NOTICES.get(code or "", "")


class AdminPagesController(Controller):
    """``/dashboard/admin``: the finance panel and its actions."""

    path = "/admin"

    @get("/", name="dashboard:admin")
    async def panel(
        self,
        request: Request[Any, Any, Any],
        period: Annotated[str, QueryParameter(required=False)] = "month",
        after: Annotated[int, QueryParameter(required=False, ge=0)] = 0,
        notice: Annotated[str | None, QueryParameter(required=False, max_length=40)] = None,
    ) -> Response[str]:
        """Accounts, finance, dead letters and reconciliation on one page."""
        page = await page_context(request)
        page.require_admin()
        pool = page.pool
        granularity = queries.period_of(period)
        accounts_service = AccountService(pool, page.services.gateway, public_url="")
        async with asyncio.TaskGroup() as group:
            accounts = group.create_task(
                accounts_service.list_accounts(after=after, limit=ACCOUNTS_PER_PAGE)
            )
            failing = group.create_task(_failing_accounts(pool))
            dead_counts = group.create_task(queries.dead_letter_counts(pool))
            dead_letters = group.create_task(Mailbox(pool).dead_letters(limit=100))
            finance = group.create_task(
                queries.finance_summary(pool, granularity, queries.FINANCE_PERIODS[granularity])
            )
            latest = group.create_task(reconciliation_store.latest_run(pool))
            alerts = group.create_task(reconciliation_store.list_alerts(pool, limit=20))
        running = page.state.reconciliation is not None and not page.state.reconciliation.done()
        return page.render(
            "admin.html",
            notice=_notice(notice),
            accounts=accounts.result().accounts,
            next_after=accounts.result().next_after,
            failing=failing.result(),
            dead_counts=dead_counts.result(),
            dead_letters=dead_letters.result(),
            finance=finance.result(),
            finance_totals=queries.totals_by_plugin(finance.result()),
            granularity=granularity,
            latest=latest.result(),
            alerts=alerts.result(),
            reconciling=running,
            panels=await render_panels(page, "admin", None),
        )

    @get("/reconciliation", name="dashboard:reconciliation")
    async def reconciliation(
        self,
        request: Request[Any, Any, Any],
        notice: Annotated[str | None, QueryParameter(required=False, max_length=40)] = None,
    ) -> Response[str]:
        """The latest run's problems, open alerts and recent runs."""
        page = await page_context(request)
        page.require_admin()
        pool = page.pool
        runs, alerts = await asyncio.gather(
            reconciliation_store.recent_runs(pool, limit=10),
            reconciliation_store.list_alerts(pool, limit=200),
        )
        latest = next((run for run in runs if run.finished_at is not None), None)
        items = await reconciliation_store.problem_items(pool, latest.id) if latest else []
        running = page.state.reconciliation is not None and not page.state.reconciliation.done()
        return page.render(
            "reconciliation.html",
            notice=_notice(notice),
            runs=runs,
            latest=latest,
            items=items,
            alerts=alerts,
            reconciling=running,
        )

    @post("/reconciliation/run", status_code=303)
    async def run_reconciliation(self, request: Request[Any, Any, Any]) -> Redirect:
        """Start a reconciliation run in the background."""
        page = await page_context(request)
        viewer = page.require_admin()
        await verified_form(request, page)
        current = page.state.reconciliation
        if current is not None and not current.done():
            return redirect(f"{BASE}/admin/reconciliation?notice=already_reconciling")
        page.state.reconciliation = asyncio.create_task(
            _reconcile_in_background(page, f"admin:{viewer.actor}")
        )
        return redirect(f"{BASE}/admin/reconciliation?notice=reconciling")

    @post("/accounts/{account_id:str}/suspend", status_code=303)
    async def suspend(self, request: Request[Any, Any, Any], account_id: AccountId) -> Redirect:
        """Suspend an account (no new payments; history, balance and payouts intact)."""
        page = await page_context(request)
        viewer = page.require_admin()
        form = await verified_form(request, page)
        reason = form.get("reason")
        service = AccountService(page.pool, page.services.gateway, public_url="")
        await service.suspend(
            account_id, actor=viewer.actor, reason=reason[:500] if isinstance(reason, str) else ""
        )
        await page.services.live.check()  # its keys stop working here at once
        return redirect(f"{BASE}/admin?notice=suspended#accounts")

    @post("/accounts/{account_id:str}/resume", status_code=303)
    async def resume(self, request: Request[Any, Any, Any], account_id: AccountId) -> Redirect:
        """Lift a suspension."""
        page = await page_context(request)
        viewer = page.require_admin()
        await verified_form(request, page)
        service = AccountService(page.pool, page.services.gateway, public_url="")
        await service.resume(account_id, actor=viewer.actor)
        await page.services.live.check()
        return redirect(f"{BASE}/admin?notice=resumed#accounts")

    @post("/accounts/{account_id:str}/login-link", status_code=200)
    async def login_link(
        self, request: Request[Any, Any, Any], account_id: AccountId
    ) -> Response[str]:
        """Make a one-time login link for the account's holder (shown once)."""
        page = await page_context(request)
        viewer = page.require_admin()
        await verified_form(request, page)
        account = await AccountService(page.pool, page.services.gateway, public_url="").get(
            account_id
        )
        token, expires = await create_login_link(page.pool, account_id, created_by=viewer.actor)
        base = page.services.settings.engine.public_url or str(request.base_url)
        return page.render(
            "login_link_created.html",
            account=account,
            link=f"{base.rstrip('/')}{BASE}/login/{token}",
            expires=expires,
        )

    @post("/dead-letters/{event_id:str}/replay", status_code=303)
    async def replay_event(self, request: Request[Any, Any, Any], event_id: EventId) -> Redirect:
        """Replay one dead-lettered webhook event."""
        page = await page_context(request)
        page.require_admin()
        await verified_form(request, page)
        if not await _replay(request, page, event_ids=[event_id]):
            raise NotFound(f"no dead-lettered event {event_id!r}")
        return redirect(f"{BASE}/admin?notice=replayed#dead-letters")

    @post("/mailboxes/{account:str}/replay", status_code=303)
    async def replay_account(
        self, request: Request[Any, Any, Any], account: MailboxAccount
    ) -> Redirect:
        """Replay every dead-lettered event of one account's mailbox."""
        page = await page_context(request)
        page.require_admin()
        await verified_form(request, page)
        if not await _replay(request, page, account=account):
            raise NotFound(f"no webhook mailbox for account {account!r}")
        return redirect(f"{BASE}/admin?notice=replayed#dead-letters")


async def _replay(
    request: Request[Any, Any, Any],
    page: Page,
    *,
    event_ids: list[str] | None = None,
    account: str | None = None,
) -> list[str]:
    """Replay through the API's webhook service (which queues the drain), else the mailbox.

    Without the webhook service (an API serving no intake) the accounts are
    left scheduled, and the worker's sweeper queues them.
    """
    service = request.app.state.get("webhooks")
    if service is not None:
        accounts: list[str] = await service.replay(event_ids=event_ids, account=account)
        return accounts
    return await Mailbox(page.pool).replay(event_ids=event_ids or (), account=account)
