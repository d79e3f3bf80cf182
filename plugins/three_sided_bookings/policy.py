"""Cancellation policy and collection planning: how much a booking keeps, and how to get there.

Pure. Every money-moving action of the process is "bring what the booking has
collected to a target": the full value at completion, the policy's fee on a
customer cancellation, zero on a business cancellation, the value minus a
refund. :func:`plan_collection` turns a target into Stripe operations:
capture (part of) an open authorisation, release it, charge the saved card
off-session, or refund charges (latest first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine.core.errors import InvalidAmount
from engine.core.money import apply_rate

__all__ = [
    "ChargeState",
    "CollectionPlan",
    "FeeDecision",
    "cancellation_fee",
    "plan_collection",
]


@dataclass(frozen=True, slots=True)
class FeeDecision:
    """What a customer cancellation costs and which policy window decided it."""

    amount: int
    fee_bps: int
    window: str


def cancellation_fee(
    value: int,
    windows: Sequence[tuple[int, int]],
    *,
    starts_at: datetime,
    now: datetime,
    no_show_fee_bps: int,
) -> FeeDecision:
    """The fee a customer pays for cancelling at ``now``.

    Args:
        value: the booking value (minor units).
        windows: ``(hours_before, fee_bps)`` pairs; the window with the largest
            ``hours_before`` that ``starts_at - now`` still reaches applies.
        starts_at: the service's start.
        now: the time of the cancellation.
        no_show_fee_bps: what a cancellation after the start costs (a no-show).
    """
    ahead = starts_at - now
    if ahead >= timedelta(0):
        for hours, fee_bps in sorted(windows, key=lambda window: window[0], reverse=True):
            if ahead >= timedelta(hours=hours):
                return FeeDecision(apply_rate(value, fee_bps), fee_bps, f">= {hours} h before")
    return FeeDecision(apply_rate(value, no_show_fee_bps), no_show_fee_bps, "after the start")


@dataclass(frozen=True, slots=True)
class ChargeState:
    """One captured charge of a booking: ``captured - refunded`` is still held."""

    key: str
    captured: int
    refunded: int = 0

    @property
    def refundable(self) -> int:
        """What may still be refunded from it."""
        return self.captured - self.refunded


@dataclass(frozen=True, slots=True)
class CollectionPlan:
    """Operations that bring a booking's collected money to a target.

    Attributes:
        capture: amount to capture from the open authorisation (0: none).
        release: cancel the open authorisation (after any capture, the rest lapses).
        charge: a new off-session charge of the saved card (0: none).
        refunds: ``(charge key, amount)``, latest charge first.
    """

    capture: int = 0
    release: bool = False
    charge: int = 0
    refunds: list[tuple[str, int]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """Whether nothing needs to happen."""
        return not (self.capture or self.release or self.charge or self.refunds)


def plan_collection(
    target: int, charges: Sequence[ChargeState], *, authorized: int = 0
) -> CollectionPlan:
    """Plan how to make the booking hold exactly ``target``.

    Args:
        target: what the booking should have collected in the end (>= 0).
        charges: its captured charges, oldest first.
        authorized: the amount of an open authorisation (0 when there is none).
    """
    if target < 0:
        raise InvalidAmount("a collection target cannot be negative")
    collected = sum(charge.refundable for charge in charges)
    need = target - collected
    if need >= 0:
        capture = min(need, authorized)
        return CollectionPlan(
            capture=capture,
            release=authorized > 0 and capture == 0,
            charge=need - capture,
        )
    excess = -need
    refunds: list[tuple[str, int]] = []
    for charge in reversed(charges):
        if excess == 0:
            break
        part = min(excess, charge.refundable)
        if part > 0:
            refunds.append((charge.key, part))
            excess -= part
    return CollectionPlan(release=authorized > 0, refunds=refunds)
