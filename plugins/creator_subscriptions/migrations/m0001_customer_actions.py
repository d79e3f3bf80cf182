"""Columns for payments that wait for the fan's authentication (3D Secure).

A database whose tables were made before them gets them here; a new one already
has them (``ADD COLUMN IF NOT EXISTS``), so the migration is a no-op there. Plain SQL
(``STATEMENTS``), run by ``migrate`` on its own connection.
"""

from __future__ import annotations

STATEMENTS = (
    "ALTER TABLE creator_subscriptions_fans ADD COLUMN IF NOT EXISTS customer_action JSONB",
    "ALTER TABLE creator_subscriptions_subscriptions "
    "ADD COLUMN IF NOT EXISTS customer_action JSONB, "
    "ADD COLUMN IF NOT EXISTS action_invoice VARCHAR(64)",
    "ALTER TABLE creator_subscriptions_payments ADD COLUMN IF NOT EXISTS customer_action JSONB",
)
