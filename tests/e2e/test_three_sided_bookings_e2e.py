"""End to end: spa bookings through the API over HTTP, the sandbox, signed webhooks and the worker.

Every scenario ends with the books checked: for the platform, the provider and
the venue, the ledger balance equals the sandbox's Stripe balance (available +
pending) to the cent, and every ledger transaction balances.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from support.stack import Stack, running_stack

from engine.reconciliation.service import run_reconciliation

TSB = "three_sided_bookings"
BASE = f"/v1/{TSB}"
FAILING_BANK = "000111111116"  # Stripe's test number: payouts fail with no_account
GOOD_BANK = "000123456789"
DAY = 86_400


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    config = {
        "plugins": {
            "commission_rules": {
                "rules": [
                    {"id": "default", "rate_bps": 1000},
                    {"id": "spa", "rate_bps": 1200, "scope": {"plugin": TSB}},
                ]
            },
        }
    }
    async with running_stack(
        fresh_database_url, nats_url, unique_name.upper(), config=config
    ) as running:
        yield running


def _bank(number: str) -> dict[str, str]:
    return {
        "object": "bank_account",
        "country": "US",
        "currency": "usd",
        "routing_number": "110000000",
        "account_number": number,
    }


@dataclass
class Spa:
    """A marketplace set up through the API: one service, a provider, a venue, their keys."""

    stack: Stack
    customer: httpx.AsyncClient
    provider: httpx.AsyncClient
    venue: httpx.AsyncClient
    provider_account: str
    venue_account: str
    service_id: int
    provider_id: int
    venue_id: int

    @property
    def admin(self) -> httpx.AsyncClient:
        return self.stack.http

    async def book(
        self,
        model: str,
        *,
        starts_in: timedelta = timedelta(minutes=10),
        card: str = "pm_card_visa",
        service_id: int | None = None,
    ) -> dict[str, Any]:
        response = await self.customer.post(
            f"{BASE}/bookings",
            json={
                "service_id": service_id or self.service_id,
                "provider_id": self.provider_id,
                "venue_id": self.venue_id,
                "starts_at": (datetime.now(UTC) + starts_in).isoformat(),
                "payment_model": model,
                "customer": {"name": "Cara Customer", "email": "cara@example.com"},
                "payment_method": card,
            },
        )
        assert response.status_code == 201, response.text
        booking: dict[str, Any] = response.json()
        return booking

    async def act(
        self, client: httpx.AsyncClient, booking: dict[str, Any], action: str, **body: Any
    ) -> httpx.Response:
        return await client.post(
            f"{BASE}/bookings/{booking['id']}/actions/{action}", json=body or None
        )

    async def do(
        self, client: httpx.AsyncClient, booking: dict[str, Any], action: str, **body: Any
    ) -> dict[str, Any]:
        response = await self.act(client, booking, action, **body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def get(self, booking: dict[str, Any]) -> dict[str, Any]:
        response = await self.admin.get(f"{BASE}/bookings/{booking['id']}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def transfers(self, booking: dict[str, Any]) -> list[Any]:
        return list(
            self.stack.stripe()
            .v1.transfers.list(params={"transfer_group": booking["transfer_group"], "limit": 100})
            .data
        )

    async def assert_books_match(self, currency: str) -> dict[str, int]:
        """Ledger == Stripe for platform, provider and venue, to the cent."""
        await self.stack.settle()
        found: dict[str, int] = {}
        for account in (None, self.provider_account, self.venue_account):
            balance = await asyncio.to_thread(
                lambda a=account: self.stack.stripe(a).v1.balance.retrieve()
            )
            stripe_side = sum(
                entry.amount
                for entry in [*balance.available, *balance.pending]
                if entry.currency == currency
            )
            name = account or "platform"
            ledger = (await self.stack.balance(name, currency)).amount
            assert ledger == stripe_side, f"{name}: ledger {ledger} != Stripe {stripe_side}"
            found[name] = ledger
        await self.stack.assert_ledger_balanced()
        # And the engine's reconciliation matches every balance transaction one to one.
        run = await run_reconciliation(self.stack.services, trigger="test")
        assert run.problems == 0, run.problem_items()
        return found


async def onboard(stack: Stack, role: str, bank: str | None = None) -> str:
    """A connected account through the API, onboarded at the sandbox's hosted page."""
    created = await stack.http.post(
        "/v1/accounts",
        json={"role": role, "display_name": f"{role} Ltd", "email": f"{role}@example.com"},
    )
    assert created.status_code == 201, created.text
    account_id = str(created.json()["account"]["id"])
    if bank is not None:  # the holder types their bank details during onboarding
        stack.stripe().v1.accounts.external_accounts.create(
            account_id, params={"external_account": _bank(bank)}
        )
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await stack.settle()
    account = (await stack.http.get(f"/v1/accounts/{account_id}")).json()
    if account["status"] != "active":
        # The sandbox delivers concurrently: the creation-time account.updated can land
        # after the onboarding one within the same second and win (see the report).
        # Re-reading the account from Stripe settles it.
        refreshed = await stack.http.post(f"/v1/accounts/{account_id}/refresh")
        assert refreshed.json()["status"] == "active", refreshed.text
    return account_id


