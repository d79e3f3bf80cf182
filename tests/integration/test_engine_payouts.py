"""A connected account's payouts through the engine (``engine.payments.payouts``), then from Stripe.

A provider paid by a transfer makes three manual payouts in Stripe: one
canceled while pending, one paid, one to a bank account that does not exist (Stripe's
failing test number) that fails. The engine records each with Stripe's
status and posts it out and, for the failed and the canceled one, back once.
Stale events delivered late (a ``payout.paid`` for the failed payout, a
``payout.failed`` for the canceled one) change nothing. A payout whose record
was lost comes back from Stripe's list (``refresh_payouts``), which changes
nothing else; the engine's periodic task (``engine.payouts.refresh``) and
``marketplace payouts refresh`` do that for every account. The ledger is Stripe's
balance to the cent throughout.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from support.outside import Orders

from engine.accounts import AccountService, NewAccount
from engine.accounts.queries import account_payouts as reexported
from engine.core.ledger import bank_of, stripe_time
from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitLeg, SplitPlan
from engine.core.postings import payout_posting
from engine.payments import movements
from engine.payments.movements import MoneyScope
from engine.payments.payouts import (
    PAYOUT_REFRESH_TASK,
    account_payouts,
    payout,
    payout_refresh_task,
    refresh_all_payouts,
    refresh_payouts,
)
from engine.payments.pricing import PricedOrder
from engine.testing.stack import Stack, running_stack
from engine.worker.periodic import run_periodic_once
from engine.worker.runtime import periodic_tasks

USD = "usd"
DAY = 86_400


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=(),
        extra_plugins={"orders": Orders()},
    ) as running:
        yield running


def usd(amount: int) -> Money:
    return Money(amount, USD)


async def funded_provider(stack: Stack) -> str:
    """A provider made through the engine, paid 60.00 of a 100.00 charge available at once."""
    service = AccountService(
        stack.services.db.pool, stack.services.gateway, public_url="http://marketplace.test"
    )
    account, _ = await service.create(
        NewAccount(role="provider", display_name="provider"), operation=None, actor="test"
    )
    provider = account.id
    stack.sandbox.control("POST", f"/_sandbox/accounts/{provider}/complete_onboarding")
    await stack.settle()
    order = Order(
        plugin="orders",
        kind="order",
        amount=usd(10_000),
        reference="order:payouts",
        beneficiaries={"provider": provider},
        occurred_at=stripe_time(1_767_225_600),
    )
    priced = PricedOrder(
        order=order,
        price=usd(10_000),
        commission=Commission(amount=usd(4_000), rule_id="flat", rule_version=1),
        split=SplitPlan(
            total=usd(10_000),
            legs=(SplitLeg("platform", usd(4_000)), SplitLeg("provider", usd(6_000), provider)),
        ),
    )
    async with stack.services.db.pool.acquire() as conn, conn.transaction():
        scope = MoneyScope(
            stack.services.gateway, stack.services.ledger, conn, "orders", "order:payouts"
        )
        charged = await movements.charge(
            scope,
            priced,
            operation=("full",),
            payment_method="pm_card_bypassPending",
            account_id=provider,
        )
        assert charged.charge_id is not None
        await movements.transfer(
            scope,
            destination=provider,
            amount=usd(6_000),
            source_transaction=charged.charge_id,
            role="provider",
            operation=("provider",),
        )
    await stack.settle()
    return provider


async def test_payout_statuses_through_the_engine_and_refreshed_from_stripe(
    stack: Stack,
) -> None:
    provider = await funded_provider(stack)
    as_provider = stack.stripe(stripe_account=provider)

    def make_payouts() -> tuple[Any, Any, Any]:
        stack.stripe().v1.accounts.update(
            provider, params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}}
        )
        missing = stack.stripe().v1.accounts.external_accounts.create(
            provider,
            params={
                "external_account": {
                    "object": "bank_account",
                    "country": "US",
                    "currency": "usd",
                    "account_number": "000111111116",
                    "routing_number": "110000000",
                }
            },
        )
        canceled = as_provider.v1.payouts.create(params={"amount": 1_000, "currency": USD})
        as_provider.v1.payouts.cancel(canceled.id)
        paid = as_provider.v1.payouts.create(params={"amount": 1_500, "currency": USD})
        failed = as_provider.v1.payouts.create(
            params={"amount": 2_000, "currency": USD, "destination": missing.id}
        )
        return canceled, paid, failed

    canceled, paid, failed = await asyncio.to_thread(make_payouts)
    await stack.settle()
    await stack.advance(4 * DAY)

    def stripe_payout(payout_id: str) -> dict[str, Any]:
        found: dict[str, Any] = as_provider.v1.payouts.retrieve(payout_id).to_dict()
        return found

    stripe_statuses = {
        found["id"]: found["status"]
        for found in [stripe_payout(p.id) for p in (canceled, paid, failed)]
    }
    assert stripe_statuses == {canceled.id: "canceled", paid.id: "paid", failed.id: "failed"}

    pool = stack.services.db.pool

    async def recorded() -> dict[str, str]:
        return {p.stripe_payout_id: p.status for p in await account_payouts(pool, provider)}

    async def keys() -> set[str]:
        return {
            str(row["idempotency_key"])
            for row in await pool.fetch(
                "SELECT idempotency_key FROM marketplace_ledger_transactions "
                "WHERE kind LIKE 'payout%'"
            )
        }

    expected_keys = {
        f"payout:{canceled.id}",
        f"payout_cancel:{canceled.id}",
        f"payout:{paid.id}",
        f"payout:{failed.id}",
        f"payout_failure:{failed.id}",
    }

    async def assert_as_stripe() -> None:
        assert await recorded() == stripe_statuses
        assert await keys() == expected_keys
        ledger = await stack.ledger.balances(provider)
        assert ledger.get(USD, 0) == await stack.stripe_balance(provider, USD)
        assert ledger.get(USD, 0) == 6_000 - 1_500
        assert (await stack.ledger.balances(bank_of(provider)))[USD] == 1_500
        await stack.assert_ledger_balanced()

    await assert_as_stripe()
    assert await reexported(pool, provider) == await account_payouts(pool, provider)
    failure = await payout(pool, failed.id)
    assert failure is not None
    assert failure.failure_code == "no_account"

    # Stale deliveries, late: the failed payout "paid", the canceled one "failed".
    late_paid = {**stripe_payout(failed.id), "status": "paid", "failure_code": None}
    await stack.send_event("payout.paid", late_paid, account=provider)
    late_failed = {
        **stripe_payout(canceled.id),
        "status": "failed",
        "failure_code": "no_account",
    }
    await stack.send_event("payout.failed", late_failed, account=provider)
    await assert_as_stripe()

    # A record lost (its events never handled): Stripe's list brings it back, once.
    await pool.execute("DELETE FROM marketplace_payouts WHERE stripe_payout_id = $1", paid.id)
    assert paid.id not in await recorded()
    applied = await refresh_payouts(pool, stack.services.gateway, stack.services.ledger, provider)
    assert {a.record.stripe_payout_id: a.record.status for a in applied} == stripe_statuses
    assert not any(a.returned for a in applied)
    await assert_as_stripe()


async def refresh_command(stack: Stack, tmp_path: Path, *options: str) -> tuple[int, str]:
    """``marketplace --config FILE payouts refresh [options]``, in its own process."""
    config = tmp_path / "marketplace.toml"
    config.write_text(
        f"""
