"""three_sided_bookings services against the sandbox and PostgreSQL (no HTTP, no NATS).

Each test runs the booking service on a fresh database with a fresh sandbox;
Stripe's events are replayed through the engine's dispatcher (core handlers,
then the plugin's) inside a transaction per event, as the worker does, and
every event is delivered twice to prove the handlers idempotent. After each
scenario the ledger must agree with the sandbox's balances to the cent for
the platform, the provider and the venue.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.core.errors import (
    CardDeclined,
    Conflict,
    FieldNotApplicable,
    IllegalTransition,
    InsufficientBalance,
    InvalidInput,
    MarketplaceError,
)
from engine.core.ledger import Ledger
from engine.core.settings import settings_from_mapping
from engine.payments import movements
from engine.reconciliation.service import run_reconciliation
from engine.sandbox.testing import RunningSandbox, running_sandbox, verified_account_params
from engine.services import Services
from engine.worker.dispatch import Dispatcher
from engine.worker.handlers import core_registrations
from plugins.three_sided_bookings import payments
from plugins.three_sided_bookings.bookings import BookingService
from plugins.three_sided_bookings.catalog import Catalog
from plugins.three_sided_bookings.config import PLUGIN
from plugins.three_sided_bookings.context import ActionParams
from plugins.three_sided_bookings.legacy import adopt_legacy_holds
from plugins.three_sided_bookings.schemas import (
    AgreementInput,
    CustomerInput,
    NewBooking,
    NewProvider,
    NewService,
    NewVenue,
    PayoutScheduleInput,
    VenueTermsInput,
)
from plugins.three_sided_bookings.store import BookingRecord, load_booking

TSB = "three_sided_bookings"
FAILING_BANK = "000111111116"  # Stripe's test account number: payouts fail with no_account
START = datetime.now(UTC).replace(microsecond=0)


class Clock:
    """A clock the test moves (the booking service's; the sandbox has its own)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Env:
    """A booking service on a fresh database, a sandbox, and event replay."""

    services: Services
    sandbox: RunningSandbox
    clock: Clock
    bookings: BookingService
    catalog: Catalog
    accounts: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger

    def stripe(self, method: str, path: str, account: str | None = None, **params: Any) -> Any:
        headers = {"Authorization": "Bearer sk_test_tsb"}
        if account:
            headers["Stripe-Account"] = account
        response = self.sandbox.http.request(
            method,
            self.sandbox.url + path,
            params=params if method == "GET" else None,
            data=params if method == "POST" and params else None,
            headers=headers,
        )
        response.raise_for_status()
        return response.json()

    async def account(self, role: str, bank: str = "000123456789", country: str = "US") -> str:
        client = self.sandbox.client()
        created = client.v1.accounts.create(params=verified_account_params(bank))
        account_id = str(created.id)
        async with self.services.db.pool.acquire() as conn:
            await conn.execute(
                """
                INSERT INTO marketplace_accounts
                    (stripe_account_id, role, display_name, email, country, default_currency,
                     status, charges_enabled, payouts_enabled, details_submitted,
                     requirements_due, suspended, stripe_updated_at, created_at, updated_at)
                VALUES ($1, $2, $3, '', $4, 'usd', 'active', true, true, true, '[]'::jsonb,
                        false, 0, now(), now())
                """,
                account_id,
                role,
                f"{role} {account_id[-4:]}",
                country,
            )
        self.accounts.append(account_id)
        return account_id

    async def catalogue(
        self, *, price: int = 10_000, currency: str = "gbp", provider_bps: int = 6000
    ) -> tuple[int, int, int]:
        service = await self.catalog.create_service(
            NewService(
                name="Deep tissue massage",
                service_type="massage",
                duration_minutes=60,
                price=price,
                currency=currency,
            )
        )
        provider, _ = await self.catalog.add_provider(
            NewProvider(account_id=await self.account("provider"), display_name="Ana Therapist")
        )
        venue, _ = await self.catalog.add_venue(
            NewVenue(
                account_id=await self.account("venue"),
                display_name="Seaside Spa",
                address="1 Promenade",
            )
        )
        await self.catalog.set_agreement(
            provider.id, AgreementInput(service_type="massage", rate_bps=provider_bps)
        )
        return service.id, provider.id, venue.id

    async def book(
        self,
        ids: tuple[int, int, int],
        model: str,
        *,
        starts_in: timedelta = timedelta(days=3),
        card: str | None = "pm_card_visa",
    ) -> BookingRecord:
        service_id, provider_id, venue_id = ids
        return await self.bookings.create(
            NewBooking(
                service_id=service_id,
                provider_id=provider_id,
                venue_id=venue_id,
                starts_at=self.clock.now + starts_in,
                payment_model=model,  # type: ignore[arg-type]
                customer=CustomerInput(name="Cara Customer", email="cara@example.com"),
                payment_method=card,
            ),
            created_by="test",
        )

    async def act(self, booking: BookingRecord, name: str, actor: str, **params: Any) -> str:
        record = await self.bookings.act(
            booking.id, name, actor, actor_id=f"test-{actor}", params=ActionParams(**params)
        )
        return record.state

    async def state(self, booking: BookingRecord) -> str:
        return (await self.bookings.get_record(booking.id)).state

    async def deliver_events(self) -> int:
        """Replay every new event (platform, then each account) twice through the handlers."""
        dispatcher = Dispatcher(
            self.services, [*core_registrations(), *self.services.plugins.webhook_handlers()]
        )
        handled = 0
        for account in [None, *self.accounts]:
            for event in self._new_events(account):
                for _ in range(2):  # Stripe delivers duplicates; handlers must not care
                    async with self.services.db.pool.acquire() as conn:
                        async with conn.transaction():
                            contexts = await dispatcher.handle(event, conn)
                        for ctx in contexts:
                            ctx.run_after_commit()
                handled += 1
        return handled

    def _new_events(self, account: str | None) -> Iterator[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if after:
                params["starting_after"] = after
            page = self.stripe("GET", "/v1/events", account, **params)
            events += page["data"]
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        for event in reversed(events):  # oldest first
            if event["id"] not in self.seen:
                self.seen.add(event["id"])
                yield event

    def sandbox_balance(self, account: str | None, currency: str) -> int:
        balance = self.stripe("GET", "/v1/balance", account)
        return sum(
            entry["amount"]
            for bucket in ("available", "pending")
            for entry in balance[bucket]
            if entry["currency"] == currency
        )

    async def assert_ledger_matches_sandbox(self, currency: str) -> dict[str, int]:
        """Ledger == Stripe for the platform and every connected account, to the cent,
        and one ledger transaction per Stripe balance transaction."""
        await self.deliver_events()
        found: dict[str, int] = {}
        for account in [None, *self.accounts]:
            name = account or "platform"
            ledger = (await self.ledger.balance(name, currency)).amount
            stripe_side = self.sandbox_balance(account, currency)
            assert ledger == stripe_side, f"{name}: ledger {ledger} != Stripe {stripe_side}"
            found[name] = ledger
            await self.assert_mirrors_balance_transactions(account, currency)
        assert await self.ledger.unbalanced_transactions() == []
        return found

    def balance_transactions(self, account: str | None, currency: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = None
        while True:
            params: dict[str, Any] = {"limit": 100, "currency": currency}
            if after:
                params["starting_after"] = after
            page = self.stripe("GET", "/v1/balance_transactions", account, **params)
            found += page["data"]
            if not page["has_more"]:
                return found
            after = page["data"][-1]["id"]

    async def assert_mirrors_balance_transactions(self, account: str | None, currency: str) -> None:
        """Each Stripe balance transaction has one ledger transaction: same net, same fee,
        and (on the platform) the same Stripe object."""
        name = account or "platform"
        rows = await self.fetch(
            """
            SELECT t.stripe_object_id,
                   sum(e.amount) FILTER (WHERE e.account = $1) AS net,
                   COALESCE(sum(e.amount) FILTER (WHERE e.account = 'platform:stripe_fees'), 0)
                       AS fee
            FROM marketplace_ledger_transactions t
            JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
            WHERE e.currency = $2
            GROUP BY t.id
            HAVING bool_or(e.account = $1)
            """,
            name,
            currency,
        )
        txns = self.balance_transactions(account, currency)
        if account is None:
            ledger = sorted((r["stripe_object_id"], int(r["net"]), int(r["fee"])) for r in rows)
            stripe_side = sorted((t["source"], t["net"], t["fee"]) for t in txns)
        else:
            ledger = sorted((int(r["net"]), 0) for r in rows)
            stripe_side = sorted((t["net"], t["fee"]) for t in txns)
        assert ledger == stripe_side, f"{name}: ledger {ledger} != Stripe {stripe_side}"

    def transfers(self, booking: BookingRecord) -> list[dict[str, Any]]:
        page = self.stripe(
            "GET", "/v1/transfers", None, transfer_group=booking.transfer_group, limit=100
        )
        return list(page["data"])

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async with self.services.db.pool.acquire() as conn:
            return list(await conn.fetch(query, *args))


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as running:
        yield running


def _settings(database_url: str, sandbox_url: str, **section: Any) -> Any:
    return settings_from_mapping(
        {
            "database": {"url": database_url, "pool_min": 1, "pool_max": 6},
            "stripe": {
                "secret_key": "sk_test_tsb",
                "api_base": sandbox_url,
                "max_network_retries": 0,
            },
            "plugins": {
                "enabled": ["commission_rules", TSB],
                "commission_rules": {
                    "rules": [
                        {"id": "default", "rate_bps": 1000},
                        {"id": "spa", "rate_bps": 1200, "scope": {"plugin": TSB}},
                    ]
                },
                TSB: section,
            },
        }
    )


@pytest.fixture
async def make_env(fresh_database_url: str, sandbox: RunningSandbox) -> AsyncIterator[Any]:
    opened: list[Services] = []

    async def make(**section: Any) -> Env:
        services = await Services.start(
            _settings(fresh_database_url, sandbox.url, **section), connect_nats=False
        )
        opened.append(services)
        clock = Clock()
        return Env(
            services=services,
            sandbox=sandbox,
            clock=clock,
            bookings=BookingService(services, clock=clock),
            catalog=Catalog(services),
        )

    yield make
    for services in opened:
        await services.close()


@pytest.fixture
async def env(make_env: Any) -> Env:
    made: Env = await make_env()
    return made


def legs(booking: BookingRecord) -> dict[str, int]:
    return {leg["role"]: leg["amount"] for leg in booking.split["legs"]}


# ---------------------------------------------------------------- payment models


async def test_full_prepayment_settles_one_transfer_per_beneficiary(env: Env) -> None:
    ids = await env.catalogue(price=10_000, provider_bps=6000)
    booking = await env.book(ids, "full")
    assert booking.state == "paid"
    # 12 % platform (commission rule "spa"), then 60/40 of the net.
    assert legs(booking) == {"platform": 1200, "provider": 5280, "venue": 3520}
    assert booking.split["rule_id"] == "spa"
    assert await env.act(booking, "confirm", "provider") == "confirmed"
    with pytest.raises(IllegalTransition) as early:
        await env.act(booking, "complete", "provider")
    assert early.value.extra["state"] == "confirmed"
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "venue") == "settled"

    transfers = {t["metadata"]["role"]: t for t in env.transfers(booking)}
    assert {role: t["amount"] for role, t in transfers.items()} == {
        "provider": 5280,
        "venue": 3520,
    }
    [charge] = await env.fetch(
        "SELECT * FROM three_sided_bookings_charges WHERE booking = $1", booking.id
    )
    for role, transfer in transfers.items():
        assert transfer["source_transaction"] == charge["stripe_charge_id"]
        assert transfer["transfer_group"] == f"booking:{booking.id}"
        assert transfer["metadata"]["idempotency_key"] == f"booking:{booking.id}:transfer:{role}"
    [payment] = await env.fetch(
        "SELECT * FROM marketplace_payments WHERE reference = $1", f"booking:{booking.id}"
    )
    assert (payment["fee_amount"], payment["rule_id"], payment["status"]) == (
        1200,
        "spa",
        "succeeded",
    )
    assert payment["stripe_charge_id"] == charge["stripe_charge_id"]

    balances = await env.assert_ledger_matches_sandbox("gbp")
    fee = 10_000 * 29 // 1000 + 30  # the sandbox's 2.9 % + 30p on the platform's charge
    provider, venue = env.accounts
    assert balances == {"platform": 1200 - fee, provider: 5280, venue: 3520}
    history = [
        (t.transition, t.from_state, t.to_state, t.actor)
        for t in await env.bookings.transitions(booking.id)
    ]
    assert history == [
        ("create", "", "pending_payment", "customer"),
        ("pay", "pending_payment", "paid", "customer"),
        ("confirm", "paid", "confirmed", "provider"),
        ("complete", "confirmed", "completed", "venue"),
        ("settle", "completed", "settled", "system"),
    ]


async def test_deposit_then_balance_off_session(env: Env) -> None:
    ids = await env.catalogue(price=12_345)
    booking = await env.book(ids, "deposit")
    assert (booking.state, booking.deposit_amount) == ("deposit_paid", 2469)
    assert booking.saved_payment_method is not None
    await env.act(booking, "confirm", "venue")
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "provider") == "settled"
    charges = await env.fetch(
        "SELECT kind, captured, split FROM three_sided_bookings_charges WHERE booking = $1 "
        "ORDER BY id",
        booking.id,
    )
    assert [(c["kind"], c["captured"]) for c in charges] == [("deposit", 2469), ("balance", 9876)]
    transfers = env.transfers(booking)
    keys = sorted(t["metadata"]["idempotency_key"] for t in transfers)
    assert keys == sorted(
        f"booking:{booking.id}:transfer:{role}:{kind}"
        for role in ("provider", "venue")
        for kind in ("deposit", "balance")
    )
    by_role: dict[str, int] = {}
    for transfer in transfers:
        by_role[transfer["metadata"]["role"]] = (
            by_role.get(transfer["metadata"]["role"], 0) + transfer["amount"]
        )
    split = legs(booking)
    assert by_role == {"provider": split["provider"], "venue": split["venue"]}
    await env.assert_ledger_matches_sandbox("gbp")


async def test_pay_on_arrival_soon_is_authorised_then_captured(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "arrival", starts_in=timedelta(days=2))
    assert booking.state == "authorized"
    [auth] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    assert (auth["kind"], auth["status"], auth["captured"]) == (
        "authorization",
        "requires_capture",
        0,
    )
    assert env.sandbox_balance(None, "gbp") == 0  # nothing moves before capture
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=2)
    assert await env.act(booking, "complete", "provider") == "settled"
    [captured] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    assert (captured["status"], captured["captured"]) == ("succeeded", 10_000)
    await env.assert_ledger_matches_sandbox("gbp")


