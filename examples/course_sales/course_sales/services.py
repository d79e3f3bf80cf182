"""Course sales on the database and Stripe: courses, enrollments, and settling a paid one.

No HTTP here (the controller calls these). The money moves through the engine
(``engine.payments.movements``): every Stripe write carries an idempotency key
derived from the enrollment (``course_sales:enrollment:7:transfer:instructor``),
and every ledger posting is the engine's, keyed by the Stripe object, so
settling the same payment twice moves no money twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from engine.core.errors import InvalidInput, NotFound
from engine.core.money import Money
from engine.core.orders import PLATFORM, Commission, Order, SplitLeg, SplitPlan
from engine.core.plugins import Plugins
from engine.payments import movements
from engine.payments.movements import MoneyScope
from engine.payments.pricing import PricedOrder, price_order, record_payment
from engine.payments.records import update_payment
from engine.services import Services

from course_sales.config import PLUGIN, CourseSalesConfig
from course_sales.pricing import KIND, course_order, legs_from_json, legs_to_json

__all__ = [
    "CourseRow",
    "EnrollmentRow",
    "PaidTransfer",
    "create_course",
    "enrollment_reference",
    "get_course",
    "get_enrollment",
    "open_enrollment",
    "priced_enrollment",
    "settle_enrollment",
    "start_payment",
]


def enrollment_reference(enrollment_id: int) -> str:
    """The business reference of an enrollment (payments, ledger, idempotency keys)."""
    return f"{PLUGIN}:enrollment:{enrollment_id}"


@dataclass(frozen=True, slots=True)
class CourseRow:
    """A course as stored."""

    id: int
    title: str
    instructor: str
    price: Money


@dataclass(frozen=True, slots=True)
class EnrollmentRow:
    """An enrollment as stored, with the split it was priced with."""

    id: int
    course_id: int
    student_email: str
    affiliate: str | None
    status: str
    price: Money
    commission: Money
    rule_id: str
    rule_version: int
    legs: tuple[SplitLeg, ...]
    payment_intent_id: str | None
    charge_id: str | None

    @property
    def reference(self) -> str:
        """``course_sales:enrollment:<id>``."""
        return enrollment_reference(self.id)


@dataclass(frozen=True, slots=True)
class PaidTransfer:
    """One beneficiary's share, as transferred."""

    role: str
    destination: str
    amount: Money
    transfer_id: str


_COURSE_COLUMNS = "id, title, instructor_account, price, currency"
_INSERT_COURSE = (
    "INSERT INTO course_sales_courses (title, instructor_account, price, currency, created_at) "
    "VALUES ($1, $2, $3, $4, now()) RETURNING id, title, instructor_account, price, currency"
)
_ENROLLMENT_COLUMNS = (
    "id, course_id, student_email, affiliate_account, status, price, currency, commission, "
    "rule_id, rule_version, split, payment_intent_id, charge_id"
)


def _course(row: Mapping[str, Any]) -> CourseRow:
    return CourseRow(
        id=int(row["id"]),
        title=str(row["title"]),
        instructor=str(row["instructor_account"]),
        price=Money(int(row["price"]), str(row["currency"])),
    )


def _enrollment(row: Mapping[str, Any]) -> EnrollmentRow:
    currency = str(row["currency"])
    legs = row["split"]
    if isinstance(legs, str):
        legs = json.loads(legs)
    return EnrollmentRow(
        id=int(row["id"]),
        course_id=int(row["course_id"]),
        student_email=str(row["student_email"]),
        affiliate=row["affiliate_account"],
        status=str(row["status"]),
        price=Money(int(row["price"]), currency),
        commission=Money(int(row["commission"]), currency),
        rule_id=str(row["rule_id"]),
        rule_version=int(row["rule_version"]),
        legs=legs_from_json(legs, currency),
        payment_intent_id=row["payment_intent_id"],
        charge_id=row["charge_id"],
    )


async def create_course(
    conn: asyncpg.Connection, *, title: str, instructor: str, price: Money
) -> CourseRow:
    """Store a new course."""
    row = await conn.fetchrow(
        _INSERT_COURSE,
        title,
        instructor,
        price.amount,
        price.currency,
    )
    return _course(row)


async def get_course(conn: asyncpg.Connection, course_id: int) -> CourseRow:
    """A course, or ``NotFound``."""
    row = await conn.fetchrow(
        f"SELECT {_COURSE_COLUMNS} FROM course_sales_courses WHERE id = $1",  # noqa: S608 - constant columns
        course_id,
    )
    if row is None:
        raise NotFound(f"no course {course_id}")
    return _course(row)


async def get_enrollment(
    conn: asyncpg.Connection, enrollment_id: int, *, lock: bool = False
) -> EnrollmentRow | None:
    """An enrollment (``lock`` takes its row lock until the transaction ends)."""
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_ENROLLMENT_COLUMNS} FROM course_sales_enrollments WHERE id = $1{suffix}",  # noqa: S608 - constant columns
        enrollment_id,
    )
    return None if row is None else _enrollment(row)


