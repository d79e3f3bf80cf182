"""creator_subscriptions: a dispute or refund handled before the payment is settled.

The API path charges a tip (its transaction commits), then settles the
plugin's row (charge id, ``succeeded``). Stripe's events about the charge may
be handled in between: a dispute has its own mailbox, and Stripe promises no
order. Whichever comes first, the tip ends ``disputed`` (``refunded``) and
never ``succeeded``. Likewise an invoice's dispute handled before
``invoice.paid`` (which records the engine's payment): the payment is recorded
``disputed``.

The order is forced, not timed: the settle (on the API path and in the
``payment_intent.succeeded`` handler) waits until the event under test has been
handled and committed, which a test plugin's handler reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.core.contributions import WebhookRegistration
from engine.core.plugins import hookimpl
from engine.dashboard.queries import finance_summary
from engine.testing.events import stripe_event
from engine.worker.dispatch import Dispatcher
from engine.worker.handlers import core_registrations
from plugins.creator_subscriptions import one_time, webhooks

C = "/v1/creator_subscriptions"

Settle = Callable[[Any, Any, Mapping[str, Any]], Awaitable[list[Any]]]


class Handled:
    """A test plugin: ``done`` is set once an event of ``event_type`` has been committed."""

    def __init__(self, event_type: str) -> None:
        self.event_type = event_type
        self.done = asyncio.Event()

    @hookimpl
    def register_webhook_handlers(self, register: Callable[[WebhookRegistration], None]) -> None:
        async def seen(event: Any, ctx: Any) -> None:
            ctx.after_commit(self.done.set)

        register(WebhookRegistration(self.event_type, seen, "handled.seen"))


@pytest.fixture
def withdrawn() -> Handled:
    # The sandbox's last event of a new dispute (after charge.dispute.created, in its mailbox).
    return Handled("charge.dispute.funds_withdrawn")


@pytest.fixture
async def stack(
    fresh_database_url: str, nats_url: str, unique_name: str, withdrawn: Handled
) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=("commission_rules", "creator_subscriptions"),
        extra_plugins={"handled": withdrawn},
    ) as running:
        yield running


def settle_after(monkeypatch: pytest.MonkeyPatch, before: Callable[[], Awaitable[None]]) -> None:
    """Every settle of a tip (API path and webhook) first awaits ``before()``."""
    original: Settle = one_time.settle_one_time_payment

    async def late(env: Any, conn: Any, intent: Mapping[str, Any]) -> list[Any]:
        await before()
        return await original(env, conn, intent)

    monkeypatch.setattr(one_time, "settle_one_time_payment", late)
    monkeypatch.setattr(webhooks, "settle_one_time_payment", late)


async def creator_and_fan(stack: Stack, card: str) -> tuple[str, int]:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "ada", "display_name": "Ada"}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    body = {"external_ref": "fan", "name": "Fan", "payment_method": card}
    fan = int(ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"])
    await stack.settle()
    return account_id, fan


async def engine_status(stack: Stack, intent_id: str) -> tuple[str, int]:
    row = await stack.services.db.pool.fetchrow(
        "SELECT status, amount_refunded FROM marketplace_payments "
        "WHERE stripe_payment_intent_id = $1",
        intent_id,
    )
    assert row is not None
    return str(row["status"]), int(row["amount_refunded"])


async def test_a_dispute_handled_before_the_settle_leaves_the_tip_disputed(
    stack: Stack, withdrawn: Handled, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, fan = await creator_and_fan(stack, "pm_card_createDispute")
    settle_after(monkeypatch, withdrawn.done.wait)

    paid = ok(
        await stack.http.post(
            f"{C}/payments/tips",
            json={"fan_id": fan, "creator_account_id": account, "amount": 2000},
        ),
        201,
    )
    assert withdrawn.done.is_set()
    assert paid["status"] == "disputed"
    assert paid["charge_id"]  # settled all the same
    await stack.settle()
    view = ok(await stack.http.get(f"{C}/payments/{paid['id']}"))
    assert (view["status"], view["charge_id"]) == ("disputed", paid["charge_id"])
    assert await engine_status(stack, paid["payment_intent_id"]) == ("disputed", 0)
    await stack.assert_ledger_balanced()


async def handle_now(stack: Stack, event: Mapping[str, Any]) -> None:
    """Apply ``event`` with every handler (the engine's and the plugins'), as the worker does."""
    dispatcher = Dispatcher(
        stack.services, [*core_registrations(), *stack.services.plugins.webhook_handlers()]
    )
    async with stack.services.db.pool.acquire() as conn:
        async with conn.transaction():
            contexts = await dispatcher.handle(dict(event), conn)
        for context in contexts:
            context.run_after_commit()


async def test_a_refund_handled_before_the_settle_leaves_the_tip_refunded(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, fan = await creator_and_fan(stack, "pm_card_visa")
    answered = asyncio.Event()
    original: Settle = one_time.settle_one_time_payment

    async def refund_first(env: Any, conn: Any, intent: Mapping[str, Any]) -> list[Any]:
        # Refunded in Stripe's dashboard as soon as the charge exists, and its
        # charge.refunded handled before the API path settles the tip.
        charge_id = str(intent["latest_charge"]["id"])
        await asyncio.to_thread(
            stack.stripe().v1.refunds.create,
            params={"charge": charge_id, "reverse_transfer": True, "refund_application_fee": True},
        )
        charge = await asyncio.to_thread(stack.stripe().v1.charges.retrieve, charge_id)
        await handle_now(stack, stripe_event("charge.refunded", charge.to_dict()))
        return await original(env, conn, intent)

    async def after_the_answer(env: Any, conn: Any, intent: Mapping[str, Any]) -> list[Any]:
        # payment_intent.succeeded's settle waits for the API's answer, so that one is
        # the settle under test (and the real charge.refunded, behind it, comes later).
        await answered.wait()
        return await original(env, conn, intent)

    monkeypatch.setattr(one_time, "settle_one_time_payment", refund_first)
    monkeypatch.setattr(webhooks, "settle_one_time_payment", after_the_answer)
    paid = ok(
        await stack.http.post(
            f"{C}/payments/tips",
            json={"fan_id": fan, "creator_account_id": account, "amount": 3000},
        ),
        201,
    )
    answered.set()
    assert (paid["status"], paid["amount_refunded"]) == ("refunded", 3000)
    assert paid["charge_id"]  # settled all the same
    await stack.settle()
    view = ok(await stack.http.get(f"{C}/payments/{paid['id']}"))
    assert (view["status"], view["amount_refunded"]) == ("refunded", 3000)
    assert await engine_status(stack, paid["payment_intent_id"]) == ("refunded", 3000)
    await stack.assert_ledger_balanced()


async def test_a_dispute_handled_before_invoice_paid_leaves_its_payment_disputed_and_counted(
    stack: Stack, withdrawn: Handled, monkeypatch: pytest.MonkeyPatch
) -> None:
    account, fan = await creator_and_fan(stack, "pm_card_createDispute")
    tier = ok(
        await stack.http.post(
            f"{C}/creators/{account}/tiers", json={"name": "Gold", "amount": 1999}
        ),
        201,
    )["id"]
    original = webhooks._settle_invoice

    async def after_the_dispute(*args: Any) -> list[Any]:
        await withdrawn.done.wait()
        return await original(*args)

    monkeypatch.setattr(webhooks, "_settle_invoice", after_the_dispute)
    ok(await stack.http.post(f"{C}/subscriptions", json={"fan_id": fan, "tier_id": tier}), 201)
    await stack.settle()
    assert withdrawn.done.is_set()
    [invoice] = ok(await stack.http.get(f"{C}/creators/{account}/invoices"))["data"]
    assert invoice["status"] == "paid"
    [dispute] = (await asyncio.to_thread(stack.stripe().v1.disputes.list))["data"]
    assert await engine_status(stack, str(dispute["payment_intent"])) == ("disputed", 0)
    balance = ok(await stack.http.get(f"{C}/creators/{account}/balance"))
    assert balance["disputed"] == [{"amount": 1999, "currency": "usd"}]
    # Posted before the payment was recorded, the dispute is named once it is.
    rows = await finance_summary(stack.services.db.pool, "month", 12)
    [row] = [r for r in rows if r.plugin == "creator_subscriptions"]
    assert (row.disputes, row.disputed) == (1, 1999)
    await stack.assert_ledger_balanced()
