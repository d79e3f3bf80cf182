"""What the plugin's services run on: the engine's gateway, database, ledger, hooks, config.

``Env.of(services)`` picks them out of the engine's ``Services`` once, so the
business code depends on a small typed record instead of the whole container,
and tests can build one directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from engine.core.errors import NotFound
from engine.core.ledger import Ledger
from engine.core.plugins import Plugins
from engine.gateway import StripeGateway, idempotency_key
from engine.payments.payability import require_payable
from plugins.creator_subscriptions.config import PLUGIN, CreatorSubscriptionsConfig

__all__ = ["CreatorRow", "Env", "creator_by_account", "op_key", "require_selling"]


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


_CREATOR = """
SELECT c.id, c.account_id, c.handle, c.display_name, c.default_currency,
       c.selling_since IS NOT NULL AS sold_before,
       COALESCE(a.status, 'onboarding') AS status,
       COALESCE(a.charges_enabled, false) AS charges_enabled,
       COALESCE(a.payouts_enabled, false) AS payouts_enabled,
       COALESCE(a.details_submitted, false) AS details_submitted,
       a.payout_failure_code, COALESCE(a.suspended, false) AS suspended
FROM creator_subscriptions_creators c
LEFT JOIN marketplace_accounts a ON a.stripe_account_id = c.account_id
"""


def _creator(row: asyncpg.Record) -> CreatorRow:
    status = "suspended" if row["suspended"] else str(row["status"])
    return CreatorRow(
        id=int(row["id"]),
        account_id=str(row["account_id"]),
        handle=str(row["handle"]),
        display_name=str(row["display_name"]),
        default_currency=str(row["default_currency"]),
        status=status,
        charges_enabled=bool(row["charges_enabled"]),
        payouts_enabled=bool(row["payouts_enabled"]),
        details_submitted=bool(row["details_submitted"]),
        suspended=bool(row["suspended"]),
        sold_before=bool(row["sold_before"]) or bool(row["charges_enabled"]),
        payout_failure_code=row["payout_failure_code"],
    )


async def creator_by_account(conn: asyncpg.Connection, account_id: str) -> CreatorRow:
    """The creator selling through ``account_id``; ``NotFound`` if there is none."""
    row = await conn.fetchrow(_CREATOR + " WHERE c.account_id = $1", account_id)
    if row is None:
        raise NotFound(f"no creator {account_id!r}")
    return _creator(row)


async def creator_by_id(conn: asyncpg.Connection, creator_id: int) -> CreatorRow:
    """The creator with our id ``creator_id``."""
    row = await conn.fetchrow(_CREATOR + " WHERE c.id = $1", creator_id)
    if row is None:
        raise NotFound(f"no creator {creator_id}")
    return _creator(row)


async def require_selling(conn: asyncpg.Connection, creator: CreatorRow) -> None:
    """Refuse to take money for a creator who cannot be paid: the engine's one rule.

    ``engine.payments.payability.require_payable`` (the gateway applies it again
    to the destination of every charge).

    Raises:
        AccountRestricted: the operator suspended the account, or Stripe restricted it.
        AccountNotReady: onboarding is not finished (charges not enabled yet).
    """
    await require_payable(conn, {"creator": creator.account_id})
