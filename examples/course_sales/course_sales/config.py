"""Settings of the course_sales plugin: ``[plugins.course_sales]`` in the engine's config."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["PLUGIN", "Bps", "CourseSalesConfig"]

PLUGIN = "course_sales"

Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000)]


class CourseSalesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Revenue share and coupons; every field has a default.

    Attributes:
        affiliate_share_bps: the affiliate's share, in basis points, of what is
            left after the platform's commission (only when a sale has an affiliate).
        coupons: coupon code -> discount off the course's list price, in basis points.
    """

    affiliate_share_bps: Bps = 2000
    coupons: dict[str, Bps] = msgspec.field(default_factory=dict)
