"""A payment's status only moves forward (``PAYMENT_STATUS_ORDER``), whatever order events come in.

On real PostgreSQL, through ``record_payment`` and ``update_payment`` (what
the core's refund and dispute handlers and the plugins call): a late
``succeeded`` never undoes a dispute, a refund after a dispute raises the
refunded amount but not the status, a closed dispute is final, and the
PaymentIntent's states before success may follow each other in any order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from engine.core.errors import InvalidInput
from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitLeg, SplitPlan
from engine.payments.pricing import PricedOrder, record_payment
from engine.payments.records import (
    PAYMENT_STATUS_ORDER,
    dispute_payment_status,
    payment_status_rank,
    update_payment,
)

AT = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
async def conn(fresh_database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(fresh_database_url)
    yield conn
    await conn.close()


def priced(amount: int = 1000) -> PricedOrder:
    money = Money(amount, "usd")
    fee = Money(amount // 10, "usd")
    return PricedOrder(
        order=Order("test", "tip", money, "tip:1", {"creator": "acct_1"}, occurred_at=AT),
        price=money,
        commission=Commission(fee, "default"),
        split=SplitPlan(
            money, (SplitLeg("platform", fee), SplitLeg("creator", money - fee, "acct_1"))
        ),
    )


async def status_of(conn: asyncpg.Connection, intent: str) -> tuple[str, int]:
    row = await conn.fetchrow(
        "SELECT status, amount_refunded FROM marketplace_payments "
        "WHERE stripe_payment_intent_id = $1",
        intent,
    )
    assert row is not None
    return str(row["status"]), int(row["amount_refunded"])


async def test_a_late_success_or_refund_never_undoes_a_dispute(conn: asyncpg.Connection) -> None:
    await record_payment(conn, priced(), account_id="acct_1", payment_intent_id="pi_1")
    assert await update_payment(conn, "pi_1", charge_id="ch_1", status="succeeded")
    # charge.dispute.created arrives before a repeated payment_intent.succeeded.
    assert await update_payment(
        conn, by_charge="ch_1", status=dispute_payment_status("charge.dispute.created", {})
    )
    await record_payment(
        conn, priced(), account_id="acct_1", payment_intent_id="pi_1", status="succeeded"
    )
    await update_payment(conn, "pi_1", status="succeeded")
    assert await status_of(conn, "pi_1") == ("disputed", 0)

    # A refund after the dispute: the amount grows, the status stays the dispute's.
    await update_payment(conn, by_charge="ch_1", amount_refunded=300)
    assert await status_of(conn, "pi_1") == ("disputed", 300)

    # Won (funds reinstated), then a late funds_withdrawn and a late refund event.
    won = dispute_payment_status("charge.dispute.closed", {"status": "won"})
    await update_payment(conn, by_charge="ch_1", status=won)
    withdrawn = dispute_payment_status("charge.dispute.funds_withdrawn", {"status": "lost"})
    assert withdrawn == "dispute_lost"  # a snapshot already closed says so; same rank as won
    await update_payment(conn, by_charge="ch_1", status="disputed")
    await update_payment(conn, by_charge="ch_1", status=withdrawn)
    await update_payment(conn, by_charge="ch_1", amount_refunded=200)
    assert await status_of(conn, "pi_1") == ("dispute_won", 300)


async def test_refunds_move_forward_and_a_full_refund_is_final(conn: asyncpg.Connection) -> None:
    await record_payment(
        conn, priced(), account_id="acct_1", payment_intent_id="pi_2", status="succeeded"
    )
    await update_payment(conn, "pi_2", charge_id="ch_2")
    await update_payment(conn, by_charge="ch_2", amount_refunded=1000)  # charge.refunded, full
    await update_payment(conn, by_charge="ch_2", amount_refunded=400)  # an older, partial one
    await update_payment(conn, "pi_2", status="succeeded")
    assert await status_of(conn, "pi_2") == ("refunded", 1000)
    # A refunded charge can still be disputed at Stripe.
    await update_payment(conn, by_charge="ch_2", status="disputed")
    assert await status_of(conn, "pi_2") == ("disputed", 1000)


async def test_states_before_success_follow_the_intent(conn: asyncpg.Connection) -> None:
    payment_id = await record_payment(
        conn, priced(), account_id="acct_1", payment_intent_id="pi_3", status="requires_action"
    )
    # A failed authentication sends the intent back for a payment method.
    await update_payment(conn, payment_id=payment_id, status="requires_payment_method")
    assert (await status_of(conn, "pi_3"))[0] == "requires_payment_method"
    await update_payment(conn, payment_id=payment_id, status="requires_capture")
    await update_payment(conn, payment_id=payment_id, status="processing")
    assert (await status_of(conn, "pi_3"))[0] == "requires_capture"
    await update_payment(conn, payment_id=payment_id, status="canceled")
    await update_payment(conn, payment_id=payment_id, status="succeeded")  # same rank: kept
    assert (await status_of(conn, "pi_3"))[0] == "canceled"


async def test_unknown_statuses_and_payments(conn: asyncpg.Connection) -> None:
    with pytest.raises(InvalidInput) as bad:
        await update_payment(conn, "pi_4", status="almost_paid")
    assert bad.value.field == "status"
    with pytest.raises(InvalidInput):
        await record_payment(conn, priced(), account_id="acct_1", status="almost_paid")
    with pytest.raises(InvalidInput):
        await update_payment(conn, status="succeeded")
    assert not await update_payment(conn, "pi_missing", status="succeeded")
    assert payment_status_rank("dispute_won") == payment_status_rank("dispute_lost")
    assert max(PAYMENT_STATUS_ORDER.values()) == payment_status_rank("dispute_lost")
