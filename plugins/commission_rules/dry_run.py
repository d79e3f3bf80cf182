"""Dry run: price past transactions with a proposed rule set and compare with what was charged.

Pure: the caller supplies the transactions (from the payments table, or a file
as a stop-gap). Each transaction is re-priced at its own ``occurred_at`` with
the order attributes recorded when it was priced (including
``monthly_volume``), so the proposal's dates and volume tiers apply as they
would have.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.core.errors import InvalidInput
from engine.core.money import Money
from engine.core.orders import Order
from plugins.commission_rules.ruleset import RuleSet

__all__ = ["AccountDryRun", "DryRunReport", "PastTransaction", "dry_run"]


@dataclass(frozen=True, slots=True)
class PastTransaction:
    """A transaction already priced, as the dry run needs it.

    Attributes:
        account: the connected account the report groups it under.
        price: what the customer paid.
        actual_fee: the commission that was charged.
        occurred_at: when it was priced (rules are chosen for this instant).
        plugin, kind, beneficiaries, attributes: the order as it was priced.
        reference: the business object (for drill-down), optional.
    """

    account: str
    price: Money
    actual_fee: Money
    occurred_at: datetime
    plugin: str
    kind: str
    beneficiaries: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""

    def order(self) -> Order:
        """The order to re-price."""
        return Order(
            plugin=self.plugin,
            kind=self.kind,
            amount=self.price,
            reference=self.reference,
            beneficiaries=self.beneficiaries,
            attributes=self.attributes,
            occurred_at=self.occurred_at,
        )


@dataclass(frozen=True, slots=True)
class AccountDryRun:
    """One account's totals in one currency: what was charged and what would be.

    ``difference`` is ``proposed - actual`` (positive: the platform would earn more).
    """

    account: str
    currency: str
    transactions: int
    changed: int
    actual: Money
    proposed: Money

    @property
    def difference(self) -> Money:
        """``proposed - actual``."""
        return self.proposed - self.actual

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (minor units)."""
        return {
            "account": self.account,
            "currency": self.currency,
            "transactions": self.transactions,
            "changed": self.changed,
            "actual_fee": self.actual.amount,
            "proposed_fee": self.proposed.amount,
            "difference": self.difference.amount,
        }


@dataclass(frozen=True, slots=True)
class DryRunReport:
    """Per-account comparison, sorted by account then currency.

    ``rules_used`` counts how often each proposed rule (``"<id> v<version>"``) would win.
    """

    accounts: tuple[AccountDryRun, ...]
    rules_used: Mapping[str, int]

    def totals(self) -> dict[str, tuple[int, int]]:
        """Per currency: ``(actual, proposed)`` over all accounts, in minor units."""
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for row in self.accounts:
            sums[row.currency][0] += row.actual.amount
            sums[row.currency][1] += row.proposed.amount
        return {currency: (pair[0], pair[1]) for currency, pair in sorted(sums.items())}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "accounts": [row.to_dict() for row in self.accounts],
            "totals": {
                currency: {"actual_fee": actual, "proposed_fee": proposed}
                for currency, (actual, proposed) in self.totals().items()
            },
            "rules_used": dict(self.rules_used),
        }

    def text(self) -> str:
        """A table for people (the CLI's output)."""
        header = f"{'account':<28} {'cur':<4} {'txns':>6} {'changed':>7} "
        header += f"{'actual':>14} {'proposed':>14} {'difference':>14}"
        lines = [header]
        for row in self.accounts:
            lines.append(
                f"{row.account:<28} {row.currency:<4} {row.transactions:>6} {row.changed:>7} "
                f"{row.actual.amount:>14} {row.proposed.amount:>14} "
                f"{row.difference.amount:>+14}"
            )
        for currency, (actual, proposed) in self.totals().items():
            lines.append(
                f"{'TOTAL':<28} {currency:<4} {'':>6} {'':>7} {actual:>14} {proposed:>14} "
                f"{proposed - actual:>+14}"
            )
        lines.append("rules used: " + ", ".join(f"{k} x{v}" for k, v in self.rules_used.items()))
        return "\n".join(lines)


def dry_run(
    proposed: RuleSet,
    transactions: Iterable[PastTransaction],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> DryRunReport:
    """Re-price ``transactions`` with ``proposed`` and compare per account and currency.

    Args:
        proposed: the compiled proposal.
        transactions: past transactions (any order).
        since: only transactions at or after this instant.
        until: only transactions before this instant.

    Raises:
        InvalidInput: a transaction whose actual fee is in another currency than its price.
    """
    rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    used: Counter[str] = Counter()
    for txn in transactions:
        if since is not None and txn.occurred_at < since:
            continue
        if until is not None and txn.occurred_at >= until:
            continue
        if txn.actual_fee.currency != txn.price.currency:
            raise InvalidInput(
                f"transaction {txn.reference or txn.account}: fee and price currencies differ",
                field="actual_fee",
            )
        quote = proposed.quote(txn.order(), txn.price)
        used[quote.rule.label] += 1
        row = rows[(txn.account, txn.price.currency)]
        row[0] += 1
        row[1] += quote.fee.amount != txn.actual_fee.amount
        row[2] += txn.actual_fee.amount
        row[3] += quote.fee.amount
    accounts = tuple(
        AccountDryRun(
            account=account,
            currency=currency,
            transactions=count,
            changed=changed,
            actual=Money(actual, currency),
            proposed=Money(would_be, currency),
        )
        for (account, currency), (count, changed, actual, would_be) in sorted(rows.items())
    )
    return DryRunReport(accounts=accounts, rules_used=dict(sorted(used.items())))
