"""creator_subscriptions end to end: HTTP API, the sandbox, signed webhooks and the worker.

One creator's whole story: onboarding gate (409 until ``account.updated``), tiers,
a subscription renewing on a test clock, an upgrade mid-period (the prorated
invoice and its fee checked against the arithmetic), a failing card going
``past_due`` then cancelled by dunning, pause/resume, cancel at period end, a tip
and its refund, scoped keys, and the ledger against Stripe's balances.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from support.stack import Stack, running_stack

from engine.core.money import Money
from engine.core.orders import LifecycleEvent
from engine.core.plugins import hookimpl
from engine.reconciliation.service import run_reconciliation
from plugins.creator_subscriptions.panels import render_creators, render_members

P = "/v1/creator_subscriptions"
ENABLED = ("commission_rules", "creator_subscriptions")
DAY = 86_400


class Notices:
    """A test plugin recording lifecycle events."""

    def __init__(self) -> None:
        self.events: list[LifecycleEvent] = []

    @hookimpl
    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        self.events.append(event)

    def names(self, subject: str | None = None) -> list[str]:
        return [e.name for e in self.events if subject is None or e.subject_id == subject]


@pytest.fixture
def notices() -> Notices:
    return Notices()


@pytest.fixture
async def stack(
    fresh_database_url: str, nats_url: str, unique_name: str, notices: Notices
) -> AsyncIterator[Stack]:
    config = {
        "plugins": {
            "commission_rules": {
                "rules": [
                    {"id": "default", "rate_bps": 1000},
                    {
                        "id": "gold",
                        "rate_bps": 1250,
                        "scope": {"plugin": "creator_subscriptions", "tier": "Gold"},
                    },
                ]
            },
            "creator_subscriptions": {"dunning_retries": 2},
        }
    }
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


async def stripe_call(stack: Stack, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A sandbox SDK call off the event loop (the API and worker live on it)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def new_clock(stack: Stack) -> tuple[str, int]:
    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = await stripe_call(
        stack, stack.stripe().v1.test_helpers.test_clocks.create, params={"frozen_time": now}
    )
    return str(clock["id"]), now


async def advance_clock(stack: Stack, clock: str, to: int) -> None:
    await stripe_call(
        stack,
        stack.stripe().v1.test_helpers.test_clocks.advance,
        clock,
        params={"frozen_time": to},
    )
    await stack.settle(60)


async def onboard(stack: Stack, handle: str, *, complete: bool = True) -> str:
    created = ok(
        await stack.http.post(f"{P}/creators", json={"handle": handle, "display_name": handle}),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    if complete:
        stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
        await stack.settle()
    return account_id


async def fan(stack: Stack, ref: str, clock: str, pm: str = "pm_card_visa") -> int:
    body = {"external_ref": ref, "name": ref, "payment_method": pm, "test_clock": clock}
    return int(ok(await stack.http.post(f"{P}/fans", json=body), 201)["id"])


def percent_of(amount: int, percent: str) -> int:
    exact = Decimal(amount) * Decimal(percent) / 100
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


async def test_creator_story_through_http_and_webhooks(stack: Stack, notices: Notices) -> None:
    http = stack.http
    account_id = await onboard(stack, "ada", complete=False)
    clock, _ = await new_clock(stack)
    silver = ok(
        await http.post(
            f"{P}/creators/{account_id}/tiers", json={"name": "Silver", "amount": 1000}
        ),
        201,
    )
    gold = ok(
        await http.post(f"{P}/creators/{account_id}/tiers", json={"name": "Gold", "amount": 2500}),
        201,
    )
    alice = await fan(stack, "alice", clock)

    # Not before account.updated says charges are enabled.
    early = await http.post(f"{P}/subscriptions", json={"fan_id": alice, "tier_id": silver["id"]})
    assert early.status_code == 409, early.text
    assert early.json()["code"] == "account_not_ready"
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await stack.settle()

    sub = ok(
        await http.post(f"{P}/subscriptions", json={"fan_id": alice, "tier_id": silver["id"]}),
        201,
    )
    assert sub["application_fee_percent"] == "10.00"
    assert sub["status"] == "active"
    stripe_sub = await stripe_call(
        stack, stack.stripe().v1.subscriptions.retrieve, sub["stripe_subscription_id"]
    )
    assert stripe_sub["transfer_data"]["destination"] == account_id
    assert Decimal(str(stripe_sub["application_fee_percent"])) == Decimal(10)
    dave = await fan(stack, "dave", clock)
    dave_sub = ok(
        await http.post(f"{P}/subscriptions", json={"fan_id": dave, "tier_id": gold["id"]}), 201
    )
    assert dave_sub["application_fee_percent"] == "12.50"
    await stack.settle()

    async def invoices_of(subscription: dict[str, Any]) -> list[dict[str, Any]]:
        params = {"subscription_id": subscription["id"]}
        page = ok(await http.get(f"{P}/creators/{account_id}/invoices", params=params))
        return list(page["data"])

    # A month on: the renewal is invoiced, charged and posted once.
    period_end = int(sub["current_period_end"])
    await advance_clock(stack, clock, period_end + 2 * 3600)
    view = ok(await http.get(f"{P}/subscriptions/{sub['id']}"))
    assert view["current_period_start"] == period_end
    invoices = await invoices_of(sub)
    assert [i["billing_reason"] for i in invoices] == ["subscription_create", "subscription_cycle"]
    for invoice in invoices:
        assert invoice["status"] == "paid"
        assert invoice["application_fee"] == 100
        assert invoice["creator_earnings"] + invoice["application_fee"] == invoice["amount_paid"]

    # Upgrade to Gold half-way through the second period: prorated at once, 12.5 % fee.
    at = period_end + 2 * 3600 + 10 * DAY
    await advance_clock(stack, clock, at)
    upgraded = ok(
        await http.post(f"{P}/subscriptions/{sub['id']}/change-tier", json={"tier_id": gold["id"]})
    )
    assert (upgraded["tier_id"], upgraded["application_fee_percent"]) == (gold["id"], "12.50")
    await stack.settle()
    proration = (await invoices_of(sub))[-1]
    assert proration["billing_reason"] == "subscription_update"
    second_start, second_end = int(view["current_period_start"]), int(view["current_period_end"])
    span, left = second_end - second_start, second_end - at
    expected = round_half_up(2500 * left, span) - round_half_up(1000 * left, span)
    assert proration["amount_paid"] == expected
    assert proration["application_fee"] == percent_of(expected, "12.50")
    assert proration["creator_earnings"] == expected - proration["application_fee"]
    # Stripe's own record of the fee: on the invoice's charge, found through its payments.
    payments = await stripe_call(
        stack,
        stack.stripe().v1.invoice_payments.list,
        params={
            "invoice": proration["stripe_invoice_id"],
            "expand": ["data.payment.payment_intent"],
        },
    )
    intent = payments.data[0].payment.payment_intent
    charge = await stripe_call(stack, stack.stripe().v1.charges.retrieve, intent.latest_charge)
    assert charge["application_fee_amount"] == proration["application_fee"]

    # Dave moves down from Gold to Silver later in the period: credited at the renewal.
    later = at + 8 * DAY
    await advance_clock(stack, clock, later)
    downgraded = ok(
        await http.post(
            f"{P}/subscriptions/{dave_sub['id']}/change-tier", json={"tier_id": silver["id"]}
        )
    )
    assert (downgraded["tier_id"], downgraded["application_fee_percent"]) == (silver["id"], "10.00")
    await stack.settle()
    assert [i["billing_reason"] for i in await invoices_of(dave_sub)] == [
        "subscription_create",
        "subscription_cycle",
    ]

    # The next renewal is Gold at 12.5 %; Dave's is Silver less the unused Gold time, at 10 %.
    await advance_clock(stack, clock, second_end + 2 * 3600)
    renewal = (await invoices_of(sub))[-1]
    assert (renewal["amount_paid"], renewal["application_fee"]) == (2500, 313)
    dave_renewal = (await invoices_of(dave_sub))[-1]
    rest = second_end - later
    credited = 1000 + round_half_up(1000 * rest, span) - round_half_up(2500 * rest, span)
    assert credited > 0
    assert dave_renewal["billing_reason"] == "subscription_cycle"
    assert dave_renewal["amount_paid"] == credited
    assert dave_renewal["application_fee"] == percent_of(credited, "10")
    assert dave_renewal["creator_earnings"] + dave_renewal["application_fee"] == credited

    # Pause: the next period is not charged; resume: the one after is.
    ok(await http.post(f"{P}/subscriptions/{sub['id']}/pause"))
    third_end = int(ok(await http.get(f"{P}/subscriptions/{sub['id']}"))["current_period_end"])
    await advance_clock(stack, clock, third_end + 2 * 3600)
    paused = (await invoices_of(sub))[-1]
    assert paused["status"] == "void"
    assert paused["amount_paid"] == 0
    resumed = ok(await http.post(f"{P}/subscriptions/{sub['id']}/resume"))
    assert resumed["paused"] is False

    # Cancel at period end: it runs out, then ends, and nothing more is charged.
    ok(await http.post(f"{P}/subscriptions/{sub['id']}/cancel", json={"at_period_end": True}))
    fourth_end = int(ok(await http.get(f"{P}/subscriptions/{sub['id']}"))["current_period_end"])
    await advance_clock(stack, clock, fourth_end + 2 * 3600)
    ended = ok(await http.get(f"{P}/subscriptions/{sub['id']}"))
    assert ended["status"] == "canceled"

    # A failing card: past_due, retried, then cancelled after the configured retries.
    bob = await fan(stack, "bob", clock, pm="pm_card_chargeCustomerFail")
    # The card attaches but every charge fails, so the first payment is refused (402).
    refused = await http.post(f"{P}/subscriptions", json={"fan_id": bob, "tier_id": silver["id"]})
    assert refused.status_code == 402, refused.text
    carol = await fan(stack, "carol", clock)
    carol_sub = ok(
        await http.post(f"{P}/subscriptions", json={"fan_id": carol, "tier_id": silver["id"]}),
        201,
    )
    bad_pm = await stripe_call(
        stack,
        stack.stripe().v1.payment_methods.attach,
        "pm_card_chargeCustomerFail",
        params={"customer": ok(await http.get(f"{P}/fans/{carol}"))["stripe_customer_id"]},
    )
    await stripe_call(
        stack,
        stack.stripe().v1.subscriptions.update,
        carol_sub["stripe_subscription_id"],
        params={"default_payment_method": bad_pm["id"]},
    )
    carol_end = int(carol_sub["current_period_end"])
    await advance_clock(stack, clock, carol_end + 2 * 3600)
    assert ok(await http.get(f"{P}/subscriptions/{carol_sub['id']}"))["status"] == "past_due"
    subject = f"creator_subscriptions:subscription:{carol_sub['id']}"
    assert "creator_subscriptions.subscription.past_due" in notices.names(subject)
    await advance_clock(stack, clock, carol_end + 2 * 3600 + 9 * DAY)  # retries at +3, +5 days
    assert ok(await http.get(f"{P}/subscriptions/{carol_sub['id']}"))["status"] == "canceled"
    assert "creator_subscriptions.subscription.dunning_exhausted" in notices.names(subject)

    # A tip, then half of it refunded.
    tip = ok(
        await http.post(
            f"{P}/payments/tips",
            json={"fan_id": alice, "creator_account_id": account_id, "amount": 700},
        ),
        201,
    )
    assert (tip["application_fee"], tip["creator_earnings"]) == (70, 630)
    refund = ok(await http.post(f"{P}/payments/{tip['id']}/refunds", json={"amount": 350}), 201)
    assert (refund["transfer_reversed"], refund["fee_refunded"]) == (350, 35)
    await stack.settle()

    # The creator's key sees only the creator's own things; the ledger agrees with Stripe.
    key = await stack.create_key("account", account_id)
    creator = stack.client_for(key)
    other = await onboard(stack, "grace")
    assert (await creator.get(f"{P}/creators/{other}/balance")).status_code == 404
    assert (await creator.get(f"{P}/creators/{other}/subscribers")).status_code == 404
    assert (await creator.post(f"{P}/payments/tips", json={})).status_code == 403
    balance = ok(await creator.get(f"{P}/creators/{account_id}/balance"))
    stripe_total = sum(a["amount"] for a in [*balance["available"], *balance["pending"]])
    assert balance["ledger"] == [{"amount": stripe_total, "currency": "usd"}]
    assert stripe_total == await stack.stripe_balance(account_id, "usd")
    transactions = ok(
        await creator.get(f"{P}/creators/{account_id}/transactions", params={"limit": 3})
    )
    assert len(transactions["data"]) == 3
    assert transactions["next_cursor"]
    more = ok(
        await creator.get(
            f"{P}/creators/{account_id}/transactions",
            params={"limit": 100, "cursor": transactions["next_cursor"]},
        )
    )
    every = [*transactions["data"], *more["data"]]
    assert len({t["id"] for t in every}) == len(every)
    assert sum(t["amount"] for t in every) == stripe_total
    tips_only = ok(
        await creator.get(f"{P}/creators/{account_id}/transactions", params={"kind": "tip"})
    )
    assert [t["amount"] for t in tips_only["data"]] == [630]
    subscribers = ok(await creator.get(f"{P}/creators/{account_id}/subscribers"))["data"]
    assert {s["fan_name"] for s in subscribers} == {"alice", "carol", "dave"}
    async with stack.services.db.pool.acquire() as conn:
        per_invoice = await conn.fetch(
            """
            SELECT i.stripe_invoice_id, count(t.id) AS n FROM creator_subscriptions_invoices i
            LEFT JOIN marketplace_ledger_transactions t ON t.idempotency_key = i.ledger_key
            WHERE i.status = 'paid' AND i.amount_paid > 0 GROUP BY i.stripe_invoice_id
            """
        )
        unbalanced = await stack.services.ledger.unbalanced_transactions()
    assert per_invoice
    assert all(row["n"] == 1 for row in per_invoice)
    assert unbalanced == []
    run = await run_reconciliation(stack.services, trigger="test")
    assert run.problems == 0, run.problem_items()[:5]

    # The dashboard panels: the creator's tiers and members, the operator's view.
    members = await render_members(stack.services, account_id)
    assert "Silver" in members
    assert "Gold" in members
    vip = {"name": "<b>VIP</b> & co", "amount": 9900}
    ok(await http.post(f"{P}/creators/{account_id}/tiers", json=vip), 201)
    members = await render_members(stack.services, account_id)
    assert "&lt;b&gt;VIP&lt;/b&gt; &amp; co" in members
    assert "<b>VIP" not in members
    assert "Not a creator" in await render_members(stack.services, "acct_unknown")
    creators_panel = await render_creators(stack.services, None)
    assert "canceled" in creators_panel
    assert Money(stripe_total, "usd").amount > 0


def round_half_up(numerator: int, denominator: int) -> int:
    quotient, remainder = divmod(numerator, denominator)
    return quotient + (1 if remainder * 2 >= denominator else 0)


async def test_no_payment_for_a_suspended_creator(stack: Stack) -> None:
    """Suspended by the admin: subscribing and tipping answer 409 naming the creator; no charge."""
    http = stack.http
    account_id = await onboard(stack, "sam")
    clock, _ = await new_clock(stack)
    tier = ok(
        await http.post(f"{P}/creators/{account_id}/tiers", json={"name": "Basic", "amount": 500}),
        201,
    )
    bob = await fan(stack, "bob", clock)
    ok(await http.post(f"/v1/accounts/{account_id}/suspend", json={"reason": "chargebacks"}))

    refused = [
        await http.post(f"{P}/subscriptions", json={"fan_id": bob, "tier_id": tier["id"]}),
        await http.post(
            f"{P}/payments/tips",
            json={"fan_id": bob, "creator_account_id": account_id, "amount": 300},
        ),
    ]
    for response in refused:
        assert response.status_code == 409, response.text
        problem = response.json()
        assert (problem["code"], problem["party"], problem["reason"]) == (
            "account_restricted",
            "creator",
            "suspended",
        )
        assert problem["account_id"] == account_id
    stripe = stack.stripe()
    assert list((await stripe_call(stack, stripe.v1.subscriptions.list)).data) == []
    assert list((await stripe_call(stack, stripe.v1.payment_intents.list)).data) == []

    ok(await http.post(f"/v1/accounts/{account_id}/resume"))
    ok(await http.post(f"{P}/subscriptions", json={"fan_id": bob, "tier_id": tier["id"]}), 201)


async def test_tier_currency_defaults_to_the_creators_account(stack: Stack) -> None:
    """No ``currency``: the tier follows the creator's account (eur), not the plugin's usd."""
    created = ok(
        await stack.http.post(
            f"{P}/creators",
            json={
                "handle": "eve",
                "display_name": "Eve",
                "country": "DE",
                "default_currency": "eur",
            },
        ),
        201,
    )
    account_id = str(created["creator"]["account_id"])
    assert created["creator"]["default_currency"] == "eur"
    tier = ok(
        await stack.http.post(
            f"{P}/creators/{account_id}/tiers", json={"name": "Fan", "amount": 500}
        ),
        201,
    )
    assert tier["currency"] == "eur"
    price = await stripe_call(stack, stack.stripe().v1.prices.retrieve, tier["stripe_price_id"])
    assert price["currency"] == "eur"
    dollars = ok(
        await stack.http.post(
            f"{P}/creators/{account_id}/tiers",
            json={"name": "Fan (USD)", "amount": 500, "currency": "usd"},
        ),
        201,
    )
    assert dollars["currency"] == "usd"


async def test_another_creators_tier_is_a_404_like_a_missing_one(stack: Stack) -> None:
    # It used to say "no tier 'acct_…'": which ids exist, and whose they are.
    ada = await onboard(stack, "ada")
    grace = await onboard(stack, "grace")
    theirs = ok(
        await stack.http.post(f"{P}/creators/{grace}/tiers", json={"name": "Gold", "amount": 900}),
        201,
    )
    creator = stack.client_for(await stack.create_key("account", ada))
    missing_id = int(theirs["id"]) + 1000
    for method, body in [("GET", None), ("PATCH", {"name": "x"})]:
        other = await creator.request(method, f"{P}/tiers/{theirs['id']}", json=body)
        missing = await creator.request(method, f"{P}/tiers/{missing_id}", json=body)
        assert other.status_code == missing.status_code == 404, (other.text, missing.text)
        other_problem, missing_problem = other.json(), missing.json()
        assert other_problem["detail"] == f"no tier {theirs['id']}"
        assert missing_problem["detail"] == f"no tier {missing_id}"
        assert set(other_problem) == set(missing_problem)
        assert grace not in other.text
    archived = await creator.post(f"{P}/tiers/{theirs['id']}/archive")
    assert archived.json()["detail"] == f"no tier {theirs['id']}"


async def test_a_creators_own_key_reads_its_subscriptions_and_payments(stack: Stack) -> None:
    """The creator's key reads its own; another creator's key gets the 404 of a missing id."""
    http = stack.http
    ada = await onboard(stack, "ada")
    bea = await onboard(stack, "bea")
    clock, _ = await new_clock(stack)
    tier = ok(
        await http.post(f"{P}/creators/{ada}/tiers", json={"name": "Basic", "amount": 500}), 201
    )
    fan_id = await fan(stack, "carl", clock)
    sub = ok(
        await http.post(f"{P}/subscriptions", json={"fan_id": fan_id, "tier_id": tier["id"]}), 201
    )
    tip = ok(
        await http.post(
            f"{P}/payments/tips",
            json={"fan_id": fan_id, "creator_account_id": ada, "amount": 300},
        ),
        201,
    )
    own = stack.client_for(await stack.create_key("account", ada))
    other = stack.client_for(await stack.create_key("account", bea))
    await stack.settle()
    seen = ok(await own.get(f"{P}/subscriptions/{sub['id']}"))
    assert seen["id"] == sub["id"]
    # Stripe's ids tie the creator's transfers to this subscription's invoices.
    [invoice] = seen["invoices"]
    stripe = stack.stripe()
    charge = await stripe_call(stack, stripe.v1.charges.retrieve, invoice["charge"])
    assert (charge["payment_intent"], charge["transfer"]) == (
        invoice["payment_intent"],
        invoice["transfer"],
    )
    assert invoice["amount_paid"] == charge["amount"] == 500
    paid_tip = ok(await own.get(f"{P}/payments/{tip['id']}"))
    tip_charge = await stripe_call(stack, stripe.v1.charges.retrieve, paid_tip["charge_id"])
    assert (tip_charge["transfer"], tip_charge["application_fee"]) == (
        paid_tip["transfer_id"],
        paid_tip["application_fee_id"],
    )
    for path, missing in (
        (f"{P}/subscriptions/{sub['id']}", f"{P}/subscriptions/999999"),
        (f"{P}/payments/{tip['id']}", f"{P}/payments/999999"),
    ):
        hidden = await other.get(path)
        absent = await other.get(missing)
        assert (hidden.status_code, absent.status_code) == (404, 404), hidden.text
        assert hidden.json()["detail"].replace(str(path.rsplit("/", 1)[1]), "N") == (
            absent.json()["detail"].replace("999999", "N")
        )
        assert ada not in hidden.text
    # Reading is all an account key may do here: writes need the platform's service key.
    refused = await own.post(f"{P}/subscriptions/{sub['id']}/cancel", json={})
    assert refused.status_code == 403, refused.text


async def test_a_new_card_recovers_a_fan_in_dunning(stack: Stack, notices: Notices) -> None:
    """The card reaches the subscription, and the past-due invoice is paid at once."""
    http = stack.http
    account_id = await onboard(stack, "dina")
    clock, _ = await new_clock(stack)
    tier = ok(
        await http.post(f"{P}/creators/{account_id}/tiers", json={"name": "Gold", "amount": 900}),
        201,
    )
    erin = await fan(stack, "erin", clock)
    sub = ok(
        await http.post(f"{P}/subscriptions", json={"fan_id": erin, "tier_id": tier["id"]}), 201
    )
    stripe = stack.stripe()
    customer = ok(await http.get(f"{P}/fans/{erin}"))["stripe_customer_id"]
    failing = await stripe_call(
        stack,
        stripe.v1.payment_methods.attach,
        "pm_card_chargeCustomerFail",
        params={"customer": customer},
    )
    await stripe_call(  # the card the subscription charges starts declining
        stack,
        stripe.v1.subscriptions.update,
        sub["stripe_subscription_id"],
        params={"default_payment_method": failing["id"]},
    )
    await advance_clock(stack, clock, int(sub["current_period_end"]) + 2 * 3600)
    assert ok(await http.get(f"{P}/subscriptions/{sub['id']}"))["status"] == "past_due"

    updated = ok(
        await http.post(
            f"{P}/fans/{erin}/payment-method", json={"payment_method": "pm_card_mastercard"}
        )
    )
    assert updated["has_payment_method"] is True
    # Registering the same fan again finds it: 200, the same id.
    again = await http.post(f"{P}/fans", json={"external_ref": "erin", "name": "erin"})
    assert (again.status_code, again.json()["id"]) == (200, erin), again.text
    await stack.settle()
    stripe_sub = await stripe_call(
        stack, stripe.v1.subscriptions.retrieve, sub["stripe_subscription_id"]
    )
    fan_default = (await stripe_call(stack, stripe.v1.customers.retrieve, customer))[
        "invoice_settings"
    ]["default_payment_method"]
    assert stripe_sub["default_payment_method"] == fan_default
    assert stripe_sub["default_payment_method"] != failing["id"]
    assert stripe_sub["status"] == "active"
    open_invoices = await stripe_call(
        stack, stripe.v1.invoices.list, params={"customer": customer, "status": "open"}
    )
    assert list(open_invoices.data) == []
    assert ok(await http.get(f"{P}/subscriptions/{sub['id']}"))["status"] == "active"
    # The renewal paid late is in the creator's books like any other.
    assert (
        await stack.stripe_balance(account_id, "usd")
        == (await stack.balance(account_id, "usd")).amount
    )
