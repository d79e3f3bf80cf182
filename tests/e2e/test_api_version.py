"""One Stripe API version: events of another are parked, endpoints of another are warned about.

An event rendered in another API version is stored, dead-lettered at once with a reason
naming both versions and the command that fixes the endpoints, never handled (a replay
checks it again), and its account's other events keep flowing. The engine creates its
endpoints in its own version and warns at start-up about any endpoint of another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.stack import Stack, running_stack

from engine.stripe_version import STRIPE_API_VERSION
from engine.webhooks.setup import warn_about_endpoint_versions

OLD = "2025-01-27.acacia"


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


def payout(payout_id: str) -> dict[str, Any]:
    return {
        "id": payout_id,
        "object": "payout",
        "amount": 1_000,
        "currency": "usd",
        "status": "paid",
        "arrival_date": 1_800_000_000,
        "created": 1_799_900_000,
        "failure_code": None,
        "failure_message": None,
    }


async def payout_rows(stack: Stack) -> list[str]:
    async with stack.services.db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT stripe_payout_id FROM marketplace_payouts ORDER BY 1")
    return [row["stripe_payout_id"] for row in rows]


async def test_an_event_of_another_version_is_parked_never_handled(stack: Stack) -> None:
    created = await stack.http.post(
        "/v1/accounts",
        json={"role": "creator", "display_name": "Versioned", "email": "v@example.com"},
    )
    assert created.status_code == 201, created.text
    account = str(created.json()["account"]["id"])
    answer = await stack.send_event(
        "payout.paid",
        payout("po_old"),
        account=account,
        event_id="evt_old",
        api_version=OLD,
        allow_dead_letters=True,  # parked at intake: the point of this test
    )
    assert (answer["received"], answer["duplicate"]) == (True, False)
    dead = await stack.dead_events()
    assert [(d["event_id"], d["account"]) for d in dead] == [("evt_old", account)]
    reason = dead[0]["last_error"]
    assert OLD in reason
    assert STRIPE_API_VERSION in reason
    assert "marketplace stripe-setup-webhooks" in reason
    assert await payout_rows(stack) == []

    # The account is not parked: its events in the engine's version are handled.
    await stack.send_event(
        "payout.paid", payout("po_new"), account=account, allow_dead_letters=True
    )
    assert await payout_rows(stack) == ["po_new"]
    letters = (await stack.http.get("/v1/admin/webhooks/dead-letters")).json()["data"]
    assert [letter["event_id"] for letter in letters] == ["evt_old"]
    # Stripe delivering it again changes nothing.
    again = await stack.send_event(
        "payout.paid",
        payout("po_old"),
        account=account,
        event_id="evt_old",
        api_version=OLD,
        allow_dead_letters=True,
    )
    assert again["duplicate"] is True

    # Replayable: the worker checks the version again, so it goes back to the dead letter
    # (once the engine speaks that version, the same replay handles it).
    replayed = await stack.http.post("/v1/admin/webhooks/dead-letters/evt_old/replay")
    assert replayed.status_code == 202, replayed.text
    await stack.settle(allow_dead_letters=True)
    dead = await stack.dead_events()
    assert [d["event_id"] for d in dead] == ["evt_old"]
    assert OLD in dead[0]["last_error"]
    assert await payout_rows(stack) == ["po_new"]
    mailboxes = (await stack.http.get("/v1/admin/webhooks/accounts")).json()
    assert [m["parked"] for m in mailboxes if m["account"] == account] == [False]


async def test_endpoints_are_pinned_and_others_warned_about(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    client = stack.stripe()
    endpoints = await asyncio.to_thread(client.v1.webhook_endpoints.list)
    assert endpoints.data
    assert {e.api_version for e in endpoints.data} == {STRIPE_API_VERSION}
    assert await warn_about_endpoint_versions(stack.services.gateway) == []

    # One made elsewhere without a version renders the account's default: warned about.
    other = await asyncio.to_thread(
        client.v1.webhook_endpoints.create,
        params={"url": "https://elsewhere.example/hook", "enabled_events": ["*"]},
    )
    with caplog.at_level(logging.WARNING, logger="engine.webhooks.setup"):
        foreign = await warn_about_endpoint_versions(stack.services.gateway)
    assert [e["id"] for e in foreign] == [other.id]
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert other.id in warning
    assert STRIPE_API_VERSION in warning
    assert "marketplace stripe-setup-webhooks" in warning
    # An endpoint of another version cannot even be made in the sandbox (it speaks one).
    with pytest.raises(Exception, match=STRIPE_API_VERSION):
        await asyncio.to_thread(
            client.v1.webhook_endpoints.create,
            params={"url": "https://old.example/hook", "enabled_events": ["*"], "api_version": OLD},
        )
