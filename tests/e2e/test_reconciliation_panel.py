"""Reconciliation from the admin panel, in headless Chromium.

After a creator's tips and a day of payouts everything matches; then someone
charges a card on the platform directly in Stripe, outside every business
model, and the posting the engine made of it is lost (injected). The admin
starts a run from the panel and sees exactly that one finding, on the
reconciliation page and as an open alert on the panel.
Screenshots go to ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.reconciliation.service import run_reconciliation

C = "/v1/creator_subscriptions"
DAY = 86_400


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=("commission_rules", "creator_subscriptions"),
    ) as running:
        yield running


async def test_the_admin_runs_reconciliation_and_sees_the_one_movement_stripe_alone_made(
    stack: Stack, browser: Any, screenshots: Path
) -> None:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "ada", "display_name": "Ada"}),
        201,
    )
    ada = created["creator"]["account_id"]
    stack.sandbox.control("POST", f"/_sandbox/accounts/{ada}/complete_onboarding")
    await stack.settle()
    for ref, amount in (("fan-1", 2500), ("fan-2", 1200)):
        body = {"external_ref": ref, "name": ref, "payment_method": "pm_card_visa"}
        fan = ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"]
        ok(
            await stack.http.post(
                f"{C}/payments/tips",
                json={"fan_id": fan, "creator_account_id": ada, "amount": amount},
            ),
            201,
        )
    await stack.advance(3 * DAY)
    clean = await run_reconciliation(stack.services)
    assert clean.problems == 0, [item.detail for item in clean.problem_items()]

    intent = await asyncio.to_thread(
        stack.stripe().v1.payment_intents.create,
        params={
            "amount": 150,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        },
    )
    charge_id = str(intent["latest_charge"])
    await stack.settle()
    # The engine posts a charge made directly in Stripe from its events; its posting is
    # then lost (injected), which reconciliation finds.
    lost = await stack.services.db.pool.fetchval(
        "SELECT id FROM marketplace_ledger_transactions WHERE idempotency_key = $1",
        f"charge:{intent['latest_charge']}",
    )
    assert lost is not None
    await stack.services.db.pool.execute(
        "DELETE FROM marketplace_ledger_entries WHERE ledger_transaction = $1", lost
    )
    await stack.services.db.pool.execute(
        "DELETE FROM marketplace_ledger_transactions WHERE id = $1", lost
    )

    page = await browser.new_page()
    await page.goto(f"{stack.url}/dashboard/sign-in")
    await page.fill("#api_key", stack.admin_key)
    await page.click("button[type=submit]")
    await page.wait_for_load_state()
    status = page.locator("[data-testid=reconciliation-status]")
    assert "0 problems" in await status.inner_text()
    await page.click("[data-testid=run-reconciliation]")
    await page.wait_for_load_state()
    assert page.url.endswith("/dashboard/admin/reconciliation?notice=reconciling")
    for _ in range(100):  # the run is in the background; the page says when it is done
        if await page.locator("[data-testid=reconciliation-items] tr[data-status]").count():
            break
        await asyncio.sleep(0.1)
        await page.goto(f"{stack.url}/dashboard/admin/reconciliation")
    items = page.locator("[data-testid=reconciliation-items] tr[data-status]")
    assert await items.count() == 1
    assert await items.first.get_attribute("data-status") == "missing_in_ledger"
    finding = await items.first.inner_text()
    assert charge_id in finding
    assert "1 problem" in await page.locator("[data-testid=reconciliation-problems]").inner_text()
    await page.screenshot(path=screenshots / "admin_reconciliation.png", full_page=True)

    await page.goto(f"{stack.url}/dashboard/admin")
    alerts = page.locator("[data-testid=alerts] li")
    assert await alerts.count() == 1
    assert charge_id in await alerts.first.inner_text()
    await page.close()
