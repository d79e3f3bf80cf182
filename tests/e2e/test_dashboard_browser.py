"""The dashboards in a real headless browser (Debian's Chromium driven by Playwright).

A creator signs in with their account key and sees their balance and their
last transaction exactly as the ledger has them (and Stripe's balance beside
it), filters their transactions, and gets a 404 for another creator's page.
An admin sees the creator whose bank rejects payouts, with the reason in plain
words, and replays a dead-lettered webhook event from the panel. Screenshots of
every page go to ``test-artifacts/screenshots/``.

Chromium is ``/usr/bin/chromium`` (``make test`` installs Debian's package when
it is missing and it can); Playwright's own browser download is not used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.core.contributions import StripeEvent, WebhookRegistration
from engine.core.money import Money
from engine.core.plugins import hookimpl

ENABLED = ("commission_rules", "creator_subscriptions")
C = "/v1/creator_subscriptions"
DAY = 86_400
FAILING_BANK = "000111111116"  # Stripe's test number: payouts fail with no_account


class FlakyHandler:
    """A test plugin whose handler of ``test.flaky`` events fails until it is mended."""

    def __init__(self) -> None:
        self.broken = True
        self.handled: list[str] = []

    async def handle(self, event: StripeEvent, ctx: Any) -> None:
        if self.broken:
            raise RuntimeError("the flaky handler is broken")
        self.handled.append(str(event["id"]))

    @hookimpl
    def register_webhook_handlers(self, register: Callable[[WebhookRegistration], None]) -> None:
        register(WebhookRegistration("test.flaky", self.handle, "test.flaky"))


@pytest.fixture
def flaky() -> FlakyHandler:
    return FlakyHandler()


@pytest.fixture
async def stack(
    fresh_database_url: str, nats_url: str, unique_name: str, flaky: FlakyHandler
) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=ENABLED,
        extra_plugins={"test_flaky": flaky},
    ) as running:
        yield running


async def creator(stack: Stack, handle: str, *, bank: str | None = None) -> str:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": handle, "display_name": handle}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    if bank is not None:
        await asyncio.to_thread(
            stack.stripe().v1.accounts.external_accounts.create,
            account_id,
            params={
                "external_account": {
                    "object": "bank_account",
                    "country": "US",
                    "currency": "usd",
                    "routing_number": "110000000",
                    "account_number": bank,
                },
                "default_for_currency": True,
            },
        )
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await stack.settle()
    return account_id


async def tip(stack: Stack, fan_ref: str, account_id: str, amount: int) -> dict[str, Any]:
    body = {"external_ref": fan_ref, "name": fan_ref, "payment_method": "pm_card_visa"}
    fan_id = ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"]
    paid = ok(
        await stack.http.post(
            f"{C}/payments/tips",
            json={"fan_id": fan_id, "creator_account_id": account_id, "amount": amount},
        ),
        201,
    )
    await stack.settle()
    return dict(paid)


async def sign_in(page: Any, stack: Stack, key: str) -> None:
    await page.goto(f"{stack.url}/dashboard/sign-in")
    await page.fill("#api_key", key)
    await page.click("button[type=submit]")
    await page.wait_for_load_state()


async def text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).first.inner_text()).strip()


async def test_a_creator_sees_their_balance_and_last_transaction_and_nobody_elses(
    stack: Stack, browser: Any, screenshots: Path
) -> None:
    ada = await creator(stack, "ada")
    bob = await creator(stack, "bob")
    await tip(stack, "fan-1", ada, 1500)
    last = await tip(stack, "fan-2", ada, 700)
    await tip(stack, "fan-3", bob, 900)
    key = await stack.create_key("account", ada)

    page = await browser.new_page()
    await sign_in(page, stack, key)
    assert page.url == f"{stack.url}/dashboard/accounts/{ada}", await page.content()
    await page.screenshot(path=screenshots / "creator_dashboard.png", full_page=True)

    # The balance: the ledger's total, and Stripe's available + pending, agree.
    ledger = await stack.balance(ada, "usd")
    row = page.locator("[data-testid=balances] tr[data-currency=usd]")
    assert await text(row, "[data-testid=balance-ledger]") == ledger.format()
    stripe_balance = await asyncio.to_thread(stack.stripe(stripe_account=ada).v1.balance.retrieve)
    available = sum(b["amount"] for b in stripe_balance["available"] if b["currency"] == "usd")
    pending = sum(b["amount"] for b in stripe_balance["pending"] if b["currency"] == "usd")
    assert await text(row, "[data-testid=balance-available]") == Money(available, "usd").format()
    assert await text(row, "[data-testid=balance-pending]") == Money(pending, "usd").format()
    assert available + pending == ledger.amount

    # The last transaction is the ledger's last one on Ada's account: the 7.00 tip, net of fee.
    async with stack.services.db.pool.acquire() as conn:
        newest = await conn.fetchrow(
            """
            SELECT t.id, t.stripe_object_id, sum(e.amount)::bigint AS amount
            FROM marketplace_ledger_entries e
            JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
            WHERE e.account = $1 GROUP BY t.id ORDER BY t.id DESC LIMIT 1
            """,
            ada,
        )
    first = page.locator("[data-testid=transactions] tbody tr").first
    assert await first.get_attribute("data-transaction") == str(newest["id"])
    amount = await text(first, "[data-testid=transaction-amount]")
    assert amount == Money(newest["amount"], "usd").format()
    assert amount == Money(last["creator_earnings"], "usd").format()
    assert await page.locator("[data-testid=earnings-chart] svg rect").count() == 12

    # Transactions, filtered by kind.
    await page.click("[data-testid=all-transactions]")
    await page.select_option("select[name=kind]", "tip")
    await page.click("[data-testid=filters] button")
    await page.wait_for_load_state()
    assert "kind=tip" in page.url
    rows = page.locator("[data-testid=transactions] tbody tr")
    assert await rows.count() == 2
    await page.screenshot(path=screenshots / "creator_transactions.png", full_page=True)

    # Bob's page does not exist for Ada.
    response = await page.goto(f"{stack.url}/dashboard/accounts/{bob}")
    assert response is not None
    assert response.status == 404
    assert "no connected account" in await text(page, "[data-testid=error-detail]")
    await page.screenshot(path=screenshots / "creator_other_account_404.png", full_page=True)
    response = await page.goto(f"{stack.url}/dashboard/admin")
    assert response is not None
    assert response.status == 403
    await page.close()


async def test_an_admin_sees_the_failing_account_and_replays_a_dead_letter(
    stack: Stack, browser: Any, screenshots: Path, flaky: FlakyHandler
) -> None:
    ada = await creator(stack, "ada")
    bob = await creator(stack, "bob", bank=FAILING_BANK)
    await tip(stack, "fan-1", ada, 2000)
    await tip(stack, "fan-2", bob, 2000)
    await stack.advance(3 * DAY)  # funds available, the daily payouts run; Bob's bank refuses
    flagged = ok(await stack.http.get(f"/v1/accounts/{bob}"))
    assert flagged["payout_failure_code"] == "no_account"

    # A webhook event for Ada that a (broken) handler fails until it is dead-lettered.
    await stack.send_event(
        "test.flaky", {"id": "obj_flaky", "object": "thing"}, account=ada, allow_dead_letters=True
    )
    dead = await stack.dead_events()
    assert [row["type"] for row in dead] == ["test.flaky"]
    event_id = dead[0]["event_id"]

    page = await browser.new_page()
    await sign_in(page, stack, stack.admin_key)
    assert page.url == f"{stack.url}/dashboard/admin"
    failing = page.locator(f"[data-testid=failing-accounts] tr[data-account={bob}]")
    assert await failing.count() == 1
    problem = await failing.inner_text()
    assert "the bank account does not exist" in problem
    assert "update their bank details" in problem
    assert await page.locator(f"[data-testid=failing-accounts] tr[data-account={ada}]").count() == 0
    letter = page.locator(f"[data-testid=dead-letters] tr[data-event={event_id}]")
    assert await letter.count() == 1
    assert "the flaky handler is broken" in await letter.inner_text()
    await page.screenshot(
        path=screenshots / "admin_panel_failing_and_dead_letter.png", full_page=True
    )

    flaky.broken = False
    await letter.locator("[data-testid=replay]").click()
    await page.wait_for_load_state()
    assert "notice=replayed" in page.url
    assert "Replaying" in await text(page, "[data-testid=notice]")
    await stack.settle()
    assert flaky.handled == [event_id]
    assert await stack.dead_events() == []
    await page.goto(f"{stack.url}/dashboard/admin")
    assert await page.locator(f"[data-testid=dead-letters] tr[data-event={event_id}]").count() == 0
    await page.screenshot(path=screenshots / "admin_panel_after_replay.png", full_page=True)
    await page.close()
