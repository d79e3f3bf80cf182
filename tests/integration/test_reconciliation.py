"""Reconciliation against the sandbox after a scripted month, through the whole stack.

Creators subscribe fans on a test clock, a month of renewals is charged, tips
are paid and partly refunded, payouts are made (one bank rejects its payout)
and a spa booking is paid and cancelled: all through the plugins' HTTP APIs,
Stripe's signed webhooks and the worker. Then ``reconcile`` (the function and
the ``marketplace reconcile`` command) finds every balance transaction in the
ledger, including the platform's own payouts made directly in Stripe (one of
them canceled). A ledger entry altered by hand and the lost posting of a charge
made directly on the platform in Stripe (which the engine posts from its
events) are each reported exactly once: one item, one alert, one ``engine.reconciliation.mismatch``
event, however often reconciliation runs; mending the ledger resolves the alert.

The spa month (issue 15's acceptance): two providers, a venue and the platform;
deposits and balances, a cancellation, a refund made directly on Stripe after
settlement, a dispute won and one lost, payouts and a canceled payout. Per
account the ledger is Stripe's balance to the cent, and a full run matches
every balance transaction.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.stack import Stack, running_stack

from engine.core.orders import LifecycleEvent
from engine.core.plugins import hookimpl
from engine.reconciliation.service import (
    MISMATCH_EVENT,
    AccountProgress,
    run_reconciliation,
)
from engine.reconciliation.store import latest_run, list_alerts, problem_items

C = "/v1/creator_subscriptions"
B = "/v1/three_sided_bookings"
ENABLED = ("commission_rules", "creator_subscriptions", "three_sided_bookings")
DAY = 86_400
FAILING_BANK = "000111111116"  # Stripe's test number: payouts fail with no_account


class Mismatches:
    """A test plugin recording the reconciliation's lifecycle events."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []

    @hookimpl
    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        if event.name == MISMATCH_EVENT:
            self.events.append(event)


@pytest.fixture
def mismatches() -> Mismatches:
    return Mismatches()


