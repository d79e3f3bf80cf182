"""The engine functions plugins use instead of SQL on its tables, on real PostgreSQL.

Accounts and payouts (``engine.accounts.queries``), the ledger's statement and
reference views (``engine.core.statements``), and the payment and transfer
records (``engine.payments.records``): each answers what the plugin queries
it replaced answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from engine.accounts.queries import (
    account_by_id,
    account_payouts,
    accounts_by_id,
    accounts_needing_attention,
)
from engine.core.db import Database
from engine.core.errors import InvalidInput, RecordConflict
from engine.core.ledger import PLATFORM, PLATFORM_FEES, Entry, Ledger, Posting
from engine.core.money import Money
from engine.core.statements import reference_lines, statement_lines
from engine.payments.records import (
    link_payment_intent,
    payment_totals,
    payments_created_between,
    record_transfer,
    update_payment,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
async def pool(fresh_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    database = Database(fresh_database_url, min_size=1, max_size=2)
    database.bind()
    await database.start()
    try:
        yield database.pool
    finally:
        await database.close()


async def _account(
    pool: asyncpg.Pool,
    account_id: str,
    *,
    role: str = "creator",
    charges: bool = True,
    failure: str | None = None,
    suspended: bool = False,
) -> None:
    await pool.execute(
        """
        INSERT INTO marketplace_accounts
            (stripe_account_id, role, display_name, email, country, default_currency, status,
             charges_enabled, payouts_enabled, details_submitted, requirements_due,
             payout_failure_code, suspended, stripe_updated_at, created_at, updated_at)
        VALUES ($1, $2, $1, '', 'GB', 'gbp', CASE WHEN $3 THEN 'active' ELSE 'onboarding' END,
                $3, $3, $3, '[]'::jsonb, $4, $5, 0, now(), now())
        """,
        account_id,
        role,
        charges,
        failure,
        suspended,
    )


async def test_accounts_by_id_answers_known_accounts_in_one_call(pool: asyncpg.Pool) -> None:
    await _account(pool, "acct_a")
    await _account(pool, "acct_b", role="venue", charges=False)
    found = await accounts_by_id(pool, ["acct_a", "acct_b", "acct_unknown"])
    assert sorted(found) == ["acct_a", "acct_b"]
    assert found["acct_a"].charges_enabled
    assert found["acct_a"].status == "active"
    assert found["acct_b"].role == "venue"
    assert found["acct_b"].status == "onboarding"
    assert found["acct_a"].default_currency == "gbp"
    assert await accounts_by_id(pool, []) == {}
    assert await account_by_id(pool, "acct_unknown") is None
    one = await account_by_id(pool, "acct_b")
    assert one is not None
    assert not one.payouts_enabled


async def test_accounts_needing_attention(pool: asyncpg.Pool) -> None:
    await _account(pool, "acct_fine")
    await _account(pool, "acct_new", charges=False)
    await _account(pool, "acct_failed", failure="account_closed")
    everyone = [account.id for account in await accounts_needing_attention(pool)]
    assert everyone == ["acct_new", "acct_failed"]
    failed = await accounts_needing_attention(pool, payout_failed_only=True)
    assert [(a.id, a.payout_failure_code) for a in failed] == [("acct_failed", "account_closed")]


async def test_account_payouts_newest_first_paged(pool: asyncpg.Pool) -> None:
    for number, status in enumerate(("paid", "failed", "paid"), start=1):
        await pool.execute(
            """
            INSERT INTO marketplace_payouts
                (stripe_payout_id, account_id, amount, currency, status, failure_code,
                 failure_message, arrival_date, created_at, updated_at)
            VALUES ($1, 'acct_a', $2, 'gbp', $3, $4, '', $5, now(), now())
            """,
            f"po_{number}",
            number * 100,
            status,
            "no_account" if status == "failed" else None,
            1_700_000_000 + number,
        )
    first = await account_payouts(pool, "acct_a", limit=2)
    assert [p.stripe_payout_id for p in first] == ["po_3", "po_2"]
    assert first[1].failure_code == "no_account"
    assert first[1].amount == Money(200, "gbp")
    rest = await account_payouts(pool, "acct_a", before=first[-1].id, limit=2)
    assert [p.stripe_payout_id for p in rest] == ["po_1"]
    assert await account_payouts(pool, "acct_other") == []
    with pytest.raises(InvalidInput):
        await account_payouts(pool, "acct_a", limit=0)


async def test_statement_and_reference_lines(pool: asyncpg.Pool) -> None:
    ledger = Ledger(pool)
    gbp = Money(1_000, "gbp")
    fee = Money(100, "gbp")
    await ledger.post(
        Posting(
            key="charge:ch_1",
            kind="charge",
            entries=(
                Entry("customers", -gbp),
                Entry("acct_a", gbp),
                Entry("acct_a", -fee),
                Entry(PLATFORM_FEES, fee),
            ),
            occurred_at=T0,
            reference="subscription:1",
            stripe_object_id="ch_1",
        )
    )
    await ledger.post(
        Posting.transfer(
            "payout:po_1",
            "payout",
            "acct_a",
            "acct_a:bank",
            Money(900, "gbp"),
            occurred_at=datetime(2025, 3, 2, tzinfo=UTC),
            reference="payout:po_1",
            stripe_object_id="po_1",
        )
    )
    await ledger.post(
        Posting.transfer(
            "other", "charge", "customers", PLATFORM, gbp, occurred_at=T0, reference="x"
        )
    )
    lines = await statement_lines(pool, "acct_a", limit=10)
    assert [(line.kind, line.amount) for line in lines] == [
        ("payout", Money(-900, "gbp")),
        ("charge", Money(900, "gbp")),  # the net of +amount and -fee: one line
    ]
    assert lines[1].key == "charge:ch_1"
    assert lines[1].occurred_at == T0
    older = await statement_lines(pool, "acct_a", before=lines[0].id, limit=10)
    assert [line.kind for line in older] == ["charge"]
    assert [line.kind for line in await statement_lines(pool, "acct_a", kinds=["payout"])] == [
        "payout"
    ]
    window = await statement_lines(pool, "acct_a", since=T0, until=datetime(2025, 3, 2, tzinfo=UTC))
    assert [line.kind for line in window] == ["charge"]

    entries = await reference_lines(pool, "subscription:1")
    assert [(line.account, line.amount.amount) for line in entries] == [
        ("customers", -1_000),
        ("acct_a", 1_000),
        ("acct_a", -100),
        (PLATFORM_FEES, 100),
    ]
    assert {line.key for line in entries} == {"charge:ch_1"}
    assert await reference_lines(pool, "nothing") == []


async def test_payment_intent_link_transfer_record_and_history(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """
        INSERT INTO marketplace_payments
            (reference, plugin, kind, account_id, amount, currency, fee_amount, rule_id,
             rule_version, split, attributes, status, amount_refunded, created_at)
        VALUES ('enrollment:1', 'course_sales', 'enrollment', NULL, 5000, 'usd', 500, 'r', 1,
                '{"legs": []}'::jsonb, '{"tier": "gold"}'::jsonb, 'pending', 0, $1)
        """,
        T0,
    )
    async with pool.acquire() as conn:
        assert await link_payment_intent(
            conn, plugin="course_sales", reference="enrollment:1", payment_intent_id="pi_1"
        )
        # An intent once attached stays.
        await link_payment_intent(
            conn, plugin="course_sales", reference="enrollment:1", payment_intent_id="pi_2"
        )
        assert not await link_payment_intent(
            conn, plugin="other", reference="enrollment:1", payment_intent_id="pi_3"
        )
        assert await update_payment(conn, "pi_1", charge_id="ch_1", status="succeeded")
        key = "course_sales:enrollment:1:transfer:instructor"
        assert await record_transfer(
            conn,
            transfer_id="tr_1",
            destination="acct_a",
            role="instructor",
            amount=Money(4_000, "usd"),
            idempotency_key=key,
            created_at=T0,
        )
        assert not await record_transfer(
            conn,
            transfer_id="tr_1",
            destination="acct_a",
            role="instructor",
            amount=Money(4_000, "usd"),
            idempotency_key=key,
            created_at=T0,
        )
        transfers = await conn.fetch("SELECT * FROM marketplace_transfers")
    assert [(t["stripe_transfer_id"], t["amount"], t["status"]) for t in transfers] == [
        ("tr_1", 4_000, "paid")
    ]
    payments = await payments_created_between(T0, datetime(2025, 3, 2, tzinfo=UTC))
    assert len(payments) == 1
    payment = payments[0]
    assert payment.reference == "enrollment:1"
    assert payment.status == "succeeded"
    assert payment.amount == Money(5_000, "usd")
    assert payment.fee == Money(500, "usd")
    assert payment.attributes == {"tier": "gold"}
    assert payment.split == {"legs": []}
    row = await pool.fetchrow(
        "SELECT stripe_payment_intent_id, stripe_charge_id FROM marketplace_payments"
    )
    assert (row["stripe_payment_intent_id"], row["stripe_charge_id"]) == ("pi_1", "ch_1")
    assert await payments_created_between(T0, T0) == []
    assert (
        await payments_created_between(T0, datetime(2025, 3, 2, tzinfo=UTC), statuses=["refunded"])
        == []
    )


async def test_payment_totals_per_currency_by_status(pool: asyncpg.Pool) -> None:
    for number, (plugin, currency, status) in enumerate(
        (
            ("creator_subscriptions", "usd", "disputed"),
            ("creator_subscriptions", "usd", "dispute_lost"),
            ("creator_subscriptions", "eur", "disputed"),
            ("creator_subscriptions", "usd", "dispute_won"),
            ("other", "usd", "disputed"),
        )
    ):
        await pool.execute(
            """
            INSERT INTO marketplace_payments
                (reference, plugin, kind, account_id, amount, currency, fee_amount, rule_id,
                 rule_version, split, attributes, status, amount_refunded, created_at)
            VALUES ($1, $2, 'tip', 'acct_a', $3, $4, 0, 'r', 1, '{}'::jsonb, '{}'::jsonb,
                    $5, 0, now())
            """,
            f"tip:{number}",
            plugin,
            100 * (number + 1),
            currency,
            status,
        )
    disputed = ("disputed", "dispute_lost")
    mine = await payment_totals(pool, "acct_a", statuses=disputed, plugin="creator_subscriptions")
    assert mine == [Money(300, "eur"), Money(300, "usd")]
    every = await payment_totals(pool, "acct_a", statuses=disputed)
    assert every == [Money(300, "eur"), Money(800, "usd")]
    assert await payment_totals(pool, "acct_b", statuses=disputed) == []
    with pytest.raises(InvalidInput):
        await payment_totals(pool, "acct_a", statuses=["lost"])


async def test_a_transfer_is_recorded_at_stripes_time_and_a_conflicting_record_is_refused(
    pool: asyncpg.Pool,
) -> None:
    key = "booking:1:transfer:provider"
    made_at = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    async with pool.acquire() as conn:
        assert await record_transfer(
            conn,
            transfer_id="tr_1",
            destination="acct_a",
            role="provider",
            amount=Money(4_000, "usd"),
            idempotency_key=key,
            created_at=made_at,
        )
        # The same transfer again (the webhook after the API path): nothing changes.
        assert not await record_transfer(
            conn,
            transfer_id="tr_1",
            destination="acct_a",
            role="provider",
            amount=Money(4_000, "usd"),
            idempotency_key=key,
            created_at=made_at,
        )
        for transfer_id, destination, amount in (
            ("tr_1", "acct_a", 3_999),  # another amount
            ("tr_1", "acct_b", 4_000),  # another destination
            ("tr_2", "acct_a", 4_000),  # another transfer under the key
        ):
            with pytest.raises(RecordConflict):
                await record_transfer(
                    conn,
                    transfer_id=transfer_id,
                    destination=destination,
                    role="provider",
                    amount=Money(amount, "usd"),
                    idempotency_key=key,
                    created_at=made_at,
                )
        rows = await conn.fetch("SELECT * FROM marketplace_transfers")
    assert [(r["stripe_transfer_id"], r["amount"], r["created_at"]) for r in rows] == [
        ("tr_1", 4_000, made_at)
    ]


async def test_an_intent_is_attached_to_one_payment_only(pool: asyncpg.Pool) -> None:
    for _ in range(2):  # the enrollment priced twice (a price changed before paying)
        await pool.execute(
            """
            INSERT INTO marketplace_payments
                (reference, plugin, kind, account_id, amount, currency, fee_amount, rule_id,
                 rule_version, split, attributes, status, amount_refunded, created_at)
            VALUES ('enrollment:2', 'course_sales', 'enrollment', NULL, 5000, 'usd', 500,
                    'r', 1, '{"legs": []}'::jsonb, '{}'::jsonb, 'pending', 0, $1)
            """,
            T0,
        )
    async with pool.acquire() as conn:
        for _ in range(2):  # and the link retried
            assert await link_payment_intent(
                conn, plugin="course_sales", reference="enrollment:2", payment_intent_id="pi_9"
            )
        rows = await conn.fetch(
            "SELECT id, stripe_payment_intent_id FROM marketplace_payments ORDER BY id"
        )
    assert [row["stripe_payment_intent_id"] for row in rows] == [None, "pi_9"]  # the newest
