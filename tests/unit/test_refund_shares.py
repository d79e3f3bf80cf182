"""A refund's split (movements.refund_share): allocate()d over what each leg still holds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.errors import InvalidAmount
from engine.core.money import Money
from engine.core.orders import SplitLeg, SplitPlan
from engine.payments.movements import refund_share, split_minus, split_plus


def plan(amounts: list[int], currency: str = "eur") -> SplitPlan:
    legs = tuple(SplitLeg(f"role{i}", Money(amount, currency)) for i, amount in enumerate(amounts))
    return SplitPlan(total=Money(sum(amounts), currency), legs=legs)


@given(
    legs=st.lists(st.integers(0, 10**7), min_size=1, max_size=5).filter(lambda xs: sum(xs) > 0),
    refunds=st.lists(st.integers(1, 10**7), max_size=6),
)
def test_partial_refunds_never_take_a_leg_below_zero_and_the_rest_is_exact(
    legs: list[int], refunds: list[int]
) -> None:
    split = plan(legs)
    refunded: SplitPlan | None = None
    for wanted in refunds:
        left = split.total.amount - (0 if refunded is None else refunded.total.amount)
        share = refund_share(split, refunded, Money(min(wanted, left), "eur"))
        assert share.total.amount == min(wanted, left)
        refunded = share if refunded is None else split_plus(refunded, share)
        assert all(
            0 <= back.amount.amount <= leg.amount.amount
            for leg, back in zip(split.legs, refunded.legs, strict=True)
        )
    left = split.total.amount - (0 if refunded is None else refunded.total.amount)
    rest = refund_share(split, refunded, Money(left, "eur"))
    assert (rest if refunded is None else split_plus(refunded, rest)) == split
    assert split_minus(split, rest) == (refunded or split_minus(split, split))


def test_a_refund_beyond_what_is_left_is_refused() -> None:
    split = plan([150, 600, 250])
    with pytest.raises(InvalidAmount, match="left to refund"):
        refund_share(split, split.proportional(Money(900, "eur")), Money(101, "eur"))
