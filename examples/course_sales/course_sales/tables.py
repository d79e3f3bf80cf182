"""The course_sales Piccolo app: courses and enrollments, prefixed ``course_sales_``.

Money columns are minor units with the currency beside them. An enrollment
keeps the price, commission, rule and split it was priced with, so settling it
later never re-prices (rules may have changed since).
"""

from __future__ import annotations

from pathlib import Path

from piccolo.columns import JSONB, BigInt, BigSerial, Integer, Timestamptz, Varchar
from piccolo.conf.apps import AppConfig
from piccolo.table import Table

__all__ = ["APP_CONFIG", "Course", "Enrollment"]


class Course(Table, tablename="course_sales_courses"):
    """A course an instructor sells."""

    id = BigSerial(primary_key=True)
    title = Varchar(length=200)
    instructor_account = Varchar(length=64, index=True)
    price = BigInt()
    currency = Varchar(length=3)
    created_at = Timestamptz()


class Enrollment(Table, tablename="course_sales_enrollments"):
    """A student's purchase of a course: ``pending`` until Stripe says it is paid."""

    id = BigSerial(primary_key=True)
    course_id = BigInt(index=True)
    student_email = Varchar(length=254)
    affiliate_account = Varchar(length=64, null=True, default=None)
    coupon = Varchar(length=64, default="")
    status = Varchar(length=16, default="pending", index=True)
    price = BigInt(default=0)
    currency = Varchar(length=3, default="usd")
    commission = BigInt(default=0)
    rule_id = Varchar(length=200, default="")
    rule_version = Integer(default=1)
    split = JSONB(default=[])
    payment_intent_id = Varchar(length=64, null=True, default=None, unique=True)
    charge_id = Varchar(length=64, null=True, default=None)
    created_at = Timestamptz()
    paid_at = Timestamptz(null=True, default=None)


APP_CONFIG = AppConfig(
    app_name="course_sales",
    migrations_folder_path=str(Path(__file__).parent / "migrations"),
    table_classes=[Course, Enrollment],
)