async def open_enrollment(
    conn: asyncpg.Connection,
    plugins: Plugins,
    config: CourseSalesConfig,
    course: CourseRow,
    *,
    student_email: str,
    affiliate: str | None = None,
    coupon: str = "",
) -> EnrollmentRow:
    """Create a pending enrollment priced through the engine's hooks (price, commission, split).

    Run it inside a transaction: the enrollment and its payment record commit together.

    Raises:
        InvalidInput: an unknown coupon, or the instructor as their own affiliate.
    """
    if coupon and coupon not in config.coupons:
        raise InvalidInput(f"unknown coupon {coupon!r}", field="coupon")
    if affiliate == course.instructor:
        raise InvalidInput("an instructor cannot be their own affiliate", field="affiliate")
    enrollment_id = int(
        await conn.fetchval(
            "INSERT INTO course_sales_enrollments "
            "(course_id, student_email, affiliate_account, coupon, status, split, created_at) "
            "VALUES ($1, $2, $3, $4, 'pending', '[]'::jsonb, now()) RETURNING id",
            course.id,
            student_email,
            affiliate,
            coupon,
        )
    )
    order = course_order(
        enrollment_reference(enrollment_id),
        course.price,
        course.instructor,
        affiliate=affiliate,
        coupon=coupon,
        course_id=course.id,
    )
    priced = price_order(plugins, order)
    row = await conn.fetchrow(
        f"""
        UPDATE course_sales_enrollments
        SET price = $2, currency = $3, commission = $4, rule_id = $5, rule_version = $6,
            split = $7::jsonb
        WHERE id = $1 RETURNING {_ENROLLMENT_COLUMNS}
        """,  # noqa: S608 - constant columns
        enrollment_id,
        priced.price.amount,
        priced.price.currency,
        priced.commission.amount.amount,
        priced.commission.rule_id,
        priced.commission.rule_version,
        json.dumps(legs_to_json(priced.split)),
    )
    await record_payment(conn, priced, account_id=course.instructor, status="pending")
    return _enrollment(row)


def priced_enrollment(enrollment: EnrollmentRow) -> PricedOrder:
    """The enrollment's price, commission and split, as priced when it was opened."""
    order = Order(
        plugin=PLUGIN,
        kind=KIND,
        amount=enrollment.price,
        reference=enrollment.reference,
        beneficiaries={leg.role: leg.account_id for leg in enrollment.legs if leg.account_id},
    )
    commission = Commission(
        amount=enrollment.commission,
        rule_id=enrollment.rule_id,
        rule_version=enrollment.rule_version,
    )
    split = SplitPlan(total=enrollment.price, legs=enrollment.legs)
    return PricedOrder(order=order, price=enrollment.price, commission=commission, split=split)


async def start_payment(
    conn: asyncpg.Connection, services: Services, enrollment: EnrollmentRow, payment_method: str
) -> Mapping[str, Any]:
    """Charge the student on the platform (separate charges and transfers); the PaymentIntent.

    The engine's ``movements.charge`` creates and confirms it (key
    ``course_sales:enrollment:<id>:charge:student``), attaches it to the payment
    recorded when the enrollment was priced, and posts the charge once captured;
    the enrollment remembers the intent. Run it inside a transaction.
    """
    # Locked first: Stripe's payment_intent.succeeded may be handled while this
    # transaction is open, and its handler locks the enrollment before posting.
    await get_enrollment(conn, enrollment.id, lock=True)
    charged = await movements.charge(
        MoneyScope(services.gateway, services.ledger, conn, PLUGIN, enrollment.reference),
        priced_enrollment(enrollment),
        operation=("student",),
        payment_method=payment_method,
        account_id=None,
        transfer_group=enrollment.reference,
        description=f"course {enrollment.course_id}",
        metadata={"plugin": PLUGIN, "enrollment": str(enrollment.id)},
        recorded=True,
    )
    await conn.execute(
        "UPDATE course_sales_enrollments SET payment_intent_id = $2 "
        "WHERE id = $1 AND payment_intent_id IS NULL",
        enrollment.id,
        charged.payment_intent_id,
    )
    return charged.intent


async def settle_enrollment(
    conn: asyncpg.Connection,
    services: Services,
    enrollment: EnrollmentRow,
    payment_intent: Mapping[str, Any],
) -> list[PaidTransfer]:
    """The payment succeeded: transfer every share, post the ledger, mark the enrollment paid.

    The engine moves the money (``engine.payments.movements``): it posts the
    charge with Stripe's fee and makes, records and posts each share's transfer
    (``source_transaction`` = the charge). Idempotent: only a ``pending``
    enrollment is settled; transfers carry keys derived from the enrollment and
    role and postings are keyed by the Stripe objects, so a retry after a crash
    half-way through repeats nothing.
    """
    if enrollment.status != "pending":
        return []
    latest = payment_intent.get("latest_charge")
    charge_id = str(latest.get("id") if isinstance(latest, Mapping) else latest or "")
    payment_intent_id = str(payment_intent["id"])
    money = MoneyScope(services.gateway, services.ledger, conn, PLUGIN, enrollment.reference)
    await movements.post_platform_charge(money, charge_id, description="course sale")
    paid: list[PaidTransfer] = []
    for leg in enrollment.legs:
        if leg.role == PLATFORM or leg.account_id is None or leg.amount.is_zero():
            continue  # the platform keeps its commission; Stripe refuses zero transfers
        made = await movements.transfer(
            money,
            destination=leg.account_id,
            amount=leg.amount,
            source_transaction=charge_id,
            role=leg.role,
            operation=(leg.role,),
            transfer_group=enrollment.reference,
            description="course revenue share",
            metadata={"plugin": PLUGIN, "enrollment": str(enrollment.id), "role": leg.role},
        )
        paid.append(PaidTransfer(leg.role, leg.account_id, leg.amount, made.transfer_id))
    await conn.execute(
        "UPDATE course_sales_enrollments SET status = 'paid', payment_intent_id = $2, "
        "charge_id = $3, paid_at = now() WHERE id = $1",
        enrollment.id,
        payment_intent_id,
        charge_id,
    )
    await update_payment(conn, payment_intent_id, charge_id=charge_id, status="succeeded")
    return paid
