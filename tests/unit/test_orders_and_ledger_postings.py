"""Split plans and ledger postings refuse anything that does not add up."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.errors import InvalidAmount, LedgerImbalance
from engine.core.ledger import CUSTOMERS, PLATFORM, Entry, Posting, stripe_time
from engine.core.money import Money
from engine.core.orders import SplitLeg, SplitPlan


def test_split_plan_must_sum_to_total() -> None:
    with pytest.raises(InvalidAmount, match="sum to 99"):
        SplitPlan(
            Money(100, "gbp"),
            (SplitLeg("platform", Money(10, "gbp")), SplitLeg("provider", Money(89, "gbp"), "a")),
        )


@given(
    total=st.integers(1, 10**9),
    legs=st.lists(st.integers(0, 10**6), min_size=1, max_size=5).filter(lambda w: sum(w) > 0),
    refund=st.integers(0, 10**9),
)
def test_proportional_refund_sums_exactly(total: int, legs: list[int], refund: int) -> None:
    parts = Money(total, "gbp").allocate(legs)
    plan = SplitPlan(
        Money(total, "gbp"),
        tuple(SplitLeg(f"r{i}", part) for i, part in enumerate(parts)),
    )
    refund = min(refund, total)
    refunded = plan.proportional(Money(refund, "gbp"))
    assert sum(leg.amount.amount for leg in refunded.legs) == refund
    for original, back in zip(plan.legs, refunded.legs, strict=True):
        assert 0 <= back.amount.amount <= original.amount.amount + 1


AT = stripe_time(1_767_225_600)


def test_stripe_times_are_aware_utc_instants() -> None:
    assert stripe_time("1767225600") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(LedgerImbalance, match="without a time"):
        stripe_time(None)


def test_posting_must_balance_per_currency() -> None:
    with pytest.raises(LedgerImbalance, match="does not balance"):
        Posting(
            "k",
            "charge",
            (Entry(CUSTOMERS, Money(-100, "usd")), Entry(PLATFORM, Money(100, "eur"))),
            AT,
        )
    with pytest.raises(LedgerImbalance, match="at least two"):
        Posting("k", "charge", (Entry(CUSTOMERS, Money(0, "usd")),), AT)
    posting = Posting.transfer(
        "charge:ch_1", "charge", CUSTOMERS, PLATFORM, Money(100, "usd"), occurred_at=AT
    )
    assert sum(entry.amount.amount for entry in posting.entries) == 0
