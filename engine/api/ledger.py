"""JSON beside the dashboards: an account's balance and statement, and the finance figures.

Each route reads the very query its HTML page renders (``engine.dashboard.queries``),
so the JSON and the page never disagree:

- ``GET /v1/accounts/{id}/balance``: Stripe's available and pending beside the
  ledger's total, per currency (the earnings page's balance);
- ``GET /v1/accounts/{id}/statement``: the account's ledger transactions, newest
  first, net per currency, dated by Stripe's time of each movement (the
  transactions page), with the same filters;
- ``GET /v1/finance/figures``: volume, commission, refunds and disputes per
  period, plugin and currency (the finance panel), each in the period of
  Stripe's time of its own movement.

An account's own key sees its own balance and statement; another account's is
a ``404`` exactly like an unknown one. Admin and service keys see every account
and the finance figures; an account key gets ``403`` there.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter

from engine.accounts import AccountService
from engine.api.auth import Principal, requires_scope
from engine.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from engine.api.problems import problem_responses
from engine.core.errors import InvalidInput, MarketplaceError
from engine.dashboard import queries
from engine.services import Services

__all__ = [
    "AccountBalance",
    "AccountLedgerController",
    "BalanceAmounts",
    "FinanceController",
    "FinanceFigure",
    "FinanceFigures",
    "Statement",
    "StatementLine",
]

AccountId = Annotated[
    str,
    PathParameter(pattern=r"^acct_[A-Za-z0-9]{1,60}$", description="Stripe's connected account id"),
]
Period = Literal["day", "week", "month"]


class BalanceAmounts(msgspec.Struct, frozen=True, kw_only=True):
    """One currency's balance in minor units: Stripe's (``null`` when Stripe did not
    answer) and the ledger's total (equal to available + pending when reconciled)."""

    currency: str
    available: int | None
    pending: int | None
    ledger: int


class AccountBalance(msgspec.Struct, frozen=True, kw_only=True):
    """An account's balance per currency; ``stripe_unavailable`` when Stripe did not answer."""

    account: str
    balances: list[BalanceAmounts]
    stripe_unavailable: bool


class StatementLine(msgspec.Struct, frozen=True, kw_only=True):
    """One ledger transaction as it moved the account: its net ``amount`` (minor units).

    ``occurred_at`` is Stripe's time of the movement; ``id`` the ledger transaction's.
    """

    id: int
    kind: str
    description: str
    reference: str
    stripe_object_id: str
    plugin: str
    occurred_at: datetime
    currency: str
    amount: int


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    """A page of the statement, newest first; pass ``next_cursor`` as ``cursor`` for older."""

    account: str
    data: list[StatementLine]
    next_cursor: str | None


class FinanceFigure(msgspec.Struct, frozen=True, kw_only=True):
    """Money through the platform for one period (or, in ``totals``, since ``period``),
    plugin and currency, in minor units.

    ``payments``/``volume``/``commission``: payments charged in the period and the
    platform's commission on them; ``refunds``/``refunded``: refunds made in it;
    ``disputes``/``disputed``: disputes whose funds Stripe withdrew in it.
    """

    period: date
    plugin: str
    currency: str
    payments: int
    volume: int
    commission: int
    refunds: int
    refunded: int
    disputes: int
    disputed: int

    @classmethod
    def of(cls, row: queries.FinanceRow) -> FinanceFigure:
        """The view of one row of the finance panel."""
        return cls(
            period=row.period,
            plugin=row.plugin,
            currency=row.currency,
            payments=row.payments,
            volume=row.gross,
            commission=row.commission,
            refunds=row.refunds,
            refunded=row.refunded,
            disputes=row.disputes,
            disputed=row.disputed,
        )


class FinanceFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The finance panel's figures: per period (newest first) and totals per plugin.

    ``since`` is the first day of the oldest period; periods are UTC and follow
    Stripe's time of each movement.
    """

    period: str
    periods: int
    since: date
    data: list[FinanceFigure]
    totals: list[FinanceFigure]


class AccountLedgerController(Controller):
    """An account's money: its balance and its statement."""

    path = "/v1/accounts"
    tags = ["accounts"]

    @get(
        "/{account_id:str}/balance",
        operation_id="getAccountBalance",
        summary="Get a connected account's balance",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def balance(
        self,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
        account_service: NamedDependency[AccountService],
    ) -> AccountBalance:
        """Per currency, Stripe's available and pending balance beside the ledger's total.

        The account's own key or an admin/service key.
        """
        principal.ensure_visible(account_id)  # before any lookup: no existence leak
        await account_service.get(account_id)
        try:
            stripe_balance = await services.gateway.balance(account_id)
        except MarketplaceError:
            stripe_balance = None
        ledger = await queries.ledger_balances(services.db.pool, account_id)
        merged = queries.merge_balances(stripe_balance, ledger)
        return AccountBalance(
            account=account_id,
            balances=[
                BalanceAmounts(
                    currency=item.currency,
                    available=item.available,
                    pending=item.pending,
                    ledger=item.ledger,
                )
                for item in merged
            ],
            stripe_unavailable=stripe_balance is None,
        )

    @get(
        "/{account_id:str}/statement",
        operation_id="getAccountStatement",
        summary="List a connected account's ledger transactions",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def statement(
        self,
        *,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        services: NamedDependency[Services],
        account_service: NamedDependency[AccountService],
        limit: Limit = 25,
        cursor: Cursor = None,
        since: Annotated[
            date | None,
            QueryParameter(
                required=False, description="Only movements on or after this day (UTC, Stripe's)"
            ),
        ] = None,
        until: Annotated[
            date | None,
            QueryParameter(
                required=False, description="Only movements on or before this day (UTC, Stripe's)"
            ),
        ] = None,
        kind: Annotated[
            str | None,
            QueryParameter(
                required=False,
                pattern=r"^[a-z][a-z0-9_]{0,63}$",
                description="Only ledger transactions of this kind (`charge`, `refund`, ...)",
            ),
        ] = None,
        currency: Annotated[
            str | None,
            QueryParameter(
                required=False, pattern=r"^[A-Za-z]{3}$", description="Only this currency"
            ),
        ] = None,
    ) -> Statement:
        """The account's ledger transactions, newest first, net per currency.

        The account's own key or an admin/service key. ``since``/``until`` take
        Stripe's time of each movement, whole UTC days.
        """
        principal.ensure_visible(account_id)  # before any lookup: no existence leak
        if since is not None and until is not None and until < since:
            raise InvalidInput("until must not be before since", field="until")
        await account_service.get(account_id)
        filters = queries.TransactionFilters(
            kind=kind,
            currency=currency.lower() if currency else None,
            since=since,
            until=until,
            before=decode_cursor(cursor) or None,
        )
        page = await queries.transactions(services.db.pool, account_id, filters, limit=limit)
        return Statement(
            account=account_id,
            data=[
                StatementLine(
                    id=row.id,
                    kind=row.kind,
                    description=row.description,
                    reference=row.reference,
                    stripe_object_id=row.stripe_object_id,
                    plugin=row.plugin,
                    occurred_at=row.occurred_at,
                    currency=row.currency,
                    amount=row.amount,
                )
                for row in page.rows
            ],
            next_cursor=encode_cursor(page.next_before),
        )


class FinanceController(Controller):
    """The platform's money per period and plugin (admin and service keys)."""

    path = "/v1/finance"
    tags = ["finance"]
    guards = [requires_scope("service")]

    @get(
        "/figures",
        operation_id="getFinanceFigures",
        summary="Get volume, commission, refunds and disputes per period and plugin",
        responses=problem_responses(400, 401, 403),
    )
    async def figures(
        self,
        services: NamedDependency[Services],
        period: Annotated[
            Period, QueryParameter(required=False, description="`day`, `week` or `month` (UTC)")
        ] = "month",
        periods: Annotated[
            int | None,
            QueryParameter(
                required=False,
                ge=1,
                le=366,
                description="How many periods back (default: the finance panel's, 12 or 31)",
            ),
        ] = None,
    ) -> FinanceFigures:
        """The finance panel's figures, period by period, and totals per plugin and currency.

        Each movement counts in the period of Stripe's time of it: a payment when
        charged, a refund when refunded, a dispute when its funds were withdrawn.
        """
        count = periods or queries.FINANCE_PERIODS[period]
        pool = services.db.pool
        rows = await queries.finance_summary(pool, period, count)
        starts = queries.periods(period, count, now=await queries.window_end(pool))
        return FinanceFigures(
            period=period,
            periods=count,
            since=starts[0],
            data=[FinanceFigure.of(row) for row in rows],
            totals=[FinanceFigure.of(row) for row in queries.totals_by_plugin(rows)],
        )