[database]
url = "{stack.settings.database.url}"

[stripe]
secret_key = "{stack.settings.stripe.secret_key}"
api_base = "{stack.settings.stripe.api_base}"
max_network_retries = 0

[plugins]
enabled = []
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
        "payouts",
        "refresh",
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=environment,
    )
    output, _ = await asyncio.wait_for(command.communicate(), 120)
    return int(command.returncode or 0), output.decode()


@pytest.fixture
async def quiet_stack(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Stack]:
    """A stack whose worker does not refresh payouts itself (the test runs the task)."""
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=(),
        config={"worker": {"payout_refresh_seconds": 0}},
    ) as running:
        yield running


def test_the_workers_refresh_payouts_unless_told_not_to(stack: Stack) -> None:
    [task] = [t for t in periodic_tasks(stack.services) if t.name == PAYOUT_REFRESH_TASK]
    assert task.every_seconds == stack.settings.worker.payout_refresh_seconds == 3600
    quiet = msgspec.structs.replace(
        stack.settings,
        worker=msgspec.structs.replace(stack.settings.worker, payout_refresh_seconds=0),
    )
    services = SimpleNamespace(settings=quiet, plugins=stack.services.plugins)
    names = [t.name for t in periodic_tasks(services)]  # type: ignore[arg-type]
    assert PAYOUT_REFRESH_TASK not in names


