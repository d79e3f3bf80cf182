"""Batched drains on real PostgreSQL (``Mailbox.drain_many``, core step ``0006``).

One round trip leases several mailboxes, each with its own fencing token; each
is then applied in its own fenced transaction. What must hold, key by key, is
what holds for a drain of one: a key whose lease was not free is left alone,
and a key whose lease was lost meanwhile changes nothing, while the other keys
of the same drain commit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import pytest
from support.stripe_events import event

from engine.webhooks.mailbox import Mailbox

EFFECTS = """
CREATE TABLE IF NOT EXISTS batch_effects (
    event_id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    applied INT NOT NULL DEFAULT 1,
    position BIGSERIAL
)
"""


SHARED = -1
"""``at_once`` value of these tests for ``drain_many(shared=True)``."""

AT_ONCE = pytest.mark.parametrize(
    "at_once", [SHARED, 0, 1], ids=["one_transaction", "together", "one_by_one"]
)
"""Keys applied in one shared transaction (the worker's way), at the same time each in
its own transaction on its own connection, or one after the other on one connection
(the fault harness's workers take the first and the last)."""


async def _drain_many(
    mailbox: Mailbox, keys: list[str], handle: Any, at_once: int
) -> dict[str, Any]:
    if at_once == SHARED:
        return await mailbox.drain_many(keys, "w1", handle, shared=True)
    return await mailbox.drain_many(keys, "w1", handle, at_once=at_once)


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=2, max_size=8)
    async with pool.acquire() as conn:
        await conn.execute(EFFECTS)
    yield pool
    await pool.close()


def _mailbox(pool: asyncpg.Pool, lease_seconds: float = 30, **options: Any) -> Mailbox:
    return Mailbox(
        pool, lease_seconds=lease_seconds, backoff_base=0.01, backoff_cap=0.05, **options
    )


async def _accept(mailbox: Mailbox, account: str, seq: int) -> None:
    body = event(account, seq, event_id=f"evt_{account}_{seq}")
    await mailbox.accept(body, json.dumps(body))


async def _record(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO batch_effects (event_id, account) VALUES ($1, $2) "
        "ON CONFLICT (event_id) DO UPDATE SET applied = batch_effects.applied + 1",
        body["id"],
        body["account"],
    )


async def _committed(pool: asyncpg.Pool) -> list[tuple[str, int]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id, applied FROM batch_effects ORDER BY position")
    return [(row["event_id"], row["applied"]) for row in rows]


async def _statuses(pool: asyncpg.Pool) -> dict[str, str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id, status FROM marketplace_webhook_events")
    return {row["event_id"]: row["status"] for row in rows}


async def _take_over(pool: asyncpg.Pool, account: str) -> None:
    """Another worker takes ``account``'s lease: its token moves on."""
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE marketplace_webhook_accounts SET lease_epoch = lease_epoch + 1, "
            "lease_owner = 'w2', lease_until = now() + interval '30 seconds' WHERE account = $1",
            account,
        )


@AT_ONCE
async def test_one_call_drains_every_free_key_in_order_and_leaves_a_leased_one(
    pool: asyncpg.Pool, at_once: int
) -> None:
    mailbox = _mailbox(pool)
    for account in ("acct_a", "acct_b", "acct_c"):
        await _accept(mailbox, account, 1)
        await _accept(mailbox, account, 2)
    await _take_over(pool, "acct_b")  # b's lease is held elsewhere: not free
    outcomes = await _drain_many(mailbox, ["acct_a", "acct_b", "acct_c"], _record, at_once)
    assert list(outcomes) == ["acct_a", "acct_b", "acct_c"]
    assert {key: outcome.state for key, outcome in outcomes.items()} == {
        "acct_a": "idle",
        "acct_b": "busy",
        "acct_c": "idle",
    }
    assert outcomes["acct_a"].handled == 2
    committed = await _committed(pool)
    for account in ("acct_a", "acct_c"):  # each key in its order, once
        assert [row for row in committed if account in row[0]] == [
            (f"evt_{account}_1", 1),
            (f"evt_{account}_2", 1),
        ]
    assert len(committed) == 4
    statuses = await _statuses(pool)
    assert {statuses["evt_acct_b_1"], statuses["evt_acct_b_2"]} == {"pending"}


@AT_ONCE
async def test_a_key_whose_lease_was_taken_over_during_the_batch_changes_nothing(
    pool: asyncpg.Pool, at_once: int
) -> None:
    """While a's event is applied, b's lease (taken in the same round trip) is taken
    over: b's handler still runs (after the takeover), but its fenced mark finds the
    token moved, so nothing of b commits; a commits."""
    mailbox = _mailbox(pool)
    for account in ("acct_a", "acct_b"):
        await _accept(mailbox, account, 1)
    taken_over = asyncio.Event()

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        if body["account"] == "acct_a":
            await _take_over(pool, "acct_b")
            taken_over.set()
        else:
            await taken_over.wait()
        await _record(body, conn)

    outcomes = await _drain_many(mailbox, ["acct_a", "acct_b"], handle, at_once)
    assert outcomes["acct_a"].state == "idle"
    assert outcomes["acct_b"].state == "lost"
    assert await _committed(pool) == [("evt_acct_a_1", 1)]
    assert (await _statuses(pool))["evt_acct_b_1"] == "pending"


async def test_a_key_found_lost_by_a_renewal_is_not_applied_when_its_turn_comes(
    pool: asyncpg.Pool,
) -> None:
    """One key after the other: b waits for its turn while a's handler runs."""
    mailbox = _mailbox(pool)
    for account in ("acct_a", "acct_b"):
        await _accept(mailbox, account, 1)
    calls: list[str] = []

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        calls.append(str(body["id"]))
        if body["account"] == "acct_a":
            await _take_over(pool, "acct_b")
            await mailbox.keeper.renew()  # finds b's token moved: b's deadline is now
        await _record(body, conn)

    outcomes = await mailbox.drain_many(["acct_a", "acct_b"], "w1", handle, at_once=1)
    assert (outcomes["acct_a"].state, outcomes["acct_b"].state) == ("idle", "lost")
    assert calls == ["evt_acct_a_1"]  # b's handler never ran
    assert await _committed(pool) == [("evt_acct_a_1", 1)]


@AT_ONCE
async def test_keys_stop_when_renewals_fail(pool: asyncpg.Pool, at_once: int) -> None:
    """Renewal impossible and handlers slower than the lease: a key at work is
    cancelled before its lease ends; one after it (one by one) is not applied at all."""

    async def unreachable() -> asyncpg.Connection:
        raise OSError("the database is unreachable from the lease keeper")

    mailbox = _mailbox(pool, lease_seconds=1, renew_with=unreachable)
    for account in ("acct_a", "acct_b"):
        await _accept(mailbox, account, 1)
    calls: list[str] = []

    async def slow(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        calls.append(str(body["id"]))
        await asyncio.sleep(30)
        await _record(body, conn)

    outcomes = await _drain_many(mailbox, ["acct_a", "acct_b"], slow, at_once)
    assert {key: outcome.state for key, outcome in outcomes.items()} == {
        "acct_a": "lost",
        "acct_b": "lost",
    }
    # One by one, b's turn comes after a's lease ended: b is never applied. In one shared
    # transaction a's cancellation ends the round, and b's lease has run out too.
    at_the_same_time = ["evt_acct_a_1", "evt_acct_b_1"]
    assert sorted(calls) == (at_the_same_time if at_once == 0 else ["evt_acct_a_1"])
    assert await _committed(pool) == []
    assert set((await _statuses(pool)).values()) == {"pending"}


@AT_ONCE
async def test_a_failing_key_backs_off_alone(pool: asyncpg.Pool, at_once: int) -> None:
    mailbox = _mailbox(pool)
    for account in ("acct_a", "acct_b"):
        await _accept(mailbox, account, 1)
        await _accept(mailbox, account, 2)

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        if body["id"] == "evt_acct_a_2":
            raise RuntimeError("a's second event fails")
        await _record(body, conn)

    outcomes = await _drain_many(mailbox, ["acct_a", "acct_b"], handle, at_once)
    assert (outcomes["acct_a"].state, outcomes["acct_b"].state) == ("backoff", "idle")
    assert sorted(await _committed(pool)) == [
        ("evt_acct_a_1", 1),
        ("evt_acct_b_1", 1),
        ("evt_acct_b_2", 1),
    ]
    statuses = await _statuses(pool)
    assert statuses["evt_acct_a_2"] == "pending"


async def test_without_the_function_each_key_is_drained_alone(pool: asyncpg.Pool) -> None:
    """A database not migrated to step 0006 yet: ``drain_many`` falls back to ``drain``."""
    async with pool.acquire() as conn:
        await conn.execute(
            "DROP FUNCTION marketplace_mailbox_lease_many(text[], text, float8, int)"
        )
    mailbox = _mailbox(pool)
    for account in ("acct_a", "acct_b"):
        await _accept(mailbox, account, 1)
    outcomes = await mailbox.drain_many(["acct_a", "acct_b"], "w1", _record)
    assert not mailbox.lease_many
    assert {key: outcome.state for key, outcome in outcomes.items()} == {
        "acct_a": "idle",
        "acct_b": "idle",
    }
    assert await _committed(pool) == [("evt_acct_a_1", 1), ("evt_acct_b_1", 1)]


async def test_the_core_migration_records_step_0006(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        steps = await conn.fetch(
            "SELECT name FROM marketplace_migrations WHERE app = 'marketplace' ORDER BY name"
        )
        function = await conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname = 'marketplace_mailbox_lease_many'"
        )
    assert "0006_mailbox_lease_many" in [row["name"] for row in steps]
    assert function == 1


async def test_a_renewal_finding_the_lease_released_under_its_own_token_stops_nothing(
    pool: asyncpg.Pool,
) -> None:
    """A lease released under the drain's own token was released by that drain's own
    committed statement (its turn is just ending): a renewal seeing that is no reason
    to stop the drain, which would report ``lost`` after committing."""
    mailbox = _mailbox(pool)
    await _accept(mailbox, "acct_a", 1)

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        async with pool.acquire() as other:
            await other.execute(
                "UPDATE marketplace_webhook_accounts SET lease_until = NULL WHERE account = $1",
                "acct_a",
            )
        await mailbox.keeper.renew()
        await asyncio.sleep(0.05)  # a stop would land here
        await _record(body, conn)

    outcomes = await mailbox.drain_many(["acct_a"], "w1", handle)
    assert outcomes["acct_a"].state == "idle"
    assert await _committed(pool) == [("evt_acct_a_1", 1)]


async def test_one_transaction_goes_on_without_a_key_a_renewal_found_lost(
    pool: asyncpg.Pool,
) -> None:
    """In one shared transaction, b found taken over by a renewal while a's handler
    runs ends the round; the next round applies a alone, and a commits once."""
    mailbox = _mailbox(pool)
    for account in ("acct_a", "acct_b"):
        await _accept(mailbox, account, 1)
    calls: list[str] = []

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        calls.append(str(body["id"]))
        if body["account"] == "acct_a" and calls.count("evt_acct_a_1") == 1:
            await _take_over(pool, "acct_b")
            await mailbox.keeper.renew()  # finds b's token moved: the round stops
        await _record(body, conn)

    outcomes = await mailbox.drain_many(["acct_a", "acct_b"], "w1", handle, shared=True)
    assert (outcomes["acct_a"].state, outcomes["acct_b"].state) == ("idle", "lost")
    assert calls == ["evt_acct_a_1", "evt_acct_a_1"]  # b's handler never ran
    assert await _committed(pool) == [("evt_acct_a_1", 1)]
    assert (await _statuses(pool))["evt_acct_b_1"] == "pending"


async def test_one_transaction_falls_back_to_one_per_key_on_a_deadlock(
    pool: asyncpg.Pool,
) -> None:
    """A deadlock (handlers of several keys in one transaction) is no event's fault:
    the keys are applied again each in its own transaction, and none backs off."""
    mailbox = _mailbox(pool)
    for account in ("acct_a", "acct_b"):
        await _accept(mailbox, account, 1)
        await _accept(mailbox, account, 2)
    calls: list[str] = []

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        calls.append(str(body["id"]))
        await _record(body, conn)
        if calls == ["evt_acct_a_1", "evt_acct_a_2", "evt_acct_b_1"]:
            raise asyncpg.DeadlockDetectedError("deadlock detected")

    outcomes = await mailbox.drain_many(["acct_a", "acct_b"], "w1", handle, shared=True)
    assert {key: outcome.state for key, outcome in outcomes.items()} == {
        "acct_a": "idle",
        "acct_b": "idle",
    }
    assert sorted(await _committed(pool)) == [
        ("evt_acct_a_1", 1),
        ("evt_acct_a_2", 1),
        ("evt_acct_b_1", 1),
        ("evt_acct_b_2", 1),
    ]
    assert set((await _statuses(pool)).values()) == {"handled"}
