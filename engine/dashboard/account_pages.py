"""A connected account's earnings pages: balance, earnings chart, transactions, payouts, orders.

For any connected account (creator, provider or venue), seen by its holder or
an admin; another account's page is a 404. Balances come from Stripe (available
and pending, per currency) beside the ledger's total; everything else reads the
ledger and the engine's tables. Plugins add panels through
``register_dashboard_panels`` (audience ``"account"``); without one, a generic
panel lists the subscriptions, bookings or other business objects that moved
the account's money, from the ledger's references.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime
from typing import Annotated, Any, Final

from litestar import Controller, Request, Response, get
from litestar.params import PathParameter, QueryParameter
from markupsafe import Markup

from engine.accounts.service import AccountService
from engine.core.errors import MarketplaceError
from engine.dashboard import queries
from engine.dashboard.charts import Chart, bar_chart
from engine.dashboard.context import Page, page_context

__all__ = ["AccountPagesController", "render_panels"]

log = logging.getLogger(__name__)

AccountId = Annotated[str, PathParameter(pattern=r"^acct_[A-Za-z0-9]{1,60}$")]
_CHART_PERIODS: Final = {"month": 12, "week": 12, "day": 30}


async def render_panels(page: Page, audience: str, account_id: str | None) -> list[dict[str, Any]]:
    """Plugin panels for ``audience``, in registration order.

    A panel that renders an empty string does not apply to this account and
    is left out; one that raises shows as unavailable, never as an error page.
    """
    rendered = []
    for panel in page.services.plugins.dashboard_panels():
        if panel.audience != audience:
            continue
        try:
            html = await panel.render(page.services, account_id)
        except Exception:  # a plugin's panel must never take the page down
            log.exception("dashboard panel %s failed", panel.name)
            html = "<p class='muted'>This panel is unavailable right now.</p>"
        if not html.strip():
            continue
        # The hook's contract: render() returns HTML it has already escaped.
        body = Markup(html)  # noqa: S704
        rendered.append({"name": panel.name, "title": panel.title, "body": body})
    return rendered


def _chart(series: queries.EarningsSeries, currency: str, granularity: queries.Period) -> Chart:
    by_period = {
        point.period: point.amount for point in series.points if point.currency == currency
    }
    return bar_chart(
        [(period, by_period.get(period, 0)) for period in series.periods],
        currency,
        granularity=granularity,
    )


def _chart_currency(
    default: str, balances: list[queries.Balance], points: list[queries.EarningsPoint]
) -> str:
    seen = [balance.currency for balance in balances] + [point.currency for point in points]
    if default in seen or not seen:
        return default
    return seen[0]


async def _stripe_balance(page: Page, account_id: str) -> tuple[datetime, Any] | None:
    """Stripe's balance and when it was read (cached briefly), or ``None`` if unreachable."""
    cached = page.state.cached_balance(account_id)
    if cached is not None:
        return cached
    try:
        balance = await page.services.gateway.balance(account_id)
    except MarketplaceError as exc:
        log.warning("dashboard: Stripe balance of %s unavailable: %s", account_id, exc)
        return None
    return page.state.keep_balance(account_id, balance), balance


async def _none() -> list[queries.OrderSummary]:
    """No generic orders panel (a plugin's panel shows the account's business instead)."""
    return []


def _date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


class AccountPagesController(Controller):
    """``/dashboard/accounts/{account_id}`` and its transactions."""

    path = "/accounts"

    @get("/{account_id:str}", name="dashboard:account")
    async def overview(
        self,
        request: Request[Any, Any, Any],
        account_id: AccountId,
        chart: Annotated[str, QueryParameter(required=False)] = "month",
    ) -> Response[str]:
        """The earnings page."""
        page = await page_context(request)
        page.require_account(account_id)
        pool = page.pool
        service = AccountService(pool, page.services.gateway, public_url="")
        account = await service.get(account_id)
        granularity = queries.period_of(chart)
        plugin_panels = await render_panels(page, "account", account_id)
        stripe_balance, ledger, series, recent, payouts, orders = await asyncio.gather(
            _stripe_balance(page, account_id),
            queries.ledger_balances(pool, account_id),
            queries.earnings_series(pool, account_id, granularity, _CHART_PERIODS[granularity]),
            queries.transactions(pool, account_id, queries.TransactionFilters(), limit=10),
            queries.payouts(pool, account_id),
            queries.order_summaries(pool, account_id) if not plugin_panels else _none(),
        )
        balances = queries.merge_balances(stripe_balance[1] if stripe_balance else None, ledger)
        currency = _chart_currency(account.default_currency, balances, series.points)
        return page.render(
            "account.html",
            account=account,
            balances=balances,
            stripe_unavailable=stripe_balance is None,
            stripe_read_at=stripe_balance[0] if stripe_balance else None,
            chart=_chart(series, currency, granularity),
            granularity=granularity,
            rows=recent.rows,
            payouts=payouts,
            failed_payouts=[payout for payout in payouts if payout.status == "failed"],
            orders=orders,
            panels=plugin_panels,
        )

    @get("/{account_id:str}/transactions", name="dashboard:transactions")
    async def transactions(
        self,
        *,
        request: Request[Any, Any, Any],
        account_id: AccountId,
        kind: Annotated[str | None, QueryParameter(required=False, max_length=64)] = None,
        currency: Annotated[str | None, QueryParameter(required=False, max_length=3)] = None,
        since: Annotated[str | None, QueryParameter(required=False, max_length=10)] = None,
        until: Annotated[str | None, QueryParameter(required=False, max_length=10)] = None,
        before: Annotated[int | None, QueryParameter(required=False, ge=1)] = None,
    ) -> Response[str]:
        """Every ledger transaction of the account, filtered, 25 per page."""
        page = await page_context(request)
        page.require_account(account_id)
        pool = page.pool
        account = await AccountService(pool, page.services.gateway, public_url="").get(account_id)
        filters = queries.TransactionFilters(
            kind=kind or None,
            currency=(currency or "").lower() or None,
            since=_date(since),
            until=_date(until),
            before=before,
        )
        found, kinds, ledger = await asyncio.gather(
            queries.transactions(pool, account_id, filters),
            queries.account_kinds(pool, account_id),
            queries.ledger_balances(pool, account_id),
        )
        return page.render(
            "transactions.html",
            account=account,
            filters=filters,
            rows=found.rows,
            next_query=filters.query(before=found.next_before) if found.next_before else None,
            first_query=filters.query(before=None) if before else None,
            kinds=kinds,
            currencies=sorted(ledger),
            bad_dates=(since and not filters.since) or (until and not filters.until),
        )
