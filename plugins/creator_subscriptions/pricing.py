"""Orders for the engine's pricing hooks, and the subscription fee percentage Stripe needs.

Subscriptions and one-time payments are priced the same way as every other
payment: ``price_order`` runs the price, commission and split hooks (so
``commission_rules`` sees ``plugin``, ``kind``, ``tier``, ``currency``, the
``creator`` and the month-to-date volume). A one-time payment sends the
commission as ``application_fee_amount``. A subscription can only carry a
percentage (``application_fee_percent``, at most two decimals), which Stripe
applies to every invoice: the rule's ``rate_bps / 100`` when the rule is a
pure percentage, else the effective percentage of the commission on the
tier's price.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from engine.core.money import Money, apply_rate
from engine.core.orders import Order
from engine.payments.pricing import PricedOrder, price_order, with_monthly_volume
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env

__all__ = [
    "fee_percent",
    "one_time_order",
    "priced",
    "subscription_order",
]

CREATOR_ROLE = "creator"
_HUNDREDTH = Decimal("0.01")


def subscription_order(
    *, account_id: str, tier_id: int, tier_name: str, interval: str, price: Money, reference: str
) -> Order:
    """The order for one period of a tier (what ``application_fee_percent`` is priced on)."""
    return Order(
        plugin=PLUGIN,
        kind="subscription",
        amount=price,
        reference=reference,
        beneficiaries={CREATOR_ROLE: account_id},
        attributes={"tier": tier_name, "tier_id": tier_id, "interval": interval},
    )


def one_time_order(
    *, kind: str, account_id: str, amount: Money, reference: str, item_ref: str = ""
) -> Order:
    """The order for a tip or a pay-per-view purchase."""
    attributes: dict[str, object] = {}
    if item_ref:
        attributes["item_ref"] = item_ref
    return Order(
        plugin=PLUGIN,
        kind=kind,
        amount=amount,
        reference=reference,
        beneficiaries={CREATOR_ROLE: account_id},
        attributes=attributes,
    )


async def priced(env: Env, conn: asyncpg.Connection, order: Order) -> PricedOrder:
    """Run the hooks for ``order`` with the creator's month-to-date volume filled in."""
    account_id = order.beneficiaries[CREATOR_ROLE]
    return price_order(env.plugins, await with_monthly_volume(conn, order, account_id))


def fee_percent(priced_order: PricedOrder) -> Decimal:
    """``application_fee_percent`` for a subscription priced as ``priced_order``.

    Stripe takes at most two decimals; ``rate_bps`` of 1250.5 (12.505 %) becomes
    12.51 (half up). A rule with a fixed part, a minimum or a maximum cannot be
    expressed per invoice, so its effective rate on the tier's price is used.
    """
    commission = priced_order.commission
    price = priced_order.price.amount
    rate = commission.rate_bps
    if rate is not None and apply_rate(price, rate) == commission.amount.amount:
        percent = Decimal(rate) / 100
    elif price:
        percent = Decimal(commission.amount.amount) * 100 / Decimal(price)
    else:
        percent = Decimal(0)
    return min(Decimal(100), max(Decimal(0), percent.quantize(_HUNDREDTH, ROUND_HALF_UP)))
