"""Settings of the three_sided_bookings plugin (``[plugins.three_sided_bookings]``)."""

from __future__ import annotations

from typing import Annotated

import msgspec

Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000)]


class CancellationWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Refund this share of what was paid when cancelled at least ``hours_before`` the start."""

    hours_before: Annotated[int, msgspec.Meta(ge=0)]
    refund_bps: Bps


class ThreeSidedBookingsConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Booking and payment behaviour; every field has a working default."""

    default_currency: str = "gbp"
    provider_share_bps: Bps = 6000
    deposit_bps: Bps = 2000
    off_session_after_days: Annotated[int, msgspec.Meta(ge=1, le=7)] = 6
    reverse_shares_on_lost_dispute: bool = True
    cancellation: list[CancellationWindow] = msgspec.field(
        default_factory=lambda: [
            CancellationWindow(hours_before=48, refund_bps=10_000),
            CancellationWindow(hours_before=0, refund_bps=0),
        ]
    )
