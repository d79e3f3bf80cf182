"""What the plugin's services run on: the engine's gateway, database, ledger, hooks, config.

``Env.of(services)`` picks them out of the engine's ``Services`` once, so the
business code depends on a small typed record instead of the whole container,
and tests can build one directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from engine.accounts import Account
from engine.accounts.queries import accounts_by_id
from engine.core.errors import NotFound
from engine.core.ledger import Ledger
from engine.core.plugins import Plugins
from engine.gateway import StripeGateway, idempotency_key
from engine.payments.movements import MoneyScope
from engine.payments.payability import require_payable
from plugins.creator_subscriptions.config import PLUGIN, CreatorSubscriptionsConfig

__all__ = [
    "CREATOR_SELECT",
    "CreatorRow",
    "Env",
    "creator_by_account",
    "creator_by_id",
    "creators_of",
    "money_scope",
    "op_key",
    "require_selling",
]


def op_key(*parts: object) -> str:
    """The Stripe idempotency key of one of this plugin's business operations."""
    return idempotency_key(PLUGIN, *parts)


@dataclass(frozen=True, slots=True)
class Env:
    """The engine pieces the plugin's services use."""

    gateway: StripeGateway
    pool: asyncpg.Pool
    ledger: Ledger
    plugins: Plugins
    config: CreatorSubscriptionsConfig
    public_url: str = ""

    @classmethod
    def of(cls, services: Any) -> Env:
        """Build from the engine's ``Services`` (API, worker or test)."""
        config: CreatorSubscriptionsConfig = services.plugins.runtime.config(PLUGIN)
        return cls(
            gateway=services.gateway,
            pool=services.db.pool,
            ledger=services.ledger,
            plugins=services.plugins,
            config=config,
            public_url=services.settings.engine.public_url,
        )


def money_scope(env: Env, conn: asyncpg.Connection, reference: str) -> MoneyScope:
    """The engine's money calls for ``reference``, inside the caller's transaction."""
    return MoneyScope(env.gateway, env.ledger, conn, PLUGIN, reference)


@dataclass(frozen=True, slots=True)
class CreatorRow:
    """A creator joined with its connected account's state."""

    id: int
    account_id: str
    handle: str
    display_name: str
    default_currency: str
    status: str
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool
    suspended: bool
    sold_before: bool
    payout_failure_code: str | None


# Our creators only: the account's state comes from the engine (``creators_of``).
CREATOR_SELECT = """
SELECT c.id, c.account_id, c.handle, c.display_name, c.default_currency,
       c.selling_since IS NOT NULL AS sold_before
FROM creator_subscriptions_creators c
"""


def _creator(row: asyncpg.Record, account: Account | None) -> CreatorRow:
    """Our creator row with the engine's state of its account (onboarding if unknown)."""
    suspended = account is not None and account.suspended
    charges_enabled = account is not None and account.charges_enabled
    status = "suspended" if suspended else (account.status if account else "onboarding")
    return CreatorRow(
        id=int(row["id"]),
        account_id=str(row["account_id"]),
        handle=str(row["handle"]),
        display_name=str(row["display_name"]),
        default_currency=str(row["default_currency"]),
        status=status,
        charges_enabled=charges_enabled,
        payouts_enabled=account is not None and account.payouts_enabled,
        details_submitted=account is not None and account.details_submitted,
        suspended=suspended,
        sold_before=bool(row["sold_before"]) or charges_enabled,
        payout_failure_code=account.payout_failure_code if account else None,
    )


async def creators_of(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[CreatorRow]:
    """``rows`` of ``creator_subscriptions_creators`` with their accounts' state (one query)."""
    accounts = await accounts_by_id(conn, [str(row["account_id"]) for row in rows])
    return [_creator(row, accounts.get(str(row["account_id"]))) for row in rows]


async def creator_by_account(conn: asyncpg.Connection, account_id: str) -> CreatorRow:
    """The creator selling through ``account_id``; ``NotFound`` if there is none."""
    row = await conn.fetchrow(CREATOR_SELECT + " WHERE c.account_id = $1", account_id)
    if row is None:
        raise NotFound(f"no creator {account_id!r}")
    return (await creators_of(conn, [row]))[0]


async def creator_by_id(conn: asyncpg.Connection, creator_id: int) -> CreatorRow:
    """The creator with our id ``creator_id``."""
    row = await conn.fetchrow(CREATOR_SELECT + " WHERE c.id = $1", creator_id)
    if row is None:
        raise NotFound(f"no creator {creator_id}")
    return (await creators_of(conn, [row]))[0]


async def require_selling(conn: asyncpg.Connection, creator: CreatorRow) -> None:
    """Refuse to take money for a creator who cannot be paid: the engine's one rule.

    ``engine.payments.payability.require_payable`` (the gateway applies it again
    to the destination of every charge).

    Raises:
        AccountRestricted: the operator suspended the account, or Stripe restricted it.
        AccountNotReady: onboarding is not finished (charges not enabled yet).
    """
    await require_payable(conn, {"creator": creator.account_id})