async def open_spa(
    stack: Stack, *, price: int = 10_000, currency: str = "gbp", venue_bank: str | None = None
) -> Spa:
    provider_account = await onboard(stack, "provider")
    venue_account = await onboard(stack, "venue", venue_bank)
    admin = stack.http
    service = await admin.post(
        f"{BASE}/services",
        json={
            "name": "Hot stone massage",
            "service_type": "massage",
            "duration_minutes": 60,
            "price": price,
            "currency": currency,
        },
    )
    assert service.status_code == 201, service.text
    provider = await admin.post(
        f"{BASE}/providers",
        json={"account_id": provider_account, "display_name": "Ana Therapist"},
    )
    venue = await admin.post(
        f"{BASE}/venues", json={"account_id": venue_account, "display_name": "Seaside Spa"}
    )
    assert provider.status_code == 201, provider.text
    assert venue.status_code == 201, venue.text
    # Registering again updates and answers 200 with the same provider.
    again = await admin.post(
        f"{BASE}/providers",
        json={"account_id": provider_account, "display_name": "Ana Therapist"},
    )
    assert (again.status_code, again.json()["id"]) == (200, provider.json()["id"]), again.text
    agreement = await admin.put(
        f"{BASE}/providers/{provider.json()['id']}/agreements",
        json={"service_type": "massage", "rate_bps": 6000},
    )
    assert agreement.status_code == 200, agreement.text
    return Spa(
        stack=stack,
        customer=stack.client_for(await stack.create_key("service")),
        provider=stack.client_for(await stack.create_key("account", provider_account)),
        venue=stack.client_for(await stack.create_key("account", venue_account)),
        provider_account=provider_account,
        venue_account=venue_account,
        service_id=service.json()["id"],
        provider_id=provider.json()["id"],
        venue_id=venue.json()["id"],
    )


def shares(booking: dict[str, Any]) -> dict[str, int]:
    return {leg["role"]: leg["amount"] for leg in booking["split"]["legs"]}


# ---------------------------------------------------------------- payment models


@pytest.mark.parametrize(("currency", "price"), [("gbp", 10_000), ("eur", 8_900), ("jpy", 12_000)])
async def test_full_prepayment(stack: Stack, currency: str, price: int) -> None:
    spa = await open_spa(stack, price=price, currency=currency)
    booking = await spa.book("full")
    assert (booking["state"], booking["collected"], booking["currency"]) == (
        "paid",
        price,
        currency,
    )
    assert booking["allowed_actions"] == ["cancel"]
    assert (await spa.do(spa.provider, booking, "confirm"))["state"] == "confirmed"
    settled = await spa.do(spa.venue, booking, "complete")
    assert settled["state"] == "settled"
    legs = shares(settled)
    assert sum(legs.values()) == price
    assert legs["platform"] == price * 12 // 100
    transfers = {t.metadata["role"]: t for t in spa.transfers(booking)}
    assert {role: t.amount for role, t in transfers.items()} == {
        "provider": legs["provider"],
        "venue": legs["venue"],
    }
    assert {t.metadata["idempotency_key"] for t in transfers.values()} == {
        f"booking:{booking['id']}:transfer:provider",
        f"booking:{booking['id']}:transfer:venue",
    }
    balances = await spa.assert_books_match(currency)
    assert balances[spa.provider_account] == legs["provider"]
    assert balances[spa.venue_account] == legs["venue"]

    # Settling again is refused, and running the timers moves nothing.
    again = await spa.act(spa.admin, booking, "settle")
    assert again.status_code == 409
    problem = again.json()
    assert problem["code"] == "illegal_transition"
    assert (problem["state"], problem["allowed"]) == ("settled", ["refund"])
    assert (await spa.admin.post(f"{BASE}/timers/run")).json() == []
    assert len(spa.transfers(booking)) == 2

    reconciliation = (
        await spa.admin.get(f"{BASE}/bookings/{booking['id']}/reconciliation?check=true")
    ).json()
    assert reconciliation["problems"] == []
    kinds = sorted(obj["type"] for obj in reconciliation["objects"])
    assert kinds == sorted(
        ["customer", "payment_intent", "charge", "stripe_fee", "transfer", "transfer"]
    )


async def test_deposit_then_balance(stack: Stack) -> None:
    spa = await open_spa(stack, price=15_000)
    booking = await spa.book("deposit")
    assert (booking["state"], booking["deposit_amount"], booking["collected"]) == (
        "deposit_paid",
        3_000,
        3_000,
    )
    await spa.do(spa.venue, booking, "confirm")
    settled = await spa.do(spa.provider, booking, "complete")
    assert (settled["state"], settled["collected"]) == ("settled", 15_000)
    paid: dict[str, int] = {}
    for transfer in spa.transfers(booking):
        paid[transfer.metadata["role"]] = paid.get(transfer.metadata["role"], 0) + transfer.amount
    legs = shares(settled)
    assert paid == {"provider": legs["provider"], "venue": legs["venue"]}
    await spa.assert_books_match("gbp")


async def test_pay_on_arrival_authorised_and_far_away(stack: Stack) -> None:
    spa = await open_spa(stack)
    soon = await spa.book("arrival")
    assert (soon["state"], soon["collected"]) == ("authorized", 0)
    far = await spa.book("arrival", starts_in=timedelta(days=9))
    # Nine days ahead nothing is held on the card: the state says so.
    assert (far["state"], far["collected"]) == ("card_saved", 0)
    intents = stack.stripe().v1.payment_intents.list(params={"limit": 10}).data
    assert [i.capture_method for i in intents] == ["manual"]  # only the near one is authorised
    for booking in (soon, far):
        await spa.do(spa.provider, booking, "confirm")
    assert (await spa.do(spa.provider, soon, "complete"))["state"] == "settled"
    early = await spa.act(spa.provider, far, "complete")
    assert early.status_code == 409
    assert early.json()["state"] == "confirmed"
    # The operator completes it (the service was moved earlier): an off-session charge.
    assert (await spa.do(spa.admin, far, "complete"))["state"] == "settled"
    await spa.assert_books_match("gbp")


