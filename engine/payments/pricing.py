"""Price an order through the hooks (price -> commission -> split) and record the result.

Business models call ``price_order`` instead of the hooks so every payment is
priced the same way, and ``record_payment`` so the rule that priced it (id and
version) and the split are stored with the payment and never recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitPlan
from engine.core.plugins import Plugins
from engine.payments.records import advance_status_sql, payment_status_rank

__all__ = [
    "MONTHLY_VOLUME",
    "PricedOrder",
    "monthly_volume",
    "price_order",
    "record_payment",
    "with_monthly_volume",
]

MONTHLY_VOLUME = "monthly_volume"
"""``Order.attributes`` key: the beneficiary's month-to-date gross volume (minor units)."""

_ADVANCE = advance_status_sql("marketplace_payments.status", "EXCLUDED.status")


@dataclass(frozen=True, slots=True)
class PricedOrder:
    """An order with its price, the platform's commission and the split."""

    order: Order
    price: Money
    commission: Commission
    split: SplitPlan

    def split_json(self) -> dict[str, Any]:
        """The split as stored with the payment."""
        return {
            "total": self.split.total.amount,
            "currency": self.split.total.currency,
            "rule_id": self.commission.rule_id,
            "rule_version": self.commission.rule_version,
            "legs": [
                {"role": leg.role, "account_id": leg.account_id, "amount": leg.amount.amount}
                for leg in self.split.legs
            ],
        }


def price_order(plugins: Plugins, order: Order) -> PricedOrder:
    """Run the pricing, commission and splitting hooks for ``order``."""
    price = plugins.price(order)
    commission = plugins.commission(order, price)
    split = plugins.split(order, price, commission)
    return PricedOrder(order=order, price=price, commission=commission, split=split)


async def monthly_volume(
    conn: asyncpg.Connection, account_id: str, currency: str, *, at: datetime
) -> int:
    """The account's gross volume in ``at``'s calendar month (UTC) in ``currency``.

    From payments, each dated by Stripe's time of its charge (the ledger's
    posting of it), so a test clock's months count as Stripe counts them.
    """
    start = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    value = await conn.fetchval(
        """
        SELECT COALESCE(sum(p.amount - p.amount_refunded), 0) FROM marketplace_payments p
        WHERE p.account_id = $1 AND p.currency = $2
          AND p.status IN ('succeeded', 'partially_refunded', 'captured', 'dispute_won')
          AND COALESCE(
                (SELECT min(c.occurred_at) FROM marketplace_ledger_transactions c
                 WHERE p.stripe_charge_id IS NOT NULL AND c.stripe_object_id = p.stripe_charge_id),
                p.created_at) >= $3
        """,
        account_id,
        currency,
        start,
    )
    return int(value or 0)


async def with_monthly_volume(conn: asyncpg.Connection, order: Order, account_id: str) -> Order:
    """``order`` with ``attributes["monthly_volume"]`` (its month's volume) for volume tiers."""
    volume = await monthly_volume(conn, account_id, order.amount.currency, at=order.occurred_at)
    return replace(order, attributes={**order.attributes, MONTHLY_VOLUME: volume})


async def record_payment(
    conn: asyncpg.Connection,
    priced: PricedOrder,
    *,
    account_id: str | None,
    customer_id: str | None = None,
    payment_intent_id: str | None = None,
    charge_id: str | None = None,
    status: str = "pending",
    invoice_id: str | None = None,
) -> int:
    """Insert the payment with its fee, rule and split; return its id (idempotent per intent).

    Recorded again for the same intent, the status only moves forward
    (``engine.payments.records.PAYMENT_STATUS_ORDER``); a charge or invoice id once
    known stays. ``invoice_id`` is the Stripe Billing invoice the charge paid.
    """
    order = priced.order
    payment_status_rank(status)
    payment_id = await conn.fetchval(
        f"""
        INSERT INTO marketplace_payments
            (reference, plugin, kind, account_id, customer_id, stripe_payment_intent_id,
             stripe_charge_id, amount, currency, fee_amount, rule_id, rule_version, split,
             attributes, status, amount_refunded, stripe_invoice_id, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $15, $7, $8, $9, $10, $11, $12::jsonb, $13::jsonb, $14,
                0, $16, now())
        ON CONFLICT (stripe_payment_intent_id) DO UPDATE SET
            status = {_ADVANCE},
            stripe_charge_id = COALESCE(marketplace_payments.stripe_charge_id,
                                        EXCLUDED.stripe_charge_id),
            stripe_invoice_id = COALESCE(marketplace_payments.stripe_invoice_id,
                                         EXCLUDED.stripe_invoice_id)
        RETURNING id
        """,  # noqa: S608 - _ADVANCE is built from constant status names
        order.reference,
        order.plugin,
        order.kind,
        account_id,
        customer_id,
        payment_intent_id,
        priced.price.amount,
        priced.price.currency,
        priced.commission.amount.amount,
        priced.commission.rule_id,
        priced.commission.rule_version,
        json.dumps(priced.split_json()),
        json.dumps(dict(order.attributes), default=str),
        status,
        charge_id,
        invoice_id or None,
    )
    return int(payment_id)
