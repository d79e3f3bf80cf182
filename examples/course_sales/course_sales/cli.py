"""``marketplace course-sales quote``: price a course sale with the configured rules, offline."""

from __future__ import annotations

import argparse
from typing import Any

from engine.core.contributions import CliCommand
from engine.core.money import Money
from engine.core.plugins import build_plugins
from engine.payments.pricing import price_order

from course_sales.pricing import course_order

__all__ = ["command"]


def command() -> CliCommand:
    """The ``course-sales`` command."""
    return CliCommand(
        name="course-sales",
        help="Quote a course sale: price, commission and revenue share",
        configure=_configure,
        run=_run,
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="course_sales_command", required=True)
    quote = sub.add_parser("quote", help="price a sale with the configured rules")
    quote.add_argument("--price", type=int, required=True, help="list price in minor units")
    quote.add_argument("--currency", required=True, help="ISO 4217 code, e.g. usd")
    quote.add_argument("--instructor", default="acct_instructor", help="instructor account")
    quote.add_argument("--affiliate", help="affiliate account, if the sale was referred")
    quote.add_argument("--coupon", default="", help="coupon code")


def _run(args: argparse.Namespace, settings: Any) -> int:
    order = course_order(
        "cli:quote",
        Money(args.price, args.currency),
        args.instructor,
        affiliate=args.affiliate,
        coupon=args.coupon,
    )
    priced = price_order(build_plugins(settings), order)
    print(f"price       {priced.price}")
    print(f"commission  {priced.commission.amount}  (rule {priced.commission.rule_id})")
    for leg in priced.split.legs:
        print(f"{leg.role:<11} {leg.amount}  {leg.account_id or ''}".rstrip())
    return 0
