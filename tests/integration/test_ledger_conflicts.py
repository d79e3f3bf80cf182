"""The ledger on real PostgreSQL: a key posted again is a no-op only with the same entries.

A posting under an existing key with different entries is refused loudly:
``LedgerConflict`` is raised, nothing of it is written, the process's metric
counts it and one admin alert is opened (counted again, never duplicated, when
the same refusal repeats), and the alert survives the caller's rollback. A
transfer recorded again with other facts (``RecordConflict``) gets the same
treatment: its own metric and a ``record_conflict`` alert.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from engine.core.errors import LedgerConflict, RecordConflict
from engine.core.ledger import CUSTOMERS, Ledger, Posting
from engine.core.money import Money
from engine.observability import Metrics
from engine.payments import movements
from engine.payments.movements import MoneyScope
from engine.reconciliation.store import (
    LEDGER_CONFLICT,
    RECORD_CONFLICT,
    list_alerts,
    open_ledger_conflict_alert,
    resolve_alerts,
)

AT = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=3)
    yield pool
    await pool.close()


def charge(amount: int, account: str = "acct_1") -> Posting:
    return Posting.transfer(
        "charge:ch_1", "charge", CUSTOMERS, account, Money(amount, "usd"), occurred_at=AT
    )


def conflicts_counted(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("marketplace_ledger_conflicts_total", {"kind": kind})
    return value or 0.0


async def test_same_key_same_entries_is_an_idempotent_no_op(pool: asyncpg.Pool) -> None:
    metrics = Metrics()
    ledger = Ledger(pool, on_conflict=[functools.partial(open_ledger_conflict_alert, pool)])
    ledger.observe_conflicts(metrics.ledger_conflict)

    assert await ledger.post(charge(1000)) is True
    assert await ledger.post(charge(1000)) is False
    # Entries in another order are the same entries.
    reordered = Posting(
        key="charge:ch_1",
        kind="charge",
        entries=tuple(reversed(charge(1000).entries)),
        occurred_at=AT,
    )
    assert await ledger.post(reordered) is False

    assert await ledger.balance("acct_1", "usd") == Money(1000, "usd")
    assert conflicts_counted(metrics, "charge") == 0
    assert await list_alerts(pool) == []


async def test_same_key_other_entries_is_refused_counted_and_alerted_once(
    pool: asyncpg.Pool,
) -> None:
    metrics = Metrics()
    ledger = Ledger(pool, on_conflict=[functools.partial(open_ledger_conflict_alert, pool)])
    ledger.observe_conflicts(metrics.ledger_conflict)
    ledger.observe_conflicts(metrics.ledger_conflict)  # registered once however often
    await ledger.post(charge(1000))

    with pytest.raises(LedgerConflict) as refused:
        await ledger.post(charge(1200))
    assert refused.value.key == "charge:ch_1"
    assert refused.value.code == "ledger_conflict"
    assert refused.value.existing == [("acct_1", 1000, "usd"), ("customers", -1000, "usd")]
    assert refused.value.refused == [("acct_1", 1200, "usd"), ("customers", -1200, "usd")]
    # Another account for the same amount is a different posting too.
    with pytest.raises(LedgerConflict):
        await ledger.post(charge(1000, account="acct_2"))

    # Inside the caller's transaction: the caller rolls back, the alert stays.
    async with pool.acquire() as conn:
        with pytest.raises(LedgerConflict):
            async with conn.transaction():
                await ledger.post(charge(1200), conn=conn)

    assert await ledger.balance("acct_1", "usd") == Money(1000, "usd")
    assert await ledger.balance("acct_2", "usd") == Money(0, "usd")
    assert conflicts_counted(metrics, "charge") == 3
    alerts = await list_alerts(pool)
    assert sorted((a.status, a.account, a.occurrences) for a in alerts) == [
        (LEDGER_CONFLICT, "acct_1", 2),
        (LEDGER_CONFLICT, "acct_2", 1),
    ]
    assert all("charge:ch_1" in alert.summary for alert in alerts)

    # A reconciliation run over these accounts does not resolve them: no
    # balance transaction can show a refused posting gone.
    async with pool.acquire() as conn:
        assert await resolve_alerts(conn, 10**9, ["acct_1", "acct_2"]) == 0
    assert len(await list_alerts(pool)) == 2


async def test_a_transfer_recorded_with_other_facts_is_refused_counted_and_alerted(
    pool: asyncpg.Pool,
) -> None:
    metrics = Metrics()
    ledger = Ledger(pool, on_conflict=[functools.partial(open_ledger_conflict_alert, pool)])
    ledger.observe_conflicts(metrics.ledger_conflict)
    made = {
        "id": "tr_1",
        "amount": 1000,
        "currency": "usd",
        "destination": "acct_1",
        "created": int(AT.timestamp()),
        "metadata": {"idempotency_key": "booking:1:transfer:provider"},
    }

    def scope(conn: asyncpg.Connection) -> MoneyScope:
        # Recording a transfer Stripe made calls no Stripe: no gateway needed.
        return MoneyScope(None, ledger, conn, "orders", "booking:1")  # type: ignore[arg-type]

    async with pool.acquire() as conn, conn.transaction():
        await movements.record_transfer_made(scope(conn), made, role="provider", key="k")
        # The same facts again: a retry, nothing new.
        await movements.record_transfer_made(scope(conn), made, role="provider", key="k")
    assert await list_alerts(pool) == []

    # Other facts, twice, each inside a caller's transaction that rolls back.
    for _ in range(2):
        async with pool.acquire() as conn:
            with pytest.raises(RecordConflict) as refused:
                async with conn.transaction():
                    await movements.record_transfer_made(
                        scope(conn), {**made, "amount": 1200}, role="provider", key="k"
                    )
    assert refused.value.code == "record_conflict"
    assert (refused.value.kind, refused.value.key) == ("transfer", "booking:1:transfer:provider")
    value = metrics.registry.get_sample_value(
        "marketplace_record_conflicts_total", {"kind": "transfer"}
    )
    assert value == 2
    assert conflicts_counted(metrics, "transfer") == 0  # no posting was refused
    [alert] = await list_alerts(pool)
    assert (alert.status, alert.account, alert.currency, alert.occurrences) == (
        RECORD_CONFLICT,
        "acct_1",
        "usd",
        2,
    )
    assert "tr_1" in alert.summary
    assert await ledger.balance("acct_1", "usd") == Money(1000, "usd")
    async with pool.acquire() as conn:
        assert await resolve_alerts(conn, 10**9, ["acct_1"]) == 0
