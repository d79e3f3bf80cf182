"""End to end: onboarding a connected account through the API, Stripe's webhooks and the worker."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
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


async def _hosted_onboarding(stack: Stack, link_url: str, *, complete: bool) -> httpx.Response:
    """What the account holder's browser does on Stripe's (the sandbox's) onboarding page.

    Completing it submits the page's form; Stripe then redirects to the link's
    return_url. Leaving it follows the return_url without submitting.
    """
    async with httpx.AsyncClient(timeout=30, follow_redirects=True) as browser:
        page = await browser.get(link_url)
        assert page.status_code == 200
        link = stack.sandbox.state.private(urlsplit(link_url).path.rsplit("/", 1)[1])["links"]
        return_url = link[parse_qs(urlsplit(link_url).query)["link"][0]]["return_url"]
        if not complete:
            return await browser.get(return_url)
        account_id = urlsplit(link_url).path.rsplit("/", 1)[1]
        return await browser.post(
            f"{stack.sandbox.url}/_sandbox/accounts/{account_id}/complete_onboarding",
            data={"return_url": return_url},
        )


async def test_the_end_of_onboarding_lands_on_a_page_saying_what_happened(stack: Stack) -> None:
    created = await stack.http.post("/v1/accounts", json={"role": "creator", "display_name": "Ada"})
    account_id = created.json()["account"]["id"]
    link = created.json()["onboarding_link"]["url"]

    # Left half-way: the page says so and offers to continue.
    left = await _hosted_onboarding(stack, link, complete=False)
    assert left.status_code == 200, left.text
    assert str(left.url).startswith(f"{stack.url}/dashboard/onboarding/{account_id}/return?token=")
    assert 'data-testid="onboarding-incomplete"' in left.text
    assert "Continue onboarding" in left.text

    # "Continue onboarding" goes through the refresh page to a new Stripe onboarding link.
    found = re.search(r'href="([^"]+)" data-testid="continue-onboarding"', left.text)
    assert found is not None
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as browser:
        again = await browser.get(html.unescape(found.group(1)))
    assert again.status_code in {302, 303}, again.text
    assert again.headers["location"].startswith(f"{stack.sandbox.url}/_sandbox/onboarding/")

    # Completed: Stripe sends the holder back; the page re-reads the account from Stripe.
    done = await _hosted_onboarding(stack, again.headers["location"], complete=True)
    assert done.status_code == 200, done.text
    assert 'data-testid="onboarding-ready"' in done.text
    assert "You&#39;re all set" in done.text or "You're all set" in done.text
    account = (await stack.http.get(f"/v1/accounts/{account_id}")).json()
    assert account["status"] == "active"


async def test_onboarding_pages_refuse_a_missing_or_forged_token(stack: Stack) -> None:
    created = await stack.http.post("/v1/accounts", json={"role": "creator", "display_name": "Ada"})
    account_id = created.json()["account"]["id"]
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as browser:
        for path in ("return", "refresh", "refresh?token=99999999999.forged"):
            page = await browser.get(f"/dashboard/onboarding/{account_id}/{path}")
            assert page.status_code == 404, (path, page.text)
            assert "This onboarding link is not valid" in page.text


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
            await stack.send_event("test.broken", {"id": "obj_1", "object": "thing"})
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