async def test_payouts_whose_events_were_lost_converge_from_the_worker_task_and_the_cli(
    quiet_stack: Stack, tmp_path: Path
) -> None:
    stack = quiet_stack
    provider = await funded_provider(stack)
    as_provider = stack.stripe(stripe_account=provider)

    def make_payout() -> Any:
        stack.stripe().v1.accounts.update(
            provider, params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}}
        )
        return as_provider.v1.payouts.create(params={"amount": 1_500, "currency": USD})

    made = await asyncio.to_thread(make_payout)
    await stack.settle()
    await stack.advance(4 * DAY)
    assert (await asyncio.to_thread(as_provider.v1.payouts.retrieve, made.id)).status == "paid"
    pool = stack.services.db.pool

    async def status() -> str | None:
        found = await payout(pool, made.id)
        return None if found is None else found.status

    assert await status() == "paid"

    # The paid event lost: the record still says pending. The engine's periodic task
    # (at most once per interval, whichever worker runs it) applies Stripe's list.
    await pool.execute(
        "UPDATE marketplace_payouts SET status = 'pending' WHERE stripe_payout_id = $1", made.id
    )
    task = payout_refresh_task(3600)
    assert await run_periodic_once(stack.services, task) is True
    assert await status() == "paid"
    assert await run_periodic_once(stack.services, task) is False  # once per interval

    # Every event of it lost (no record at all): the command brings it back, once.
    await pool.execute("DELETE FROM marketplace_payouts WHERE stripe_payout_id = $1", made.id)
    code, output = await refresh_command(stack, tmp_path, "--account", provider)
    assert code == 0, output
    assert f"{provider}: 1 payout(s): {made.id} paid" in output
    assert await status() == "paid"
    # Every account, platform included, each listed in full.
    code, output = await refresh_command(stack, tmp_path, "--full")
    assert code == 0, output
    assert "platform: 0 payout(s)" in output
    assert f"{provider}: 1 payout(s)" in output
    ledger = await stack.ledger.balances(provider)
    assert ledger.get(USD, 0) == await stack.stripe_balance(provider, USD) == 6_000 - 1_500
    await stack.assert_ledger_balanced()


def _payout_requests(stack: Stack, after: int) -> list[dict[str, Any]]:
    """The sandbox's log of payout reads (lists and retrieves) after request ``after``."""
    data = stack.sandbox.control("GET", f"/_sandbox/requests?after={after}")["data"]
    return [r for r in data if r["method"] == "GET" and r["path"].startswith("/v1/payouts")]


def _last_request(stack: Stack) -> int:
    data = stack.sandbox.control("GET", "/_sandbox/requests")["data"]
    return int(data[-1]["seq"]) if data else 0


