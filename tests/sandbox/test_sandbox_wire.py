"""Wire-format units: form decoding, parameter schema, rounding (no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.sandbox import schema
from engine.sandbox.errors import StripeError
from engine.sandbox.ledger import round_half_up
from engine.sandbox.wire import parse_form


def test_nested_and_arrays() -> None:
    raw = (
        "amount=100&transfer_data[destination]=acct_1&expand[0]=latest_charge"
        "&expand[1]=customer&metadata[0]=zero&types[]=a&types[]=b"
        "&items[0][price]=p1&items[1][price]=p2"
    )
    assert parse_form(raw) == {
        "amount": "100",
        "transfer_data": {"destination": "acct_1"},
        "expand": ["latest_charge", "customer"],
        "metadata": {"0": "zero"},
        "types": ["a", "b"],
        "items": [{"price": "p1"}, {"price": "p2"}],
    }


def test_blank_values_kept() -> None:
    assert parse_form("metadata=&description=") == {"metadata": "", "description": ""}


def test_unknown_parameter_names_the_nested_param() -> None:
    with pytest.raises(StripeError) as caught:
        schema.validate(
            {"amount": "1", "currency": "usd", "transfer_data": {"destinaton": "x"}},
            "PaymentIntentCreateParams",
        )
    assert caught.value.code == "parameter_unknown"
    assert caught.value.param == "transfer_data[destinaton]"


def test_missing_required_parameter() -> None:
    with pytest.raises(StripeError) as caught:
        schema.validate({"currency": "usd"}, "PaymentIntentCreateParams")
    assert caught.value.code == "parameter_missing"
    assert caught.value.param == "amount"


@given(st.integers(-(10**9), 10**9), st.integers(1, 10**6))
def test_round_half_up_matches_decimal(numerator: int, denominator: int) -> None:
    from decimal import ROUND_HALF_UP, Decimal

    expected = int(
        (Decimal(abs(numerator)) / Decimal(denominator)).quantize(Decimal(1), ROUND_HALF_UP)
    )
    assert round_half_up(numerator, denominator) == (expected if numerator >= 0 else -expected)
