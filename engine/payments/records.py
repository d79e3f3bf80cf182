"""Keep payment rows in step with Stripe after they are recorded.

``record_payment`` stores a payment when it is priced; the charge id, the
final status and refunds arrive later (from the API call's answer or from
webhooks). ``update_payment`` applies them without ever moving backwards:
refunded amounts only grow and a charge id, once known, stays.
"""

from __future__ import annotations

import asyncpg

__all__ = ["update_payment"]


async def update_payment(
    conn: asyncpg.Connection,
    payment_intent_id: str,
    *,
    charge_id: str | None = None,
    status: str | None = None,
    amount: int | None = None,
    amount_refunded: int | None = None,
) -> bool:
    """Update the payment of ``payment_intent_id``; return whether it exists.

    Args:
        conn: a connection (inside the caller's transaction, if any).
        payment_intent_id: Stripe's ``pi_...`` the payment was recorded with.
        charge_id: the ``ch_...`` once known (lets refund and dispute handlers find it).
        status: the new status (``succeeded``, ``captured``, ``canceled`` ...).
        amount: the amount actually charged (a partial capture), minor units.
        amount_refunded: Stripe's cumulative refunded amount (kept if smaller).
    """
    row = await conn.fetchval(
        """
        UPDATE marketplace_payments
        SET stripe_charge_id = COALESCE(stripe_charge_id, $2),
            status = COALESCE($3, status),
            amount = COALESCE($4, amount),
            amount_refunded = GREATEST(amount_refunded, COALESCE($5, 0))
        WHERE stripe_payment_intent_id = $1
        RETURNING 1
        """,
        payment_intent_id,
        charge_id,
        status,
        amount,
        amount_refunded,
    )
    return row is not None