async def test_a_charge_rows_status_only_moves_forward(env: Env) -> None:
    """A booking's charge row follows Stripe's status forward only (the engine's
    ``PAYMENT_STATUS_ORDER``): a status read before a release or a capture committed
    never takes it back."""
    ids = await env.catalogue()
    booking = await env.book(ids, "arrival", starts_in=timedelta(days=2))
    assert await env.act(booking, "cancel", "customer") == "cancelled"  # released

    async def write(status: str) -> str:
        async with env.services.db.pool.acquire() as conn, conn.transaction():
            [charge] = await payments.load_charges(conn, booking.id)
            ctx = env.bookings.context(conn, await load_booking(conn, booking.id))
            await payments._set_charge_status(ctx, charge, status)
            [row] = await conn.fetch("SELECT status FROM three_sided_bookings_charges")
            return str(row["status"])

    assert await write("requires_capture") == "canceled"  # a stale read: kept
    assert await write("requires_action") == "canceled"
    assert await write("disputed") == "disputed"  # forward


async def test_a_field_the_action_does_not_use_is_refused_not_ignored(env: Env) -> None:
    # complete {"amount": 7000} used to capture the full price as if amount were absent.
    ids = await env.catalogue(price=10_001)
    booking = await env.book(ids, "arrival", starts_in=timedelta(days=2))
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=2)
    with pytest.raises(FieldNotApplicable) as refused:
        await env.act(booking, "complete", "provider", amount=7_000)
    assert refused.value.status == 422
    assert refused.value.extra["field"] == "amount"
    assert "complete" in refused.value.detail
    assert "confirmed" in refused.value.detail
    with pytest.raises(FieldNotApplicable, match="payment_method"):
        await env.act(booking, "complete", "provider", payment_method="pm_card_visa")
    [auth] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    assert (auth["status"], auth["captured"]) == ("requires_capture", 0)  # nothing captured
    assert await env.state(booking) == "confirmed"
    assert await env.act(booking, "complete", "provider", reason="done") == "settled"
    with pytest.raises(FieldNotApplicable, match="statement"):
        await env.act(booking, "refund", "provider", amount=1_000, statement="why")


