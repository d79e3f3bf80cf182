"""Read-only lookups of connected accounts and their payouts, for plugins.

A plugin never queries ``marketplace_accounts`` or ``marketplace_payouts``
itself: it asks these functions, each one query, through the pool or the
connection (inside its own transaction) it already holds.

- ``accounts_by_id``: several accounts at once (status, currency, flags), by
  Stripe's ``acct_...`` id; ``account_by_id`` for one.
- ``accounts_needing_attention``: accounts that cannot charge or whose last
  payout failed (what an operator checks first).
- ``account_payouts``: an account's payouts to its bank, newest first, paged
  (``engine.payments.payouts``'s, re-exported here).
"""

from __future__ import annotations

from collections.abc import Collection

from engine.accounts.models import Account
from engine.accounts.service import ACCOUNT_COLUMNS, Executor, account_from_row
from engine.payments.payouts import PayoutRecord, account_payouts

__all__ = [
    "PayoutRecord",
    "account_by_id",
    "account_payouts",
    "accounts_by_id",
    "accounts_needing_attention",
]


async def accounts_by_id(db: Executor, account_ids: Collection[str]) -> dict[str, Account]:
    """The engine's copy of each known account in ``account_ids``, by ``acct_...`` id.

    Accounts the engine does not know are absent from the answer. One query,
    whatever the number of ids.
    """
    if not account_ids:
        return {}
    rows = await db.fetch(
        f"SELECT {ACCOUNT_COLUMNS} FROM marketplace_accounts "  # noqa: S608 - constant columns
        "WHERE stripe_account_id = ANY($1::text[])",
        list(account_ids),
    )
    return {str(row["stripe_account_id"]): account_from_row(row) for row in rows}


async def account_by_id(db: Executor, account_id: str) -> Account | None:
    """The engine's copy of one account, or ``None`` if it does not know it."""
    return (await accounts_by_id(db, [account_id])).get(account_id)


async def accounts_needing_attention(
    db: Executor, *, payout_failed_only: bool = False
) -> list[Account]:
    """Accounts that cannot take charges or whose last payout failed, oldest first.

    With ``payout_failed_only``, only those whose last payout failed. A plugin
    narrows the answer to its own accounts (its creators, its venues). Every
    account still onboarding cannot take charges, so keep the full answer for
    operators' views.
    """
    rows = await db.fetch(
        f"SELECT {ACCOUNT_COLUMNS} FROM marketplace_accounts "  # noqa: S608 - constant columns
        "WHERE payout_failure_code IS NOT NULL OR (NOT $1 AND NOT charges_enabled) ORDER BY id",
        payout_failed_only,
    )
    return [account_from_row(row) for row in rows]
