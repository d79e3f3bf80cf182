"""The money rules of course sales, pure: the order, coupon prices, and the revenue share.

The platform's commission is not decided here: the engine's ``resolve_commission``
(the ``commission_rules`` plugin, or the engine's default) prices it, scoped by
``plugin = "course_sales"``, the instructor's account or a course ``tier``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.core.money import Money, apply_rate
from engine.core.orders import PLATFORM, Commission, Order, SplitLeg, SplitPlan

from course_sales.config import PLUGIN, CourseSalesConfig

__all__ = [
    "AFFILIATE",
    "COUPON",
    "INSTRUCTOR",
    "KIND",
    "coupon_price",
    "course_order",
    "legs_from_json",
    "legs_to_json",
    "revenue_share",
]

KIND = "course"
INSTRUCTOR = "instructor"
AFFILIATE = "affiliate"
COUPON = "coupon"
"""``Order.attributes`` key of the coupon code a student used."""


def course_order(
    reference: str,
    list_price: Money,
    instructor: str,
    *,
    affiliate: str | None = None,
    coupon: str = "",
    course_id: int | None = None,
) -> Order:
    """The order for one enrollment (``reference`` is ``course_sales:enrollment:<id>``)."""
    beneficiaries = {INSTRUCTOR: instructor}
    if affiliate:
        beneficiaries[AFFILIATE] = affiliate
    attributes: dict[str, Any] = {}
    if coupon:
        attributes[COUPON] = coupon
    if course_id is not None:
        attributes["course_id"] = course_id
    return Order(
        plugin=PLUGIN,
        kind=KIND,
        amount=list_price,
        reference=reference,
        beneficiaries=beneficiaries,
        attributes=attributes,
    )


def coupon_price(order: Order, config: CourseSalesConfig) -> Money | None:
    """The list price less the coupon's discount (half-up), or ``None`` without a known coupon."""
    discount_bps = config.coupons.get(str(order.attributes.get(COUPON, "")))
    if discount_bps is None:
        return None
    discount = apply_rate(order.amount.amount, discount_bps)
    return Money(order.amount.amount - discount, order.amount.currency)


def revenue_share(
    order: Order, price: Money, commission: Commission, config: CourseSalesConfig
) -> SplitPlan:
    """Commission to the platform; the rest to the instructor, less the affiliate's share.

    One ``allocate`` divides the rest, so the legs always sum to ``price``.
    """
    rest = price - commission.amount
    legs = [SplitLeg(PLATFORM, commission.amount)]
    affiliate = order.beneficiaries.get(AFFILIATE)
    if affiliate is None:
        legs.append(SplitLeg(INSTRUCTOR, rest, order.beneficiaries[INSTRUCTOR]))
    else:
        share = config.affiliate_share_bps
        instructor_part, affiliate_part = rest.allocate([10_000 - share, share])
        legs.append(SplitLeg(INSTRUCTOR, instructor_part, order.beneficiaries[INSTRUCTOR]))
        legs.append(SplitLeg(AFFILIATE, affiliate_part, affiliate))
    return SplitPlan(total=price, legs=tuple(legs))


def legs_to_json(plan: SplitPlan) -> list[dict[str, Any]]:
    """The legs as stored with the enrollment."""
    return [
        {"role": leg.role, "account_id": leg.account_id, "amount": leg.amount.amount}
        for leg in plan.legs
    ]


def legs_from_json(legs: Sequence[Mapping[str, Any]], currency: str) -> tuple[SplitLeg, ...]:
    """The stored legs back as ``SplitLeg``s."""
    return tuple(
        SplitLeg(str(leg["role"]), Money(int(leg["amount"]), currency), leg.get("account_id"))
        for leg in legs
    )
