"""Hook implementations of the creator_subscriptions plugin."""

from __future__ import annotations

from collections.abc import Callable

from engine.core.contributions import ConfigSection
from engine.core.money import Money
from engine.core.orders import PLATFORM, Commission, Order, SplitLeg, SplitPlan
from engine.core.plugins import hookimpl
from plugins.creator_subscriptions.config import CreatorSubscriptionsConfig

PLUGIN = "creator_subscriptions"


@hookimpl
def register_config_schema(register: Callable[[ConfigSection], None]) -> None:
    """Declare ``[plugins.creator_subscriptions]``."""
    register(ConfigSection(plugin=PLUGIN, schema=CreatorSubscriptionsConfig))


@hookimpl
def resolve_split(order: Order, price: Money, commission: Commission) -> SplitPlan | None:
    """Destination charges: the platform keeps the fee, the creator gets the rest."""
    if order.plugin != PLUGIN:
        return None
    creator = order.beneficiaries["creator"]
    return SplitPlan(
        total=price,
        legs=(
            SplitLeg(PLATFORM, commission.amount),
            SplitLeg("creator", price - commission.amount, creator),
        ),
    )