async def test_a_second_refresh_reads_only_new_payouts_and_the_open_ones(
    quiet_stack: Stack,
) -> None:
    """Incremental refresh: Stripe's list from the newest payout the last refresh listed
    (``created[gte]``), plus a retrieve of each payout the engine holds as pending or
    in transit that the list did not bring; a paid payout older than that is not read
    again, and an open one whose status changed (its events lost) is still updated."""
    stack = quiet_stack
    provider = await funded_provider(stack)
    as_provider = stack.stripe(stripe_account=provider)
    pool = stack.services.db.pool

    def make_payout(amount: int) -> Any:
        return as_provider.v1.payouts.create(params={"amount": amount, "currency": USD})

    await asyncio.to_thread(
        stack.stripe().v1.accounts.update,
        provider,
        params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}},
    )
    done = await asyncio.to_thread(make_payout, 1_000)
    await stack.advance(4 * DAY)  # paid: final for the refresh
    waiting = await asyncio.to_thread(make_payout, 500)
    await stack.advance(60)
    newest = await asyncio.to_thread(make_payout, 400)
    await stack.settle()

    async def refresh() -> dict[str, str]:
        applied = await refresh_payouts(
            pool, stack.services.gateway, stack.services.ledger, provider
        )
        return {a.record.stripe_payout_id: a.record.status for a in applied}

    seq = _last_request(stack)
    assert await refresh() == {done.id: "paid", waiting.id: "pending", newest.id: "pending"}
    [listing] = _payout_requests(stack, seq)
    assert listing["listed"] == 3  # the first refresh lists everything

    await stack.advance(4 * DAY)  # both pending payouts are paid at Stripe ...
    await pool.execute(  # ... but the events of one were lost
        "UPDATE marketplace_payouts SET status = 'pending' WHERE stripe_payout_id = $1",
        waiting.id,
    )
    later = await asyncio.to_thread(make_payout, 300)
    # A pending record Stripe does not know (made by hand): left alone, not fatal.
    await pool.execute(
        "INSERT INTO marketplace_payouts (stripe_payout_id, account_id, amount, currency, "
        "status, failure_message, arrival_date, created_at, updated_at) "
        "VALUES ('po_unknown', $1, 100, 'usd', 'pending', '', 0, now(), now())",
        provider,
    )
    await stack.settle()
    seq = _last_request(stack)
    assert await refresh() == {waiting.id: "paid", newest.id: "paid", later.id: "pending"}
    reads = _payout_requests(stack, seq)
    [listing] = [r for r in reads if r["path"] == "/v1/payouts"]
    assert "created" in listing["query"]
    assert listing["listed"] == 2  # the newest listed last time, and the one made since
    assert sorted(r["path"] for r in reads if r["path"] != "/v1/payouts") == sorted(
        [f"/v1/payouts/{waiting.id}", "/v1/payouts/po_unknown"]
    )
    assert (await payout(pool, "po_unknown")).status == "pending"  # type: ignore[union-attr]
    assert (await payout(pool, waiting.id)).status == "paid"  # type: ignore[union-attr]
    ledger = await stack.ledger.balances(provider)
    assert ledger.get(USD, 0) == await stack.stripe_balance(provider, USD)
    await stack.assert_ledger_balanced()


async def _held(stack: Stack, path: str) -> None:
    """Wait until a request to ``path`` waits on the sandbox's hold of it."""
    for _ in range(3_000):
        holds = await asyncio.to_thread(stack.sandbox.control, "GET", "/_sandbox/holds")
        if any(h["path"] == path and h["waiting"] for h in holds["data"]):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no request to {path} reached the sandbox")


async def _idle_in_transaction(stack: Stack) -> list[str]:
    """The last statement of each backend of the test database idle inside a transaction
    on the payout tables (what the refresh would hold open while Stripe answers)."""
    rows = await stack.services.db.pool.fetch(
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%' AND query ILIKE '%marketplace_payout%'"
    )
    return [str(row["query"]) for row in rows]


