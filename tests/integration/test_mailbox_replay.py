"""Replaying dead letters on real PostgreSQL: a replay never lets a mailbox's later events
pass the dead event that parked it.

A mailbox can hold dead events that did not park it: an event of another Stripe API
version (or mode) is stored dead at intake, and one a worker finds permanently
inapplicable is dead at once, while the mailbox goes on. The operator replays those by
id once the engine can apply them (docs/operations.md, "What is parked, and why"). If
the same mailbox is parked meanwhile by a failing handler, that replay must not resume
the events waiting behind the failing one while it stays dead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg
import pytest
from support.stripe_events import event

from engine.webhooks.mailbox import Mailbox

ACCOUNT = "acct_replay"


class _OtherVersion(Exception):
    """Refused for good, as an event of another API version is (dead at once)."""

    permanent = True


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


async def _statuses(pool: asyncpg.Pool) -> list[tuple[str, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_id, status FROM marketplace_webhook_events ORDER BY seq, id"
        )
    return [(row["event_id"], row["status"]) for row in rows]


async def _parked(pool: asyncpg.Pool) -> bool:
    async with pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                "SELECT parked FROM marketplace_webhook_accounts WHERE account = $1", ACCOUNT
            )
        )


async def test_replaying_another_dead_event_of_a_parked_mailbox_keeps_its_order(
    pool: asyncpg.Pool,
) -> None:
    mailbox = Mailbox(pool, max_attempts=1, backoff_base=0.01, backoff_cap=0.01)
    bodies = [event(ACCOUNT, seq, event_id=f"evt_{seq}") for seq in (1, 2, 3)]
    await mailbox.accept(bodies[0], json.dumps(bodies[0]), dead_reason="another API version")
    await mailbox.accept(bodies[1], json.dumps(bodies[1]))
    poisoned = {"evt_2"}
    applied: list[str] = []

    async def handle(body: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        if body["id"] == "evt_1":
            raise _OtherVersion("still another API version")
        if body["id"] in poisoned:
            raise RuntimeError("the handler fails")
        applied.append(str(body["id"]))

    assert (await mailbox.drain(ACCOUNT, "w1", handle)).state == "parked"  # evt_2 parks it
    await mailbox.accept(bodies[2], json.dumps(bodies[2]))  # waits behind evt_2

    # The operator replays the other-version event by id (an upgrade is expected to fix it).
    assert await mailbox.replay(event_ids=["evt_1"]) == [ACCOUNT]
    while (await mailbox.drain(ACCOUNT, "w1", handle)).state == "requeue":
        pass
    # evt_3 must not pass evt_2, which still fails: the mailbox parks on it again.
    assert applied == []
    assert await _statuses(pool) == [("evt_1", "dead"), ("evt_2", "dead"), ("evt_3", "pending")]
    assert await _parked(pool)

    # Fixed: replaying the mailbox applies what is left, in order.
    poisoned.clear()
    assert await mailbox.replay(account=ACCOUNT) == [ACCOUNT]
    while (await mailbox.drain(ACCOUNT, "w1", handle)).state == "requeue":
        pass
    assert applied == ["evt_2", "evt_3"]
    assert not await _parked(pool)


async def test_replaying_a_dead_event_of_a_mailbox_not_parked_revives_only_that_event(
    pool: asyncpg.Pool,
) -> None:
    mailbox = Mailbox(pool, max_attempts=1)
    bodies = [event(ACCOUNT, seq, event_id=f"evt_{seq}") for seq in (1, 2)]
    for body in bodies:
        await mailbox.accept(body, json.dumps(body), dead_reason="another API version")
    assert await mailbox.replay(event_ids=["evt_2"]) == [ACCOUNT]
    assert await _statuses(pool) == [("evt_1", "dead"), ("evt_2", "pending")]
