"""``explain``: for one order, which rules matched, which won, and the arithmetic.

The structure is what the admin API returns and the CLI prints; the hook's
``Commission.explanation`` is its one-line form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.core.money import Money
from engine.core.orders import Order
from plugins.commission_rules.rules import FOREVER_END, FOREVER_START, Rule
from plugins.commission_rules.ruleset import RuleSet, monthly_volume, order_instant

__all__ = ["Candidate", "Explanation", "RuleRef", "explain"]

WON = "won"
OUTRANKED = "outranked"
NOT_IN_FORCE = "not_in_force"
BELOW_VOLUME_TIER = "below_volume_tier"


@dataclass(frozen=True, slots=True)
class RuleRef:
    """A rule as an explanation shows it."""

    id: str
    version: int
    position: int
    scope: Mapping[str, str]
    specificity: int
    min_monthly_volume: int
    effective_from: datetime | None
    effective_to: datetime | None

    @classmethod
    def of(cls, rule: Rule) -> RuleRef:
        """The reference for ``rule``."""
        return cls(
            id=rule.id,
            version=rule.version,
            position=rule.position,
            scope=dict(rule.scope),
            specificity=rule.specificity,
            min_monthly_volume=rule.min_monthly_volume,
            effective_from=None if rule.effective_from == FOREVER_START else rule.effective_from,
            effective_to=None if rule.effective_to == FOREVER_END else rule.effective_to,
        )

    @property
    def label(self) -> str:
        """``"<id> v<version>"``."""
        return f"{self.id} v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "version": self.version,
            "position": self.position,
            "scope": dict(self.scope),
            "specificity": self.specificity,
            "min_monthly_volume": self.min_monthly_volume,
            "effective_from": self.effective_from.isoformat() if self.effective_from else None,
            "effective_to": self.effective_to.isoformat() if self.effective_to else None,
        }


@dataclass(frozen=True, slots=True)
class Candidate:
    """A rule whose scope matched the order, and what became of it.

    ``status`` is ``won``, ``outranked`` (it applied, a more specific rule or a
    higher volume tier won), ``not_in_force`` (outside its dates) or
    ``below_volume_tier``; ``reason`` says it in words.
    """

    rule: RuleRef
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"rule": self.rule.to_dict(), "status": self.status, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why an order's fee is what it is.

    Attributes:
        price: the price the fee is computed on.
        at: the instant rules were chosen for (the order's ``occurred_at``).
        monthly_volume: the volume tiers were compared with.
        scope: the order's value for each scope key it has.
        candidates: rules whose scope matched, in precedence order.
        winner: the rule that priced the order.
        steps: the arithmetic, one step per line.
        fee: the resulting fee.
    """

    price: Money
    at: datetime
    monthly_volume: int
    scope: Mapping[str, str]
    candidates: tuple[Candidate, ...]
    winner: RuleRef
    steps: tuple[str, ...]
    fee: Money

    @property
    def matched(self) -> tuple[RuleRef, ...]:
        """Rules that applied (winner first)."""
        return tuple(c.rule for c in self.candidates if c.status in (WON, OUTRANKED))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (amounts in minor units with their currency)."""
        return {
            "price": {"amount": self.price.amount, "currency": self.price.currency},
            "at": self.at.isoformat(),
            "monthly_volume": self.monthly_volume,
            "scope": dict(self.scope),
            "candidates": [candidate.to_dict() for candidate in self.candidates],
            "winner": self.winner.to_dict(),
            "steps": list(self.steps),
            "fee": {"amount": self.fee.amount, "currency": self.fee.currency},
        }

    def text(self) -> str:
        """A multi-line report for people (the CLI's output)."""
        scope = ", ".join(f"{key}={value}" for key, value in sorted(self.scope.items()))
        lines = [
            f"order: {scope}",
            f"price: {self.price} ({self.price.amount} minor units) at {self.at.isoformat()}, "
            f"monthly volume {self.monthly_volume}",
            "rules whose scope matched (most specific first):",
        ]
        for candidate in self.candidates:
            ref = candidate.rule
            where = ", ".join(f"{k}={v}" for k, v in sorted(ref.scope.items())) or "default"
            lines.append(f"  [{candidate.status}] {ref.label} ({where}): {candidate.reason}")
        lines.append(f"winner: {self.winner.label}")
        lines.extend(f"  {step}" for step in self.steps)
        lines.append(f"fee: {self.fee} ({self.fee.amount} minor units)")
        return "\n".join(lines)


def explain(order: Order, price: Money, rules: RuleSet) -> Explanation:
    """Explain the fee ``rules`` give ``order`` at ``price`` (same result as the hook).

    Args:
        order: the order (its ``occurred_at`` chooses the rules in force).
        price: the price to compute the fee on.
        rules: a compiled rule set (the configured one, or a proposal).
    """
    currency = price.currency
    values = rules.order_scope(order, currency)
    at = order_instant(order)
    volume = monthly_volume(order)
    quote = rules.quote(order, price)
    applied = {(rule.id, rule.version, rule.position) for rule in quote.matched}
    candidates: list[Candidate] = []
    for rule in rules.candidates(values):
        ref = RuleRef.of(rule)
        if rule is quote.rule:
            reason = f"{rule.specificity} scope keys"
            if rule.min_monthly_volume:
                reason += f", volume tier {rule.min_monthly_volume}"
            lead = "the only rule in force" if len(quote.matched) == 1 else "ranks highest"
            reason = f"{lead} ({reason})"
            candidates.append(Candidate(ref, WON, reason))
        elif (rule.id, rule.version, rule.position) in applied:
            why = (
                "is more specific"
                if quote.rule.specificity > rule.specificity
                else "has a higher volume tier"
            )
            candidates.append(Candidate(ref, OUTRANKED, f"applies, but {quote.rule.label} {why}"))
        elif not rule.in_force(at):
            candidates.append(Candidate(ref, NOT_IN_FORCE, "not in force at that time"))
        else:
            candidates.append(
                Candidate(
                    ref,
                    BELOW_VOLUME_TIER,
                    f"monthly volume {volume} is below its tier {rule.min_monthly_volume}",
                )
            )
    fee, steps = quote.rule.fee_steps(price.amount, currency)
    return Explanation(
        price=price,
        at=at,
        monthly_volume=volume,
        scope=values,
        candidates=tuple(candidates),
        winner=RuleRef.of(quote.rule),
        steps=steps,
        fee=Money(fee, currency),
    )
