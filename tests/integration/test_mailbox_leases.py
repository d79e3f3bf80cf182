"""Mailbox leases on real PostgreSQL: a drain that outlives or loses its lease changes nothing.

The two reproductions of issue 14 ("Found" 1 and 2) as tests:

- a handler slower than the lease let a second worker drain the same account,
  so every event was applied twice and out of order;
- under READ COMMITTED the lease statement could return a mailbox version
  newer than the events it read, so the account was released as idle with an
  event still pending (stranded until the orphan sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import pytest
from support.stripe_events import event

from engine.webhooks.mailbox import Mailbox

ACCOUNT = "acct_lease"

EFFECTS = """
CREATE TABLE IF NOT EXISTS lease_effects (
    event_id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    applied INT NOT NULL DEFAULT 1,
    position BIGSERIAL
)
"""


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=2, max_size=8)
    async with pool.acquire() as conn:
        await conn.execute(EFFECTS)
    yield pool
    await pool.close()


def _mailbox(pool: asyncpg.Pool, lease_seconds: float) -> Mailbox:
    return Mailbox(pool, lease_seconds=lease_seconds, backoff_base=0.01, backoff_cap=0.05)


async def _accept(mailbox: Mailbox, seq: int) -> str:
    body = event(ACCOUNT, seq, event_id=f"evt_{seq}")
    await mailbox.accept(body, json.dumps(body))
    return str(body["id"])


Handler = Callable[[Mapping[str, Any], asyncpg.Connection], Awaitable[None]]


def _recording(
    calls: list[tuple[str, str]], worker: str, before: Callable[[str], Awaitable[None]]
) -> Handler:
    """A handler that notes the call, waits on ``before`` and writes one effect row.

    The effect counts how often it was applied (``applied``) and where
    (``position``, in commit order of the inserts), so the test reads what
    really committed, not what was attempted.
    """

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        calls.append((worker, str(body["id"])))
        await before(str(body["id"]))
        await conn.execute(
            "INSERT INTO lease_effects (event_id, seq) VALUES ($1, $2) "
            "ON CONFLICT (event_id) DO UPDATE SET applied = lease_effects.applied + 1",
            body["id"],
            int(body["data"]["object"]["metadata"]["seq"]),
        )

    return handle


async def _no_wait(_: str) -> None:
    return None


async def _committed(pool: asyncpg.Pool) -> list[tuple[str, int]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id, applied FROM lease_effects ORDER BY position")
    return [(row["event_id"], row["applied"]) for row in rows]


async def _statuses(pool: asyncpg.Pool) -> dict[str, str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id, status FROM marketplace_webhook_events")
    return {row["event_id"]: row["status"] for row in rows}


async def test_a_handler_slower_than_the_lease_never_lets_a_second_drain_double_apply(
    pool: asyncpg.Pool,
) -> None:
    """Found 1, as reported: 1 s lease, a 2.5 s handler, a second drain after 1.5 s."""
    first, second = _mailbox(pool, 1), _mailbox(pool, 1)
    await _accept(first, 1)
    await _accept(first, 2)
    calls: list[tuple[str, str]] = []

    async def slow_first_event(event_id: str) -> None:
        if event_id == "evt_1":
            await asyncio.sleep(2.5)

    w1 = asyncio.create_task(first.drain(ACCOUNT, "w1", _recording(calls, "w1", slow_first_event)))
    await asyncio.sleep(1.5)
    w2 = asyncio.create_task(second.drain(ACCOUNT, "w2", _recording(calls, "w2", _no_wait)))
    outcomes = await asyncio.gather(w1, w2)
    # Whatever each drain was allowed to do, what committed is each event once, in order.
    assert await _committed(pool) == [("evt_1", 1), ("evt_2", 1)], (calls, outcomes)
    assert set((await _statuses(pool)).values()) == {"handled"}


async def test_a_drain_whose_lease_was_taken_over_commits_nothing(pool: asyncpg.Pool) -> None:
    """A drain paused past its lease (forced to expire) must not commit after the next holder."""
    first, second = _mailbox(pool, 30), _mailbox(pool, 30)
    await _accept(first, 1)
    await _accept(first, 2)
    calls: list[tuple[str, str]] = []
    w1_inside, w1_resume = asyncio.Event(), asyncio.Event()

    async def pause_on_first_event(event_id: str) -> None:
        if event_id == "evt_1":
            w1_inside.set()
            await w1_resume.wait()

    w1 = asyncio.create_task(
        first.drain(ACCOUNT, "w1", _recording(calls, "w1", pause_on_first_event))
    )
    await asyncio.wait_for(w1_inside.wait(), 10)
    # The pause outlasts the lease (as a GC pause or a frozen VM would): expire it.
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE marketplace_webhook_accounts SET lease_until = now() - interval '1 second' "
            "WHERE account = $1",
            ACCOUNT,
        )
    w2 = asyncio.create_task(second.drain(ACCOUNT, "w2", _recording(calls, "w2", _no_wait)))
    await _until_blocked_or_done(pool, w2)
    w1_resume.set()
    outcomes = await asyncio.gather(w1, w2)
    assert await _committed(pool) == [("evt_1", 1), ("evt_2", 1)], (calls, outcomes)
    assert set((await _statuses(pool)).values()) == {"handled"}


async def _until_blocked_or_done(pool: asyncpg.Pool, task: asyncio.Task[Any]) -> None:
    """Wait until ``task`` finished or some backend waits on a lock (it queued behind w1)."""
    async with pool.acquire() as conn:
        for _ in range(400):
            if task.done():
                return
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting:
                return
            await asyncio.sleep(0.025)
    raise AssertionError("the second drain neither finished nor queued behind the first")


class _OneConnection:
    """A pool of one connection, so ``Mailbox.accept`` runs inside the test's transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._conn


