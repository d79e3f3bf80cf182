"""The intake's group commit on real PostgreSQL (``Mailbox.accept_many``, core step ``0008``).

Deliveries arriving together share one statement and one commit; each is still
accepted as it would be alone: its own mailbox version (the order its key's
events arrived in), a duplicate changes nothing, and a mailbox newly scheduled
is published once, in one token naming every such mailbox of the group.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import asyncpg
import pytest
from support.stripe_events import event

from engine.webhooks.grouping import GroupCommit
from engine.webhooks.mailbox import Mailbox
from engine.worker.runtime import Scheduler


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=2, max_size=8)
    yield pool
    await pool.close()


def _delivery(account: str, seq: int) -> tuple[dict[str, Any], str, str]:
    body = event(account, seq, event_id=f"evt_{account}_{seq}")
    return body, json.dumps(body), account


async def _seqs(pool: asyncpg.Pool) -> dict[str, list[str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT account, event_id FROM marketplace_webhook_events ORDER BY account, seq"
        )
    order: dict[str, list[str]] = {}
    for row in rows:
        order.setdefault(row["account"], []).append(row["event_id"])
    return order


async def test_accept_many_keeps_each_keys_order_and_changes_nothing_for_a_duplicate(
    pool: asyncpg.Pool,
) -> None:
    mailbox = Mailbox(pool)
    await mailbox.accept(*_delivery("acct_a", 0)[:2])  # a is scheduled already
    deliveries = [
        _delivery("acct_b", 1),
        _delivery("acct_a", 1),
        _delivery("acct_b", 2),
        _delivery("acct_a", 1),  # the same event twice in one group
        _delivery("acct_a", 0),  # and one stored before
        _delivery("acct_a", 2),
    ]
    accepted = await mailbox.accept_many(deliveries)
    assert [one.inserted for one in accepted] == [True, True, True, False, False, True]
    assert [one.account for one in accepted] == [key for *_, key in deliveries]
    # b was newly scheduled by its first event; a was scheduled before the group.
    assert [one.publish for one in accepted] == [True, False, True, False, False, False]
    assert await _seqs(pool) == {
        "acct_a": ["evt_acct_a_0", "evt_acct_a_1", "evt_acct_a_2"],
        "acct_b": ["evt_acct_b_1", "evt_acct_b_2"],
    }


async def test_without_the_function_each_event_is_accepted_alone(pool: asyncpg.Pool) -> None:
    """A database not migrated to step 0008 yet: ``accept_many`` falls back to ``accept``."""
    async with pool.acquire() as conn:
        await conn.execute(
            "DROP FUNCTION marketplace_mailbox_accept_many"
            "(text[], text[], text[], boolean[], bigint[], text[])"
        )
    mailbox = Mailbox(pool)
    accepted = await mailbox.accept_many([_delivery("acct_a", 1), _delivery("acct_a", 2)])
    assert not mailbox.accept_many_exists
    assert [one.inserted for one in accepted] == [True, True]
    assert await _seqs(pool) == {"acct_a": ["evt_acct_a_1", "evt_acct_a_2"]}


class _Published:
    """Stands in for the scheduler: records each token's mailboxes."""

    def __init__(self) -> None:
        self.tokens: list[list[str]] = []

    async def schedule_many(self, tokens: Sequence[tuple[str, str]]) -> None:
        self.tokens.append([account for account, _ in tokens])


async def test_deliveries_arriving_together_share_one_commit_and_one_token(
    pool: asyncpg.Pool,
) -> None:
    """One commit at a time: the first delivery goes alone, at once; the nine arriving
    while it commits go together, and one token names the nine mailboxes."""
    mailbox = Mailbox(pool)
    published = _Published()
    group = GroupCommit(mailbox, cast(Scheduler, published), at_once=1)
    accepted = await asyncio.gather(*(group.accept(*_delivery(f"acct_{n}", 1)) for n in range(10)))
    assert all(one.inserted and one.publish for one in accepted)
    assert [len(token) for token in published.tokens] == [1, 9]
    assert sorted(key for token in published.tokens for key in token) == sorted(
        f"acct_{n}" for n in range(10)
    )
    again = await group.accept(*_delivery("acct_0", 1))
    assert not again.inserted
    assert len(published.tokens) == 2  # a duplicate schedules nothing


async def test_the_core_migration_records_step_0008(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        steps = await conn.fetch(
            "SELECT name FROM marketplace_migrations WHERE app = 'marketplace' ORDER BY name"
        )
    assert "0008_mailbox_accept_many" in [row["name"] for row in steps]


async def test_an_event_the_database_refuses_fails_alone_not_its_group(
    pool: asyncpg.Pool,
) -> None:
    mailbox = Mailbox(pool)
    published = _Published()
    group = GroupCommit(mailbox, cast(Scheduler, published), at_once=1)
    body, _, key = _delivery("acct_bad", 1)
    bad = group.accept(body, "not json: jsonb refuses it", key)
    outcomes = await asyncio.gather(
        group.accept(*_delivery("acct_first", 1)),  # goes alone; the rest group behind it
        group.accept(*_delivery("acct_a", 1)),
        bad,
        group.accept(*_delivery("acct_b", 1)),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], asyncpg.PostgresError)
    assert [one.inserted for one in outcomes if not isinstance(one, BaseException)] == [True] * 3
    assert sorted(await _seqs(pool)) == ["acct_a", "acct_b", "acct_first"]
    assert sorted(key for token in published.tokens for key in token) == [
        "acct_a",
        "acct_b",
        "acct_first",
    ]
