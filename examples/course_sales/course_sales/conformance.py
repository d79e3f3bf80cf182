"""What the conformance check runs course_sales with: its orders and a real paid enrollment.

``marketplace conformance course_sales`` finds ``conformance()`` here. The
sample event is a real ``payment_intent.succeeded`` from the check's sandbox for
an enrollment created in the check's transaction, so the idempotency property
covers the whole settlement: transfers, ledger postings and the enrollment row.
"""

from __future__ import annotations

from typing import Any

from engine.sandbox.testing import verified_account_params
from engine.testing.conformance import ConformanceSpec, SampleContext
from engine.testing.events import stripe_event
from engine.testing.strategies import orders
from hypothesis import strategies as st

from course_sales.config import PLUGIN, CourseSalesConfig
from course_sales.pricing import AFFILIATE, COUPON, INSTRUCTOR, KIND
from course_sales.services import (
    create_course,
    open_enrollment,
    start_payment,
)

__all__ = ["COUPONS", "conformance"]

COUPONS = {"HALF": 5000, "LAUNCH": 2000, "FREE": 10_000}
"""The coupons the check configures (including a 100 % one: a zero price)."""


async def sample_events(ctx: SampleContext) -> list[dict[str, Any]]:
    """A paid enrollment with an affiliate, and another plugin's PaymentIntent."""
    from engine.core.money import Money

    instructor = ctx.stripe.v1.accounts.create(params=verified_account_params()).id
    affiliate = ctx.stripe.v1.accounts.create(params=verified_account_params()).id
    course = await create_course(
        ctx.conn, title="Conformance", instructor=instructor, price=Money(4_999, "usd")
    )
    config: CourseSalesConfig = ctx.services.plugins.runtime.config(PLUGIN)
    enrollment = await open_enrollment(
        ctx.conn,
        ctx.services.plugins,
        config,
        course,
        student_email="student@example.com",
        affiliate=affiliate,
    )
    charged = await start_payment(ctx.conn, ctx.services, enrollment, "pm_card_visa")
    # As Stripe sends it: the charge by its id.
    payment_intent = {**charged, "latest_charge": charged["latest_charge"]["id"]}
    foreign = {**payment_intent, "id": "pi_not_a_course", "metadata": {"plugin": "other"}}
    return [
        stripe_event("payment_intent.succeeded", payment_intent),
        stripe_event("payment_intent.succeeded", foreign),
    ]


def conformance() -> ConformanceSpec:
    """Course orders (with and without affiliate or coupon) and a real paid enrollment."""
    return ConformanceSpec(
        orders=orders(
            PLUGIN,
            kinds=[KIND],
            roles=[INSTRUCTOR],
            optional_roles=[AFFILIATE],
            attributes=st.fixed_dictionaries(
                {}, optional={COUPON: st.sampled_from([*COUPONS, "UNKNOWN"])}
            ),
        ),
        config={"affiliate_share_bps": 2500, "coupons": COUPONS},
        events=sample_events,
    )
