"""The dashboards over plain HTTP: sign-in, session cookie, CSRF, isolation, escaping, actions.

What a browser test cannot see easily: the cookie's attributes, that a form
without its CSRF token (or posted from another origin) is refused, that a
revoked key or a signed-out session no longer opens pages, that a login link
works once, that a display name full of HTML is shown as text, and that the
admin's suspend and resume go through the accounts service; and a creator's
failed payout with its reason, plugin panels (a broken one contained), and the
admin's money per period.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient
from support.stack import Stack, running_stack

from engine.api.app import create_app_from_settings
from engine.core.contributions import DashboardPanel
from engine.core.plugins import hookimpl

ENABLED = ("commission_rules", "creator_subscriptions")
C = "/v1/creator_subscriptions"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url, nats_url, unique_name.upper(), plugins=ENABLED
    ) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def browser(stack: Stack) -> httpx.AsyncClient:
    """A cookie-keeping client without the API key (what a browser is)."""
    client = httpx.AsyncClient(base_url=stack.url, timeout=30, follow_redirects=False)
    stack._clients.append(client)
    return client


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/dashboard/sign-in")
    assert form.status_code == 200, form.text
    return await client.post(
        "/dashboard/sign-in", data={"api_key": key, "csrf_token": csrf_of(form.text)}
    )


async def creator(stack: Stack, handle: str, display_name: str) -> str:
    body = {"handle": handle, "display_name": display_name}
    created = ok(await stack.http.post(f"{C}/creators", json=body), 201)
    account_id = str(created["creator"]["account_id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await stack.settle()
    return account_id


async def test_sign_in_sessions_csrf_and_isolation(stack: Stack) -> None:
    ada = await creator(stack, "ada", "<script>alert('ada')</script> & Co")
    bob = await creator(stack, "bob", "Bob")
    ada_key = await stack.create_key("account", ada)
    client = browser(stack)

    # Signed out, every page sends the browser to sign in.
    assert (
        (await client.get(f"/dashboard/accounts/{ada}"))
        .headers["location"]
        .endswith("/dashboard/sign-in")
    )
    assert (await client.get("/dashboard/admin")).status_code == 303

    # A form without the token, or with another session's, is refused.
    refused = await client.post("/dashboard/sign-in", data={"api_key": ada_key})
    assert refused.status_code == 403
    assert "expired" in refused.text
    form = await client.get("/dashboard/sign-in")
    cross_site = await client.post(
        "/dashboard/sign-in",
        data={"api_key": ada_key, "csrf_token": csrf_of(form.text)},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403

    # A wrong key, and a service key, do not sign in.
    wrong = await sign_in(client, "mk_abc_nope")
    assert wrong.status_code == 401
    assert "unknown or revoked" in wrong.text
    service = await sign_in(client, await stack.create_key("service"))
    assert service.status_code == 403

    # The account key: a session cookie (HttpOnly, SameSite=Lax, path /dashboard).
    signed = await sign_in(client, ada_key)
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == f"/dashboard/accounts/{ada}"
    cookie = next(
        value
        for name, value in signed.headers.multi_items()
        if name == "set-cookie" and value.startswith("mp_dashboard=")
    )
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Path=/dashboard" in cookie
    assert ada_key not in cookie
    page = await client.get(f"/dashboard/accounts/{ada}")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#39;ada&#39;)&lt;/script&gt; &amp; Co" in page.text

    # Another account's pages are not there for Ada; nor is the admin panel.
    assert (await client.get(f"/dashboard/accounts/{bob}")).status_code == 404
    assert (await client.get(f"/dashboard/accounts/{bob}/transactions")).status_code == 404
    assert (await client.get("/dashboard/admin")).status_code == 403
    # The API key still works for the API; the cookie does not.
    assert (await client.get(f"/v1/accounts/{ada}")).status_code == 401

    # Revoking the key ends the session.
    key_id = ada_key.split("_")[1]
    revoked = await stack.http.delete(f"/v1/api-keys/{key_id}")
    assert revoked.status_code in {200, 204}, revoked.text
    assert (await client.get(f"/dashboard/accounts/{ada}")).status_code == 303


async def test_admin_actions_login_link_and_sign_out(stack: Stack) -> None:
    ada = await creator(stack, "ada", "Ada")
    admin = browser(stack)
    signed = await sign_in(admin, stack.admin_key)
    assert signed.headers["location"] == "/dashboard/admin"
    panel = await admin.get("/dashboard/admin")
    assert panel.status_code == 200, panel.text
    assert f'data-account="{ada}"' in panel.text
    token = csrf_of(panel.text)

    # Suspend through the accounts service: no new payments, history intact.
    suspended = await admin.post(
        f"/dashboard/admin/accounts/{ada}/suspend", data={"csrf_token": token, "reason": "review"}
    )
    assert suspended.status_code == 303
    assert ok(await stack.http.get(f"/v1/accounts/{ada}"))["status"] == "suspended"
    async with stack.services.db.pool.acquire() as conn:
        audit = await conn.fetchval(
            "SELECT data->>'reason' FROM marketplace_audit_log "
            "WHERE action = 'account.suspend' AND subject = $1",
            ada,
        )
    assert audit == "review"
    without_token = await admin.post(f"/dashboard/admin/accounts/{ada}/resume", data={})
    assert without_token.status_code == 403
    assert ok(await stack.http.get(f"/v1/accounts/{ada}"))["status"] == "suspended"
    resumed = await admin.post(
        f"/dashboard/admin/accounts/{ada}/resume", data={"csrf_token": token}
    )
    assert resumed.status_code == 303
    assert ok(await stack.http.get(f"/v1/accounts/{ada}"))["suspended"] is False

    # A one-time login link for Ada: shown once, works once.
    made = await admin.post(
        f"/dashboard/admin/accounts/{ada}/login-link", data={"csrf_token": token}
    )
    assert made.status_code == 200, made.text
    link = re.search(r'data-testid="login-link">([^<]+)<', made.text)
    assert link
    path = httpx.URL(link.group(1)).path
    holder = browser(stack)
    confirm = await holder.get(path)
    assert confirm.status_code == 200
    used = await holder.post(path, data={"csrf_token": csrf_of(confirm.text)})
    assert used.status_code == 303
    assert used.headers["location"] == f"/dashboard/accounts/{ada}"
    assert (await holder.get(f"/dashboard/accounts/{ada}")).status_code == 200
    again = browser(stack)
    assert (await again.get(path)).status_code == 404

    # Signing out ends the session server-side (the old cookie no longer works).
    old_cookie = admin.cookies.get("mp_dashboard", path="/dashboard")
    out = await admin.post("/dashboard/sign-out", data={"csrf_token": token})
    assert out.status_code == 303
    replayed = browser(stack)
    replayed.cookies.set("mp_dashboard", old_cookie or "", path="/dashboard")
    assert (await replayed.get("/dashboard/admin")).status_code == 303


class Panels:
    """A test plugin contributing dashboard panels: one that works, one that fails."""

    @hookimpl
    def register_dashboard_panels(self, register: Callable[[DashboardPanel], None]) -> None:
        async def subscribers(services: Any, account_id: str | None) -> str:
            count = await services.db.pool.fetchval(
                "SELECT count(*) FROM marketplace_payments WHERE account_id = $1", account_id
            )
            return f"<p data-testid='panel-subscribers'>{int(count)} paying fans</p>"

        async def broken(services: Any, account_id: str | None) -> str:
            raise RuntimeError("this panel is broken")

        async def not_for_this_account(services: Any, account_id: str | None) -> str:
            return ""

        register(DashboardPanel("fans", "Fans", "account", subscribers))
        register(DashboardPanel("broken", "Broken panel", "account", broken))
        register(DashboardPanel("venues", "Venue bookings", "account", not_for_this_account))
        register(DashboardPanel("ops", "Operations <b>note</b>", "admin", broken))


@pytest.fixture
async def stack_with_panels(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=ENABLED,
        extra_plugins={"test_panels": Panels()},
    ) as running:
        yield running


async def test_failed_payouts_plugin_panels_and_finance(stack_with_panels: Stack) -> None:
    stack = stack_with_panels
    bob = await creator(stack, "bob", "Bob")
    await asyncio.to_thread(
        stack.stripe().v1.accounts.external_accounts.create,
        bob,
        params={
            "external_account": {
                "object": "bank_account",
                "country": "US",
                "currency": "usd",
                "routing_number": "110000000",
                "account_number": "000111111116",  # payouts fail: no_account
            },
            "default_for_currency": True,
        },
    )
    for ref, amount in (("fan-1", 1000), ("fan-2", 2500)):
        body = {"external_ref": ref, "name": ref, "payment_method": "pm_card_visa"}
        fan = ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"]
        ok(
            await stack.http.post(
                f"{C}/payments/tips",
                json={"fan_id": fan, "creator_account_id": bob, "amount": amount},
            ),
            201,
        )
    await stack.advance(3 * 86_400)  # the daily payout runs and Bob's bank refuses it

    client = browser(stack)
    assert (await sign_in(client, await stack.create_key("account", bob))).status_code == 303
    page = await client.get(f"/dashboard/accounts/{bob}")
    assert page.status_code == 200, page.text
    assert 'data-testid="failed-payouts"' in page.text
    assert "failed: the bank account does not exist." in page.text
    assert "Ask the account holder to update their bank details." in page.text
    assert 'data-testid="payout-failure-banner"' in page.text
    # The plugin's panels replace the generic one; a failing panel is contained.
    assert "<p data-testid='panel-subscribers'>2 paying fans</p>" in page.text
    assert "This panel is unavailable right now." in page.text
    assert "Venue bookings" not in page.text  # an empty panel does not apply here
    assert 'data-testid="orders"' not in page.text

    admin = browser(stack)
    assert (await sign_in(admin, stack.admin_key)).status_code == 303
    panel = await admin.get("/dashboard/admin")
    assert panel.status_code == 200, panel.text
    assert "Operations &lt;b&gt;note&lt;/b&gt;" in panel.text  # titles are escaped
    total = re.search(r'data-testid="finance-total">(.*?)</tr>', panel.text, re.S)
    assert total, panel.text
    cells = re.findall(r"<td>([^<]*)</td>", total.group(1))
    assert cells[:3] == ["2", "35.00 USD", "3.50 USD"]  # payments, gross volume, commission


async def test_a_suspended_accounts_keys_and_sessions_stop_at_once(stack: Stack) -> None:
    account_id = await creator(stack, "sus", "Suspended Sue")
    key = await stack.create_key("account", account_id)
    api = stack.client_for(key)
    assert (await api.get(f"/v1/accounts/{account_id}")).status_code == 200
    holder = browser(stack)
    assert (await sign_in(holder, key)).status_code == 303
    page = f"/dashboard/accounts/{account_id}"
    assert (await holder.get(page)).status_code == 200
    # Another API process has the key in its cache already.
    other = create_app_from_settings(stack.settings, plugins=stack.plugins, webhooks=False)
    async with AsyncTestClient(other) as elsewhere:
        bearer = {"Authorization": f"Bearer {key}"}
        assert (await elsewhere.get(f"/v1/accounts/{account_id}", headers=bearer)).is_success

        ok(await stack.http.post(f"/v1/accounts/{account_id}/suspend", json={"reason": "fraud"}))

        refused = await api.get(f"/v1/accounts/{account_id}")
        assert refused.status_code == 401
        assert "suspended" in refused.json()["detail"]
        assert (await holder.get(page)).headers["location"].endswith("/dashboard/sign-in")
        for _ in range(600):  # the other process hears of it (NOTIFY); not a speed assertion
            answer = await elsewhere.get(f"/v1/accounts/{account_id}", headers=bearer)
            if answer.status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert answer.status_code == 401, "another API process still took the suspended key"

        ok(await stack.http.post(f"/v1/accounts/{account_id}/resume"))
        assert (await api.get(f"/v1/accounts/{account_id}")).status_code == 200
