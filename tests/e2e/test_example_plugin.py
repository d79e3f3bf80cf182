"""The example third-party plugin (examples/course_sales) end to end: proof that the hooks suffice.

Two ways in:

- in this process, through the whole stack (sandbox, API over HTTP, worker):
  a course sale priced through the hooks (coupon, commission_rules' rule,
  revenue share), charged on the platform, split by transfers to the
  instructor and the affiliate when Stripe's webhook arrives, with the ledger
  matching Stripe and every transaction balanced;
- installed with a real ``pip install -e`` (into an overlay environment, so
  this shared environment never lists it): its own kit-based test suite, the
  ``marketplace conformance`` command and ``marketplace plugins``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engine.core.errors import AccountNotReady
from engine.core.money import Money
from engine.core.orders import LifecycleEvent
from engine.core.plugins import hookimpl
from engine.testing.conformance import (
    COMMISSION,
    CONTRIBUTIONS,
    IDEMPOTENT,
    PRICE,
    SPLIT,
    TABLES,
    WELL_FORMED,
    check_plugin,
)
from engine.testing.environments import OverlayEnvironment
from engine.testing.infra import TEST_DATABASE_URL_VARIABLE, TEST_NATS_URL_VARIABLE
from engine.testing.stack import Stack, running_stack

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "course_sales"

CONFIG = {
    "plugins": {
        "commission_rules": {
            "rules": [
                {"id": "default", "rate_bps": 1000},
                {"id": "courses", "rate_bps": 1500, "scope": {"plugin": "course_sales"}},
            ]
        },
        "course_sales": {"affiliate_share_bps": 2500, "coupons": {"LAUNCH": 2000}},
    }
}


class LifecycleRecorder:
    """A plugin that remembers every lifecycle event broadcast to plugins."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []

    @hookimpl
    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def course_sales() -> Iterator[ModuleType]:
    """The example's hooks module, imported from its source (not installed here)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import course_sales.hooks

        yield course_sales.hooks
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in [name for name in sys.modules if name.split(".")[0] == "course_sales"]:
            del sys.modules[name]


@pytest.fixture
async def stack(
    course_sales: ModuleType,
    recorder: LifecycleRecorder,
    fresh_database_url: str,
    nats_url: str,
    unique_name: str,
) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        config=CONFIG,
        plugins=["commission_rules"],
        extra_plugins={"course_sales": course_sales, "lifecycle_recorder": recorder},
    ) as running:
        yield running


@pytest.fixture
def recorder() -> LifecycleRecorder:
    return LifecycleRecorder()


def _balance_total(balance: Any, currency: str) -> int:
    return sum(
        int(part.amount)
        for part in [*balance.available, *balance.pending]
        if part.currency == currency
    )


async def test_course_sale_priced_by_hooks_split_by_transfers_and_ledger_balanced(
    stack: Stack, recorder: LifecycleRecorder
) -> None:
    instructor = await stack.onboard("Ada Instructor")
    affiliate = await stack.onboard("Bob Affiliate")
    service = stack.client_for(await stack.create_key("service"))

    body = {"title": "Money in Python", "instructor": instructor, "price": 4_999, "currency": "usd"}
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
    priced = enrolled.json()
    # resolve_price (coupon) -> resolve_commission (commission_rules) -> resolve_split.
    assert priced["price"] == 3_999
    assert (priced["commission"], priced["rule_id"]) == (600, "courses")
    shares = {leg["role"]: leg["amount"] for leg in priced["legs"]}
    assert shares == {"platform": 600, "instructor": 2_549, "affiliate": 850}

    await stack.settle()
    enrollment_id = priced["id"]
    enrollment = (await service.get(f"/v1/course_sales/enrollments/{enrollment_id}")).json()
    assert enrollment["status"] == "paid"

    # Stripe (the sandbox): one charge on the platform, one transfer per share from it.
    stripe = stack.stripe()
    payment_intent = await asyncio.to_thread(
        stripe.v1.payment_intents.retrieve, enrollment["payment_intent_id"]
    )
    charge_id = payment_intent.latest_charge
    group = f"course_sales:enrollment:{enrollment_id}"
    transfers = await asyncio.to_thread(stripe.v1.transfers.list, params={"transfer_group": group})
    assert {(t.destination, t.amount, t.source_transaction) for t in transfers.data} == {
        (instructor, 2_549, charge_id),
        (affiliate, 850, charge_id),
    }
    charge = await asyncio.to_thread(
        stripe.v1.charges.retrieve, charge_id, params={"expand": ["balance_transaction"]}
    )
    stripe_fee = int(charge.balance_transaction.fee)
    assert stripe_fee > 0

    # The ledger mirrors Stripe and every transaction balances.
    await stack.assert_balances(
        {
            instructor: Money(2_549, "usd"),
            affiliate: Money(850, "usd"),
            "customers": Money(-3_999, "usd"),
            "platform:stripe_fees": Money(stripe_fee, "usd"),
            "platform": Money(600 - stripe_fee, "usd"),
        }
    )
    await stack.assert_ledger_balanced()
    for account in (instructor, affiliate):
        balance = await asyncio.to_thread(stack.stripe(account).v1.balance.retrieve)
        assert _balance_total(balance, "usd") == (await stack.balance(account, "usd")).amount
    platform_balance = await asyncio.to_thread(stripe.v1.balance.retrieve)
    assert _balance_total(platform_balance, "usd") == 600 - stripe_fee

    # The engine's payment record keeps the rule that priced it.
    async with stack.services.db.pool.acquire() as conn:
        payment = await conn.fetchrow(
            "SELECT status, fee_amount, rule_id, stripe_charge_id FROM marketplace_payments "
            "WHERE reference = $1",
            group,
        )
    assert dict(payment) == {
        "status": "succeeded",
        "fee_amount": 600,
        "rule_id": "courses",
        "stripe_charge_id": charge_id,
    }
    paid = [event for event in recorder.events if event.name == "course_sales.enrollment.paid"]
    assert len(paid) == 1
    assert paid[0].account_id == instructor

    # Stripe repeats itself: the same payment reported again moves no money.
    await stack.send_event("payment_intent.succeeded", payment_intent.to_dict())
    again = await asyncio.to_thread(stripe.v1.transfers.list, params={"transfer_group": group})
    assert len(again.data) == 2
    await stack.assert_balances({instructor: Money(2_549, "usd"), affiliate: Money(850, "usd")})
    assert len([e for e in recorder.events if e.name == "course_sales.enrollment.paid"]) == 1
    assert not await stack.dead_events()


async def test_course_sales_routes_are_guarded_and_validated(stack: Stack) -> None:
    instructor = await stack.onboard("Ada Instructor")
    own_key = stack.client_for(await stack.create_key("account", instructor))
    body = {"title": "Mine", "instructor": instructor, "price": 1_000, "currency": "usd"}
    refused = await own_key.post("/v1/course_sales/courses", json=body)
    assert refused.status_code == 403
    unknown = await stack.http.post(
        "/v1/course_sales/courses", json={**body, "instructor": "acct_nobody"}
    )
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "not_found"
    course = await stack.http.post("/v1/course_sales/courses", json=body)
    bad_coupon = await stack.http.post(
        "/v1/course_sales/enrollments",
        json={
            "course_id": course.json()["id"],
            "student_email": "s@example.com",
            "payment_method": "pm_card_visa",
            "coupon": "NOPE",
        },
    )
    assert bad_coupon.status_code == 400
    assert bad_coupon.json()["field"] == "coupon"


async def test_example_conforms(course_sales: ModuleType, database_url: str) -> None:
    report = await check_plugin("course_sales", course_sales, database_url=database_url)
    report.raise_for_failures()
    assert {result.name: result.status for result in report.results} == {
        WELL_FORMED: "passed",
        CONTRIBUTIONS: "passed",
        PRICE: "passed",
        COMMISSION: "not applicable",  # commission_rules prices the example's commission
        SPLIT: "passed",
        TABLES: "passed",
        IDEMPOTENT: "passed",
    }


def _copy_example(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(
        "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"
    )
    return Path(shutil.copytree(EXAMPLE, destination, ignore=ignore))


def test_installed_example_passes_its_own_tests_and_the_conformance_command(
    tmp_path: Path, database_url: str, nats_url: str
) -> None:
    project = _copy_example(tmp_path / "course_sales")
    environment = OverlayEnvironment(tmp_path / "venv").create()
    environment.install_editable(project)
    servers = {TEST_DATABASE_URL_VARIABLE: database_url, TEST_NATS_URL_VARIABLE: nats_url}
    run: Callable[..., Any] = environment.run

    listed = run(["python", "-m", "engine.cli", "plugins"])
    assert listed.returncode == 0, listed.stderr
    assert "course_sales.hooks" in listed.stdout

    tests = run(
        ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, env=servers
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "5 passed" in tests.stdout

    checked = run(["python", "-m", "engine.cli", "conformance", "course_sales"], env=servers)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAILED" not in checked.stdout
    for name in ("splits sum to the price", "tables migrate up", "webhook handlers are idempotent"):
        assert re.search(rf"^ +PASSED +{name}$", checked.stdout, re.MULTILINE), checked.stdout
    assert "0 failed, 1 not applicable, 0 not checked" in checked.stdout


async def test_no_enrollment_for_an_instructor_who_cannot_be_paid(stack: Stack) -> None:
    """The example gets the engine's payability rule: 409 naming the party, nothing charged."""
    instructor = await stack.onboard("Ada Instructor")
    body = {"title": "Money in Python", "instructor": instructor, "price": 4_999, "currency": "usd"}
    course = await stack.http.post("/v1/course_sales/courses", json=body)
    assert course.status_code == 201, course.text
    suspended = await stack.http.post(f"/v1/accounts/{instructor}/suspend")
    assert suspended.status_code == 200, suspended.text
    refused = await stack.http.post(
        "/v1/course_sales/enrollments",
        json={
            "course_id": course.json()["id"],
            "student_email": "student@example.com",
            "payment_method": "pm_card_visa",
        },
    )
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert (problem["code"], problem["party"], problem["account_id"], problem["reason"]) == (
        "account_restricted",
        "instructor",
        instructor,
        "suspended",
    )
    intents = await asyncio.to_thread(stack.stripe().v1.payment_intents.list)
    assert list(intents.data) == []


