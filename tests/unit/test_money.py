"""Money, the currency table and the one allocation function (property-tested)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.errors import CurrencyMismatch, InvalidAmount, UnknownCurrency
from engine.core.money import Money, allocate, apply_rate, currency_exponent

totals = st.integers(min_value=0, max_value=10**15)
weight_lists = st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=12).filter(
    lambda ws: sum(ws) > 0
)


@given(total=totals, weights=weight_lists)
def test_allocate_parts_sum_to_total_and_are_non_negative(total: int, weights: list[int]) -> None:
    parts = allocate(total, weights)
    assert sum(parts) == total
    assert all(part >= 0 for part in parts)
    assert len(parts) == len(weights)


@given(total=totals, weights=weight_lists)
def test_allocate_each_part_within_one_unit_of_exact_share(total: int, weights: list[int]) -> None:
    parts = allocate(total, weights)
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = Fraction(total * weight, weight_sum)
        assert abs(part - exact) < 1
        if weight == 0:
            assert part == 0


@given(total=totals, weights=weight_lists)
def test_allocate_is_deterministic(total: int, weights: list[int]) -> None:
    assert allocate(total, weights) == allocate(total, list(weights))


@given(
    total=totals,
    weights=st.lists(
        st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False), min_size=1, max_size=6
    ).filter(lambda ws: sum(ws) > 0),
)
def test_allocate_accepts_decimal_weights(total: int, weights: list[Decimal]) -> None:
    parts = allocate(total, weights)
    assert sum(parts) == total
    assert all(part >= 0 for part in parts)


@pytest.mark.parametrize(("currency", "exponent"), [("jpy", 0), ("gbp", 2), ("kwd", 3)])
@given(total=st.integers(min_value=0, max_value=10**12), weights=weight_lists)
def test_allocate_money_in_0_2_and_3_decimal_currencies(
    currency: str, exponent: int, total: int, weights: list[int]
) -> None:
    assert currency_exponent(currency) == exponent
    parts = Money(total, currency).allocate(weights)
    assert sum(part.amount for part in parts) == total
    assert {part.currency for part in parts} == {currency}


@given(total=st.integers(min_value=-(10**12), max_value=0), weights=weight_lists)
def test_allocate_negative_total_mirrors_positive(total: int, weights: list[int]) -> None:
    assert allocate(total, weights) == [-p for p in allocate(-total, weights)]


def test_allocate_leftover_goes_to_largest_remainder_then_earliest() -> None:
    assert allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert allocate(10, [3, 7]) == [3, 7]
    assert allocate(1, [1, 1]) == [1, 0]
    assert allocate(5, [0, 1]) == [0, 5]


def test_allocate_rejects_bad_input() -> None:
    with pytest.raises(InvalidAmount):
        allocate(10, [])
    with pytest.raises(InvalidAmount):
        allocate(10, [0, 0])
    with pytest.raises(InvalidAmount):
        allocate(10, [1, -1])
    with pytest.raises(InvalidAmount):
        allocate(10.0, [1])  # type: ignore[arg-type]


def test_money_parse_and_format_respect_exponent() -> None:
    assert Money.parse("10.50", "GBP") == Money(1050, "gbp")
    assert Money.parse("1000", "jpy") == Money(1000, "jpy")
    assert Money.parse("1.234", "kwd") == Money(1234, "kwd")
    assert Money(1050, "gbp").format() == "10.50 GBP"
    assert Money(-5, "usd").format() == "-0.05 USD"
    assert Money(1000, "jpy").format() == "1000 JPY"
    assert Money(1234, "bhd").format() == "1.234 BHD"
    with pytest.raises(InvalidAmount, match="more than 0 decimal"):
        Money.parse("10.5", "jpy")
    with pytest.raises(InvalidAmount):
        Money.parse("ten", "usd")


def test_money_refuses_floats_bools_and_unknown_currencies() -> None:
    with pytest.raises(InvalidAmount):
        Money(10.0, "usd")  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        Money(True, "usd")
    with pytest.raises(UnknownCurrency):
        Money(1, "xyz")
    with pytest.raises(CurrencyMismatch):
        _ = Money(1, "usd") + Money(1, "eur")


@given(amount=st.integers(min_value=0, max_value=10**12), bps=st.integers(0, 10_000))
def test_apply_rate_is_half_up_integer(amount: int, bps: int) -> None:
    fee = apply_rate(amount, bps)
    exact = Fraction(amount * bps, 10_000)
    assert abs(fee - exact) <= Fraction(1, 2)
    assert 0 <= fee <= amount
