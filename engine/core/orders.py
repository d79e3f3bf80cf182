"""The values that flow through the money hooks: orders, commissions, split plans, notices.

These are plain frozen dataclasses so plugins and the engine share one vocabulary
without importing any framework. Everything monetary is ``Money``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from engine.core.errors import InvalidAmount
from engine.core.money import Money

__all__ = [
    "PLATFORM",
    "Commission",
    "LifecycleEvent",
    "Order",
    "PayoutFailure",
    "SplitLeg",
    "SplitPlan",
]

PLATFORM = "platform"
"""The beneficiary role of the platform's own leg in a split plan."""


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True, slots=True)
class Order:
    """Something a customer pays for, before pricing, commission and split.

    Attributes:
        plugin: the business model that owns the order (``"three_sided_bookings"``).
        kind: what is sold within that model (``"subscription"``, ``"tip"``, ``"booking"``).
        amount: the list amount the business model proposes (pricing may change it).
        reference: the business object's id (``"booking:42"``); used in idempotency keys.
        beneficiaries: role -> connected account id (``{"provider": "acct_1", "venue": "acct_2"}``).
        attributes: free-form scope values commission rules and splits can match on
            (``{"service_type": "massage", "tier": "gold"}``).
        occurred_at: when the order is priced; commission rules are chosen by this time.
    """

    plugin: str
    kind: str
    amount: Money
    reference: str
    beneficiaries: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        object.__setattr__(self, "beneficiaries", _frozen(self.beneficiaries))
        object.__setattr__(self, "attributes", _frozen(self.attributes))
        if self.amount.amount < 0:
            raise InvalidAmount("an order amount cannot be negative")


@dataclass(frozen=True, slots=True)
class Commission:
    """The platform's fee for a priced order, and the rule that produced it.

    Attributes:
        amount: the fee, ``0 <= amount <= price``.
        rule_id: identifier of the rule that priced it (recorded with the transaction).
        rule_version: the version of that rule, so history never changes with rules.
        rate_bps: the percentage part in basis points, when the rule has one (a
            subscription's ``application_fee_percent`` is ``rate_bps / 100``).
        explanation: the arithmetic in words, for ``explain`` and audit.
    """

    amount: Money
    rule_id: str
    rule_version: int = 1
    rate_bps: Decimal | None = None
    explanation: str = ""


@dataclass(frozen=True, slots=True)
class SplitLeg:
    """One beneficiary's share of an amount (``account_id`` is None for the platform)."""

    role: str
    amount: Money
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class SplitPlan:
    """How a charged amount divides among the platform and beneficiaries.

    The legs always sum exactly to ``total``; the constructor refuses anything else.
    """

    total: Money
    legs: tuple[SplitLeg, ...]

    def __post_init__(self) -> None:
        currencies = {leg.amount.currency for leg in self.legs}
        if currencies - {self.total.currency}:
            raise InvalidAmount("every split leg must be in the order's currency")
        leg_sum = sum(leg.amount.amount for leg in self.legs)
        if leg_sum != self.total.amount:
            raise InvalidAmount(f"split legs sum to {leg_sum}, not the total {self.total.amount}")
        if any(leg.amount.amount < 0 for leg in self.legs):
            raise InvalidAmount("a split leg cannot be negative")

    def leg(self, role: str) -> SplitLeg:
        """The leg for ``role``; raises ``KeyError`` when there is none."""
        for leg in self.legs:
            if leg.role == role:
                return leg
        raise KeyError(role)

    @property
    def platform_amount(self) -> Money:
        """What the platform keeps (zero when the plan has no platform leg)."""
        return sum(
            (leg.amount for leg in self.legs if leg.role == PLATFORM),
            Money.zero(self.total.currency),
        )

    def proportional(self, amount: Money) -> SplitPlan:
        """The same split applied to ``amount`` (a refund): one allocation, exact to the cent."""
        weights = [leg.amount.amount for leg in self.legs]
        if sum(weights) == 0:
            weights = [1] * len(self.legs)
        parts = amount.allocate(weights)
        return SplitPlan(
            total=amount,
            legs=tuple(
                SplitLeg(role=leg.role, amount=part, account_id=leg.account_id)
                for leg, part in zip(self.legs, parts, strict=True)
            ),
        )


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """A state change a business model or the engine announces to plugins.

    Attributes:
        name: dotted name, ``"<plugin>.<object>.<change>"`` (``"creator_subscriptions.
            subscription.renewed"``) or ``"engine.account.updated"``.
        subject_id: the business object's id.
        account_id: the connected account concerned, if any.
        data: event-specific details (amounts are minor units with a currency).
    """

    name: str
    subject_id: str
    account_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", _frozen(self.data))


@dataclass(frozen=True, slots=True)
class PayoutFailure:
    """A connected account could not receive money.

    Attributes:
        account_id: the Stripe connected account id.
        kind: ``"payout"`` (bank rejected a payout) or ``"transfer"`` (the account
            cannot take a transfer: restricted, payouts disabled).
        failure_code: Stripe's code (``no_account``, ``account_closed`` ...).
        amount: the money that did not arrive.
        stripe_object_id: the payout or transfer id.
        reference: the business object the money belonged to, when known.
    """

    account_id: str
    kind: str
    failure_code: str
    amount: Money
    stripe_object_id: str
    reference: str | None = None
    message: str = ""
