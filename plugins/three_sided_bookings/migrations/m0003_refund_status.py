"""A refund's status: ``succeeded``, or ``failed`` once Stripe says it failed (its money
came back, so it no longer counts in the charge's ``refunded``).

``ADD COLUMN IF NOT EXISTS``: a no-op on a database whose tables already have it.
"""

from __future__ import annotations

STATEMENTS = (
    "ALTER TABLE three_sided_bookings_refunds "
    "ADD COLUMN IF NOT EXISTS status VARCHAR(16) NOT NULL DEFAULT 'succeeded'",
)