async def test_the_refresh_holds_no_transaction_while_stripe_answers(quiet_stack: Stack) -> None:
    """Stripe slow (the sandbox holds the payouts list, then a payout's retrieve): meanwhile
    no connection sits idle in a transaction for the refresh. The canceled payout's
    returning balance transaction comes expanded in the list, not read on its own."""
    stack = quiet_stack
    provider = await funded_provider(stack)
    as_provider = stack.stripe(stripe_account=provider)
    pool = stack.services.db.pool

    def make_payouts() -> tuple[Any, Any]:
        stack.stripe().v1.accounts.update(
            provider, params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}}
        )
        canceled = as_provider.v1.payouts.create(params={"amount": 700, "currency": USD})
        as_provider.v1.payouts.cancel(canceled.id)
        stack.sandbox.advance(60)
        waiting = as_provider.v1.payouts.create(params={"amount": 500, "currency": USD})
        stack.sandbox.advance(60)
        as_provider.v1.payouts.create(params={"amount": 400, "currency": USD})
        return canceled, waiting

    canceled, waiting = await asyncio.to_thread(make_payouts)
    await stack.settle()
    # The canceled payout's events lost: the refresh applies it, its return too.
    await pool.execute("DELETE FROM marketplace_payouts WHERE stripe_payout_id = $1", canceled.id)

    async def refresh_while_held(path: str) -> dict[str, list[Any]]:
        await asyncio.to_thread(stack.sandbox.control, "POST", f"/_sandbox/holds?path={path}")
        refresh = asyncio.create_task(
            refresh_all_payouts(pool, stack.services.gateway, stack.services.ledger, [provider])
        )
        try:
            await _held(stack, path)
            assert await _idle_in_transaction(stack) == []
        finally:
            await asyncio.to_thread(
                stack.sandbox.control, "POST", f"/_sandbox/holds/release?path={path}"
            )
        return await refresh

    seq = _last_request(stack)
    applied = await refresh_while_held("/v1/payouts")
    assert {a.record.stripe_payout_id: a.record.status for a in applied[provider]}[
        canceled.id
    ] == "canceled"
    data = stack.sandbox.control("GET", f"/_sandbox/requests?after={seq}")["data"]
    assert not [r for r in data if r["path"].startswith("/v1/balance_transactions")]
    assert "expand" in next(r for r in data if r["path"] == "/v1/payouts")["query"]

    # The next run retrieves the open payout the list (from the newest one) does not bring.
    applied = await refresh_while_held(f"/v1/payouts/{waiting.id}")
    assert waiting.id in {a.record.stripe_payout_id for a in applied[provider]}
    assert await stack.ledger.balances(provider) == {USD: await stack.stripe_balance(provider, USD)}
    await stack.assert_ledger_balanced()


async def test_an_event_applied_between_the_refresh_read_and_its_apply_changes_nothing_back(
    quiet_stack: Stack,
) -> None:
    """The refresh reads two pending payouts; while Stripe is slow to answer its last read,
    both are paid and their events applied. What it then applies (pending, read before)
    moves nothing back and posts nothing twice."""
    stack = quiet_stack
    provider = await funded_provider(stack)
    as_provider = stack.stripe(stripe_account=provider)
    pool = stack.services.db.pool

    def make_payouts() -> tuple[Any, Any]:
        stack.stripe().v1.accounts.update(
            provider, params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}}
        )
        older = as_provider.v1.payouts.create(params={"amount": 500, "currency": USD})
        stack.sandbox.advance(60)
        newer = as_provider.v1.payouts.create(params={"amount": 400, "currency": USD})
        return older, newer

    older, newer = await asyncio.to_thread(make_payouts)
    await stack.settle()
    gateway, ledger = stack.services.gateway, stack.services.ledger
    await refresh_payouts(pool, gateway, ledger, provider)  # the cursor: the newer one
    # A pending record Stripe does not know, retrieved after the older payout (by id).
    await pool.execute(
        "INSERT INTO marketplace_payouts (stripe_payout_id, account_id, amount, currency, "
        "status, failure_message, arrival_date, created_at, updated_at) "
        "VALUES ('po_unknown', $1, 100, 'usd', 'pending', '', 0, now(), now())",
        provider,
    )
    held = "/v1/payouts/po_unknown"
    await asyncio.to_thread(stack.sandbox.control, "POST", f"/_sandbox/holds?path={held}")
    refresh = asyncio.create_task(refresh_payouts(pool, gateway, ledger, provider))
    try:
        await _held(stack, held)
        await stack.advance(4 * DAY)  # both paid at Stripe, their events applied
        assert (await payout(pool, older.id)).status == "paid"  # type: ignore[union-attr]
    finally:
        await asyncio.to_thread(
            stack.sandbox.control, "POST", f"/_sandbox/holds/release?path={held}"
        )
    applied = await refresh
    assert {a.record.stripe_payout_id: a.record.status for a in applied} == {
        older.id: "paid",
        newer.id: "paid",
    }
    assert (await payout(pool, newer.id)).status == "paid"  # type: ignore[union-attr]
    ledger_balance = await stack.ledger.balances(provider)
    assert ledger_balance.get(USD, 0) == await stack.stripe_balance(provider, USD) == 6_000 - 900
    assert (await stack.ledger.balances(bank_of(provider)))[USD] == 900
    await stack.assert_ledger_balanced()