async def test_complete_with_an_amount_is_refused_not_captured_in_full(stack: Stack) -> None:
    # complete {"amount": 7000} answered 200 settled and Stripe captured the whole 10001.
    spa = await open_spa(stack)
    booking = await spa.book("arrival")
    await spa.do(spa.provider, booking, "confirm")
    refused = await spa.act(spa.provider, booking, "complete", amount=7000)
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert (problem["code"], problem["field"]) == ("field_not_applicable", "amount")
    assert (problem["action"], problem["state"]) == ("complete", "confirmed")
    unknown = await spa.act(spa.provider, booking, "complete", amount_to_capture=7000)
    assert unknown.status_code == 422, unknown.text
    assert [e["field"] for e in unknown.json()["errors"]] == ["amount_to_capture"]
    after = await spa.get(booking)
    assert (after["state"], after["collected"]) == ("confirmed", 0)
    intents = stack.stripe().v1.payment_intents.list(params={"limit": 10}).data
    assert [i.amount_received for i in intents] == [0]  # nothing captured
    assert (await spa.do(spa.provider, booking, "complete"))["state"] == "settled"


async def test_failed_settlement_is_retried_and_transfers_once(stack: Stack) -> None:
    spa = await open_spa(stack)
    booking = await spa.book("full")
    await spa.do(spa.provider, booking, "confirm")
    await stack.settle()  # no webhook handler may take the fault meant for the settlement
    stack.sandbox.control("POST", "/_sandbox/faults", status=500, count=1)
    completed = await spa.do(spa.provider, booking, "complete")
    assert completed["state"] == "completed"  # Stripe failed; the settlement waits on its timer
    ran = (await spa.admin.post(f"{BASE}/timers/run")).json()
    assert ran == [{"booking_id": booking["id"], "transition": "settle", "outcome": "settled"}]
    assert (await spa.admin.post(f"{BASE}/timers/run")).json() == []
    assert len(spa.transfers(booking)) == 2
    await spa.assert_books_match("gbp")


# ---------------------------------------------------------------- cancellation and refunds


async def test_cancellation_in_each_policy_window(stack: Stack) -> None:
    spa = await open_spa(stack)
    early = await spa.book("full", starts_in=timedelta(days=3))
    late = await spa.book("deposit", starts_in=timedelta(hours=20))
    no_show = await spa.book("arrival")

    cancelled = await spa.do(spa.customer, early, "cancel", reason="plans changed")
    assert (cancelled["state"], cancelled["collected"], cancelled["refunded"]) == (
        "cancelled",
        0,
        10_000,
    )
    assert spa.transfers(early) == []

    kept = await spa.do(spa.customer, late, "cancel")
    assert (kept["state"], kept["collected"], kept["refunded"]) == ("cancelled", 2_000, 0)
    assert sum(t.amount for t in spa.transfers(late)) == 2_000 - 240

    await spa.do(spa.venue, no_show, "confirm")
    missed = await spa.do(spa.venue, no_show, "no_show")
    assert (missed["state"], missed["collected"]) == ("settled", 10_000)

    trail = (await spa.customer.get(f"{BASE}/bookings/{late['id']}/transitions")).json()
    cancel = next(entry for entry in trail if entry["transition"] == "cancel")
    assert cancel["actor"] == "customer"
    assert cancel["data"]["cancellation_fee"]["amount"] == 2_000
    await spa.assert_books_match("gbp")


async def test_partial_refund_split_proportionally(stack: Stack) -> None:
    spa = await open_spa(stack, price=9_999)
    booking = await spa.book("full")
    await spa.do(spa.provider, booking, "confirm")
    await spa.do(spa.provider, booking, "complete")
    response = await spa.provider.post(
        f"{BASE}/bookings/{booking['id']}/actions/refund",
        json={"amount": 3_333, "reason": "shortened"},
        headers={"Idempotency-Key": "shorten-1"},
    )
    assert response.status_code == 200, response.text
    refunded = response.json()
    assert (refunded["state"], refunded["refunded"]) == ("partially_refunded", 3_333)
    # The refund's Stripe key names the request: the API key and its Idempotency-Key.
    key = await stack.services.db.pool.fetchval(
        "SELECT idempotency_key FROM three_sided_bookings_refunds"
    )
    assert ":refund:" in key
    assert ":request:" in key
    assert key.endswith(":shorten-1")
    reversed_total = sum(t.amount_reversed for t in spa.transfers(booking))
    legs = shares(booking)
    platform_part = 3_333 - reversed_total  # within one unit of its exact share
    assert abs(platform_part * 9_999 - 3_333 * legs["platform"]) < 9_999
    too_much = await spa.act(spa.admin, booking, "refund", amount=10_000)
    assert too_much.status_code == 409
    assert too_much.json()["allowed"] == ["refund"]
    balances = await spa.assert_books_match("gbp")
    assert balances[spa.provider_account] + balances[spa.venue_account] == (
        legs["provider"] + legs["venue"] - reversed_total
    )

    # The provider's own key ties Stripe's objects to the booking.
    seen = (await spa.provider.get(f"{BASE}/bookings/{booking['id']}")).json()["stripe"]
    [charge] = seen["charges"]
    intent = stack.stripe().v1.payment_intents.retrieve(charge["payment_intent"])
    assert (charge["charge"], charge["captured"], charge["refunded"]) == (
        intent.latest_charge,
        9_999,
        3_333,
    )
    stripe_transfers = {t.id: t for t in spa.transfers(booking)}
    assert {t["transfer"] for t in seen["transfers"]} == set(stripe_transfers)
    for transfer in seen["transfers"]:
        made = stripe_transfers[transfer["transfer"]]
        assert (transfer["account_id"], transfer["amount"], transfer["amount_reversed"]) == (
            made.destination,
            made.amount,
            made.amount_reversed,
        )
    [refund] = seen["refunds"]
    assert (
        refund["refund"]
        == stack.stripe().v1.refunds.list(params={"charge": intent.latest_charge}).data[0].id
    )
    assert sum(r["amount"] for r in seen["reversals"]) == reversed_total
    # And its reconciliation view (the booking's Stripe objects against its ledger).
    own = await spa.provider.get(f"{BASE}/bookings/{booking['id']}/reconciliation")
    assert own.status_code == 200, own.text
    stranger = stack.client_for(await stack.create_key("account", await onboard(stack, "venue")))
    hidden = await stranger.get(f"{BASE}/bookings/{booking['id']}/reconciliation")
    assert hidden.status_code == 404, hidden.text
    assert {r["transfer"] for r in seen["reversals"]} <= set(stripe_transfers)


