"""creator_subscriptions with cards that ask for authentication, end to end through the API.

For each authentication card of TEST-VALUES.md: the fan saves it (a SetupIntent,
authenticated when the card asks), subscribes (active at once, ``requires_action``
until the fan authenticates, or declined), tips (every on-session payment asks), and
a renewal that needs the fan again marks the subscription "action required" with the
hosted invoice page until the fan pays there. Everything after the first answer is
driven by Stripe's webhooks through the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from support.stack import Stack, running_stack

from engine.core.orders import LifecycleEvent
from engine.core.plugins import hookimpl

P = "/v1/creator_subscriptions"
ENABLED = ("commission_rules", "creator_subscriptions")
HOUR = 3_600


@dataclass(frozen=True)
class Expect:
    """What a card does in each step."""

    setup_asks: bool
    subscribe: str  # "active", "requires_action" or a decline code
    tip: str  # after authenticating: "succeeded" or the decline code
    renewal_asks: bool


CARDS = {
    "pm_card_authenticationRequiredOnSetup": Expect(True, "active", "succeeded", False),
    "pm_card_authenticationRequired": Expect(True, "requires_action", "succeeded", True),
    "pm_card_authenticationRequiredSetupForOffSession": Expect(False, "active", "succeeded", False),
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": Expect(
        True, "insufficient_funds", "insufficient_funds", False
    ),
    "pm_card_threeDSecure2Required": Expect(True, "requires_action", "succeeded", True),
}


class Notices:
    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []

    @hookimpl
    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        self.events.append(event)

    def names(self) -> list[str]:
        return [e.name for e in self.events]


@pytest.fixture
def notices() -> Notices:
    return Notices()


@pytest.fixture
async def stack(
    fresh_database_url: str, nats_url: str, unique_name: str, notices: Notices
) -> AsyncIterator[Stack]:
    config = {"plugins": {"commission_rules": {"rules": [{"id": "default", "rate_bps": 1000}]}}}
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        config=config,
        plugins=ENABLED,
        extra_plugins={"test_notices": notices},
    ) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def creator_with_tier(stack: Stack) -> tuple[str, int, str]:
    """An onboarded creator, a monthly tier, and a test clock for the fan."""
    created = ok(
        await stack.http.post(f"{P}/creators", json={"handle": "ana", "display_name": "Ana"}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await stack.settle()
    tier = ok(
        await stack.http.post(
            f"{P}/creators/{account_id}/tiers", json={"name": "Gold", "amount": 1_000}
        ),
        201,
    )
    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = await asyncio.to_thread(
        stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now}
    )
    return account_id, int(tier["id"]), str(clock["id"])


@pytest.mark.parametrize("card", sorted(CARDS))
async def test_fan_with_an_authentication_card(stack: Stack, notices: Notices, card: str) -> None:
    expect = CARDS[card]
    http = stack.http
    account_id, tier_id, clock = await creator_with_tier(stack)

    # Saving the card: a SetupIntent, which the fan authenticates when the card asks.
    fan = ok(
        await http.post(
            f"{P}/fans",
            json={
                "external_ref": "fay",
                "name": "Fay",
                "payment_method": card,
                "test_clock": clock,
            },
        ),
        201,
    )
    action = fan["customer_action"]
    assert (action is not None) == expect.setup_asks
    if action is not None:
        assert (action["status"], fan["has_payment_method"]) == ("requires_action", False)
        assert action["intent_id"].startswith("seti_")
        assert action["next_action"]["type"] == "use_stripe_sdk"
        await stack.authenticate(action)
        fan = ok(await http.get(f"{P}/fans/{fan['id']}"))
    assert (fan["has_payment_method"], fan["customer_action"]) == (True, None)

    # Subscribing: the first invoice is charged off-session on the saved card.
    answer = await http.post(f"{P}/subscriptions", json={"fan_id": fan["id"], "tier_id": tier_id})
    if expect.subscribe == "insufficient_funds":
        problem = ok(answer, 402)
        assert problem["code"] == "card_declined"
        assert problem["decline_code"] == "insufficient_funds"
    else:
        sub = ok(answer, 201)
        if expect.subscribe == "requires_action":
            assert (sub["status"], sub["action_required"]) == ("incomplete", True)
            action = sub["customer_action"]
            assert action["status"] == "requires_action"
            assert action["client_secret"].startswith(action["intent_id"] + "_secret_")
            assert action["next_action"]["type"] == "use_stripe_sdk"
            assert action["hosted_invoice_url"]
            await stack.authenticate(action)
            sub = ok(await http.get(f"{P}/subscriptions/{sub['id']}"))
        assert (sub["status"], sub["action_required"], sub["customer_action"]) == (
            "active",
            False,
            None,
        )
        await stack.settle()
        invoices = ok(await http.get(f"{P}/creators/{account_id}/invoices"))
        first = invoices["data"][0]
        assert first["status"] == "paid"
        assert first["creator_earnings"] + first["application_fee"] == 1_000

    # A tip: on-session, so every one of these cards asks.
    tip = ok(
        await http.post(
            f"{P}/payments/tips",
            json={"fan_id": fan["id"], "creator_account_id": account_id, "amount": 700},
        ),
        201,
    )
    assert tip["status"] == "requires_action"
    assert tip["customer_action"]["intent_id"] == tip["payment_intent_id"]
    await stack.authenticate(tip["customer_action"])
    tip = ok(await http.get(f"{P}/payments/{tip['id']}"))
    if expect.tip == "succeeded":
        assert (tip["status"], tip["customer_action"]) == ("succeeded", None)
        assert tip["creator_earnings"] == 700 - 70
    else:
        assert tip["status"] == "failed"

    if expect.subscribe == "insufficient_funds":
        return
    # The renewal, off-session: it asks the fan again only for cards that always ask.
    end = int(sub["current_period_end"])
    await advance_clock(stack, clock, end + 2 * HOUR)
    renewed = ok(await http.get(f"{P}/subscriptions/{sub['id']}"))
    if not expect.renewal_asks:
        assert (renewed["status"], renewed["action_required"]) == ("active", False)
        return
    assert (renewed["status"], renewed["action_required"]) == ("past_due", True)
    action = renewed["customer_action"]
    assert action["status"] == "requires_action"
    assert "creator_subscriptions.subscription.action_required" in notices.names()
    # The fan pays on the hosted invoice page, which leads to the authentication.
    page = httpx.get(action["hosted_invoice_url"])
    assert "Authenticate the payment" in page.text
    await stack.authenticate(action)
    recovered = ok(await http.get(f"{P}/subscriptions/{sub['id']}"))
    assert (recovered["status"], recovered["action_required"]) == ("active", False)
    assert "creator_subscriptions.subscription.action_completed" in notices.names()
    invoices = ok(await http.get(f"{P}/creators/{account_id}/invoices"))
    assert [i["status"] for i in invoices["data"]] == ["paid", "paid"]


async def advance_clock(stack: Stack, clock: str, to: int) -> None:
    await asyncio.to_thread(
        stack.stripe().v1.test_helpers.test_clocks.advance, clock, params={"frozen_time": to}
    )
    await stack.settle(60)


async def test_a_failed_authentication_fails_the_tip(stack: Stack) -> None:
    account_id, _, clock = await creator_with_tier(stack)
    fan = ok(
        await stack.http.post(
            f"{P}/fans",
            json={
                "external_ref": "gus",
                "payment_method": "pm_card_authenticationRequiredSetupForOffSession",
                "test_clock": clock,
            },
        ),
        201,
    )
    tip = ok(
        await stack.http.post(
            f"{P}/payments/tips",
            json={"fan_id": fan["id"], "creator_account_id": account_id, "amount": 500},
        ),
        201,
    )
    await stack.authenticate(tip["customer_action"], "fail")
    failed = ok(await stack.http.get(f"{P}/payments/{tip['id']}"))
    assert (failed["status"], failed["customer_action"]) == ("failed", None)