@pytest.mark.parametrize("batched", [False, True], ids=["drain", "drain_many"])
async def test_an_event_accepted_while_the_lease_is_taken_is_never_stranded(
    pool: asyncpg.Pool, batched: bool
) -> None:
    """Found 2: the lease waits on a concurrent accept; the version it returns must match
    the events it read, or the account is released as idle with ``evt_2`` pending. Both
    lease functions: one key's (``drain``) and several keys' (``drain_many``, the worker's
    way, one transaction)."""
    mailbox = _mailbox(pool, 30)
    await _accept(mailbox, 1)
    calls: list[tuple[str, str]] = []
    async with pool.acquire() as held:
        concurrent = Mailbox(_OneConnection(held))  # type: ignore[arg-type]
        transaction = held.transaction()
        await transaction.start()
        await _accept(concurrent, 2)  # committed only below, after the drain asked for the lease
        handle = _recording(calls, "w1", _no_wait)
        drain = asyncio.create_task(
            mailbox.drain_many([ACCOUNT], "w1", handle, shared=True)
            if batched
            else mailbox.drain(ACCOUNT, "w1", handle)
        )
        await _until_blocked_or_done(pool, drain)
        await transaction.commit()
    await drain
    statuses = await _statuses(pool)
    async with pool.acquire() as conn:
        scheduled = await conn.fetchval(
            "SELECT scheduled FROM marketplace_webhook_accounts WHERE account = $1", ACCOUNT
        )
    pending = sorted(event_id for event_id, status in statuses.items() if status == "pending")
    # Either the drain applied evt_2 too, or it left the account scheduled for it.
    assert not pending or scheduled, f"released as idle with {pending} pending"


async def test_a_drain_that_cannot_renew_its_lease_stops_before_it_ends(
    pool: asyncpg.Pool,
) -> None:
    """A Stripe call (here: a sleep) longer than the lease, with renewal impossible: the
    drain is cancelled before its lease could run out, and commits nothing."""

    async def unreachable() -> asyncpg.Connection:
        raise OSError("the database is unreachable from the lease keeper")

    mailbox = Mailbox(pool, lease_seconds=1, renew_with=unreachable)
    await _accept(mailbox, 1)
    calls: list[tuple[str, str]] = []
    finished: list[str] = []

    async def hangs(event_id: str) -> None:
        await asyncio.sleep(30)
        finished.append(event_id)

    outcome = await mailbox.drain(ACCOUNT, "w1", _recording(calls, "w1", hangs))
    assert outcome.state == "lost"
    assert calls == [("w1", "evt_1")]
    assert finished == []  # the call was cut short, not waited for
    assert await _committed(pool) == []
    assert await _statuses(pool) == {"evt_1": "pending"}


async def test_renewal_extends_a_held_lease_and_stops_a_drain_whose_lease_moved(
    pool: asyncpg.Pool,
) -> None:
    mailbox = _mailbox(pool, 30)
    await _accept(mailbox, 1)
    await _accept(mailbox, 2)
    seen: dict[str, Any] = {}

    async def lease_until() -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT lease_until FROM marketplace_webhook_accounts WHERE account = $1",
                ACCOUNT,
            )

    async def renew_then_lose(event_id: str) -> None:
        if event_id == "evt_1":
            before = await lease_until()
            await mailbox.keeper.renew()
            seen["extended"] = await lease_until() > before
        else:
            # Another worker takes the mailbox over (its lease bumps the token).
            async with pool.acquire() as conn:
                await conn.execute(
                    "UPDATE marketplace_webhook_accounts SET lease_epoch = lease_epoch + 1 "
                    "WHERE account = $1",
                    ACCOUNT,
                )
            await mailbox.keeper.renew()
            await asyncio.sleep(30)  # cancelled by the keeper, not waited for
            seen["waited"] = True

    calls: list[tuple[str, str]] = []
    outcome = await mailbox.drain(ACCOUNT, "w1", _recording(calls, "w1", renew_then_lose))
    assert seen == {"extended": True}
    assert outcome.state == "lost"
    assert await _committed(pool) == []
    assert set((await _statuses(pool)).values()) == {"pending"}


