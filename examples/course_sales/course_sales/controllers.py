"""``/v1/course_sales``: courses and enrollments (service and admin keys).

Creating an enrollment prices it through the engine's hooks and charges the
student on the platform; the shares are transferred when Stripe's
``payment_intent.succeeded`` arrives (``webhooks.py``).
"""

from __future__ import annotations

from typing import Annotated

from engine.api.auth import requires_scope
from engine.api.problems import problem_responses
from engine.core.errors import MarketplaceError, NotFound
from engine.core.money import Money
from engine.payments.payability import require_payable
from engine.services import Services
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter

from course_sales.config import PLUGIN, CourseSalesConfig
from course_sales.schemas import CourseOut, EnrollmentOut, LegOut, NewCourse, NewEnrollment
from course_sales.services import (
    CourseRow,
    EnrollmentRow,
    create_course,
    get_course,
    get_enrollment,
    open_enrollment,
    start_payment,
)

__all__ = ["CourseController"]

Id = Annotated[int, PathParameter(ge=1, le=2**63 - 1, description="The object's id")]


def _course_out(course: CourseRow) -> CourseOut:
    return CourseOut(
        id=course.id,
        title=course.title,
        instructor=course.instructor,
        price=course.price.amount,
        currency=course.price.currency,
    )


def _enrollment_out(enrollment: EnrollmentRow) -> EnrollmentOut:
    return EnrollmentOut(
        id=enrollment.id,
        course_id=enrollment.course_id,
        status=enrollment.status,
        price=enrollment.price.amount,
        currency=enrollment.price.currency,
        commission=enrollment.commission.amount,
        rule_id=enrollment.rule_id,
        rule_version=enrollment.rule_version,
        legs=[
            LegOut(role=leg.role, account_id=leg.account_id, amount=leg.amount.amount)
            for leg in enrollment.legs
        ],
        payment_intent_id=enrollment.payment_intent_id,
    )


class CourseController(Controller):
    """Courses and the enrollments that pay for them."""

    path = f"/v1/{PLUGIN}"
    tags = [PLUGIN]
    guards = [requires_scope("service")]

    @post(
        "/courses",
        operation_id="createCourse",
        summary="Create a course",
        responses=problem_responses(400, 401, 403, 404, 409),
    )
    async def create(
        self, data: JSONBody[NewCourse], services: NamedDependency[Services]
    ) -> CourseOut:
        """A course sold by an active instructor account."""
        price = Money(data.price, data.currency)
        await require_payable(services.db.pool, {"instructor": data.instructor})
        async with services.db.pool.acquire() as conn:
            course = await create_course(
                conn, title=data.title, instructor=data.instructor, price=price
            )
        return _course_out(course)

    @get(
        "/courses/{course_id:int}",
        operation_id="getCourse",
        summary="Get a course",
        responses=problem_responses(401, 403, 404),
    )
    async def course(self, course_id: Id, services: NamedDependency[Services]) -> CourseOut:
        """A course by id."""
        async with services.db.pool.acquire() as conn:
            return _course_out(await get_course(conn, course_id))

    @post(
        "/enrollments",
        operation_id="createEnrollment",
        summary="Enroll a student: price and charge",
        responses=problem_responses(400, 401, 403, 404, 409, 502),
    )
    async def enroll(
        self, data: JSONBody[NewEnrollment], services: NamedDependency[Services]
    ) -> EnrollmentOut:
        """Price the sale through the hooks, record it, and charge the student."""
        config: CourseSalesConfig = services.plugins.runtime.config(PLUGIN)
        async with services.db.pool.acquire() as conn:
            course = await get_course(conn, data.course_id)
            # Nobody is charged for an instructor or affiliate who cannot be paid (409).
            await require_payable(
                conn, {"instructor": course.instructor, "affiliate": data.affiliate or ""}
            )
            async with conn.transaction():
                enrollment = await open_enrollment(
                    conn,
                    services.plugins,
                    config,
                    course,
                    student_email=data.student_email,
                    affiliate=data.affiliate,
                    coupon=data.coupon,
                )
            try:
                async with conn.transaction():
                    await start_payment(conn, services, enrollment, data.payment_method)
            except MarketplaceError:
                await conn.execute(
                    "UPDATE course_sales_enrollments SET status = 'failed' WHERE id = $1",
                    enrollment.id,
                )
                raise
            refreshed = await get_enrollment(conn, enrollment.id)
        return _enrollment_out(refreshed or enrollment)

    @get(
        "/enrollments/{enrollment_id:int}",
        operation_id="getEnrollment",
        summary="Get an enrollment",
        responses=problem_responses(401, 403, 404),
    )
    async def enrollment(
        self, enrollment_id: Id, services: NamedDependency[Services]
    ) -> EnrollmentOut:
        """An enrollment: ``pending`` until the payment succeeded, then ``paid``."""
        async with services.db.pool.acquire() as conn:
            found = await get_enrollment(conn, enrollment_id)
        if found is None:
            raise NotFound(f"no enrollment {enrollment_id}")
        return _enrollment_out(found)
