"""Who gets what: the booking split, charge splits, proportional refunds, transfer targets.

Pure and integer-exact. The booking value goes through the engine's pricing,
commission and splitting hooks (:class:`SplitCalculationService`); this
plugin's ``resolve_split`` hook divides what the platform does not keep
between provider and venue with :func:`split_booking`. Every later division
(the deposit's share of each leg, a refund's share, a cancellation fee's
share) is ``SplitPlan.proportional``, the engine's one allocation function,
so legs always sum exactly and no cent is lost or made.

Split JSON (stored with the booking and each charge, never recomputed)::

    {"total": 10000, "currency": "gbp", "rule_id": "spa", "rule_version": 3,
     "legs": [{"role": "platform", "account_id": null, "amount": 1200},
              {"role": "provider", "account_id": "acct_p", "amount": 5280},
              {"role": "venue", "account_id": "acct_v", "amount": 3520}]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from engine.core.errors import InvalidAmount, InvalidInput
from engine.core.money import Money
from engine.core.orders import PLATFORM, Order, SplitLeg, SplitPlan
from engine.core.plugins import Plugins
from engine.payments.movements import split_minus
from engine.payments.pricing import PricedOrder, price_order

__all__ = [
    "BENEFICIARIES",
    "PROVIDER",
    "VENUE",
    "BookingQuote",
    "ShareTerms",
    "SplitCalculationService",
    "deposit_and_balance",
    "plan_from_json",
    "plan_to_json",
    "split_booking",
    "terms_from_attributes",
]

PROVIDER: Final = "provider"
VENUE: Final = "venue"
BENEFICIARIES: Final[tuple[str, ...]] = (PROVIDER, VENUE)

_FULL: Final = 10_000


@dataclass(frozen=True, slots=True)
class ShareTerms:
    """How the net (value minus the platform's fee) divides between provider and venue.

    Attributes:
        provider_bps: the provider agreement's rate for the service type (share of the net).
        venue_bps: the venue's rate (share of the net); ``None`` means "the rest".
        venue_fixed: the venue's fixed fee per booking in the booking's currency
            (minor units); when set it wins over ``venue_bps`` and is capped at the net.
        provider_rule / venue_rule: where the terms came from, recorded with the split.

    When both rates are given and do not add up to 100 %, the net is divided in
    proportion to them (one allocation), so the legs still sum exactly.
    """

    provider_bps: int
    venue_bps: int | None = None
    venue_fixed: int | None = None
    provider_rule: str = "default"
    venue_rule: str = "default"

    def __post_init__(self) -> None:
        if not 0 <= self.provider_bps <= _FULL:
            raise InvalidInput("a provider rate is between 0 and 10000 bps", field="rate_bps")
        if self.venue_bps is not None and not 0 <= self.venue_bps <= _FULL:
            raise InvalidInput("a venue rate is between 0 and 10000 bps", field="rate_bps")
        if self.venue_fixed is not None and self.venue_fixed < 0:
            raise InvalidInput("a venue fixed fee cannot be negative", field="fixed")

    def as_attributes(self) -> dict[str, Any]:
        """The terms as ``Order.attributes`` entries for the ``resolve_split`` hook."""
        return {
            "provider_share_bps": self.provider_bps,
            "venue_share_bps": self.venue_bps,
            "venue_fixed_fee": self.venue_fixed,
            "provider_terms": self.provider_rule,
            "venue_terms": self.venue_rule,
        }


def terms_from_attributes(attributes: Mapping[str, Any], default_provider_bps: int) -> ShareTerms:
    """Read :class:`ShareTerms` back from ``Order.attributes`` (the hook's side)."""
    provider = attributes.get("provider_share_bps")
    venue = attributes.get("venue_share_bps")
    fixed = attributes.get("venue_fixed_fee")
    return ShareTerms(
        provider_bps=default_provider_bps if provider is None else int(provider),
        venue_bps=None if venue is None else int(venue),
        venue_fixed=None if fixed is None else int(fixed),
        provider_rule=str(attributes.get("provider_terms", "default")),
        venue_rule=str(attributes.get("venue_terms", "default")),
    )


def split_booking(
    price: Money, commission: Money, terms: ShareTerms, provider: str, venue: str
) -> SplitPlan:
    """Platform fee first, then the net between provider and venue by ``terms``."""
    net = price - commission
    if terms.venue_fixed is not None:
        venue_part = Money(min(terms.venue_fixed, net.amount), price.currency)
        provider_part = net - venue_part
    else:
        venue_weight = _FULL - terms.provider_bps if terms.venue_bps is None else terms.venue_bps
        weights = [terms.provider_bps, venue_weight]
        if sum(weights) == 0:
            raise InvalidAmount("provider and venue rates are both zero: nobody would be paid")
        provider_part, venue_part = net.allocate(weights)
    return SplitPlan(
        total=price,
        legs=(
            SplitLeg(PLATFORM, commission),
            SplitLeg(PROVIDER, provider_part, provider),
            SplitLeg(VENUE, venue_part, venue),
        ),
    )


def plan_to_json(plan: SplitPlan, **extra: Any) -> dict[str, Any]:
    """The stored form of a split (see the module docstring)."""
    return {
        "total": plan.total.amount,
        "currency": plan.total.currency,
        **extra,
        "legs": [
            {"role": leg.role, "account_id": leg.account_id, "amount": leg.amount.amount}
            for leg in plan.legs
        ],
    }


def plan_from_json(data: Mapping[str, Any]) -> SplitPlan:
    """Rebuild a stored split exactly as it was (never recomputed)."""
    currency = str(data["currency"])
    return SplitPlan(
        total=Money(int(data["total"]), currency),
        legs=tuple(
            SplitLeg(str(leg["role"]), Money(int(leg["amount"]), currency), leg.get("account_id"))
            for leg in data["legs"]
        ),
    )


@dataclass(frozen=True, slots=True)
class BookingQuote:
    """A priced booking: the value, the platform's fee and rule, and the three legs."""

    priced: PricedOrder
    terms: ShareTerms

    @property
    def price(self) -> Money:
        """What the customer pays."""
        return self.priced.price

    @property
    def split(self) -> SplitPlan:
        """Platform, provider and venue legs; they sum exactly to the price."""
        return self.priced.split

    def split_json(self) -> dict[str, Any]:
        """The split as stored with the booking, with the rules that produced it."""
        commission = self.priced.commission
        return plan_to_json(
            self.split,
            rule_id=commission.rule_id,
            rule_version=commission.rule_version,
            provider_terms=self.terms.provider_rule,
            venue_terms=self.terms.venue_rule,
        )

    def for_charge(self, plan: SplitPlan) -> PricedOrder:
        """The priced order of one charge of the booking (its share of every leg)."""
        order = replace(self.priced.order, amount=plan.total)
        commission = replace(self.priced.commission, amount=plan.platform_amount)
        return PricedOrder(order=order, price=plan.total, commission=commission, split=plan)


class SplitCalculationService:
    """Booking value -> platform fee, provider share, venue share, through the hooks.

    Args:
        plugins: the engine's plugin facade (pricing, commission, splitting hooks).
        plugin: the business model's name, recorded on the order.
    """

    def __init__(self, plugins: Plugins, plugin: str = "three_sided_bookings") -> None:
        self._plugins = plugins
        self._plugin = plugin

    def quote(
        self,
        *,
        reference: str,
        value: Money,
        service_type: str,
        provider_account: str,
        venue_account: str,
        terms: ShareTerms,
        occurred_at: datetime,
        attributes: Mapping[str, Any] | None = None,
    ) -> BookingQuote:
        """Price a booking (commission rules see ``service_type``, ``provider``, ``venue``)."""
        order = Order(
            plugin=self._plugin,
            kind="booking",
            amount=value,
            reference=reference,
            beneficiaries={PROVIDER: provider_account, VENUE: venue_account},
            attributes={
                **(attributes or {}),
                "service_type": service_type,
                **terms.as_attributes(),
            },
            occurred_at=occurred_at,
        )
        priced = price_order(self._plugins, order)
        return BookingQuote(priced=priced, terms=terms)


def deposit_and_balance(plan: SplitPlan, deposit: Money) -> tuple[SplitPlan, SplitPlan]:
    """Divide a booking's split into the deposit's split and the balance's split.

    The deposit takes ``plan.proportional(deposit)``; the balance is what
    remains of each leg, so the two charges' legs add up to the booking's exactly.
    """
    deposit_plan = plan.proportional(deposit)
    return deposit_plan, split_minus(plan, deposit_plan)
