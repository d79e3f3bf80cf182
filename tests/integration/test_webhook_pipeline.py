"""The webhook pipeline on real PostgreSQL and NATS JetStream: once, isolated, fair, durable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from support.pipeline import Pipeline, running_pipeline
from support.stripe_events import event, signed

from engine.infra.processes import find_free_port
from engine.webhooks.signature import SignatureError
from engine.worker.runtime import Worker


@pytest.fixture
async def pipeline(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


async def test_duplicate_delivery_five_times_concurrently_is_processed_once(
    pipeline: Pipeline,
) -> None:
    body = event("acct_dup", 1)
    receipts = await asyncio.gather(*(pipeline.deliver(body) for _ in range(5)))
    assert sorted(receipt.duplicate for receipt in receipts) == [False, True, True, True, True]
    pipeline.start_worker()
    await pipeline.wait_until(lambda: pipeline.recorded("acct_dup"), what="the event")
    await asyncio.sleep(0.5)  # give any wrongful second application time to happen
    assert await pipeline.recorded("acct_dup") == 1
    assert await pipeline.fetchval("SELECT sum(duplicates) FROM test_recorded") == 0
    assert await pipeline.fetchval("SELECT count(*) FROM marketplace_webhook_events") == 1


async def test_unverifiable_deliveries_are_refused_and_store_nothing(pipeline: Pipeline) -> None:
    intake = pipeline.webhooks.intake
    body = event("acct_x", 1)
    payload, headers = signed(body, "whsec_wrong")
    with pytest.raises(SignatureError):
        await intake.receive(payload, headers["Stripe-Signature"], connect=True)
    with pytest.raises(SignatureError, match="tolerance"):
        await pipeline.deliver(body, timestamp=int(time.time()) - 301)
    with pytest.raises(SignatureError, match="missing"):
        await intake.receive(payload, None, connect=True)
    assert await pipeline.fetchval("SELECT count(*) FROM marketplace_webhook_events") == 0


async def test_rotated_secrets_both_verify(pipeline: Pipeline) -> None:
    body = event("acct_rot", 1)
    payload, headers = signed(body, "whsec_old_rotated_out")
    receipt = await pipeline.webhooks.intake.receive(
        payload, headers["Stripe-Signature"], connect=True
    )
    assert not receipt.duplicate


async def test_poison_account_parks_while_others_flow_then_replays_in_order(
    pipeline: Pipeline,
) -> None:
    async with pipeline.services.db.pool.acquire() as conn:
        await conn.execute("INSERT INTO test_poison VALUES ('acct_poison')")
    for seq in range(1, 6):
        await pipeline.deliver(event("acct_poison", seq))
    others = [f"acct_ok_{n}" for n in range(50)]
    await asyncio.gather(
        *(pipeline.deliver(event(account, seq)) for seq in range(1, 21) for account in others)
    )
    pipeline.start_worker()
    await pipeline.wait_until(
        lambda: _equals(pipeline.recorded(), 1000), timeout=90, what="1,000 healthy events"
    )
    await pipeline.wait_until(
        lambda: pipeline.fetchval(
            "SELECT parked FROM marketplace_webhook_accounts WHERE account = 'acct_poison'"
        ),
        what="the poison account to park",
    )
    dead = await pipeline.webhooks.mailbox.dead_letters(account="acct_poison")
    assert len(dead) == 1
    assert dead[0].attempts == 3
    assert "poisoned" in dead[0].last_error
    assert await pipeline.recorded("acct_poison") == 0

    async with pipeline.services.db.pool.acquire() as conn:
        await conn.execute("DELETE FROM test_poison")
    assert await pipeline.webhooks.replay(account="acct_poison") == ["acct_poison"]
    await pipeline.wait_until(
        lambda: _equals(pipeline.recorded("acct_poison"), 5), what="the replayed account"
    )
    async with pipeline.services.db.pool.acquire() as conn:
        order = await conn.fetch(
            "SELECT seq FROM test_recorded WHERE account = 'acct_poison' ORDER BY handled_at"
        )
    assert [row["seq"] for row in order] == [1, 2, 3, 4, 5]


async def test_flood_on_one_account_does_not_delay_another(pipeline: Pipeline) -> None:
    flood, quiet = "acct_flood", "acct_quiet"
    pipeline.start_worker()
    flood_size, quiet_size = 20_000, 200

    async def send(account: str, count: int) -> None:
        for start in range(1, count + 1, 200):
            await asyncio.gather(
                *(
                    pipeline.deliver(event(account, seq))
                    for seq in range(start, min(start + 200, count + 1))
                )
            )

    await asyncio.gather(send(flood, flood_size), send(quiet, quiet_size))
    await pipeline.wait_until(
        lambda: _equals(pipeline.recorded(quiet), quiet_size), timeout=120, what="the quiet account"
    )
    await pipeline.wait_until(
        lambda: _equals(pipeline.recorded(flood), flood_size), timeout=240, what="the flood"
    )
    async with pipeline.services.db.pool.acquire() as conn:
        latency = await conn.fetch(
            """
            WITH lag AS (
                SELECT r.account, r.handled_at,
                       extract(epoch FROM r.handled_at - e.received_at) AS seconds
                FROM test_recorded r JOIN marketplace_webhook_events e USING (event_id)
            )
            SELECT account, max(handled_at) AS last_handled,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS p50,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY seconds) AS p99
            FROM lag GROUP BY account
            """
        )
        by_account = {row["account"]: row for row in latency}
        flood_halfway = await conn.fetchval(
            "SELECT handled_at FROM test_recorded WHERE account = $1 "
            "ORDER BY handled_at OFFSET $2 LIMIT 1",
            flood,
            flood_size // 2,
        )
    for account in (quiet, flood):
        row = by_account[account]
        print(f"{account}: latency p50 {row['p50'] * 1000:.0f} ms, p99 {row['p99'] * 1000:.0f} ms")
    # B's last event is handled before A's flood is half done.
    assert by_account[quiet]["last_handled"] < flood_halfway
    assert await pipeline.fetchval("SELECT sum(duplicates) FROM test_recorded") == 0


async def _equals(value: object, expected: int) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return value == expected


async def test_a_lone_failing_event_backs_off_then_parks(pipeline: Pipeline) -> None:
    async with pipeline.services.db.pool.acquire() as conn:
        await conn.execute("INSERT INTO test_poison VALUES ('acct_lone')")
    await pipeline.deliver(event("acct_lone", 1))
    pipeline.start_worker()
    await pipeline.wait_until(
        lambda: pipeline.fetchval(
            "SELECT parked FROM marketplace_webhook_accounts WHERE account = 'acct_lone'"
        ),
        what="the lone event's account to park",
    )
    dead = await pipeline.webhooks.mailbox.dead_letters(account="acct_lone")
    assert [(letter.attempts, "poisoned" in letter.last_error) for letter in dead] == [(3, True)]
    assert await pipeline.recorded("acct_lone") == 0
    async with pipeline.services.db.pool.acquire() as conn:
        await conn.execute("DELETE FROM test_poison")
    await pipeline.webhooks.replay(event_ids=[dead[0].event_id])
    await pipeline.wait_until(lambda: _equals(pipeline.recorded("acct_lone"), 1), what="replay")


async def test_a_poisoned_booking_parks_only_its_own_mailbox(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> None:
    """Separate charges and transfers: every booking event is a platform event. Each booking
    has its own mailbox, so one whose handler keeps failing parks alone; the other booking
    and the platform's own events go on."""
    unreachable = f"http://127.0.0.1:{find_free_port()}"  # Stripe down for booking 1's handler
    async with running_pipeline(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=("three_sided_bookings",),
        stripe_api_base=unreachable,
    ) as pipeline:
        # Booking 1's charge names its balance transaction by id: the handler asks Stripe.
        await pipeline.deliver(_booking_charge(1, "ch_poison", {"balance_transaction": "txn_1"}))
        await pipeline.deliver(_booking_charge(1, "ch_after", _expanded_balance_transaction()))
        await pipeline.deliver(_booking_charge(2, "ch_fine", _expanded_balance_transaction()))
        for seq in range(1, 4):
            await pipeline.deliver(event(None, seq))
        pipeline.start_worker()
        poisoned = "three_sided_bookings:booking:1"
        await pipeline.wait_until(
            lambda: pipeline.fetchval(
                "SELECT parked FROM marketplace_webhook_accounts WHERE account = $1", poisoned
            ),
            what="booking 1's mailbox to park",
        )
        await pipeline.wait_until(
            lambda: _equals(pipeline.recorded("platform"), 3), what="the platform's events"
        )
        await pipeline.wait_until(
            lambda: pipeline.fetchval(
                "SELECT count(*) = 1 FROM marketplace_ledger_transactions "
                "WHERE idempotency_key = 'charge:ch_fine'"
            ),
            what="booking 2's charge in the ledger",
        )
        states = {row["account"]: row for row in await pipeline.webhooks.mailbox.account_states()}
        assert states[poisoned]["parked"]
        assert (states[poisoned]["dead"], states[poisoned]["pending"]) == (1, 1)  # order kept
        assert not states["three_sided_bookings:booking:2"]["parked"]
        assert not states["platform"]["parked"]
        dead = await pipeline.webhooks.mailbox.dead_letters()
        assert [(letter.account, letter.type) for letter in dead] == [
            (poisoned, "charge.succeeded")
        ]
        assert "did not answer" in dead[0].last_error or "Stripe" in dead[0].last_error


