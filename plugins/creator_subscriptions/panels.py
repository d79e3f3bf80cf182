"""Dashboard panels: a creator's members and renewals; the operator's view of all creators.

Each ``render(services, account_id)`` returns an HTML fragment with every value
escaped (``html.escape``), as the ``register_dashboard_panels`` contract asks.
Amounts are shown in major units with the currency (``Money.format``).
"""

from __future__ import annotations

from html import escape
from typing import Any

from engine.accounts.queries import accounts_needing_attention
from engine.core.contributions import DashboardPanel
from engine.core.money import Money

__all__ = ["panels"]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


async def render_members(services: Any, account_id: str | None) -> str:
    """A creator's tiers with their live members and monthly recurring revenue, and renewals."""
    if account_id is None:
        return ""
    async with services.db.pool.acquire() as conn:
        creator = await conn.fetchval(
            "SELECT id FROM creator_subscriptions_creators WHERE account_id = $1", account_id
        )
        if creator is None:
            return "<p class='muted'>Not a creator on this platform.</p>"
        tiers = await conn.fetch(
            """
            SELECT t.name, t.amount, t.currency, t.interval, t.archived,
                   count(s.id) FILTER (WHERE s.status IN ('active', 'past_due')) AS members,
                   count(s.id) FILTER (WHERE s.status = 'past_due') AS failing
            FROM creator_subscriptions_tiers t
            LEFT JOIN creator_subscriptions_subscriptions s ON s.tier = t.id
            WHERE t.account_id = $1
            GROUP BY t.id ORDER BY t.amount
            """,
            account_id,
        )
        renewals = await conn.fetch(
            """
            SELECT billing_reason, status, amount_paid, creator_earnings, currency, paid_at
            FROM creator_subscriptions_invoices WHERE account_id = $1
            ORDER BY id DESC LIMIT 5
            """,
            account_id,
        )
    tier_rows = []
    for tier in tiers:
        per_month = (
            int(tier["amount"]) if tier["interval"] == "month" else int(tier["amount"]) // 12
        )
        revenue = Money(per_month * int(tier["members"]), str(tier["currency"]))
        tier_rows.append(
            [
                str(tier["name"]) + (" (archived)" if tier["archived"] else ""),
                Money(int(tier["amount"]), str(tier["currency"])).format() + f"/{tier['interval']}",
                str(tier["members"]),
                str(tier["failing"]),
                revenue.format(),
            ]
        )
    invoice_rows = [
        [
            str(row["billing_reason"]).replace("subscription_", ""),
            str(row["status"]),
            Money(int(row["amount_paid"]), str(row["currency"])).format(),
            Money(int(row["creator_earnings"]), str(row["currency"])).format(),
        ]
        for row in renewals
    ]
    return (
        "<h3>Tiers</h3>"
        + _table(["tier", "price", "members", "payment failing", "monthly revenue"], tier_rows)
        + "<h3>Latest invoices</h3>"
        + _table(["reason", "status", "fan paid", "your earnings"], invoice_rows)
    )


async def render_creators(services: Any, account_id: str | None) -> str:
    """For operators: creators who cannot sell or be paid, and subscriptions by status."""
    async with services.db.pool.acquire() as conn:
        attention = {account.id: account for account in await accounts_needing_attention(conn)}
        rows = await conn.fetch(
            "SELECT handle, account_id FROM creator_subscriptions_creators "
            "WHERE account_id = ANY($1::text[]) ORDER BY id LIMIT 50",
            list(attention),
        )
        troubled = [(row, attention[str(row["account_id"])]) for row in rows]
        statuses = await conn.fetch(
            "SELECT status, count(*) AS n FROM creator_subscriptions_subscriptions "
            "WHERE status <> 'failed' GROUP BY status ORDER BY status"
        )
    return (
        "<h3>Creators needing attention</h3>"
        + _table(
            ["creator", "account", "status", "can sell", "payout failure"],
            [
                [
                    str(row["handle"]),
                    str(row["account_id"]),
                    account.status,
                    "yes" if account.charges_enabled else "no",
                    account.payout_failure_code or "",
                ]
                for row, account in troubled
            ],
        )
        + "<h3>Subscriptions</h3>"
        + _table(["status", "count"], [[str(row["status"]), str(row["n"])] for row in statuses])
    )


def panels() -> list[DashboardPanel]:
    """The plugin's panels for the account dashboard and the admin finance view."""
    return [
        DashboardPanel(
            name="creator_subscriptions.members",
            title="Members and renewals",
            audience="account",
            render=render_members,
        ),
        DashboardPanel(
            name="creator_subscriptions.creators",
            title="Creators",
            audience="admin",
            render=render_creators,
        ),
    ]