async def test_a_refresh_whose_apply_fails_applies_nothing_and_keeps_its_cursor(
    quiet_stack: Stack,
) -> None:
    """Two payouts whose events were lost; the newer one's posting conflicts with one the
    ledger holds. The refresh's transaction fails: neither is recorded, the account's
    cursor stays where the last refresh left it, and the next refresh applies both."""
    stack = quiet_stack
    provider = await funded_provider(stack)
    as_provider = stack.stripe(stripe_account=provider)
    pool = stack.services.db.pool
    gateway, ledger = stack.services.gateway, stack.services.ledger

    def make_payout(amount: int) -> Any:
        made = as_provider.v1.payouts.create(params={"amount": amount, "currency": USD})
        stack.sandbox.advance(60)
        return made

    await asyncio.to_thread(
        stack.stripe().v1.accounts.update,
        provider,
        params={"settings": {"payouts": {"schedule": {"interval": "manual"}}}},
    )
    first = await asyncio.to_thread(make_payout, 300)
    await stack.settle()
    await refresh_payouts(pool, gateway, ledger, provider)

    async def cursor() -> int | None:
        found = await pool.fetchval(
            "SELECT listed_from FROM marketplace_payout_refresh WHERE account_id = $1", provider
        )
        return None if found is None else int(found)

    assert await cursor() == first.created
    older = await asyncio.to_thread(make_payout, 500)
    newer = await asyncio.to_thread(make_payout, 400)
    await stack.settle()
    lost = [f"payout:{older.id}", f"payout:{newer.id}"]

    async def forget_postings(keys: list[str]) -> None:
        await pool.execute(
            "DELETE FROM marketplace_ledger_entries WHERE ledger_transaction IN "
            "(SELECT id FROM marketplace_ledger_transactions WHERE idempotency_key = ANY($1))",
            keys,
        )
        await pool.execute(
            "DELETE FROM marketplace_ledger_transactions WHERE idempotency_key = ANY($1)", keys
        )

    await pool.execute(
        "DELETE FROM marketplace_payouts WHERE stripe_payout_id = ANY($1)", [older.id, newer.id]
    )
    await forget_postings(lost)
    await ledger.post(
        payout_posting(provider, newer.id, usd(1), occurred_at=stripe_time(newer.created))
    )

    assert await refresh_all_payouts(pool, gateway, ledger, [provider]) == {}
    assert await payout(pool, older.id) is None
    assert await payout(pool, newer.id) is None
    assert await cursor() == first.created

    await forget_postings([f"payout:{newer.id}"])
    applied = await refresh_all_payouts(pool, gateway, ledger, [provider])
    assert {a.record.stripe_payout_id for a in applied[provider]} >= {older.id, newer.id}
    assert await cursor() == newer.created
    ledger_balance = await stack.ledger.balances(provider)
    assert ledger_balance.get(USD, 0) == await stack.stripe_balance(provider, USD) == 6_000 - 1_200
    await stack.assert_ledger_balanced()
