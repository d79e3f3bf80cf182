"""Hypothesis strategies for money and orders, for plugin property tests and the conformance check.

``orders(plugin, kinds=..., roles=...)`` draws orders the way a business model
makes them: an amount in a 0-, 2- or 3-decimal currency (including zero and
one minor unit), one connected account per beneficiary role, and the
attributes you describe. A plugin's ``conformance()`` hands such a strategy to
the check (see ``engine.testing.conformance``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from engine.core.money import Money
from engine.core.orders import Order

__all__ = [
    "CURRENCIES",
    "MAX_AMOUNT",
    "account_ids",
    "currencies",
    "money",
    "orders",
]

CURRENCIES: tuple[str, ...] = ("usd", "eur", "gbp", "jpy", "krw", "clp", "bhd", "kwd", "jod")
"""Currencies with 2 (usd, eur, gbp), 0 (jpy, krw, clp) and 3 (bhd, kwd, jod) decimals."""

MAX_AMOUNT = 10**10
"""The largest amount drawn by default (a hundred million in a 2-decimal currency)."""


def currencies() -> st.SearchStrategy[str]:
    """A currency from ``CURRENCIES`` (shrinks towards ``usd``)."""
    return st.sampled_from(CURRENCIES)


def money(
    currency: str | st.SearchStrategy[str] | None = None,
    *,
    min_amount: int = 0,
    max_amount: int = MAX_AMOUNT,
) -> st.SearchStrategy[Money]:
    """A ``Money`` with ``min_amount <= amount <= max_amount``; small amounts come up often."""
    if currency is None:
        currency_strategy = currencies()
    elif isinstance(currency, str):
        currency_strategy = st.just(currency)
    else:
        currency_strategy = currency
    amounts = st.one_of(
        st.integers(min_amount, min(max_amount, min_amount + 3)),
        st.integers(min_amount, max_amount),
    )
    return st.builds(Money, amounts, currency_strategy)


def account_ids() -> st.SearchStrategy[str]:
    """A Stripe-looking connected account id (``acct_`` and 16 letters or digits)."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return st.text(alphabet, min_size=16, max_size=16).map(lambda tail: f"acct_{tail}")


@st.composite
def _orders(
    draw: st.DrawFn,
    *,
    plugin: str,
    kinds: Sequence[str],
    roles: Sequence[str],
    optional_roles: Sequence[str],
    attributes: st.SearchStrategy[Mapping[str, Any]],
    amounts: st.SearchStrategy[Money],
) -> Order:
    beneficiaries = {role: draw(account_ids()) for role in roles}
    for role in optional_roles:
        if draw(st.booleans()):
            beneficiaries[role] = draw(account_ids())
    number = draw(st.integers(1, 10**9))
    return Order(
        plugin=plugin,
        kind=draw(st.sampled_from(list(kinds))),
        amount=draw(amounts),
        reference=f"{plugin}:{number}",
        beneficiaries=beneficiaries,
        attributes=draw(attributes),
        occurred_at=draw(
            st.datetimes(
                min_value=datetime(2020, 1, 1),  # hypothesis wants naive bounds
                max_value=datetime(2035, 1, 1),
                timezones=st.just(UTC),
            )
        ),
    )


def orders(
    plugin: str,
    *,
    kinds: Sequence[str] = ("default",),
    roles: Sequence[str] = (),
    optional_roles: Sequence[str] = (),
    attributes: st.SearchStrategy[Mapping[str, Any]] | None = None,
    amounts: st.SearchStrategy[Money] | None = None,
) -> st.SearchStrategy[Order]:
    """Orders of business model ``plugin``.

    Args:
        plugin: ``Order.plugin`` of every order.
        kinds: the ``Order.kind`` values to draw from.
        roles: beneficiary roles every order has (``("instructor",)``).
        optional_roles: roles an order may or may not have (``("affiliate",)``).
        attributes: a strategy of ``Order.attributes`` mappings (default: empty).
        amounts: a strategy of order amounts (default: ``money()``).

    Example::

        orders("course_sales", kinds=["course"], roles=["instructor"],
               optional_roles=["affiliate"],
               attributes=st.fixed_dictionaries({"coupon": st.sampled_from(["", "HALF"])}))
    """
    return _orders(
        plugin=plugin,
        kinds=tuple(kinds),
        roles=tuple(roles),
        optional_roles=tuple(optional_roles),
        attributes=attributes if attributes is not None else st.just({}),
        amounts=amounts if amounts is not None else money(),
    )
