"""course_sales tested the way any plugin is: with the engine's testing kit (``mp_*`` fixtures)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from engine.core.money import Money
from engine.core.orders import PLATFORM
from engine.core.plugins import Plugins
from engine.payments.pricing import price_order
from engine.sandbox.testing import RunningSandbox, verified_account_params
from engine.services import Services
from engine.testing.conformance import ConformanceReport
from engine.testing.ledger import assert_balances, assert_ledger_balanced
from engine.testing.stack import Stack

from course_sales.pricing import course_order
from course_sales.services import create_course, open_enrollment, settle_enrollment, start_payment

INSTRUCTOR = "acct_instructor0000001"
AFFILIATE = "acct_affiliate00000001"


def test_coupon_commission_and_revenue_share(mp_plugins: Plugins) -> None:
    order = course_order(
        "test:1", Money(4_999, "usd"), INSTRUCTOR, affiliate=AFFILIATE, coupon="LAUNCH"
    )
    priced = price_order(mp_plugins, order)
    assert priced.price == Money(3_999, "usd")  # 20 % off 49.99, half-up
    assert priced.commission.rule_id == "courses"  # commission_rules, scoped to the plugin
    assert priced.split.leg(PLATFORM).amount == Money(600, "usd")  # 15 % of 39.99
    assert priced.split.leg("instructor").amount == Money(2_549, "usd")
    assert priced.split.leg("affiliate").amount == Money(850, "usd")  # 25 % of 33.99


def test_without_an_affiliate_the_instructor_gets_the_rest(mp_plugins: Plugins) -> None:
    priced = price_order(mp_plugins, course_order("test:2", Money(1_000, "jpy"), INSTRUCTOR))
    assert [leg.role for leg in priced.split.legs] == [PLATFORM, "instructor"]
    assert priced.split.leg("instructor").amount == Money(850, "jpy")


async def test_conformance(mp_conformance: Callable[..., Awaitable[ConformanceReport]]) -> None:
    report = await mp_conformance("course_sales")
    report.raise_for_failures()
    assert report.complete, report.text()  # a property not checked is not passed


async def test_a_course_sale_end_to_end(mp_stack: Stack) -> None:
    instructor = await mp_stack.onboard("Ada Instructor")
    affiliate = await mp_stack.onboard("Bob Affiliate")
    service = mp_stack.client_for(await mp_stack.create_key("service"))

    body = {"title": "Python money", "instructor": instructor, "price": 4_999, "currency": "usd"}
    course = await service.post("/v1/course_sales/courses", json=body)
    assert course.status_code == 201, course.text
    enrolled = await service.post(
        "/v1/course_sales/enrollments",
        json={
            "course_id": course.json()["id"],
            "student_email": "student@example.com",
            "payment_method": "pm_card_visa",
            "affiliate": affiliate,
            "coupon": "LAUNCH",
        },
    )
    assert enrolled.status_code == 201, enrolled.text
    await mp_stack.settle()

    enrollment = (await service.get(f"/v1/course_sales/enrollments/{enrolled.json()['id']}")).json()
    assert enrollment["status"] == "paid"
    await mp_stack.assert_balances({instructor: Money(2_549, "usd"), affiliate: Money(850, "usd")})
    await mp_stack.assert_ledger_balanced()
    assert not await mp_stack.dead_events()


async def test_settling_an_enrollment_with_the_services(
    mp_services: Services, mp_sandbox: RunningSandbox
) -> None:
    """Below the API: the services on a fresh database, Stripe being the sandbox."""
    stripe = mp_sandbox.client()
    instructor = stripe.v1.accounts.create(params=verified_account_params()).id
    config = mp_services.plugins.runtime.config("course_sales")
    async with mp_services.db.pool.acquire() as conn:
        async with conn.transaction():
            course = await create_course(
                conn, title="Ledgers", instructor=instructor, price=Money(2_000, "usd")
            )
            enrollment = await open_enrollment(
                conn, mp_services.plugins, config, course, student_email="s@example.com"
            )
        async with conn.transaction():
            payment_intent = await start_payment(conn, mp_services, enrollment, "pm_card_visa")
        async with conn.transaction():
            paid = await settle_enrollment(conn, mp_services, enrollment, payment_intent)
            again = await settle_enrollment(conn, mp_services, enrollment, payment_intent)
    assert [(t.role, t.amount) for t in paid] == [("instructor", Money(1_700, "usd"))]
    assert again == paid  # Stripe's idempotency returns the same transfer; nothing doubles
    await assert_balances(mp_services.ledger, {instructor: Money(1_700, "usd")})
    await assert_ledger_balanced(mp_services.ledger)