async def test_pay_on_arrival_far_away_saves_the_card_and_charges_off_session(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "arrival", starts_in=timedelta(days=10))
    assert booking.state == "card_saved"  # nothing is held on the card ten days ahead
    assert booking.saved_payment_method is not None
    assert await env.fetch("SELECT * FROM three_sided_bookings_charges") == []
    await env.act(booking, "confirm", "venue")
    # Operators may complete early; the card is charged off-session.
    assert await env.act(booking, "complete", "admin") == "settled"
    [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    assert (charge["kind"], charge["captured"]) == ("arrival", 10_000)
    intent = env.stripe("GET", f"/v1/payment_intents/{charge['stripe_payment_intent_id']}")
    assert intent["customer"] == booking.stripe_customer_id
    await env.assert_ledger_matches_sandbox("gbp")


async def test_a_create_whose_payment_fails_creates_nothing(env: Env) -> None:
    """The half-way rule: a declined or unknown card answers its error; no booking exists."""
    ids = await env.catalogue()
    with pytest.raises(CardDeclined) as declined:
        await env.book(ids, "full", card="pm_card_chargeDeclined")
    assert "booking_id" not in declined.value.extra
    with pytest.raises(InvalidInput) as unknown:
        await env.book(ids, "full", card="pm_nobody_has_this")
    assert unknown.value.field == "payment_method"
    assert await env.fetch("SELECT id FROM three_sided_bookings_bookings") == []
    assert await env.fetch("SELECT id FROM three_sided_bookings_transitions") == []
    booking = await env.book(ids, "full", card="pm_card_visa")
    assert booking.state == "paid"
    # Unpaid bookings lapse on their timer; this one was paid in time.
    env.clock.advance(hours=1)
    assert await env.bookings.run_due_timers() == []
    late = await env.book(ids, "full", card=None)
    env.clock.advance(minutes=31)
    assert await env.bookings.run_due_timers() == [(late.id, "expire", "cancelled")]


@pytest.mark.parametrize(("currency", "price"), [("eur", 8_900), ("jpy", 12_000)])
async def test_other_currencies_end_to_end(env: Env, currency: str, price: int) -> None:
    ids = await env.catalogue(price=price, currency=currency)
    booking = await env.book(ids, "full")
    assert booking.currency == currency
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "provider") == "settled"
    await env.act(booking, "refund", "admin", amount=price // 3)
    balances = await env.assert_ledger_matches_sandbox(currency)
    assert sum(balances.values()) > 0


# ---------------------------------------------------------------- settlement safety


async def test_settlement_run_twice_or_killed_midway_never_transfers_twice(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=3)

    # Kill the settlement after the provider's transfer, before the venue's.
    real_call = env.services.gateway.call
    made: list[str] = []

    async def dying_call(resource: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if resource == "transfers" and method == "create" and made:
            raise MarketplaceError("the process died mid-settlement")
        result = await real_call(resource, method, *args, **kwargs)
        if resource == "transfers" and method == "create":
            made.append(result["id"])
        return result

    env.services.gateway.call = dying_call  # type: ignore[method-assign]
    assert await env.act(booking, "complete", "provider") == "completed"
    assert len(env.transfers(booking)) == 1  # Stripe has the provider's; our rows rolled back
    assert await env.fetch("SELECT * FROM three_sided_bookings_transfers") == []
    env.services.gateway.call = real_call  # type: ignore[method-assign]

    # A day later Stripe has forgotten the idempotency key; the re-run finds the transfer anyway.
    env.sandbox.state.store.idempotency.clear()
    assert [row[2] for row in await env.bookings.run_due_timers()] == ["settled"]
    transfers = env.transfers(booking)
    assert sorted(t["metadata"]["role"] for t in transfers) == ["provider", "venue"]
    assert made[0] in {t["id"] for t in transfers}

    # Running the settlement again (directly, past the state machine) moves nothing.
    async with env.services.db.pool.acquire() as conn, conn.transaction():
        ctx = env.bookings.context(conn, await load_booking(conn, booking.id))
        await payments.settle(ctx)
    assert len(env.transfers(booking)) == 2
    with pytest.raises(IllegalTransition) as again:
        await env.act(booking, "settle", "admin")
    assert again.value.extra == {"state": "settled", "allowed": ["refund"]}
    await env.assert_ledger_matches_sandbox("gbp")


# ---------------------------------------------------------------- cancellation and refunds


async def test_cancellation_more_than_48h_ahead_refunds_everything(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "full", starts_in=timedelta(days=3))
    assert await env.act(booking, "cancel", "customer") == "cancelled"
    [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    assert charge["refunded"] == 10_000
    assert env.transfers(booking) == []
    balances = await env.assert_ledger_matches_sandbox("gbp")
    assert balances["platform"] == -(10_000 * 29 // 1000 + 30)  # Stripe keeps its fee


async def test_cancellation_inside_48h_keeps_the_deposit_and_settles_it(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "deposit", starts_in=timedelta(hours=30))
    await env.act(booking, "confirm", "provider")
    assert await env.act(booking, "cancel", "customer") == "cancelled"
    [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    assert (charge["captured"], charge["refunded"]) == (2_000, 0)
    by_role = {t["metadata"]["role"]: t["amount"] for t in env.transfers(booking)}
    assert by_role == {"provider": 1056, "venue": 704}  # the deposit's share of each leg
    await env.assert_ledger_matches_sandbox("gbp")


async def test_cancellation_inside_48h_of_a_prepaid_booking_refunds_all_but_the_fee(
    env: Env,
) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "full", starts_in=timedelta(hours=30))
    assert await env.act(booking, "cancel", "customer") == "cancelled"
    [refund] = await env.fetch("SELECT * FROM three_sided_bookings_refunds")
    assert refund["amount"] == 8_000
    by_role = {t["metadata"]["role"]: t["amount"] for t in env.transfers(booking)}
    assert by_role == {"provider": 5280 - 4224, "venue": 3520 - 2816}
    await env.assert_ledger_matches_sandbox("gbp")


async def test_authorised_booking_cancelled_inside_48h_captures_only_the_fee(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "arrival", starts_in=timedelta(hours=30))
    assert await env.act(booking, "cancel", "customer") == "cancelled"
    [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    assert (charge["status"], charge["captured"]) == ("succeeded", 2_000)
    await env.assert_ledger_matches_sandbox("gbp")


async def test_no_show_keeps_everything_and_business_cancellation_refunds_all(env: Env) -> None:
    ids = await env.catalogue()
    no_show = await env.book(ids, "deposit", starts_in=timedelta(hours=5))
    await env.act(no_show, "confirm", "provider")
    env.clock.advance(hours=5)
    assert await env.act(no_show, "no_show", "provider") == "settled"
    amounts = await env.fetch(
        "SELECT kind, captured FROM three_sided_bookings_charges WHERE booking = $1 ORDER BY id",
        no_show.id,
    )
    assert [(row["kind"], row["captured"]) for row in amounts] == [("deposit", 2000), ("fee", 8000)]

    cancelled = await env.book(ids, "arrival", starts_in=timedelta(hours=5))
    assert await env.act(cancelled, "cancel", "venue") == "cancelled"
    [auth] = await env.fetch(
        "SELECT status FROM three_sided_bookings_charges WHERE booking = $1", cancelled.id
    )
    assert auth["status"] == "canceled"
    await env.assert_ledger_matches_sandbox("gbp")


async def test_partial_refund_reverses_shares_proportionally(env: Env) -> None:
    ids = await env.catalogue(price=10_001)
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=3)
    await env.act(booking, "complete", "provider")
    assert await env.act(booking, "refund", "provider", amount=2_501) == "partially_refunded"
    [refund] = await env.fetch("SELECT * FROM three_sided_bookings_refunds")
    share = {leg["role"]: leg["amount"] for leg in json.loads(refund["split"])["legs"]}
    assert sum(share.values()) == 2_501
    reversals = {
        row["role"]: row["amount"]
        for row in await env.fetch(
            "SELECT t.role, r.amount FROM three_sided_bookings_reversals r "
            "JOIN three_sided_bookings_transfers t ON t.id = r.transfer"
        )
    }
    assert reversals == {"provider": share["provider"], "venue": share["venue"]}
    with pytest.raises(IllegalTransition, match="partial_refund, full_refund"):
        await env.act(booking, "refund", "admin", amount=10_000)
    assert await env.act(booking, "refund", "admin") == "refunded"
    transfers = env.transfers(booking)
    assert all(t["amount_reversed"] == t["amount"] for t in transfers)
    balances = await env.assert_ledger_matches_sandbox("gbp")
    provider, venue = env.accounts
    assert (balances[provider], balances[venue]) == (0, 0)


async def test_a_refund_request_retried_is_one_refund_and_two_requests_are_two(
    env: Env,
) -> None:
    """A refund's key comes from the request (API key + Idempotency-Key), not a count of
    the refunds before it: a request retried after it committed refunds nothing more."""
    ids = await env.catalogue(price=10_000)
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=3)
    await env.act(booking, "complete", "provider")
    refunded = []
    for request in ("key_1:refund-a", "key_1:refund-a", "key_1:refund-b"):
        await env.act(booking, "refund", "admin", amount=500, request=request)
        [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
        refunded.append(charge["refunded"])
    assert refunded == [500, 500, 1000]
    keys = [
        row["idempotency_key"]
        for row in await env.fetch("SELECT * FROM three_sided_bookings_refunds ORDER BY id")
    ]
    intent = charge["stripe_payment_intent_id"]
    assert keys == [
        f"booking:{booking.id}:refund:{intent}:request:key_1:refund-a",
        f"booking:{booking.id}:refund:{intent}:request:key_1:refund-b",
    ]
    refunds = env.stripe("GET", "/v1/refunds", None, charge=charge["stripe_charge_id"])
    assert sorted(r["amount"] for r in refunds["data"]) == [500, 500]
    trail = await env.bookings.transitions(booking.id)
    assert [t.transition for t in trail].count("refund") == 2
    # Without a request, a refund is keyed by the booking's transition number.
    await env.act(booking, "refund", "admin", amount=500)
    [*_, last] = await env.fetch("SELECT * FROM three_sided_bookings_refunds ORDER BY id")
    assert last["idempotency_key"] == (
        f"booking:{booking.id}:refund:{intent}:transition:{len(trail) + 1}"
    )
    with pytest.raises(Conflict):
        await env.act(booking, "complete", "admin", request="key_1:refund-a")
    await env.assert_ledger_matches_sandbox("gbp")


async def _fail_the_next_refund_commit(env: Env, transition: str = "refund") -> None:
    """Make the next ``transition``'s transaction roll back after its Stripe calls.

    A trigger on the audit trail (written after the transition's actions) raises once:
    a sequence's ``nextval`` is not rolled back with the transaction, so it stays spent.
    Deterministic, no timing.
    """
    async with env.services.db.pool.acquire() as conn:
        await conn.execute(
            """
            CREATE SEQUENCE test_refund_failures;
            CREATE FUNCTION test_fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('test_refund_failures') = 1 THEN
                    RAISE EXCEPTION 'injected: the transaction dies after Stripe answered';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_fail_once BEFORE INSERT ON three_sided_bookings_transitions
                FOR EACH ROW WHEN (NEW.transition = '{transition}')
                EXECUTE FUNCTION test_fail_once();
            """.replace("{transition}", transition)
        )


@pytest.mark.parametrize("events_first", [False, True], ids=["retry_first", "events_first"])
async def test_a_refund_retried_after_its_transaction_rolled_back_records_stripes_reversals(
    env: Env, events_first: bool
) -> None:
    """Issue 15: an API refund whose transaction rolled back after Stripe refunded and
    reversed the shares, retried with the same Idempotency-Key, leaves the booking's rows
    showing exactly Stripe's refund and reversals (whether Stripe's events are handled
    before the retry or after), and ledger = Stripe."""
    ids = await env.catalogue(price=10_001)
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "provider") == "settled"
    await env.deliver_events()
    await _fail_the_next_refund_commit(env)
    with pytest.raises(Exception, match="injected"):
        await env.act(booking, "refund", "admin", amount=2_501, request="key_1:refund-a")
    assert await env.state(booking) == "settled"
    assert await env.fetch("SELECT * FROM three_sided_bookings_reversals") == []
    if events_first:
        await env.deliver_events()
    await env.act(booking, "refund", "admin", amount=2_501, request="key_1:refund-a")
    await env.deliver_events()
    assert await env.state(booking) == "partially_refunded"

    [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    refunds = env.stripe("GET", "/v1/refunds", None, charge=charge["stripe_charge_id"])["data"]
    assert [r["amount"] for r in refunds] == [2_501]
    rows = await env.fetch("SELECT stripe_refund_id, amount FROM three_sided_bookings_refunds")
    assert [(r["stripe_refund_id"], r["amount"]) for r in rows] == [(refunds[0]["id"], 2_501)]
    assert charge["refunded"] == 2_501
    transfers = env.transfers(booking)
    made = sorted(
        (reversal["id"], reversal["amount"])
        for transfer in transfers
        for reversal in transfer["reversals"]["data"]
    )
    assert len(made) == 2
    recorded = await env.fetch(
        "SELECT stripe_reversal_id, amount FROM three_sided_bookings_reversals"
    )
    assert sorted((r["stripe_reversal_id"], r["amount"]) for r in recorded) == made
    shown = {
        row["stripe_transfer_id"]: row["amount_reversed"]
        for row in await env.fetch("SELECT * FROM three_sided_bookings_transfers")
    }
    assert shown == {t["id"]: t["amount_reversed"] for t in transfers}
    await env.assert_ledger_matches_sandbox("gbp")


@pytest.mark.parametrize("events_first", [False, True], ids=["retry_first", "events_first"])
async def test_a_cancellation_retried_after_its_transaction_rolled_back_keeps_the_fee_once(
    env: Env, events_first: bool
) -> None:
    """A customer's cancellation refunds all but the fee and settles the fee; its
    transaction lost after Stripe refunded, the retry (same request) cancels and settles
    the fee, refunding nothing more, whether Stripe's events came first or not."""
    ids = await env.catalogue()
    booking = await env.book(ids, "full", starts_in=timedelta(hours=30))
    await env.deliver_events()
    await _fail_the_next_refund_commit(env, "cancel")
    with pytest.raises(Exception, match="injected"):
        await env.act(booking, "cancel", "customer", request="key_c:cancel-1")
    if events_first:
        await env.deliver_events()
        assert await env.state(booking) == "paid"  # the refund shows; the rest waits
    assert await env.act(booking, "cancel", "customer", request="key_c:cancel-1") == "cancelled"
    await env.deliver_events()
    [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    refunds = env.stripe("GET", "/v1/refunds", None, charge=charge["stripe_charge_id"])["data"]
    assert [r["amount"] for r in refunds] == [8_000]
    assert charge["refunded"] == 8_000
    by_role = {t["metadata"]["role"]: t["amount"] for t in env.transfers(booking)}
    assert by_role == {"provider": 5280 - 4224, "venue": 3520 - 2816}
    await env.assert_ledger_matches_sandbox("gbp")


async def test_a_business_cancellation_lost_after_stripe_refunded_everything_ends_refunded(
    env: Env,
) -> None:
    """Known limit: the business's cancellation (refund everything) lost with its
    transaction after Stripe refunded, Stripe's events handled before the retry: the
    events put the booking in ``refunded`` (a full refund made outside the API), and the
    retry cannot cancel from there (409). The money is right: refunded once."""
    ids = await env.catalogue()
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "venue")
    await env.deliver_events()
    await _fail_the_next_refund_commit(env, "cancel")
    with pytest.raises(Exception, match="injected"):
        await env.act(booking, "cancel", "venue", request="key_v:cancel-1")
    await env.deliver_events()
    assert await env.state(booking) == "refunded"
    with pytest.raises(IllegalTransition):
        await env.act(booking, "cancel", "venue", request="key_v:cancel-1")
    [charge] = await env.fetch("SELECT * FROM three_sided_bookings_charges")
    refunds = env.stripe("GET", "/v1/refunds", None, charge=charge["stripe_charge_id"])["data"]
    assert [r["amount"] for r in refunds] == [10_000]
    assert charge["refunded"] == 10_000
    await env.assert_ledger_matches_sandbox("gbp")


# ---------------------------------------------------------------- disputes


@pytest.mark.parametrize("outcome", ["won", "lost"])
async def test_dispute_evidence_and_outcome(make_env: Any, outcome: str) -> None:
    env: Env = await make_env()
    ids = await env.catalogue()
    booking = await env.book(
        ids, "arrival", starts_in=timedelta(days=1), card="pm_card_createDispute"
    )
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=1)
    # The dispute opens at capture; settlement has already paid provider and venue.
    assert await env.act(booking, "complete", "provider") == "settled"
    await env.bookings.add_message(booking.id, "customer", "Lovely massage, thank you!")
    await env.deliver_events()
    assert await env.state(booking) == "disputed"
    [dispute] = await env.fetch("SELECT * FROM three_sided_bookings_disputes")
    assert dispute["status"] == "needs_response"

    statement = f"The customer attended; {outcome.replace('won', 'winning')}_evidence".replace(
        "lost", "losing"
    )
    assert await env.act(booking, "submit_evidence", "admin", statement=statement) == "disputed"
    sent = env.stripe("GET", f"/v1/disputes/{dispute['stripe_dispute_id']}")["evidence"]
    assert sent["service_date"] == booking.starts_at.date().isoformat()
    assert "Ana Therapist" in sent["product_description"]
    assert "Seaside Spa" in sent["product_description"]
    assert "Lovely massage" in sent["uncategorized_text"]
    assert "confirm by provider" in sent["uncategorized_text"]
    await env.deliver_events()

    balances = await env.assert_ledger_matches_sandbox("gbp")
    provider, venue = env.accounts
    if outcome == "won":
        assert await env.state(booking) == "settled"
        assert (balances[provider], balances[venue]) == (5280, 3520)
    else:
        assert await env.state(booking) == "dispute_lost"
        assert (balances[provider], balances[venue]) == (0, 0)
        assert (await env.ledger.balance("disputes", "gbp")).amount == 0


# ---------------------------------------------------------------- held shares


async def test_restricted_venue_share_is_held_and_released_on_recovery(env: Env) -> None:
    ids = await env.catalogue()
    provider, venue = env.accounts
    booking = await env.book(ids, "full")
    other = await env.book(ids, "full")
    for each in (booking, other):
        await env.act(each, "confirm", "provider")
    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/restrict")
    await env.deliver_events()
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "provider") == "settled"
    rows = await env.fetch("SELECT role, status FROM three_sided_bookings_transfers ORDER BY id")
    assert [(r["role"], r["status"]) for r in rows] == [("provider", "paid"), ("venue", "held")]
    view = await env.bookings.view(await env.bookings.get_record(booking.id))
    assert view.held == 3520
    await env.assert_ledger_matches_sandbox("gbp")

    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/complete_onboarding")
    await env.deliver_events()
    rows = await env.fetch("SELECT role, status FROM three_sided_bookings_transfers ORDER BY id")
    assert [r["status"] for r in rows] == ["paid", "paid"]
    [held] = await movements.held_shares(env.services.db.pool, plugin=PLUGIN, status=None)
    assert (held.role, held.status) == ("venue", "released")
    # The other booking was never affected and settles normally now.
    assert await env.act(other, "complete", "provider") == "settled"
    balances = await env.assert_ledger_matches_sandbox("gbp")
    assert (balances[provider], balances[venue]) == (2 * 5280, 2 * 3520)


async def test_venue_whose_payout_fails_is_held_then_paid_after_recovery(env: Env) -> None:
    service = await env.catalog.create_service(
        NewService(name="Facial", service_type="facial", duration_minutes=45, price=10_000)
    )
    provider, _ = await env.catalog.add_provider(
        NewProvider(account_id=await env.account("provider"), display_name="Ben")
    )
    venue_account = await env.account("venue", bank=FAILING_BANK)
    venue, _ = await env.catalog.add_venue(NewVenue(account_id=venue_account, display_name="Spa"))
    await env.catalog.set_venue_terms(venue.id, VenueTermsInput(kind="fixed", fixed={"gbp": 2_500}))
    schedule = await env.catalog.set_payout_schedule(
        venue_account, PayoutScheduleInput(interval="daily", delay_days=2), actor="admin"
    )
    assert schedule.interval == "daily"
    stripe_account = env.stripe("GET", f"/v1/accounts/{venue_account}")
    assert stripe_account["settings"]["payouts"]["schedule"]["interval"] == "daily"
    ids = (service.id, provider.id, venue.id)

    first = await env.book(ids, "full")
    assert legs(first) == {"platform": 1200, "provider": 6300, "venue": 2500}
    await env.act(first, "confirm", "venue")
    env.clock.advance(days=3)
    await env.act(first, "complete", "provider")
    env.sandbox.advance(4 * 86_400)  # funds available, the daily payout runs and fails
    await env.deliver_events()
    payouts = await env.fetch("SELECT status, failure_code FROM marketplace_payouts")
    assert payouts  # each midnight's payout fails again while the bank is wrong
    assert {(p["status"], p["failure_code"]) for p in payouts} == {("failed", "no_account")}

    second = await env.book(ids, "full", starts_in=timedelta(days=1))
    await env.act(second, "confirm", "venue")
    env.clock.advance(days=1)
    assert await env.act(second, "complete", "provider") == "settled"
    rows = await env.fetch(
        "SELECT role, status FROM three_sided_bookings_transfers WHERE booking = $1 ORDER BY id",
        second.id,
    )
    assert [(r["role"], r["status"]) for r in rows] == [("provider", "paid"), ("venue", "held")]
    await env.assert_ledger_matches_sandbox("gbp")

    # The venue replaces its bank account: Stripe says payouts are enabled again.
    [bank] = env.stripe("GET", f"/v1/accounts/{venue_account}/external_accounts")["data"]
    env.stripe("DELETE", f"/v1/accounts/{venue_account}/external_accounts/{bank['id']}")
    env.sandbox.client().v1.accounts.update(
        venue_account,
        params={
            "external_account": {
                "object": "bank_account",
                "country": "US",
                "currency": "usd",
                "routing_number": "110000000",
                "account_number": "000123456789",
            }
        },
    )
    await env.deliver_events()
    rows = await env.fetch(
        "SELECT status FROM three_sided_bookings_transfers WHERE booking = $1", second.id
    )
    assert [r["status"] for r in rows] == ["paid", "paid"]
    env.sandbox.advance(4 * 86_400)  # the next payout succeeds
    balances = await env.assert_ledger_matches_sandbox("gbp")
    assert (await env.ledger.balance(f"{venue_account}:bank", "gbp")).amount == 2 * 2500
    assert balances[venue_account] == 0


# ---------------------------------------------------------------- errors and trail


async def test_illegal_transitions_name_state_and_allowed_actions(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "full")
    with pytest.raises(IllegalTransition) as refused:
        await env.act(booking, "refund", "admin")
    assert refused.value.extra == {"state": "paid", "allowed": ["cancel", "confirm"]}
    with pytest.raises(IllegalTransition) as customer:
        await env.act(booking, "confirm", "customer")
    assert customer.value.extra == {"state": "paid", "allowed": ["cancel"]}
    # Nothing happened: no audit entry, no money moved.
    assert len(await env.bookings.transitions(booking.id)) == 2


async def test_unpaid_booking_cancelled_late_costs_nothing_and_trail_lists_every_move(
    env: Env,
) -> None:
    ids = await env.catalogue()
    unpaid = await env.book(ids, "full", starts_in=timedelta(hours=3), card=None)
    assert await env.act(unpaid, "cancel", "customer") == "cancelled"
    cancel = (await env.bookings.transitions(unpaid.id))[-1]
    assert cancel.data["cancellation_fee"]["amount"] == 2_000
    assert cancel.data["not_collected"] == {"amount": 2_000, "reason": "no saved card"}
    assert env.stripe("GET", "/v1/payment_intents", None, limit=10)["data"] == []

    paid = await env.book(ids, "deposit")
    await env.act(paid, "confirm", "provider")
    env.clock.advance(days=3)
    await env.act(paid, "complete", "provider")
    settle = (await env.bookings.transitions(paid.id))[-1]
    assert settle.transition == "settle"
    assert sorted((t["role"], t["amount"]) for t in settle.data["transfers"]) == sorted(
        [("provider", 1056), ("provider", 4224), ("venue", 704), ("venue", 2816)]
    )
    await env.assert_ledger_matches_sandbox("gbp")


async def test_refund_while_a_share_is_held_shrinks_the_held_share(env: Env) -> None:
    ids = await env.catalogue()
    _, venue = env.accounts
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "provider")
    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/restrict")
    await env.deliver_events()
    env.clock.advance(days=3)
    await env.act(booking, "complete", "provider")
    assert await env.act(booking, "refund", "admin", amount=2_500) == "partially_refunded"
    [refund] = await env.fetch("SELECT split FROM three_sided_bookings_refunds")
    venue_part = {leg["role"]: leg["amount"] for leg in json.loads(refund["split"])["legs"]}[
        "venue"
    ]
    held = await env.fetch(
        "SELECT amount, status FROM three_sided_bookings_transfers WHERE role = 'venue'"
    )
    assert [(h["amount"], h["status"]) for h in held] == [(3520 - venue_part, "held")]
    reversed_roles = await env.fetch(
        "SELECT t.role FROM three_sided_bookings_reversals r "
        "JOIN three_sided_bookings_transfers t ON t.id = r.transfer"
    )
    assert [r["role"] for r in reversed_roles] == ["provider"]  # nothing to reverse for the venue
    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/complete_onboarding")
    await env.deliver_events()
    # The refund left the charge unable to cover the share, and the platform's
    # funds are still pending: the share stays held until they are available.
    [still] = await movements.held_shares(env.services.db.pool, plugin=PLUGIN, status=None)
    assert still.status == "held"
    assert still.attempts >= 1  # each delivery of account.updated tried once more
    env.sandbox.advance(3 * 86_400)
    [(_, name, outcome)] = await env.bookings.run_due_timers()
    assert (name, outcome) == ("release_held", "paid")
    [paid] = [t for t in env.transfers(booking) if t["metadata"]["role"] == "venue"]
    assert (paid["amount"], paid["source_transaction"]) == (3520 - venue_part, None)
    balances = await env.assert_ledger_matches_sandbox("gbp")
    assert balances[venue] == 3520 - venue_part


async def test_a_held_venue_share_is_the_engines_hold_shrunk_by_a_refund_and_released_once(
    env: Env,
) -> None:
    """The venue cannot be paid at settlement: its share is the engine's hold (not the
    plugin's bookkeeping), a refund takes the venue's part off it, and it is released once
    (``source_transaction`` = the charge) however often the release is tried."""
    ids = await env.catalogue()
    _, venue = env.accounts
    booking = await env.book(ids, "full", card="pm_card_bypassPending")
    await env.act(booking, "confirm", "provider")
    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/restrict")
    await env.deliver_events()
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "provider") == "settled"
    pool = env.services.db.pool
    [held] = await movements.held_shares(pool, plugin=PLUGIN)
    [charge] = await env.fetch("SELECT stripe_charge_id FROM three_sided_bookings_charges")
    charge_id = charge["stripe_charge_id"]
    assert (held.key, held.destination, held.amount.amount) == (
        f"{booking.reference}:share:{charge_id}:venue",
        venue,
        3520,
    )
    assert held.reference == booking.reference

    assert await env.act(booking, "refund", "admin", amount=1_000) == "partially_refunded"
    [refund] = await env.fetch("SELECT split FROM three_sided_bookings_refunds")
    venue_part = {leg["role"]: leg["amount"] for leg in json.loads(refund["split"])["legs"]}[
        "venue"
    ]
    [shrunk] = await movements.held_shares(pool, plugin=PLUGIN)
    assert shrunk.amount.amount == 3520 - venue_part
    [row] = await env.fetch(
        "SELECT amount, status FROM three_sided_bookings_transfers WHERE role = 'venue'"
    )
    assert (row["amount"], row["status"]) == (3520 - venue_part, "held")

    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/complete_onboarding")
    await env.deliver_events()
    await env.deliver_events()  # account.updated again: nothing more to release
    assert await env.bookings.retry_held() == []
    assert await movements.held_shares(pool, plugin=PLUGIN) == []
    [released] = await movements.held_shares(pool, plugin=PLUGIN, status="released")
    venue_transfers = [t for t in env.transfers(booking) if t["metadata"]["role"] == "venue"]
    assert [(t["amount"], t["source_transaction"]) for t in venue_transfers] == [
        (3520 - venue_part, charge_id)
    ]
    assert released.transfer_id == venue_transfers[0]["id"]
    balances = await env.assert_ledger_matches_sandbox("gbp")
    assert balances[venue] == 3520 - venue_part


