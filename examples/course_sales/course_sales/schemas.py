"""Request and response bodies of the course_sales API (msgspec structs, minor units)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from engine.api.fields import Currency, Line, RequestBody

__all__ = ["MAX_AMOUNT", "CourseOut", "EnrollmentOut", "LegOut", "NewCourse", "NewEnrollment"]

MAX_AMOUNT = 99_999_999
"""Stripe's largest charge amount in minor units."""

AccountId = Annotated[str, msgspec.Meta(pattern=r"^acct_[A-Za-z0-9]{1,60}$")]


class NewCourse(RequestBody, frozen=True):
    """A course to sell: its list price in minor units and the instructor's account."""

    title: Annotated[Line, msgspec.Meta(min_length=1, max_length=200)]
    instructor: AccountId
    price: Annotated[int, msgspec.Meta(ge=1, le=MAX_AMOUNT)]
    currency: Currency


class CourseOut(msgspec.Struct, frozen=True, kw_only=True):
    """A course."""

    id: int
    title: str
    instructor: str
    price: int
    currency: str


class NewEnrollment(RequestBody, frozen=True):
    """A student buying a course, maybe referred by an affiliate, maybe with a coupon.

    ``payment_method`` is the ``pm_...`` Stripe.js collected (in tests, one of
    Stripe's test values such as ``pm_card_visa``).
    """

    course_id: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    student_email: Annotated[Line, msgspec.Meta(min_length=3, max_length=254)]
    payment_method: Annotated[Line, msgspec.Meta(min_length=3, max_length=100)]
    affiliate: AccountId | None = None
    coupon: Annotated[Line, msgspec.Meta(max_length=64)] = ""


class LegOut(msgspec.Struct, frozen=True, kw_only=True):
    """One share of the price (``account_id`` is null for the platform)."""

    role: str
    account_id: str | None
    amount: int


class EnrollmentOut(msgspec.Struct, frozen=True, kw_only=True):
    """An enrollment, what it costs, the commission (and its rule) and the split."""

    id: int
    course_id: int
    status: str
    price: int
    currency: str
    commission: int
    rule_id: str
    rule_version: int
    legs: list[LegOut]
    payment_intent_id: str | None
