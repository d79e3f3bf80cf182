"""Columns for payments that wait for the customer's authentication (3D Secure).

A database whose tables were made before them gets them here; a new one already
has them (``ADD COLUMN IF NOT EXISTS``), so the migration is a no-op there.
"""

from __future__ import annotations

from plugins.three_sided_bookings.tables import Booking

_DDL = (
    "ALTER TABLE three_sided_bookings_bookings "
    "ADD COLUMN IF NOT EXISTS customer_action JSONB, "
    "ADD COLUMN IF NOT EXISTS action_transition VARCHAR(64) NOT NULL DEFAULT ''",
)


class _AddColumns:
    """What ``migrate`` runs: the statements, on the engine the tables are bound to."""

    async def run(self) -> None:
        for statement in _DDL:
            await Booking.raw(statement)


async def forwards() -> _AddColumns:
    return _AddColumns()