async def test_a_booking_refunded_in_stripe_ends_where_an_api_refund_would(stack: Stack) -> None:
    """Refunds made in Stripe's dashboard (the SDK on the booking's PaymentIntent) move the
    booking as the API's refund would: part refunded -> ``partially_refunded``, the rest
    -> ``refunded``; a booking not settled yet and refunded in full -> ``refunded`` (so
    completion charges nothing again); one refunded in part before settlement stays."""
    spa = await open_spa(stack, price=10_000)
    client = stack.stripe()

    async def refund_in_stripe(booking: dict[str, Any], amount: int | None = None) -> None:
        [charge] = (await spa.get(booking))["stripe"]["charges"]
        params: dict[str, Any] = {"payment_intent": charge["payment_intent"]}
        if amount is not None:
            params["amount"] = amount
        await asyncio.to_thread(client.v1.refunds.create, params=params)
        await stack.settle()

    settled = await spa.book("full")
    await spa.do(spa.provider, settled, "confirm")
    assert (await spa.do(spa.provider, settled, "complete"))["state"] == "settled"
    await refund_in_stripe(settled, 2_500)
    shown = await spa.get(settled)
    assert (shown["state"], shown["refunded"], shown["collected"]) == (
        "partially_refunded",
        2_500,
        7_500,
    )
    assert shown["allowed_actions"] == ["refund"]
    await refund_in_stripe(settled)
    shown = await spa.get(settled)
    assert (shown["state"], shown["refunded"], shown["collected"]) == ("refunded", 10_000, 0)
    assert shown["allowed_actions"] == []
    trail = (await spa.admin.get(f"{BASE}/bookings/{settled['id']}/transitions")).json()
    assert [(t["transition"], t["actor"], t["to_state"]) for t in trail[-2:]] == [
        ("refunded_in_stripe", "system", "partially_refunded"),
        ("refunded_in_stripe", "system", "refunded"),
    ]

    early = await spa.book("full", starts_in=timedelta(days=3))
    await spa.do(spa.provider, early, "confirm")
    await refund_in_stripe(early)
    shown = await spa.get(early)
    assert (shown["state"], shown["refunded"], shown["collected"]) == ("refunded", 10_000, 0)
    assert (await spa.act(spa.provider, early, "complete")).status_code == 409

    part = await spa.book("full", starts_in=timedelta(days=3))
    await spa.do(spa.provider, part, "confirm")
    await refund_in_stripe(part, 1_000)
    shown = await spa.get(part)
    assert (shown["state"], shown["refunded"], shown["collected"]) == ("confirmed", 1_000, 9_000)
    # Completed later, it collects what is left, not the part refunded again.
    shown = await spa.do(spa.admin, part, "complete")
    assert (shown["state"], shown["refunded"], shown["collected"]) == ("settled", 1_000, 9_000)
    assert len(shown["stripe"]["charges"]) == 1
    paid = sum(t.amount for t in spa.transfers(part))
    assert paid == 9_000 - shares(part)["platform"] * 9_000 // 10_000

    accounts = ("platform", spa.provider_account, spa.venue_account)
    await stack.assert_ledger_is_stripe(*accounts, currency="gbp")
    await spa.assert_books_match("gbp")


async def test_movements_made_outside_the_engine_for_a_booking_are_named_by_it(
    stack: Stack,
) -> None:
    """``resolve_movement_meaning``: a charge and a transfer made directly in Stripe with
    the booking's ``transfer_group`` (a tip taken at the venue's terminal and passed on
    to the provider, say) are posted under the booking (``booking:<id>``, plugin
    ``three_sided_bookings``), so its statement and the finance panel count them; a
    refund of such a charge made in Stripe too. Ledger = Stripe."""
    spa = await open_spa(stack, price=10_000)
    booking = await spa.book("full")
    await spa.do(spa.provider, booking, "confirm")
    await spa.do(spa.provider, booking, "complete")
    client = stack.stripe()

    def outside() -> tuple[str, str, str]:
        intent = client.v1.payment_intents.create(
            params={
                "amount": 1_500,
                "currency": "gbp",
                "payment_method": "pm_card_visa",
                "confirm": True,
                "transfer_group": booking["transfer_group"],
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            }
        )
        charge = str(intent.latest_charge)
        transfer = client.v1.transfers.create(
            params={
                "amount": 1_000,
                "currency": "gbp",
                "destination": spa.provider_account,
                "source_transaction": charge,
                "transfer_group": booking["transfer_group"],
            }
        )
        refund = client.v1.refunds.create(params={"charge": charge, "amount": 200})
        return charge, str(transfer.id), str(refund.id)

    charge, transfer, refund = await asyncio.to_thread(outside)
    await stack.settle()
    keys = [f"charge:{charge}", f"transfer:{transfer}", f"refund:{refund}"]
    rows = await stack.services.db.pool.fetch(
        "SELECT idempotency_key, reference, plugin FROM marketplace_ledger_transactions "
        "WHERE idempotency_key = ANY($1::text[])",
        keys,
    )
    named = {row["idempotency_key"]: (row["reference"], row["plugin"]) for row in rows}
    assert named == dict.fromkeys(keys, (f"booking:{booking['id']}", TSB))
    accounts = ("platform", spa.provider_account, spa.venue_account)
    await stack.assert_ledger_is_stripe(*accounts, currency="gbp")