async def test_a_reversal_stripe_refuses_is_owed_not_fatal(env: Env) -> None:
    ids = await env.catalogue()
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=3)
    await env.act(booking, "complete", "provider")
    real_call = env.services.gateway.call

    async def paid_out(resource: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if resource == "transfers.reversals":
            raise InsufficientBalance("the destination's balance cannot cover the reversal")
        return await real_call(resource, method, *args, **kwargs)

    env.services.gateway.call = paid_out  # type: ignore[method-assign]
    try:
        assert await env.act(booking, "refund", "admin", amount=1_000) == "partially_refunded"
    finally:
        env.services.gateway.call = real_call  # type: ignore[method-assign]
    refund = (await env.bookings.transitions(booking.id))[-1]
    owed = {entry["role"]: entry["amount"] for entry in refund.data["reversal_failed"]}
    assert owed == {"provider": 528, "venue": 352}
    balances = await env.assert_ledger_matches_sandbox("gbp")
    provider, venue = env.accounts
    assert (balances[provider], balances[venue]) == (5280, 3520)


# ---------------------------------------------------------------- movements made in Stripe


async def test_a_refund_made_in_stripe_and_a_canceled_payout_keep_ledger_equal_to_stripe(
    make_env: Any,
) -> None:
    """Acceptance (issue 15), the spa scenario: money moved outside the engine is posted."""
    # In dollars: the providers' test bank accounts are US ones (a payout needs one).
    env: Env = await make_env(currencies=["gbp", "usd"])
    ids = await env.catalogue(price=10_000, currency="usd", provider_bps=6000)
    booking = await env.book(ids, "full")
    await env.act(booking, "confirm", "provider")
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "venue") == "settled"
    [charge] = await env.fetch(
        "SELECT stripe_charge_id FROM three_sided_bookings_charges WHERE booking = $1", booking.id
    )
    # In Stripe's dashboard: part of the booking's charge refunded (the platform bears it:
    # separate charges and transfers reverse nothing by themselves) ...
    client = env.sandbox.client()
    client.v1.refunds.create(params={"charge": charge["stripe_charge_id"], "amount": 2500})
    # ... and, once the provider's share is available, a payout made and canceled.
    env.sandbox.advance(3 * 86_400)
    provider, venue = env.accounts
    as_provider = env.sandbox.client(stripe_account=provider)
    payout = as_provider.v1.payouts.create(params={"amount": 2000, "currency": "usd"})
    assert as_provider.v1.payouts.cancel(payout.id).status == "canceled"

    balances = await env.assert_ledger_matches_sandbox("usd")
    fee = 10_000 * 29 // 1000 + 30  # the sandbox's 2.9 % + 30c on the platform's charge
    assert balances == {"platform": 1200 - fee - 2500, provider: 5280, venue: 3520}
    [payment] = await env.fetch(
        "SELECT status, amount_refunded FROM marketplace_payments WHERE reference = $1",
        f"booking:{booking.id}",
    )
    assert (payment["status"], payment["amount_refunded"]) == ("partially_refunded", 2500)
    [row] = await env.fetch(
        "SELECT status FROM marketplace_payouts WHERE stripe_payout_id = $1", payout.id
    )
    assert row["status"] == "canceled"
    run = await run_reconciliation(env.services, trigger="test")
    assert run.status == "completed"
    assert run.problems == 0, [item.detail for item in run.problem_items()]


