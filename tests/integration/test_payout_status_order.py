"""A payout's status only moves forward (``PAYOUT_STATUS_ORDER``), whatever order events come in.

On real PostgreSQL, through ``engine.payments.payouts.apply_payout`` (what the
core's ``payout.*`` handler calls): a late ``paid`` never undoes a failure, a
late ``failed`` after a cancel neither changes the status nor posts a second
return, a canceled payout comes back once, and applying the same events again
changes nothing. The return's balance transaction is expanded in each payout,
so the gateway (pointed nowhere) is never called.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from engine.core.errors import InvalidInput
from engine.core.ledger import Ledger, bank_of
from engine.gateway import StripeGateway
from engine.payments.payouts import PAYOUT_STATUS_ORDER, apply_payout, payout

ACCOUNT = "acct_payouts"
CREATED = 1_800_000_000
GATEWAY = StripeGateway("sk_test_unit", "http://127.0.0.1:9")


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    assert pool is not None
    yield pool
    await pool.close()


def stripe_payout(status: str, payout_id: str = "po_1", **extra: Any) -> dict[str, Any]:
    returned = (
        {"id": f"txn_{payout_id}", "created": CREATED + 3_600}
        if status in {"failed", "canceled"}
        else None
    )
    return {
        "id": payout_id,
        "object": "payout",
        "amount": 1_500,
        "currency": "usd",
        "status": status,
        "created": CREATED,
        "arrival_date": CREATED + 86_400,
        "failure_balance_transaction": returned,
        "failure_code": "account_closed" if status == "failed" else None,
        "failure_message": "closed" if status == "failed" else "",
        **extra,
    }


async def apply(pool: asyncpg.Pool, statuses: Sequence[str], payout_id: str = "po_1") -> list[bool]:
    """Apply the payout in each status, in order, one transaction each; whether each
    posted a return."""
    ledger = Ledger(pool)
    returned = []
    for status in statuses:
        async with pool.acquire() as conn, conn.transaction():
            applied = await apply_payout(
                conn, GATEWAY, ledger, stripe_payout(status, payout_id), account=ACCOUNT
            )
            returned.append(applied.returned)
    return returned


async def postings(pool: asyncpg.Pool) -> list[str]:
    return [
        str(row["idempotency_key"])
        for row in await pool.fetch(
            "SELECT idempotency_key FROM marketplace_ledger_transactions ORDER BY id"
        )
    ]


async def status(pool: asyncpg.Pool, payout_id: str = "po_1") -> str:
    found = await payout(pool, payout_id)
    assert found is not None
    return found.status


def test_the_order_is_pending_in_transit_paid_then_final() -> None:
    rank = PAYOUT_STATUS_ORDER
    assert rank["pending"] < rank["in_transit"] < rank["paid"] < rank["failed"]
    assert rank["failed"] == rank["canceled"]


async def test_a_late_paid_never_undoes_a_failure(pool: asyncpg.Pool) -> None:
    # Stripe may fail a payout after it was paid (the bank returned it), and its
    # events arrive in any order.
    assert await apply(pool, ["pending", "in_transit", "failed", "paid"]) == [
        False,
        False,
        True,
        False,
    ]
    assert await status(pool) == "failed"
    recorded = await payout(pool, "po_1")
    assert recorded is not None
    assert recorded.failure_code == "account_closed"
    assert await postings(pool) == ["payout:po_1", "payout_failure:po_1"]
    # A paid payout can still become failed.
    assert await apply(pool, ["paid", "failed"], "po_2") == [False, True]
    assert await status(pool, "po_2") == "failed"
    assert (await Ledger(pool).balances(bank_of(ACCOUNT))).get("usd", 0) == 0


async def test_a_late_failure_after_a_cancel_posts_no_second_return(pool: asyncpg.Pool) -> None:
    assert await apply(pool, ["pending", "canceled", "failed"]) == [False, True, False]
    assert await status(pool) == "canceled"
    recorded = await payout(pool, "po_1")
    assert recorded is not None
    assert recorded.failure_code is None
    assert await postings(pool) == ["payout:po_1", "payout_cancel:po_1"]
    assert (await Ledger(pool).balances(ACCOUNT)).get("usd", 0) == 0


async def test_a_canceled_payout_comes_back_once(pool: asyncpg.Pool) -> None:
    assert await apply(pool, ["canceled", "pending", "canceled", "canceled"]) == [
        True,
        False,
        False,
        False,
    ]
    assert await status(pool) == "canceled"
    assert await postings(pool) == ["payout:po_1", "payout_cancel:po_1"]
    balances = Ledger(pool)
    assert (await balances.balances(ACCOUNT)).get("usd", 0) == 0
    assert (await balances.balances(bank_of(ACCOUNT))).get("usd", 0) == 0


async def test_replaying_every_event_changes_nothing(pool: asyncpg.Pool) -> None:
    events = ["pending", "in_transit", "paid", "failed", "paid", "in_transit"]
    await apply(pool, events)
    first = (await status(pool), await postings(pool))
    assert await apply(pool, events) == [False] * len(events)
    assert (await status(pool), await postings(pool)) == first
    assert first == ("failed", ["payout:po_1", "payout_failure:po_1"])


async def test_an_unknown_status_is_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(InvalidInput):
        await apply(pool, ["lost"])
