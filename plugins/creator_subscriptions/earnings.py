"""What a creator sees about their money: balance, transactions, subscribers, invoices, payouts.

The balance comes from both sides, so a creator (or an operator) can see they
agree: Stripe's available and pending amounts (read with the account's
``Stripe-Account`` header) and the ledger's balance of the ``acct_...`` account,
plus what has been paid out to the bank, and the creator's sales under dispute.
Transactions are the ledger's, one line per ledger transaction with its net
effect on the creator's balance.
Lists use cursor pagination over row ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from engine.accounts.queries import account_payouts
from engine.core.errors import InvalidInput
from engine.core.ledger import bank_of
from engine.core.statements import statement_lines
from engine.payments.records import payment_totals
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env, creator_by_account
from plugins.creator_subscriptions.schemas import (
    Balance,
    BalanceAmount,
    InvoiceView,
    PayoutsPage,
    PayoutView,
    SubscribersPage,
    SubscriberView,
    TransactionsPage,
    TransactionView,
)

__all__ = ["balance", "invoices", "payouts", "subscribers", "transactions"]


def _amounts(items: Sequence[dict[str, object]]) -> list[BalanceAmount]:
    return [
        BalanceAmount(amount=int(str(item.get("amount", 0))), currency=str(item.get("currency")))
        for item in items
    ]


async def balance(env: Env, account_id: str) -> Balance:
    """Stripe's available/pending balance beside the ledger's, per currency."""
    async with env.pool.acquire() as conn:
        await creator_by_account(conn, account_id)
        # The engine's payments follow disputes (status only forward); a won one is no
        # longer disputed money.
        disputed = await payment_totals(
            conn, account_id, statuses=("disputed", "dispute_lost"), plugin=PLUGIN
        )
    stripe_balance = await env.gateway.balance(account=account_id)
    ledger = await env.ledger.balances(account_id)
    paid_out = await env.ledger.balances(bank_of(account_id))
    return Balance(
        account_id=account_id,
        available=_amounts(stripe_balance.get("available") or []),
        pending=_amounts(stripe_balance.get("pending") or []),
        ledger=[BalanceAmount(amount=v, currency=c) for c, v in sorted(ledger.items())],
        paid_out=[BalanceAmount(amount=v, currency=c) for c, v in sorted(paid_out.items())],
        disputed=[
            BalanceAmount(amount=money.amount, currency=money.currency) for money in disputed
        ],
    )


async def transactions(
    env: Env,
    account_id: str,
    *,
    before: int | None,
    limit: int,
    kinds: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
) -> TransactionsPage:
    """Ledger transactions touching the creator's balance, newest first.

    One line per ledger transaction (an invoice moves ``+amount`` and
    ``-application fee`` on the account; the line shows the net), so a page
    never splits a transaction. ``before`` is the cursor (a transaction id).
    """
    if not 1 <= limit <= 100:
        raise InvalidInput("limit must be between 1 and 100", field="limit")
    async with env.pool.acquire() as conn:
        await creator_by_account(conn, account_id)
        lines = await statement_lines(
            conn,
            account_id,
            before=before,
            limit=limit + 1,
            kinds=kinds,
            since=since,
            until=until,
        )
    page = lines[:limit]
    next_cursor = str(page[-1].id) if len(lines) > limit and page else None
    return TransactionsPage(
        data=[
            TransactionView(
                id=line.id,
                kind=line.kind,
                amount=line.amount.amount,
                currency=line.amount.currency,
                reference=line.reference,
                stripe_object_id=line.stripe_object_id,
                description=line.description,
                occurred_at=line.occurred_at.isoformat(),
            )
            for line in page
        ],
        next_cursor=next_cursor,
    )


async def subscribers(
    env: Env,
    account_id: str,
    *,
    after: int,
    limit: int,
    status: str | None = None,
    tier_id: int | None = None,
) -> SubscribersPage:
    """The creator's subscriptions with their fans and tiers, oldest first."""
    async with env.pool.acquire() as conn:
        await creator_by_account(conn, account_id)
        rows = await conn.fetch(
            """
            SELECT s.id, s.fan, f.name AS fan_name, s.tier, t.name AS tier_name, s.status,
                   s.paused, s.cancel_at_period_end, s.current_period_end,
                   extract(epoch FROM s.created_at)::bigint AS since
            FROM creator_subscriptions_subscriptions s
            JOIN creator_subscriptions_fans f ON f.id = s.fan
            JOIN creator_subscriptions_tiers t ON t.id = s.tier
            WHERE s.account_id = $1 AND s.id > $2 AND s.status NOT IN ('pending', 'failed')
              AND ($3::text IS NULL OR s.status = $3)
              AND ($4::int IS NULL OR s.tier = $4)
            ORDER BY s.id
            LIMIT $5
            """,
            account_id,
            after,
            status,
            tier_id,
            limit + 1,
        )
    page = rows[:limit]
    return SubscribersPage(
        data=[
            SubscriberView(
                subscription_id=int(row["id"]),
                fan_id=int(row["fan"]),
                fan_name=str(row["fan_name"]),
                tier_id=int(row["tier"]),
                tier_name=str(row["tier_name"]),
                status=str(row["status"]),
                paused=bool(row["paused"]),
                cancel_at_period_end=bool(row["cancel_at_period_end"]),
                current_period_end=int(row["current_period_end"]),
                since=int(row["since"]),
            )
            for row in page
        ],
        next_cursor=str(page[-1]["id"]) if len(rows) > limit and page else None,
    )