@pytest.fixture
async def stack(
    fresh_database_url: str, nats_url: str, unique_name: str, mismatches: Mismatches
) -> AsyncIterator[Stack]:
    config = {
        "plugins": {
            "commission_rules": {
                "rules": [
                    {"id": "default", "rate_bps": 1000},
                    {"id": "spa", "rate_bps": 1200, "scope": {"plugin": "three_sided_bookings"}},
                ]
            },
            "three_sided_bookings": {"default_currency": "usd", "currencies": ["usd"]},
        }
    }
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        config=config,
        plugins=ENABLED,
        extra_plugins={"test_mismatches": mismatches},
    ) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def sdk(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A sandbox SDK call off the event loop (the API and the worker run on it)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def creator(stack: Stack, handle: str, *, bank: str | None = None) -> str:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": handle, "display_name": handle}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    if bank is not None:
        await sdk(
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
    return account_id


async def connected(stack: Stack, role: str, name: str) -> str:
    body = {"role": role, "display_name": name}
    account_id = str(ok(await stack.http.post("/v1/accounts", json=body), 201)["account"]["id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    return account_id


async def subscribe(stack: Stack, ref: str, clock: str, tier_id: int) -> int:
    body = {"external_ref": ref, "name": ref, "payment_method": "pm_card_visa", "test_clock": clock}
    fan_id = int(ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"])
    ok(
        await stack.http.post(f"{C}/subscriptions", json={"fan_id": fan_id, "tier_id": tier_id}),
        201,
    )
    return fan_id


async def scripted_month(stack: Stack) -> dict[str, str]:
    """A month of marketplace activity; returns the connected accounts by name."""
    http = stack.http
    ada = await creator(stack, "ada")
    bob = await creator(stack, "bob", bank=FAILING_BANK)
    provider = await connected(stack, "provider", "Ana Therapist")
    venue = await connected(stack, "venue", "Seaside Spa")
    await stack.settle()

    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = (
        await sdk(stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now})
    )["id"]
    tiers = {}
    for account_id, name, amount in ((ada, "Silver", 1000), (ada, "Gold", 2500), (bob, "Fan", 800)):
        body = {"name": name, "amount": amount}
        tiers[name] = ok(await http.post(f"{C}/creators/{account_id}/tiers", json=body), 201)["id"]
    fans = [
        await subscribe(stack, "fan-1", clock, tiers["Silver"]),
        await subscribe(stack, "fan-2", clock, tiers["Gold"]),
        await subscribe(stack, "fan-3", clock, tiers["Fan"]),
    ]
    await stack.settle()

    # Tips, one partly refunded (transfer reversal and application fee refund).
    tip = ok(
        await http.post(
            f"{C}/payments/tips",
            json={"fan_id": fans[0], "creator_account_id": ada, "amount": 700},
        ),
        201,
    )
    ok(await http.post(f"{C}/payments/{tip['id']}/refunds", json={"amount": 350}), 201)
    ok(
        await http.post(
            f"{C}/payments/tips", json={"fan_id": fans[2], "creator_account_id": bob, "amount": 300}
        ),
        201,
    )

    # Spa bookings: one delivered, settled (a transfer each to provider and venue) and
    # partly refunded (transfers reversed in proportion); one cancelled in full.
    service = ok(
        await http.post(
            f"{B}/services",
            json={
                "name": "Deep tissue massage",
                "service_type": "massage",
                "duration_minutes": 60,
                "price": 9000,
                "currency": "usd",
            },
        ),
        201,
    )
    provider_row = ok(
        await http.post(
            f"{B}/providers", json={"account_id": provider, "display_name": "Ana Therapist"}
        ),
        201,
    )
    venue_row = ok(
        await http.post(f"{B}/venues", json={"account_id": venue, "display_name": "Seaside Spa"}),
        201,
    )

    async def book(starts_in: timedelta) -> int:
        body = {
            "service_id": service["id"],
            "provider_id": provider_row["id"],
            "venue_id": venue_row["id"],
            "starts_at": (datetime.now(UTC) + starts_in).isoformat(),
            "payment_model": "full",
            "customer": {"name": "Cara Customer", "email": "cara@example.com"},
            "payment_method": "pm_card_visa",
        }
        return int(ok(await http.post(f"{B}/bookings", json=body), 201)["id"])

    async def act(booking_id: int, action: str, **body: Any) -> str:
        url = f"{B}/bookings/{booking_id}/actions/{action}"
        return str(ok(await http.post(url, json=body))["state"])

    delivered = await book(timedelta(minutes=5))
    assert await act(delivered, "confirm") == "confirmed"
    assert await act(delivered, "complete") == "settled"
    assert await act(delivered, "refund", amount=3000) == "partially_refunded"
    cancelled = await book(timedelta(days=10))
    assert await act(cancelled, "cancel", reason="venue closed") == "cancelled"
    await stack.settle()

    # A month later: renewals; then midnight on the global clock: daily payouts
    # (Ada's is paid, Bob's bank rejects his).
    await sdk(
        stack.stripe().v1.test_helpers.test_clocks.advance,
        clock,
        params={"frozen_time": now + 31 * DAY},
    )
    await stack.settle(60)
    await stack.advance(3 * DAY)
    return {"ada": ada, "bob": bob, "provider": provider, "venue": venue}


async def reconcile_command(stack: Stack, tmp_path: Path, *options: str) -> tuple[int, str]:
    """``marketplace --config FILE reconcile [options]`` against the stack, in its own process."""
    config = tmp_path / "marketplace.toml"
    enabled = ", ".join(f'"{name}"' for name in ENABLED)
    config.write_text(
        f"""
[database]
url = "{stack.settings.database.url}"

[stripe]
secret_key = "{stack.settings.stripe.secret_key}"
api_base = "{stack.settings.stripe.api_base}"
max_network_retries = 0

[plugins]
enabled = [{enabled}]

[plugins.three_sided_bookings]
default_currency = "usd"
currencies = ["usd"]
""",
        encoding="utf-8",
    )
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MARKETPLACE_") and name not in {"DATABASE_URL", "NATS_URL"}
    }
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine.cli",
        "--config",
        str(config),
        "reconcile",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
    )
    output, _ = await asyncio.wait_for(command.communicate(), 120)
    return int(command.returncode or 0), output.decode()


async def test_a_scripted_month_reconciles_and_each_injected_mismatch_is_reported_once(
    stack: Stack, mismatches: Mismatches, tmp_path: Path
) -> None:
    accounts = await scripted_month(stack)
    # The platform's own payouts, made directly in Stripe: one paid out, one canceled.
    await sdk(stack.stripe().v1.payouts.create, params={"amount": 123, "currency": "usd"})
    canceled = await sdk(stack.stripe().v1.payouts.create, params={"amount": 77, "currency": "usd"})
    await sdk(stack.stripe().v1.payouts.cancel, canceled["id"])
    await stack.settle()
    types = Counter()
    for account in [None, *accounts.values()]:
        listed = await sdk(
            stack.stripe(stripe_account=account).v1.balance_transactions.list, params={"limit": 100}
        )
        types.update(txn["type"] for txn in listed["data"])
    # The month moved money in every way reconciliation has to follow.
    for kind in (
        "charge",
        "transfer",
        "payment",
        "application_fee",
        "refund",
        "transfer_refund",
        "payment_refund",
        "application_fee_refund",
        "payout",
        "payout_failure",
        "payout_cancel",
    ):
        assert types[kind], f"no {kind} balance transaction in the scripted month: {types}"

    # The command: progress per account, zero problems, exit status 0.
    status, printed = await reconcile_command(stack, tmp_path)
    assert status == 0, printed
    assert "[1/5] platform:" in printed
    for account_id in accounts.values():
        assert f"{account_id}:" in printed
    assert "amount_mismatch" not in printed, printed
    assert "missing_in" not in printed, printed

    # The function, in full (the command's run already reconciled everything, so an
    # incremental run would list nothing): the same, with the items recorded per run.
    steps: list[AccountProgress] = []
    clean = await run_reconciliation(stack.services, progress=steps.append, full=True)
    assert clean.status == "completed"
    assert clean.problems == 0, [item.detail for item in clean.problem_items()]
    assert [step.account for step in steps] == ["platform", *sorted(accounts.values())]
    assert sum(step.balance_transactions for step in steps) == clean.counts["matched"]
    assert clean.counts["matched"] == sum(types.values())
    assert mismatches.events == []
    assert await list_alerts(stack.services.db.pool) == []

    # Injected in the ledger: one of Ada's renewal earnings altered by 1.00.
    pool = stack.services.db.pool
    altered = await pool.fetchrow(
        """
        SELECT e.id, e.amount, t.idempotency_key FROM marketplace_ledger_entries e
        JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction
        WHERE e.account = $1 AND t.kind = 'subscription_invoice' AND e.amount > 0
        ORDER BY t.id DESC LIMIT 1
        """,
        accounts["ada"],
    )
    await pool.execute(
        "UPDATE marketplace_ledger_entries SET amount = amount + 100 WHERE id = $1", altered["id"]
    )
    # A charge on the platform outside every business model: the engine posts it from
    # its events, with no meaning (no plugin claims it). Injected: its posting lost.
    intent = await sdk(
        stack.stripe().v1.payment_intents.create,
        params={
            "amount": 123,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        },
    )
    charge_id = str(intent["latest_charge"])
    await stack.settle()
    outside = await pool.fetchrow(
        "SELECT id, kind, plugin, reference FROM marketplace_ledger_transactions "
        "WHERE idempotency_key = $1",
        f"charge:{charge_id}",
    )
    assert outside is not None
    assert (outside["kind"], outside["plugin"], outside["reference"]) == ("charge", "", "")
    await pool.execute(
        "DELETE FROM marketplace_ledger_entries WHERE ledger_transaction = $1", outside["id"]
    )
    await pool.execute("DELETE FROM marketplace_ledger_transactions WHERE id = $1", outside["id"])

    for attempt in range(2):  # re-running reports the same two findings, alerts once
        run = await run_reconciliation(stack.services)
        problems = run.problem_items()
        assert sorted(item.status for item in problems) == ["amount_mismatch", "missing_in_ledger"]
        [mismatch] = [item for item in problems if item.status == "amount_mismatch"]
        assert mismatch.account == accounts["ada"]
        assert mismatch.txn is not None
        assert mismatch.txn.type == "payment"
        assert mismatch.ledger_amount == mismatch.txn.amount + 100
        assert mismatch.lines[0].key == altered["idempotency_key"]
        [missing] = [item for item in problems if item.status == "missing_in_ledger"]
        assert missing.account == "platform"
        assert missing.txn is not None
        assert (missing.txn.type, missing.txn.source, missing.txn.amount) == (
            "charge",
            charge_id,
            123,
        )
        assert run.new_alerts == (2 if attempt == 0 else 0)
        stored = await problem_items(pool, run.id)
        assert sorted(item.status for item in stored) == ["amount_mismatch", "missing_in_ledger"]
        alerts = await list_alerts(pool)
        assert sorted(alert.status for alert in alerts) == ["amount_mismatch", "missing_in_ledger"]
        assert {alert.occurrences for alert in alerts} == {attempt + 1}
        assert len(mismatches.events) == 2
    by_status = {event.data["status"]: event for event in mismatches.events}
    assert by_status["amount_mismatch"].account_id == accounts["ada"]
    assert by_status["missing_in_ledger"].account_id is None
    assert by_status["missing_in_ledger"].data["balance_transaction"] == missing.txn.id
    status_run = await latest_run(pool)
    assert status_run is not None
    assert (status_run.id, status_run.amount_mismatch, status_run.missing_in_ledger) == (
        run.id,
        1,
        1,
    )

    status, printed = await reconcile_command(stack, tmp_path, "--full")
    assert status == 3, printed
    assert "completed (full)" in printed
    assert "amount_mismatch 1" in printed
    assert "missing_in_ledger 1" in printed
    assert f"charge {charge_id} of 1.23 USD has no ledger entry" in printed
    assert "0 new alert(s)" in printed  # the same two findings: their alerts stay open
    command_run = await latest_run(pool)
    assert command_run is not None
    assert (command_run.trigger, command_run.new_alerts) == ("cli", 0)

    # Reconciliation never touched the money: the altered entry is as it was left.
    assert (
        await pool.fetchval(
            "SELECT amount FROM marketplace_ledger_entries WHERE id = $1", altered["id"]
        )
        == altered["amount"] + 100
    )

    # Mended by hand, the ledger matches again and its alert resolves; the charge's stays.
    await pool.execute(
        "UPDATE marketplace_ledger_entries SET amount = $2 WHERE id = $1",
        altered["id"],
        altered["amount"],
    )
    mended = await run_reconciliation(stack.services)
    assert [item.status for item in mended.problem_items()] == ["missing_in_ledger"]
    assert [alert.status for alert in await list_alerts(pool)] == ["missing_in_ledger"]
    assert len(mismatches.events) == 2


async def balance_transactions(stack: Stack, account: str | None) -> list[dict[str, Any]]:
    """Every balance transaction of ``account`` (None: the platform), from Stripe."""

    def listed() -> list[dict[str, Any]]:
        client = stack.stripe(stripe_account=account)
        return [txn.to_dict() for txn in client.v1.balance_transactions.list().auto_paging_iter()]

    return await asyncio.to_thread(listed)


async def test_a_spa_month_reconciles_every_account_to_the_cent(stack: Stack) -> None:
    """Acceptance (issue 15), the spa month: two providers, a venue and the platform.

    Deposits and their balances, a cancellation, a refund made directly on Stripe
    after settlement, a dispute won and one lost, the daily payouts and a payout
    made and canceled: per account the ledger is Stripe's balance (available +
    pending) to the cent, and a full reconciliation matches every balance
    transaction with nothing left over.
    """
    http = stack.http
    ana = await connected(stack, "provider", "Ana Therapist")
    ben = await connected(stack, "provider", "Ben Therapist")
    venue = await connected(stack, "venue", "Seaside Spa")
    await stack.settle()
    service = ok(
        await http.post(
            f"{B}/services",
            json={
                "name": "Hot stone massage",
                "service_type": "massage",
                "duration_minutes": 60,
                "price": 12_345,
                "currency": "usd",
            },
        ),
        201,
    )
    providers = {
        account: ok(
            await http.post(f"{B}/providers", json={"account_id": account, "display_name": name}),
            201,
        )["id"]
        for account, name in ((ana, "Ana Therapist"), (ben, "Ben Therapist"))
    }
    venue_id = ok(
        await http.post(f"{B}/venues", json={"account_id": venue, "display_name": "Seaside Spa"}),
        201,
    )["id"]

    async def book(
        provider: str, model: str, *, starts_in: timedelta, card: str = "pm_card_visa"
    ) -> dict[str, Any]:
        body = {
            "service_id": service["id"],
            "provider_id": providers[provider],
            "venue_id": venue_id,
            "starts_at": (datetime.now(UTC) + starts_in).isoformat(),
            "payment_model": model,
            "customer": {"name": "Cara Customer", "email": "cara@example.com"},
            "payment_method": card,
        }
        return dict(ok(await http.post(f"{B}/bookings", json=body), 201))

    async def act(booking: dict[str, Any], action: str, **body: Any) -> dict[str, Any]:
        url = f"{B}/bookings/{booking['id']}/actions/{action}"
        return dict(ok(await http.post(url, json=body or None)))

    # A deposit with each provider, its balance charged off session at completion.
    settled = []
    for provider in (ana, ben):
        booking = await book(provider, "deposit", starts_in=timedelta(minutes=10))
        assert booking["state"] == "deposit_paid"
        await act(booking, "confirm")
        done = await act(booking, "complete")
        assert (done["state"], done["collected"]) == ("settled", 12_345)
        settled.append(done)
    # A deposit cancelled well ahead: refunded in full.
    cancelled = await book(ana, "deposit", starts_in=timedelta(days=10))
    assert (await act(cancelled, "cancel", reason="customer ill"))["state"] == "cancelled"
    # Two bookings paid on arrival whose card is disputed at capture, after settlement.
    disputed = []
    for provider in (ana, ben):
        booking = await book(
            provider, "arrival", starts_in=timedelta(minutes=10), card="pm_card_createDispute"
        )
        await act(booking, "confirm")
        assert (await act(booking, "complete"))["state"] == "settled"
        disputed.append(booking)
    await stack.settle()
    for booking, evidence in zip(disputed, ("winning_evidence", "losing_evidence"), strict=True):
        await act(booking, "submit_evidence", statement=f"Attended. {evidence}")
    await stack.settle()
    won, lost = [ok(await http.get(f"{B}/bookings/{b['id']}"))["state"] for b in disputed]
    assert (won, lost) == ("settled", "dispute_lost")

    # In Stripe's dashboard, after settlement: part of Ben's balance charge refunded
    # (the platform bears it: separate charges and transfers reverse nothing themselves).
    balance_charge = [c for c in settled[1]["stripe"]["charges"] if c["kind"] == "balance"]
    await sdk(
        stack.stripe().v1.refunds.create,
        params={"charge": balance_charge[0]["charge"], "amount": 2_500},
    )
    # Ben takes manual payouts; the others' daily payouts run as the days pass ...
    await sdk(
        stack.stripe().v1.accounts.update,
        ben,
        params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}},
    )
    await stack.settle()
    await stack.advance(3 * DAY)
    # ... and Ben makes a payout once his share is available, then cancels it.
    as_ben = stack.stripe(stripe_account=ben)
    payout = await sdk(as_ben.v1.payouts.create, params={"amount": 2_000, "currency": "usd"})
    await sdk(as_ben.v1.payouts.cancel, payout["id"])
    await stack.settle()
    refunded = await stack.services.db.pool.fetchrow(
        "SELECT status, amount_refunded FROM marketplace_payments WHERE stripe_charge_id = $1",
        balance_charge[0]["charge"],
    )
    assert (refunded["status"], refunded["amount_refunded"]) == ("partially_refunded", 2_500)

    accounts = {"platform": None, ana: ana, ben: ben, venue: venue}
    listed = {name: await balance_transactions(stack, acct) for name, acct in accounts.items()}
    types = Counter(txn["type"] for txns in listed.values() for txn in txns)
    # The month moved money in every way reconciliation has to follow (a dispute's
    # withdrawal and reinstatement are adjustments; a lost one reverses the shares).
    for kind in (
        "charge",
        "refund",
        "transfer",
        "payment",
        "adjustment",
        "transfer_refund",
        "payout",
        "payout_cancel",
    ):
        assert types[kind], f"no {kind} balance transaction in the spa month: {types}"

    for name, account in accounts.items():
        ledger = (await stack.balance(name, "usd")).amount
        assert ledger == await stack.stripe_balance(account, "usd"), name
    await stack.assert_ledger_balanced()
    run = await run_reconciliation(stack.services, trigger="test", full=True)
    assert run.status == "completed"
    assert run.problems == 0, [item.detail for item in run.problem_items()]
    assert run.counts["matched"] == sum(len(txns) for txns in listed.values())