async def test_gateway_refuses_a_destination_charge_for_an_unpayable_account(
    stack: Stack,
) -> None:
    """A plugin that checks nothing itself: the gateway refuses before Stripe sees the charge."""
    created = await stack.http.post(
        "/v1/accounts",
        json={"role": "creator", "display_name": "Not Yet", "email": "n@example.com"},
    )
    assert created.status_code == 201, created.text
    onboarding = str(created.json()["account"]["id"])
    params = {
        "amount": 1_000,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "transfer_data": {"destination": onboarding},
    }
    with pytest.raises(AccountNotReady) as refused:
        await stack.services.gateway.call(
            "payment_intents", "create", params=params, idempotency_key="test:unpayable"
        )
    assert refused.value.extra == {
        "reason": "onboarding",
        "party": "destination",
        "account_id": onboarding,
    }
    with pytest.raises(AccountNotReady):
        await stack.services.gateway.call(
            "payment_intents", "create", params=params, account=onboarding, idempotency_key="t:2"
        )
    intents = await asyncio.to_thread(stack.stripe().v1.payment_intents.list)
    assert list(intents.data) == []
    # Once onboarded, the same charge goes through.
    stack.sandbox.control("POST", f"/_sandbox/accounts/{onboarding}/complete_onboarding")
    await stack.settle()
    await stack.http.post(f"/v1/accounts/{onboarding}/refresh")
    intent = await stack.services.gateway.call(
        "payment_intents", "create", params=params, idempotency_key="test:payable"
    )
    assert intent["status"] == "succeeded"
