"""Ledger assertions for tests: balances of ledger accounts, and "every transaction balances".

Each function takes the engine's ``Ledger`` (``services.ledger``, ``stack.ledger``)
and raises ``AssertionError`` with a message that lists every difference, so a
failing test says which account is off and by how much.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.core.ledger import Ledger
from engine.core.money import Money

__all__ = ["assert_balances", "assert_ledger_balanced", "balances"]


async def balances(ledger: Ledger, accounts: Iterable[str], currency: str) -> dict[str, Money]:
    """The balance of each ledger account in ``currency`` (zero when it has no entries)."""
    return {account: await ledger.balance(account, currency) for account in accounts}


async def assert_balances(ledger: Ledger, expected: Mapping[str, Money]) -> None:
    """Check ledger account balances, e.g. ``{"acct_1": Money(700, "usd")}``.

    Raises:
        AssertionError: listing every account whose balance differs.
    """
    wrong: list[str] = []
    for account, want in expected.items():
        have = await ledger.balance(account, want.currency)
        if have != want:
            wrong.append(f"{account}: expected {want.amount}, found {have.amount} {want.currency}")
    if wrong:
        raise AssertionError("ledger balances differ:\n  " + "\n  ".join(wrong))


async def assert_ledger_balanced(ledger: Ledger) -> None:
    """Check that every ledger transaction's entries sum to zero per currency.

    Raises:
        AssertionError: naming the idempotency keys of the unbalanced transactions.
    """
    unbalanced = await ledger.unbalanced_transactions()
    if unbalanced:
        raise AssertionError(
            f"{len(unbalanced)} ledger transaction(s) do not balance: {', '.join(unbalanced)}"
        )