# ---------------------------------------------------------------- disputes


@pytest.mark.parametrize("outcome", ["won", "lost"])
async def test_dispute(stack: Stack, outcome: str) -> None:
    spa = await open_spa(stack)
    booking = await spa.book("arrival", card="pm_card_createDispute")
    await spa.do(spa.provider, booking, "confirm")
    await spa.do(spa.provider, booking, "complete")  # captured: the dispute opens
    await spa.customer.post(
        f"{BASE}/bookings/{booking['id']}/messages", json={"text": "See you at 10!"}
    )
    await stack.settle()
    disputed = await spa.get(booking)
    assert disputed["state"] == "disputed"
    assert disputed["allowed_actions"] == ["submit_evidence"]
    evidence = "winning_evidence" if outcome == "won" else "losing_evidence"
    await spa.do(spa.admin, booking, "submit_evidence", statement=f"Attended. {evidence}")
    await stack.settle()
    final = await spa.get(booking)
    disputes = stack.stripe().v1.disputes.list(params={"limit": 5}).data
    assert [d.status for d in disputes] == [outcome]
    assert disputes[0].evidence.service_date == booking["starts_at"][:10]
    assert "See you at 10!" in disputes[0].evidence.uncategorized_text
    # The booking's record went as a PDF upload too, which Stripe serves back.
    record = stack.stripe().v1.files.retrieve(disputes[0].evidence.uncategorized_file)
    assert (record.purpose, record.type) == ("dispute_evidence", "pdf")
    pdf = httpx.get(record.url, headers={"Authorization": "Bearer sk_test_x"})
    assert pdf.content.startswith(b"%PDF-")
    assert b"See you at 10!" in pdf.content
    balances = await spa.assert_books_match("gbp")
    legs = shares(booking)
    if outcome == "won":
        assert final["state"] == "settled"
        assert balances[spa.venue_account] == legs["venue"]
    else:
        assert final["state"] == "dispute_lost"
        assert (balances[spa.provider_account], balances[spa.venue_account]) == (0, 0)


# ---------------------------------------------------------------- payout failure


async def test_venue_payout_fails_then_recovers(stack: Stack) -> None:
    spa = await open_spa(stack, venue_bank=FAILING_BANK)
    schedule = await spa.admin.put(
        f"{BASE}/payout-schedules/{spa.venue_account}", json={"interval": "daily"}
    )
    assert schedule.status_code == 200, schedule.text
    first = await spa.book("full")
    await spa.do(spa.provider, first, "confirm")
    await spa.do(spa.provider, first, "complete")
    await stack.advance(3 * DAY)  # funds available; the venue's payout fails at midnight
    account = (await spa.admin.get(f"/v1/accounts/{spa.venue_account}")).json()
    assert account["payout_failure_code"] == "no_account"

    second = await spa.book("full")
    await spa.do(spa.provider, second, "confirm")
    held = await spa.do(spa.provider, second, "complete")
    legs = shares(held)
    assert (held["state"], held["held"]) == ("settled", legs["venue"])
    assert [t.metadata["role"] for t in spa.transfers(second)] == ["provider"]
    other = (await spa.venue.get(f"{BASE}/bookings")).json()["data"]
    assert {b["id"] for b in other} == {first["id"], second["id"]}
    await spa.assert_books_match("gbp")

    # The venue replaces its bank account at Stripe; payouts are enabled again.
    client = stack.stripe()
    [bank] = client.v1.accounts.external_accounts.list(spa.venue_account).data
    client.v1.accounts.external_accounts.delete(spa.venue_account, bank.id)
    client.v1.accounts.update(spa.venue_account, params={"external_account": _bank(GOOD_BANK)})
    await stack.settle()
    released = await spa.get(second)
    assert released["held"] == 0
    assert sorted(t.metadata["role"] for t in spa.transfers(second)) == ["provider", "venue"]
    await stack.advance(3 * DAY)
    balances = await spa.assert_books_match("gbp")
    assert balances[spa.venue_account] == 0
    paid_out = await stack.balance(f"{spa.venue_account}:bank", "gbp")
    assert paid_out.amount == 2 * legs["venue"]


# ---------------------------------------------------------------- access


async def test_the_audit_trail_names_every_key_that_acted_alike(stack: Stack) -> None:
    spa = await open_spa(stack)
    booking = await spa.book("full", starts_in=timedelta(days=3))
    await spa.do(spa.provider, booking, "confirm")
    trail = (await spa.stack.http.get(f"{BASE}/bookings/{booking['id']}/transitions")).json()

    def key_id(client: httpx.AsyncClient) -> str:
        return client.headers["Authorization"].removeprefix("Bearer mk_").split("_", 1)[0]

    assert [(t["transition"], t["actor"], t["actor_id"]) for t in trail] == [
        ("create", "customer", f"api_key:{key_id(spa.customer)}"),
        ("pay", "customer", f"api_key:{key_id(spa.customer)}"),
        ("confirm", "provider", f"api_key:{key_id(spa.provider)}"),
    ]