@pytest.mark.parametrize("shared", [False, True], ids=["drain", "one_transaction"])
async def test_a_drain_whose_lease_was_taken_over_records_no_failure(
    pool: asyncpg.Pool, shared: bool
) -> None:
    """A handler failing after the lease moved on: the failure is not the lost drain's to
    record. It counts no attempt, dead-letters nothing (even at ``max_attempts=1``), does
    not back off or park the mailbox, does not release the new holder's lease, and the
    events before the failing one stay unapplied."""
    mailbox = Mailbox(pool, lease_seconds=30, max_attempts=1, backoff_base=60, backoff_cap=60)
    await _accept(mailbox, 1)
    await _accept(mailbox, 2)
    calls: list[tuple[str, str]] = []

    async def taken_over_then_fails(event_id: str) -> None:
        if event_id == "evt_2":
            if ("w1", "evt_2") not in calls[:-1]:  # the first time only: w2 takes over
                async with pool.acquire() as conn:
                    await conn.execute(
                        "UPDATE marketplace_webhook_accounts SET lease_epoch = lease_epoch + 1, "
                        "lease_owner = 'w2', lease_until = now() + interval '30 seconds' "
                        "WHERE account = $1",
                        ACCOUNT,
                    )
            raise RuntimeError("evt_2's handler fails")

    handle = _recording(calls, "w1", taken_over_then_fails)
    if shared:
        outcome = (await mailbox.drain_many([ACCOUNT], "w1", handle, shared=True))[ACCOUNT]
    else:
        outcome = await mailbox.drain(ACCOUNT, "w1", handle)
    assert outcome.state == "lost"
    assert await _committed(pool) == []
    async with pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT event_id, status, attempts, last_error FROM marketplace_webhook_events "
            "ORDER BY seq"
        )
        mailbox_row = await conn.fetchrow(
            "SELECT lease_owner, lease_until IS NOT NULL AS leased, backoff_until, parked, "
            "attempts, last_error, handled FROM marketplace_webhook_accounts WHERE account = $1",
            ACCOUNT,
        )
    assert [tuple(row) for row in events] == [
        ("evt_1", "pending", 0, ""),
        ("evt_2", "pending", 0, ""),
    ]
    assert dict(mailbox_row) == {
        "lease_owner": "w2",
        "leased": True,
        "backoff_until": None,
        "parked": False,
        "attempts": 0,
        "last_error": "",
        "handled": 0,
    }


# Every effect row's insert waits ``seconds`` when its transaction commits (a deferred
# constraint trigger runs at COMMIT): a commit that takes longer than the drain's deadline.
SLOW_COMMIT = """
CREATE OR REPLACE FUNCTION lease_effects_slow_commit() RETURNS trigger
LANGUAGE plpgsql AS $fn$ BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $fn$;
CREATE CONSTRAINT TRIGGER lease_effects_slow_commit AFTER INSERT ON lease_effects
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lease_effects_slow_commit();
"""


@pytest.mark.parametrize("shared", [False, True], ids=["drain", "drain_many_shared"])
async def test_a_commit_running_past_the_drains_deadline_completes_and_runs_its_actions(
    pool: asyncpg.Pool, shared: bool
) -> None:
    """Once the drain's token was checked (the statement holds the mailbox row until the
    commit, so no other drain can interleave), its deadline passing while the commit runs
    cuts nothing short: the drain reports what it committed and runs its after-commit
    actions (a plugin's notification). Before, the deadline cancelled the commit and the
    drain reported ``lost``: had the commit gone through, its notifications were lost."""
    async with pool.acquire() as conn:
        await conn.execute(SLOW_COMMIT.format(seconds=4))
    mailbox = _mailbox(pool, 3)  # the drain's deadline: 3 s less the 0.6 s margin
    mailbox.keeper.autorenew = False  # nothing moves the deadline
    await _accept(mailbox, 1)
    notified: list[str] = []

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> Callable[[], None]:
        await conn.execute(
            "INSERT INTO lease_effects (event_id, seq) VALUES ($1, 1)", str(body["id"])
        )
        return lambda: notified.append(str(body["id"]))

    if shared:
        outcome = (await mailbox.drain_many([ACCOUNT], "w1", handle, shared=True))[ACCOUNT]
    else:
        outcome = await mailbox.drain(ACCOUNT, "w1", handle)
    assert (outcome.state, outcome.handled) == ("idle", 1)
    assert notified == ["evt_1"]
    assert await _committed(pool) == [("evt_1", 1)]
    assert await _statuses(pool) == {"evt_1": "handled"}
