"""Shares held in the plugin's own table, from before the engine held shares.

Held shares are the engine's (``movements.hold_share``, ``marketplace_held_shares``).
A database made before kept its held shares in ``three_sided_bookings_held_transfers``;
at startup each one still ``held`` there becomes the engine's hold of the same
share (same key: ``booking:<id>:share:<charge>:<role>``) and is marked ``moved``,
in one transaction per share, so it is released, shrunk by refunds or cancelled
like any other. Every process runs this at startup; rows another process is
moving are skipped (``SKIP LOCKED``), and holding a share twice holds it once.
"""

from __future__ import annotations

from typing import Any

from engine.core.money import Money
from engine.payments import movements
from engine.payments.movements import MoneyScope
from plugins.three_sided_bookings.config import PLUGIN

__all__ = ["adopt_legacy_holds"]

_NEXT = """
SELECT h.id, h.reason, t.role, t.account_id, t.amount, t.currency,
       c.stripe_charge_id, b.id AS booking, b.transfer_group
FROM three_sided_bookings_held_transfers AS h
JOIN three_sided_bookings_transfers AS t ON t.id = h.transfer
JOIN three_sided_bookings_charges AS c ON c.id = t.charge
JOIN three_sided_bookings_bookings AS b ON b.id = t.booking
WHERE h.status = 'held' AND t.status = 'held' AND t.amount > 0
  AND coalesce(c.stripe_charge_id, '') <> ''
ORDER BY h.id
LIMIT 1
FOR UPDATE OF h SKIP LOCKED
"""


async def adopt_legacy_holds(services: Any) -> int:
    """Hand every share still held in the plugin's old table to the engine; how many."""
    moved = 0
    pool = services.db.pool
    while True:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_NEXT)
            if row is None:
                return moved
            scope = MoneyScope(
                services.gateway, services.ledger, conn, PLUGIN, f"booking:{row['booking']}"
            )
            await movements.hold_share(
                scope,
                charge_id=str(row["stripe_charge_id"]),
                role=str(row["role"]),
                destination=str(row["account_id"]),
                amount=Money(int(row["amount"]), str(row["currency"])),
                reason=str(row["reason"] or "held before the engine held shares"),
                transfer_group=str(row["transfer_group"] or "") or None,
            )
            await conn.execute(
                "UPDATE three_sided_bookings_held_transfers SET status = 'moved' WHERE id = $1",
                row["id"],
            )
            moved += 1