async def test_keys_see_only_their_bookings(stack: Stack) -> None:
    spa = await open_spa(stack)
    booking = await spa.book("full")
    stranger_account = await onboard(stack, "provider")
    stranger = stack.client_for(await stack.create_key("account", stranger_account))
    assert (await stranger.get(f"{BASE}/bookings/{booking['id']}")).status_code == 404
    assert (await stranger.get(f"{BASE}/bookings")).json()["data"] == []
    refused = await spa.act(stranger, booking, "confirm")
    assert refused.status_code == 404
    other_client = stack.client_for(await stack.create_key("service"))
    assert (await other_client.get(f"{BASE}/bookings/{booking['id']}")).status_code == 404
    assert (await spa.provider.get(f"{BASE}/bookings/{booking['id']}")).json()[
        "allowed_actions"
    ] == ["cancel", "confirm"]
    forbidden = await spa.provider.post(
        f"{BASE}/services",
        json={"name": "x", "service_type": "x", "duration_minutes": 5, "price": 100},
    )
    assert forbidden.status_code == 403
    wrong = await spa.act(spa.customer, booking, "complete")
    assert wrong.status_code == 409
    assert (wrong.json()["state"], wrong.json()["allowed"]) == ("paid", ["cancel"])


# ---------------------------------------------------------------- authentication (3D Secure)


@dataclass(frozen=True)
class Card:
    """What an authentication card does in a booking's payments."""

    declines: str | None  # the decline after authenticating on-session, if any
    later_asks: bool  # an off-session charge of the saved card needs the customer again
    setup_asks: bool  # saving it with a SetupIntent needs the customer


AUTH_CARDS = {
    "pm_card_authenticationRequiredOnSetup": Card(None, False, True),
    "pm_card_authenticationRequired": Card(None, True, True),
    "pm_card_authenticationRequiredSetupForOffSession": Card(None, False, False),
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": Card(
        "insufficient_funds", False, True
    ),
    "pm_card_threeDSecure2Required": Card(None, True, True),
}


async def book_and_authenticate(
    spa: Spa, model: str, card: str, spec: Card, *, starts_in: timedelta
) -> dict[str, Any]:
    """Book with the card; the customer completes what the answer asks, if anything."""
    booking = await spa.book(model, card=card, starts_in=starts_in)
    asks = model != "arrival" or spec.setup_asks
    if not asks:
        assert (booking["state"], booking["action_required"]) == ("card_saved", False)
        return booking
    assert (booking["state"], booking["action_required"]) == ("pending_payment", True)
    action = booking["customer_action"]
    assert action["status"] == "requires_action"
    assert action["intent_id"].startswith("seti_" if model == "arrival" else "pi_")
    assert action["next_action"]["type"] == "use_stripe_sdk"
    assert action["client_secret"].startswith(action["intent_id"] + "_secret_")
    assert booking["collected"] == 0
    await spa.stack.authenticate(action)
    return await spa.get(booking)


@pytest.mark.parametrize("card", sorted(AUTH_CARDS))
async def test_each_payment_model_with_an_authentication_card(stack: Stack, card: str) -> None:
    spec = AUTH_CARDS[card]
    spa = await open_spa(stack)
    soon, far = timedelta(minutes=10), timedelta(days=10)

    # Full prepayment: on-session, so the card asks; paid once the customer authenticated.
    full = await book_and_authenticate(spa, "full", card, spec, starts_in=soon)
    if spec.declines:
        assert (full["state"], full["collected"]) == ("pending_payment", 0)
        assert full["customer_action"]["status"] == "requires_payment_method"
        assert full["customer_action"]["reason"] == spec.declines
    else:
        assert (full["state"], full["collected"], full["action_required"]) == (
            "paid",
            10_000,
            False,
        )

    # Deposit now (on-session, card saved with it), the balance off-session at completion.
    deposit = await book_and_authenticate(spa, "deposit", card, spec, starts_in=soon)
    if spec.declines:
        assert deposit["state"] == "pending_payment"
    else:
        assert (deposit["state"], deposit["collected"]) == (
            "deposit_paid",
            deposit["deposit_amount"],
        )
        await spa.do(spa.provider, deposit, "confirm")
        done = await spa.do(spa.venue, deposit, "complete")
        await stack.settle()
        done = await spa.get(deposit)
        assert done["state"] == "settled"
        if spec.later_asks:
            # The balance needs the customer: the booking shows it and is settled for
            # the deposit only until the customer authenticates the balance.
            assert (done["action_required"], done["collected"]) == (True, done["deposit_amount"])
            await stack.authenticate(done["customer_action"])
            done = await spa.get(deposit)
        assert (done["action_required"], done["collected"]) == (False, 10_000)
        assert sum(t.amount for t in spa.transfers(done)) == sum(
            amount for role, amount in shares(done).items() if role != "platform"
        )

    # Pay on arrival, far away: the card saved with a SetupIntent, charged at completion,
    # and a no-show fee for a second such booking.
    arrival = await book_and_authenticate(spa, "arrival", card, spec, starts_in=far)
    assert (arrival["state"], arrival["collected"]) == ("card_saved", 0)
    await spa.do(spa.provider, arrival, "confirm")
    completed = await spa.act(spa.admin, arrival, "complete")
    if spec.declines:
        assert completed.status_code == 402, completed.text
        assert completed.json()["decline_code"] == spec.declines
    else:
        assert completed.status_code == 200, completed.text
        await stack.settle()
        done = await spa.get(arrival)
        assert done["action_required"] is spec.later_asks
        if spec.later_asks:
            await stack.authenticate(done["customer_action"])
            done = await spa.get(arrival)
        assert (done["state"], done["collected"], done["action_required"]) == (
            "settled",
            10_000,
            False,
        )
        absent = await book_and_authenticate(spa, "arrival", card, spec, starts_in=far)
        await spa.do(spa.provider, absent, "confirm")
        await spa.do(spa.admin, absent, "no_show")
        await stack.settle()
        absent = await spa.get(absent)
        if spec.later_asks:
            assert absent["action_required"] is True
            await stack.authenticate(absent["customer_action"])
            absent = await spa.get(absent)
        assert absent["collected"] > 0
        assert absent["action_required"] is False
    await spa.assert_books_match("gbp")


