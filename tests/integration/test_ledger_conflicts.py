"""The ledger on real PostgreSQL: a key posted again is a no-op only with the same entries.

A posting under an existing key with different entries is refused loudly:
``LedgerConflict`` is raised, nothing of it is written, the process's metric
counts it and one admin alert is opened (counted again, never duplicated, when
the same refusal repeats), and the alert survives the caller's rollback.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from engine.core.errors import LedgerConflict
from engine.core.ledger import CUSTOMERS, Ledger, Posting
from engine.core.money import Money
from engine.observability import Metrics
from engine.reconciliation.store import (
    LEDGER_CONFLICT,
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
