"""Calendar arithmetic for tests that move clocks: months the way Stripe bills them.

A monthly subscription anchored on the 31st renews on the last day of shorter
months and on the 31st again after; tests that advance a test clock "one month"
must land after that renewal whatever date the clock started on, so they use
``months_after`` rather than a fixed 30 or 31 days.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

__all__ = ["DAY", "HOUR", "months_after"]

HOUR = 3_600
DAY = 86_400


def months_after(start: int, months: int) -> int:
    """The unix time ``months`` calendar months after ``start`` (UTC), day clamped to the month.

    ``months_after(<31 January>, 1)`` is the end of February at the same time of day.
    """
    moment = datetime.fromtimestamp(start, UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())