# ---------------------------------------------------------------- payability


async def test_no_booking_for_a_party_who_cannot_be_paid(stack: Stack) -> None:
    """A provider still onboarding, or a suspended venue: 409 naming them, nothing created."""
    spa = await open_spa(stack)
    created = await stack.http.post(
        "/v1/accounts",
        json={"role": "provider", "display_name": "New Hire", "email": "new@example.com"},
    )
    assert created.status_code == 201, created.text
    onboarding_account = str(created.json()["account"]["id"])
    newcomer = await stack.http.post(
        f"{BASE}/providers", json={"account_id": onboarding_account, "display_name": "New Hire"}
    )
    assert newcomer.status_code == 201, newcomer.text

    async def book(provider_id: int) -> httpx.Response:
        return await spa.customer.post(
            f"{BASE}/bookings",
            json={
                "service_id": spa.service_id,
                "provider_id": provider_id,
                "venue_id": spa.venue_id,
                "starts_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
                "payment_model": "full",
                "customer": {"name": "Cara Customer", "email": "cara@example.com"},
                "payment_method": "pm_card_visa",
            },
        )

    refused = await book(newcomer.json()["id"])
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["code"] == "account_not_ready"
    assert (problem["party"], problem["account_id"], problem["reason"]) == (
        "provider",
        onboarding_account,
        "onboarding",
    )
    assert onboarding_account in problem["detail"]

    suspended = await stack.http.post(
        f"/v1/accounts/{spa.venue_account}/suspend", json={"reason": "under investigation"}
    )
    assert suspended.status_code == 200, suspended.text
    refused = await book(spa.provider_id)
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert (problem["code"], problem["party"], problem["reason"]) == (
        "account_restricted",
        "venue",
        "suspended",
    )
    assert spa.venue_account in problem["detail"]

    # Nothing was created and nobody was charged.
    assert (await stack.http.get(f"{BASE}/bookings")).json()["data"] == []
    intents = stack.stripe().v1.payment_intents.list(params={"limit": 10}).data
    assert list(intents) == []

    resumed = await stack.http.post(f"/v1/accounts/{spa.venue_account}/resume")
    assert resumed.status_code == 200, resumed.text
    booked = await book(spa.provider_id)
    assert booked.status_code == 201, booked.text


async def test_a_booking_whose_payment_fails_is_not_created(stack: Stack) -> None:
    """Declined (402) or unknown (400 naming payment_method) card: no booking, no timer."""
    spa = await open_spa(stack)
    body = {
        "service_id": spa.service_id,
        "provider_id": spa.provider_id,
        "venue_id": spa.venue_id,
        "starts_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
        "payment_model": "full",
        "customer": {"name": "Cara Customer", "email": "cara@example.com"},
    }
    unknown = await spa.customer.post(
        f"{BASE}/bookings", json={**body, "payment_method": "pm_does_not_exist"}
    )
    assert unknown.status_code == 400, unknown.text
    assert (unknown.json()["code"], unknown.json()["field"]) == ("invalid_input", "payment_method")
    declined = await spa.customer.post(
        f"{BASE}/bookings", json={**body, "payment_method": "pm_card_chargeDeclined"}
    )
    assert declined.status_code == 402, declined.text
    assert "booking_id" not in declined.json()
    assert (await stack.http.get(f"{BASE}/bookings")).json()["data"] == []


# ---------------------------------------------------------------- timers on the test clock


