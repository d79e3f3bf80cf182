"""Connected accounts the platform knows, for tests that send Connect events for made-up ids.

The worker applies a Connect event only for an account in ``marketplace_accounts``
(``engine.webhooks.screening.UnknownConnectedAccount``); the engine stores one when it
creates the account at Stripe (``engine.accounts``). Pipeline and load tests that
invent ``acct_...`` ids store them here first, as the engine would have.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["KNOW_ACCOUNTS", "know_accounts"]

KNOW_ACCOUNTS = """
INSERT INTO marketplace_accounts
    (stripe_account_id, role, display_name, email, country, default_currency, status,
     charges_enabled, payouts_enabled, details_submitted, requirements_due, suspended,
     stripe_updated_at, created_at, updated_at)
SELECT name, 'creator', name, '', 'US', 'usd', 'active', true, true, true, '[]'::jsonb,
       false, 0, now(), now()
FROM unnest($1::text[]) AS name
ON CONFLICT (stripe_account_id) DO NOTHING
"""


async def know_accounts(db: Any, accounts: Iterable[str]) -> None:
    """Store ``accounts`` as connected accounts of the platform (an asyncpg pool or connection)."""
    await db.execute(KNOW_ACCOUNTS, sorted(set(accounts)))