async def invoices(
    env: Env, account_id: str, *, after: int, limit: int, subscription_id: int | None = None
) -> tuple[list[InvoiceView], int | None]:
    """The creator's subscription invoices, oldest first, and the next page's ``after``."""
    async with env.pool.acquire() as conn:
        await creator_by_account(conn, account_id)
        rows = await conn.fetch(
            """
            SELECT * FROM creator_subscriptions_invoices
            WHERE account_id = $1 AND id > $2 AND ($3::bigint IS NULL OR subscription = $3)
            ORDER BY id LIMIT $4
            """,
            account_id,
            after,
            subscription_id,
            limit + 1,
        )
    page = rows[:limit]
    views = [
        InvoiceView(
            stripe_invoice_id=str(row["stripe_invoice_id"]),
            status=str(row["status"]),
            billing_reason=str(row["billing_reason"]),
            currency=str(row["currency"]),
            amount_paid=int(row["amount_paid"]),
            application_fee=int(row["application_fee"]),
            creator_earnings=int(row["creator_earnings"]),
            stripe_fee=int(row["stripe_fee"]),
            period_start=int(row["period_start"]),
            period_end=int(row["period_end"]),
        )
        for row in page
    ]
    return views, (int(page[-1]["id"]) if len(rows) > limit and page else None)


async def payouts(env: Env, account_id: str, *, before: int | None, limit: int) -> PayoutsPage:
    """Payouts to the creator's bank, newest first, and whether payouts are failing.

    The engine's payout handler records these and flags the account when one
    fails (``payout_failure_code``); only this creator's account is affected.
    """
    async with env.pool.acquire() as conn:
        creator = await creator_by_account(conn, account_id)
        records = await account_payouts(conn, account_id, before=before, limit=limit + 1)
    page = records[:limit]
    return PayoutsPage(
        data=[
            PayoutView(
                stripe_payout_id=payout.stripe_payout_id,
                amount=payout.amount.amount,
                currency=payout.amount.currency,
                status=payout.status,
                failure_code=payout.failure_code,
                failure_message=payout.failure_message,
                arrival_date=payout.arrival_date,
            )
            for payout in page
        ],
        payout_failure_code=creator.payout_failure_code,
        payouts_enabled=creator.payouts_enabled,
        next_cursor=str(page[-1].id) if len(records) > limit and page else None,
    )