async def test_timers_run_on_the_bookings_test_clock(stack: Stack) -> None:
    """Expiry and completion follow the booking's Stripe test clock, not this machine's."""
    spa = await open_spa(stack)
    stripe = stack.stripe()
    now = int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])
    clock = stripe.v1.test_helpers.test_clocks.create(params={"frozen_time": now})
    start = datetime.fromtimestamp(now, UTC) + timedelta(days=2)

    async def book(card: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "service_id": spa.service_id,
            "provider_id": spa.provider_id,
            "venue_id": spa.venue_id,
            "starts_at": start.isoformat(),
            "payment_model": "full",
            "customer": {"name": "Tess Clock", "test_clock": clock.id},
        }
        if card:
            body["payment_method"] = card
        response = await spa.customer.post(f"{BASE}/bookings", json=body)
        assert response.status_code == 201, response.text
        booking: dict[str, Any] = response.json()
        assert booking["test_clock"] == clock.id
        return booking

    async def advance(to: datetime) -> list[Any]:
        stripe.v1.test_helpers.test_clocks.advance(
            clock.id, params={"frozen_time": int(to.timestamp())}
        )
        await stack.settle()
        ran = await stack.http.post(f"{BASE}/timers/run")
        assert ran.status_code in {200, 201}, ran.text
        result: list[Any] = ran.json()
        return result

    unpaid = await book(None)
    paid = await book("pm_card_visa")
    intent = stripe.v1.payment_intents.retrieve(paid["stripe"]["charges"][0]["payment_intent"])
    customer = stripe.v1.customers.retrieve(str(intent.customer))
    assert customer.test_clock == clock.id
    await spa.do(spa.provider, paid, "confirm")

    # This machine's time does not move the bookings; the clock does.
    ran = await stack.http.post(f"{BASE}/timers/run")
    assert [r for r in ran.json() if r["booking_id"] in {unpaid["id"], paid["id"]}] == []
    assert (await spa.get(unpaid))["state"] == "pending_payment"
    await advance(datetime.fromtimestamp(now, UTC) + timedelta(minutes=31))
    assert (await spa.get(unpaid))["state"] == "cancelled"
    assert (await spa.get(paid))["state"] == "confirmed"
    trail = (await stack.http.get(f"{BASE}/bookings/{unpaid['id']}/transitions")).json()
    expired = datetime.fromisoformat(trail[-1]["created_at"])
    assert trail[-1]["transition"] == "expire"
    assert expired == datetime.fromtimestamp(now, UTC) + timedelta(minutes=31)

    # A day after the service ends (on the clock): completed, then settled.
    await advance(start + timedelta(hours=1, days=1, minutes=1))
    done = await spa.get(paid)
    assert done["state"] == "settled", done
    assert sum(t.amount for t in spa.transfers(done)) == sum(
        amount for role, amount in shares(done).items() if role != "platform"
    )


# ---------------------------------------------------------------- payout recovery


async def test_a_failed_payout_is_retried_once_the_bank_account_changes(stack: Stack) -> None:
    """The venue's own key: a dashboard link to change the bank, then the payout again."""
    spa = await open_spa(stack, venue_bank=FAILING_BANK)
    venue = spa.venue_account
    schedule = await spa.admin.put(f"{BASE}/payout-schedules/{venue}", json={"interval": "manual"})
    assert schedule.status_code == 200, schedule.text
    booking = await spa.book("full")
    await spa.do(spa.provider, booking, "confirm")
    assert (await spa.do(spa.provider, booking, "complete"))["state"] == "settled"
    await stack.advance(3 * DAY)  # the venue's share is available
    holder = stack.stripe(venue)
    [available] = [b for b in holder.v1.balance.retrieve().available if b.currency == "gbp"]
    failed = holder.v1.payouts.create(params={"amount": available.amount, "currency": "gbp"})
    await stack.advance(DAY)  # the bank refuses it
    assert holder.v1.payouts.retrieve(failed.id).status == "failed"

    path = f"/v1/accounts/{venue}/payouts/{failed.id}/retry"
    early = await spa.venue.post(path)
    assert early.status_code == 409, early.text
    assert (early.json()["code"], early.json()["reason"]) == (
        "account_restricted",
        "bank_account_errored",
    )
    link = await spa.venue.post(f"/v1/accounts/{venue}/dashboard-link")
    assert link.status_code == 201, link.text
    assert link.json()["url"].startswith("http")
    assert (await spa.provider.post(path)).status_code == 404  # not the provider's payout

    # The holder changes the bank account in the dashboard; Stripe enables payouts again.
    [bank] = holder.v1.accounts.external_accounts.list(venue).data
    stack.stripe().v1.accounts.external_accounts.delete(venue, bank.id)
    stack.stripe().v1.accounts.update(venue, params={"external_account": _bank(GOOD_BANK)})
    await stack.settle()
    retried = await spa.venue.post(path)
    assert retried.status_code == 201, retried.text
    again = await spa.venue.post(path)
    assert again.json()["payout"] == retried.json()["payout"] != failed.id
    assert retried.json()["amount"] == available.amount
    await stack.advance(2 * DAY)
    assert holder.v1.payouts.retrieve(retried.json()["payout"]).status == "paid"
    balances = await spa.assert_books_match("gbp")
    assert balances[venue] == 0
    assert (await stack.balance(f"{venue}:bank", "gbp")).amount == available.amount
    done = await spa.venue.post(path.replace(failed.id, retried.json()["payout"]))
    assert done.status_code == 409  # a paid payout is not retried


async def test_a_new_card_is_what_the_balance_is_charged_to(stack: Stack) -> None:
    """update_card replaces the saved card; the balance at completion is charged to it."""
    spa = await open_spa(stack, price=15_000)
    booking = await spa.book("deposit")
    updated = await spa.do(
        spa.customer, booking, "update_card", payment_method="pm_card_mastercard"
    )
    assert updated["state"] == "deposit_paid"  # nothing moves but the card
    trail = (await spa.admin.get(f"{BASE}/bookings/{booking['id']}/transitions")).json()
    replaced = trail[-1]["data"]["replaced_card"]
    assert replaced["card"] != replaced["previous"]
    refused = await spa.act(spa.provider, booking, "update_card", payment_method="pm_card_visa")
    assert refused.status_code == 409  # only the customer gives a card
    await spa.do(spa.venue, booking, "confirm")
    settled = await spa.do(spa.provider, booking, "complete")
    assert (settled["state"], settled["collected"]) == ("settled", 15_000)
    balance = [c for c in settled["stripe"]["charges"] if c["kind"] == "balance"]
    intent = stack.stripe().v1.payment_intents.retrieve(balance[0]["payment_intent"])
    assert intent.payment_method == replaced["card"]
    card = stack.stripe().v1.payment_methods.retrieve(replaced["card"])
    assert card.card.brand == "mastercard"
    await spa.assert_books_match("gbp")
