"""Columns for payments that wait for the fan's authentication (3D Secure).

A database whose tables were made before them gets them here; a new one already
has them (``ADD COLUMN IF NOT EXISTS``), so the migration is a no-op there.
"""

from __future__ import annotations

from plugins.creator_subscriptions.tables import Fan

_DDL = (
    "ALTER TABLE creator_subscriptions_fans ADD COLUMN IF NOT EXISTS customer_action JSONB",
    "ALTER TABLE creator_subscriptions_subscriptions "
    "ADD COLUMN IF NOT EXISTS customer_action JSONB, "
    "ADD COLUMN IF NOT EXISTS action_invoice VARCHAR(64)",
    "ALTER TABLE creator_subscriptions_payments ADD COLUMN IF NOT EXISTS customer_action JSONB",
)


class _AddColumns:
    """What ``migrate`` runs: the statements, on the engine the tables are bound to."""

    async def run(self) -> None:
        for statement in _DDL:
            await Fan.raw(statement)


async def forwards() -> _AddColumns:
    return _AddColumns()
