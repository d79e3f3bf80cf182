"""three_sided_bookings: a refund made directly in Stripe shows on the booking.

Found by the spa-month reconciliation test: after part of a settled booking's
charge is refunded in Stripe's dashboard, the engine posts the refund and its
payment record says ``partially_refunded`` with the amount, but the booking's
own ``refunded`` (and its ``stripe.refunds``) stayed as they were: the plugin
handled no refund it did not make. Its ``refund.*`` handler now takes them in
(``payments.refund_made_in_stripe``), once, whichever of its API path and the
event records a refund first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

B = "/v1/three_sided_bookings"


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    config = {
        "plugins": {"three_sided_bookings": {"default_currency": "usd", "currencies": ["usd"]}}
    }
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        config=config,
        plugins=("commission_rules", "three_sided_bookings"),
    ) as running:
        yield running


async def connected(stack: Stack, role: str, name: str) -> str:
    body = {"role": role, "display_name": name}
    account_id = str(ok(await stack.http.post("/v1/accounts", json=body), 201)["account"]["id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    return account_id


async def settled_booking(stack: Stack, payment_method: str) -> dict[str, Any]:
    """A full-prepayment booking, confirmed and completed: settled (shares transferred)."""
    http = stack.http
    provider = await connected(stack, "provider", "Ana Therapist")
    venue = await connected(stack, "venue", "Seaside Spa")
    await stack.settle()
    service = ok(
        await http.post(
            f"{B}/services",
            json={
                "name": "Massage",
                "service_type": "massage",
                "duration_minutes": 60,
                "price": 10_000,
                "currency": "usd",
            },
        ),
        201,
    )
    provider_id = ok(
        await http.post(f"{B}/providers", json={"account_id": provider, "display_name": "Ana"}),
        201,
    )["id"]
    venue_id = ok(
        await http.post(f"{B}/venues", json={"account_id": venue, "display_name": "Spa"}), 201
    )["id"]
    booking: dict[str, Any] = ok(
        await http.post(
            f"{B}/bookings",
            json={
                "service_id": service["id"],
                "provider_id": provider_id,
                "venue_id": venue_id,
                "starts_at": (datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
                "payment_model": "full",
                "customer": {"name": "Cara", "email": "cara@example.com"},
                "payment_method": payment_method,
            },
        ),
        201,
    )
    for action in ("confirm", "complete"):
        url = f"{B}/bookings/{booking['id']}/actions/{action}"
        booking = ok(await http.post(url, json=None))
    assert booking["state"] == "settled"
    return booking


async def test_a_refund_made_in_stripe_shows_on_the_booking(stack: Stack) -> None:
    http = stack.http
    booking = await settled_booking(stack, "pm_card_visa")
    [charge] = booking["stripe"]["charges"]
    await asyncio.to_thread(
        stack.stripe().v1.refunds.create, params={"charge": charge["charge"], "amount": 2_500}
    )
    await stack.settle()

    payment = await stack.services.db.pool.fetchrow(
        "SELECT status, amount_refunded FROM marketplace_payments WHERE stripe_charge_id = $1",
        charge["charge"],
    )
    assert (payment["status"], payment["amount_refunded"]) == ("partially_refunded", 2_500)
    view = ok(await http.get(f"{B}/bookings/{booking['id']}"))
    assert view["refunded"] == 2_500
    assert [refund["amount"] for refund in view["stripe"]["refunds"]] == [2_500]

    # A refund through the plugin afterwards counts once (its own event finds it
    # recorded) and refunds only what is left.
    url = f"{B}/bookings/{booking['id']}/actions/refund"
    refunded = ok(await http.post(url, json={"amount": 1_000}))
    assert refunded["state"] == "partially_refunded"
    await stack.settle()
    view = ok(await http.get(f"{B}/bookings/{booking['id']}"))
    assert view["refunded"] == 3_500
    assert sorted(refund["amount"] for refund in view["stripe"]["refunds"]) == [1_000, 2_500]
    payment = await stack.services.db.pool.fetchrow(
        "SELECT status, amount_refunded FROM marketplace_payments WHERE stripe_charge_id = $1",
        charge["charge"],
    )
    assert (payment["status"], payment["amount_refunded"]) == ("partially_refunded", 3_500)


async def test_refunds_that_fail_later_are_taken_off_the_booking(stack: Stack) -> None:
    """``pm_card_refundFail``: refunds succeed, then fail (Stripe's ``refund.failed``);
    the money is back with the platform, so neither the booking nor the engine's
    payment counts them as refunded any more (one the plugin made, one made in Stripe)."""
    http = stack.http
    booking = await settled_booking(stack, "pm_card_refundFail")
    [charge] = booking["stripe"]["charges"]
    url = f"{B}/bookings/{booking['id']}/actions/refund"
    assert ok(await http.post(url, json={"amount": 2_000}))["state"] == "partially_refunded"
    await asyncio.to_thread(
        stack.stripe().v1.refunds.create, params={"charge": charge["charge"], "amount": 1_000}
    )
    await stack.settle()
    view = ok(await http.get(f"{B}/bookings/{booking['id']}"))
    assert view["refunded"] == 3_000
    assert sorted(refund["status"] for refund in view["stripe"]["refunds"]) == ["succeeded"] * 2

    stack.sandbox.advance(86_400)  # the card's refunds fail
    await stack.settle()
    view = ok(await http.get(f"{B}/bookings/{booking['id']}"))
    assert view["refunded"] == 0
    assert view["collected"] == 10_000
    assert sorted(refund["status"] for refund in view["stripe"]["refunds"]) == ["failed"] * 2
    payment = await stack.services.db.pool.fetchrow(
        "SELECT status, amount_refunded FROM marketplace_payments WHERE stripe_charge_id = $1",
        charge["charge"],
    )
    assert (payment["status"], payment["amount_refunded"]) == ("succeeded", 0)
