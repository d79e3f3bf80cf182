"""Earnings over time as an inline SVG bar chart, laid out server-side (pure, no JavaScript).

``bar_chart`` turns values per period into bar geometry; the template draws it
(so every label goes through the template engine's escaping). Negative periods
(refunds exceeding earnings) draw below the zero line. Integer minor units in,
formatted labels out: no float touches an amount, only pixel positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

from engine.core.money import Money

__all__ = ["Bar", "Chart", "bar_chart"]

WIDTH: Final = 640
HEIGHT: Final = 200
_TOP: Final = 16
_BOTTOM: Final = 28
_LEFT: Final = 8


@dataclass(frozen=True, slots=True)
class Bar:
    """One period's bar: position, size, labels."""

    x: int
    y: int
    width: int
    height: int
    label: str
    value: str
    negative: bool


@dataclass(frozen=True, slots=True)
class Chart:
    """A bar chart ready to draw: viewport, zero line, bars, caption."""

    width: int
    height: int
    zero_y: int
    bars: tuple[Bar, ...]
    currency: str
    total: str
    peak: str

    @property
    def empty(self) -> bool:
        """Whether every bar is zero."""
        return all(bar.height == 0 for bar in self.bars)


def _label(period: date, granularity: str) -> str:
    if granularity == "month":
        return period.strftime("%b %y")
    return period.strftime("%d %b")


def bar_chart(
    points: Sequence[tuple[date, int]], currency: str, *, granularity: str = "month"
) -> Chart:
    """Lay out one bar per ``(period, amount)``, oldest first, scaled to the largest."""
    high = max((amount for _, amount in points if amount > 0), default=0)
    low = min((amount for _, amount in points if amount < 0), default=0)
    span = max(high - low, 1)
    plot = HEIGHT - _TOP - _BOTTOM
    zero_y = _TOP + round(plot * high / span)
    slot = (WIDTH - 2 * _LEFT) // max(len(points), 1)
    bar_width = max(int(slot * 0.7), 2)
    bars = []
    for index, (period, amount) in enumerate(points):
        height = round(plot * abs(amount) / span)
        y = zero_y - height if amount >= 0 else zero_y
        bars.append(
            Bar(
                x=_LEFT + index * slot + (slot - bar_width) // 2,
                y=y,
                width=bar_width,
                height=height,
                label=_label(period, granularity),
                value=Money(amount, currency).format(),
                negative=amount < 0,
            )
        )
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        zero_y=zero_y,
        bars=tuple(bars),
        currency=currency,
        total=Money(sum(amount for _, amount in points), currency).format(),
        peak=Money(high, currency).format(),
    )
