"""End to end: onboarding a connected account through the API, Stripe's webhooks and the worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.core.contributions import StripeEvent, WebhookRegistration
from engine.core.plugins import hookimpl


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


async def test_health_and_ready_over_http(stack: Stack) -> None:
    assert (await stack.http.get("/health")).status_code == 200
    ready = await stack.http.get("/ready")
    assert ready.status_code == 200, ready.text


async def test_onboarding_completes_through_account_updated_webhook(stack: Stack) -> None:
    created = await stack.http.post(
        "/v1/accounts",
        json={"role": "creator", "display_name": "Ada Lovelace", "email": "ada@example.com"},
    )
    assert created.status_code == 201, created.text
    account_id = created.json()["account"]["id"]
    assert created.json()["account"]["charges_enabled"] is False
    assert created.json()["onboarding_link"]["url"]

    # The creator finishes Stripe's hosted onboarding (the sandbox's stand-in page).
    completed = stack.sandbox.control(
        "POST", f"/_sandbox/accounts/{account_id}/complete_onboarding"
    )
    assert completed["charges_enabled"] is True
    await stack.settle()

    account = (await stack.http.get(f"/v1/accounts/{account_id}")).json()
    assert account["charges_enabled"] is True
    assert account["payouts_enabled"] is True
    assert account["status"] == "active"

    # A creator-scoped key sees its own account and nothing else.
    key = await stack.create_key("account", account_id)
    creator = stack.client_for(key)
    assert (await creator.get(f"/v1/accounts/{account_id}")).status_code == 200
    other = await stack.http.post(
        "/v1/accounts", json={"role": "creator", "display_name": "Grace Hopper"}
    )
    other_id = other.json()["account"]["id"]
    assert (await creator.get(f"/v1/accounts/{other_id}")).status_code == 404
    listing = (await creator.get("/v1/accounts")).json()
    assert [item["id"] for item in listing["data"]] == [account_id]


class _AlwaysFails:
    """A plugin whose ``test.broken`` handler always raises, keyed by its own mailbox key."""

    @staticmethod
    async def handle(event: StripeEvent, ctx: Any) -> None:
        raise RuntimeError("this handler always fails")

    @hookimpl
    def resolve_mailbox_key(self, event: StripeEvent) -> str | None:
        return "always_fails:thing:1" if event.get("type") == "test.broken" else None

    @hookimpl
    def register_webhook_handlers(self, register: Callable[[WebhookRegistration], None]) -> None:
        register(WebhookRegistration("test.broken", self.handle, "always_fails.handle"))


async def test_settle_fails_loudly_on_a_dead_letter_unless_the_test_expects_one(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> None:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=[],
        extra_plugins={"always_fails": _AlwaysFails()},
        config={"webhooks": {"max_attempts": 2}},
    ) as stack:
        with pytest.raises(AssertionError, match=r"(?s)dead-lettered.*test\.broken.*always fails"):
            await stack.send_event(
                "test.broken", {"id": "obj_1", "object": "thing"}, account="acct_x"
            )
        await stack.settle(allow_dead_letters=True)  # asked for: no complaint
        assert [row["type"] for row in await stack.dead_events()] == ["test.broken"]

        # The plugin's key is a mailbox like an account's: listed, parked, replayable by key.
        key = "always_fails:thing:1"
        mailboxes = {
            m["account"]: m for m in ok(await stack.http.get("/v1/admin/webhooks/accounts"))
        }
        assert (mailboxes[key]["parked"], mailboxes[key]["dead"]) == (True, 1)
        replayed = ok(await stack.http.post(f"/v1/admin/webhooks/accounts/{key}/replay"), 202)
        assert replayed == {"accounts": [key]}