def _booking_charge(booking: int, charge_id: str, extra: dict[str, object]) -> dict[str, object]:
    charge = {
        "id": charge_id,
        "object": "charge",
        "amount": 10_000,
        "currency": "usd",
        "captured": True,
        "transfer_group": f"booking:{booking}",
        **extra,
    }
    return event(None, 0, event_type="charge.succeeded", obj=charge)


def _expanded_balance_transaction() -> dict[str, object]:
    return {
        "balance_transaction": {
            "id": "txn_x",
            "object": "balance_transaction",
            "amount": 10_000,
            "fee": 320,
            "created": 1_700_000_000,
        }
    }


async def test_the_pending_gauges_are_per_kind_and_name_the_busiest_mailboxes(
    pipeline: Pipeline,
) -> None:
    for seq in range(1, 3):
        await pipeline.deliver(event("acct_gauge", seq))
    for n in (1, 2, 3):  # three disputes: three mailboxes, dispute:<charge id>
        dispute = {"id": f"dp_{n}", "object": "dispute", "charge": f"ch_{n}"}
        await pipeline.deliver(event(None, n, event_type="charge.dispute.created", obj=dispute))
    await pipeline.deliver(event(None, 1))
    worker = Worker(pipeline.services, pipeline.webhooks.scheduler)
    await worker.sample_pending()
    registry = worker.metrics.registry

    def kind(label: str) -> float | None:
        return registry.get_sample_value("marketplace_webhook_pending", {"kind": label})

    def named(mailbox: str) -> float | None:
        return registry.get_sample_value("marketplace_webhook_pending_top", {"mailbox": mailbox})

    assert (kind("account"), kind("dispute"), kind("platform")) == (2, 3, 1)
    assert (named("acct_gauge"), named("dispute:ch_1"), named("platform")) == (2, 1, 1)
    async with pipeline.services.db.pool.acquire() as conn:
        await conn.execute("UPDATE marketplace_webhook_events SET status = 'handled'")
    await worker.sample_pending()
    assert (kind("account"), kind("dispute"), kind("platform")) == (0, 0, 0)
    assert named("acct_gauge") is None
