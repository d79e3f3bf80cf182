"""The booking's test clock: its timers run on the clock of its payments.

``ADD COLUMN IF NOT EXISTS``: a no-op on a database whose tables already have it.
"""

from __future__ import annotations

STATEMENTS = (
    "ALTER TABLE three_sided_bookings_bookings ADD COLUMN IF NOT EXISTS test_clock VARCHAR(64)",
    "CREATE INDEX IF NOT EXISTS three_sided_bookings_bookings_test_clock "
    "ON three_sided_bookings_bookings (test_clock)",
)
