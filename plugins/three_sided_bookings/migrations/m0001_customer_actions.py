"""Columns for payments that wait for the customer's authentication (3D Secure).

A database whose tables were made before them gets them here; a new one already
has them (``ADD COLUMN IF NOT EXISTS``), so the migration is a no-op there. Plain SQL
(``STATEMENTS``), run by ``migrate`` on its own connection.
"""

from __future__ import annotations

STATEMENTS = (
    "ALTER TABLE three_sided_bookings_bookings "
    "ADD COLUMN IF NOT EXISTS customer_action JSONB, "
    "ADD COLUMN IF NOT EXISTS action_transition VARCHAR(64) NOT NULL DEFAULT ''",
)