async def test_a_share_held_in_the_plugins_old_table_is_handed_to_the_engine_once(
    env: Env,
) -> None:
    """A database from before the engine held shares keeps a held venue share in the
    plugin's own table: startup hands it to the engine (same key, amount, reason),
    marks it moved, does nothing the second time, and the share is released once."""
    ids = await env.catalogue()
    _, venue = env.accounts
    booking = await env.book(ids, "full", card="pm_card_bypassPending")
    await env.act(booking, "confirm", "provider")
    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/restrict")
    await env.deliver_events()
    env.clock.advance(days=3)
    assert await env.act(booking, "complete", "provider") == "settled"
    pool = env.services.db.pool
    [engine_hold] = await movements.held_shares(pool, plugin=PLUGIN)
    # As the plugin kept it before: its own row, and no hold of the engine's.
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM marketplace_held_shares")
        await conn.execute(
            """
            INSERT INTO three_sided_bookings_held_transfers
                (transfer, account_id, reason, attempts, status, held_at)
            SELECT id, account_id, 'account restricted', 2, 'held', now()
            FROM three_sided_bookings_transfers WHERE role = 'venue'
            """
        )
    assert await movements.held_shares(pool, plugin=PLUGIN) == []

    assert await adopt_legacy_holds(env.services) == 1
    assert await adopt_legacy_holds(env.services) == 0
    [adopted] = await movements.held_shares(pool, plugin=PLUGIN)
    assert (adopted.key, adopted.destination, adopted.amount, adopted.reference) == (
        engine_hold.key,
        engine_hold.destination,
        engine_hold.amount,
        engine_hold.reference,
    )
    assert adopted.reason == "account restricted"
    assert [
        row["status"]
        for row in await env.fetch("SELECT status FROM three_sided_bookings_held_transfers")
    ] == ["moved"]

    env.sandbox.control("POST", f"/_sandbox/accounts/{venue}/complete_onboarding")
    await env.deliver_events()
    assert await movements.held_shares(pool, plugin=PLUGIN) == []
    venue_transfers = [t for t in env.transfers(booking) if t["metadata"]["role"] == "venue"]
    assert [t["amount"] for t in venue_transfers] == [engine_hold.amount.amount]
    await env.assert_ledger_matches_sandbox("gbp")
