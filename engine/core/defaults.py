"""The engine's default hooks, registered as the essential ``engine_defaults`` plugin.

Every implementation is ``trylast`` so any enabled plugin that answers wins.
They make an install without ``commission_rules`` or a business model still
price, charge a commission and split, and key every webhook event's mailbox.
"""

from __future__ import annotations

from decimal import Decimal

from engine.core.contributions import PluginRuntime, StripeEvent
from engine.core.mailboxes import default_mailbox_key
from engine.core.money import Money, apply_rate
from engine.core.orders import PLATFORM, Commission, Order, SplitLeg, SplitPlan
from engine.core.plugins import hookimpl

DEFAULT_RULE_ID = "engine.default_bps"


@hookimpl(trylast=True)
def resolve_price(order: Order) -> Money:
    """The order's own amount."""
    return order.amount


@hookimpl(trylast=True)
def resolve_commission(order: Order, price: Money, runtime: PluginRuntime) -> Commission:
    """``commission.default_bps`` of the price, rounded half-up."""
    bps = runtime.settings.commission.default_bps
    fee = apply_rate(price.amount, bps)
    return Commission(
        amount=Money(fee, price.currency),
        rule_id=DEFAULT_RULE_ID,
        rule_version=1,
        rate_bps=Decimal(bps),
        explanation=f"default: {bps} bps of {price.amount} = {fee}",
    )


@hookimpl(trylast=True)
def resolve_split(order: Order, price: Money, commission: Commission) -> SplitPlan:
    """Commission to the platform; the rest to the beneficiaries, evenly by ``allocate``."""
    rest = price - commission.amount
    roles = sorted(order.beneficiaries)
    legs = [SplitLeg(PLATFORM, commission.amount)]
    if roles:
        parts = rest.allocate([1] * len(roles))
        legs += [
            SplitLeg(role, part, order.beneficiaries[role])
            for role, part in zip(roles, parts, strict=True)
        ]
    else:
        legs = [SplitLeg(PLATFORM, price)]
    return SplitPlan(total=price, legs=tuple(legs))


@hookimpl(trylast=True)
def resolve_mailbox_key(event: StripeEvent) -> str:
    """The connected account the event concerns, its disputed charge, or the platform."""
    return default_mailbox_key(event)
