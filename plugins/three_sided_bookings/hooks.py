"""Hook implementations of the three_sided_bookings plugin."""

from __future__ import annotations

from collections.abc import Callable

from engine.core.contributions import ConfigSection, PluginRuntime
from engine.core.money import Money
from engine.core.orders import PLATFORM, Commission, Order, SplitLeg, SplitPlan
from engine.core.plugins import hookimpl
from plugins.three_sided_bookings.config import ThreeSidedBookingsConfig

PLUGIN = "three_sided_bookings"


@hookimpl
def register_config_schema(register: Callable[[ConfigSection], None]) -> None:
    """Declare ``[plugins.three_sided_bookings]``."""
    register(ConfigSection(plugin=PLUGIN, schema=ThreeSidedBookingsConfig))


@hookimpl
def resolve_split(
    order: Order, price: Money, commission: Commission, runtime: PluginRuntime
) -> SplitPlan | None:
    """Platform fee first; the rest between provider and venue by the provider's share.

    ``order.attributes["provider_share_bps"]`` (the provider agreement) overrides
    the configured default.
    """
    if order.plugin != PLUGIN:
        return None
    config: ThreeSidedBookingsConfig = runtime.config(PLUGIN)
    provider_bps = int(order.attributes.get("provider_share_bps", config.provider_share_bps))
    rest = price - commission.amount
    provider, venue = rest.allocate([provider_bps, 10_000 - provider_bps])
    return SplitPlan(
        total=price,
        legs=(
            SplitLeg(PLATFORM, commission.amount),
            SplitLeg("provider", provider, order.beneficiaries["provider"]),
            SplitLeg("venue", venue, order.beneficiaries["venue"]),
        ),
    )
