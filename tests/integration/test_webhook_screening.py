"""Events the worker must not apply, on real PostgreSQL and NATS: unknown accounts, other mode.

A Connect event of an account the platform does not know is retried (the engine may
be storing that account right now), then dead and its mailbox parked; once the
account exists, a replay applies the mailbox in order. An engine with a live key
parks test-mode events (the e2e tests cover the reverse).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from support.accounts import know_accounts
from support.pipeline import Pipeline, running_pipeline
from support.stripe_events import event


@pytest.fixture
async def pipeline(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


async def _parked(pipeline: Pipeline, account: str) -> bool:
    return bool(
        await pipeline.fetchval(
            "SELECT parked FROM marketplace_webhook_accounts WHERE account = $1", account
        )
    )


async def test_an_unknown_account_is_parked_then_replayed_in_order_once_it_exists(
    pipeline: Pipeline,
) -> None:
    later = "acct_later"
    for seq in (1, 2, 3):
        await pipeline.deliver(event(later, seq), known=False)
    await pipeline.deliver(event("acct_known", 1))  # an account the platform has
    pipeline.start_worker()
    await pipeline.wait_until(lambda: _parked(pipeline, later), what="the unknown account to park")
    await pipeline.wait_until(lambda: pipeline.recorded("acct_known"), what="the known account")
    assert await pipeline.recorded(later) == 0
    (dead,) = await pipeline.webhooks.mailbox.dead_letters(account=later)
    assert dead.attempts == 3  # retried first: the account might have been on its way
    assert later in dead.last_error
    assert "does not know" in dead.last_error

    # Replayed before the account exists: parked again, still nothing applied.
    await pipeline.webhooks.replay(account=later)  # unparks it at once
    await pipeline.wait_until(lambda: _parked(pipeline, later), what="the account to park again")
    assert await pipeline.recorded(later) == 0

    await know_accounts(pipeline.services.db.pool, [later])
    assert await pipeline.webhooks.replay(account=later) == [later]
    await pipeline.wait_until(
        lambda: _count_is(pipeline.recorded(later), 3), what="the replayed account"
    )
    async with pipeline.services.db.pool.acquire() as conn:
        order = await conn.fetch(
            "SELECT seq FROM test_recorded WHERE account = $1 ORDER BY handled_at", later
        )
    assert [row["seq"] for row in order] == [1, 2, 3]


async def test_an_event_that_arrives_before_its_account_is_stored_is_applied_when_it_is(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> None:
    """Onboarding creates the account at Stripe, then stores it: an ``account.updated``
    can arrive in between. The retries carry it over that gap."""
    async with running_pipeline(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        max_attempts=100,
        backoff_max_seconds=0.1,
    ) as pipeline:
        early = "acct_early"
        await pipeline.deliver(event(early, 1), known=False)
        pipeline.start_worker()
        await pipeline.wait_until(
            lambda: pipeline.fetchval(
                "SELECT attempts >= 1 FROM marketplace_webhook_events WHERE account = $1", early
            ),
            what="a first refused attempt",
        )
        assert await pipeline.recorded(early) == 0
        await know_accounts(pipeline.services.db.pool, [early])
        await pipeline.wait_until(lambda: pipeline.recorded(early), what="the event once known")
        assert await pipeline.webhooks.mailbox.dead_letters(account=early) == []
        assert not await _parked(pipeline, early)


async def test_a_live_engine_parks_test_mode_events(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> None:
    async with running_pipeline(
        fresh_database_url, nats_url, unique_name.upper(), secret_key="sk_live_pipeline"
    ) as pipeline:
        account = "acct_mode"
        test_mode = event(account, 1)  # livemode false, as the kit's events are
        live = event(account, 2)
        live["livemode"] = True
        for body in (test_mode, live):
            receipt = await pipeline.deliver(body)
            assert (receipt.received, receipt.duplicate) == (True, False)
        pipeline.start_worker()
        await pipeline.wait_until(lambda: pipeline.recorded(account), what="the live event")
        await asyncio.sleep(0.3)  # time for a wrongful application of the test-mode one
        async with pipeline.services.db.pool.acquire() as conn:
            applied = await conn.fetch("SELECT event_id FROM test_recorded")
        assert [row["event_id"] for row in applied] == [live["id"]]
        (dead,) = await pipeline.webhooks.mailbox.dead_letters(account=account)
        assert dead.event_id == test_mode["id"]
        assert "livemode false" in dead.last_error
        assert "live key" in dead.last_error
        assert not await _parked(pipeline, account)  # its other events keep flowing


async def _count_is(value: object, expected: int) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return value == expected
