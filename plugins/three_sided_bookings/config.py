"""Settings of the three_sided_bookings plugin (``[plugins.three_sided_bookings]``).

Everything an operator may adapt without code lives here: the default
provider share, the deposit, the cancellation policy, the dispute policy and
the booking process itself (states and transitions as data, see
:mod:`plugins.three_sided_bookings.process`). Every field has a working
default; an invalid value stops start-up with a ``ConfigError`` naming the key.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from engine.core.errors import ConfigError
from engine.core.money import is_known_currency
from plugins.three_sided_bookings.process import DEFAULT_PROCESS, ProcessSpec

__all__ = [
    "CONFIG_KEY",
    "PLUGIN",
    "CancellationWindow",
    "ThreeSidedBookingsConfig",
]

PLUGIN = "three_sided_bookings"
CONFIG_KEY = f"plugins.{PLUGIN}"

Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000)]


class CancellationWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A customer cancelling at least ``hours_before`` the start pays ``fee_bps`` of the value.

    The fee is what the customer keeps paying (split like the booking); anything
    paid above it is refunded, an authorisation is captured only up to it.
    """

    hours_before: Annotated[int, msgspec.Meta(ge=0)]
    fee_bps: Bps


class ThreeSidedBookingsConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """Booking and payment behaviour; every field has a working default.

    Attributes:
        default_currency: the currency of services created without one (GBP at launch).
        currencies: currencies bookings may be taken in.
        provider_share_bps: the provider's share of what is left after the
            platform's fee, when the provider has no agreement for the service type.
        deposit_bps: the deposit charged at booking (deposit + balance model).
        off_session_after_days: pay on arrival: a service starting further away
            than this gets its card saved (charged off-session at completion)
            instead of an authorisation, which Stripe lets lapse after 7 days.
        reverse_shares_on_lost_dispute: on a lost dispute, pull the provider's
            and venue's shares back (True) or let the platform absorb the loss.
        auto_submit_evidence: submit the assembled evidence as soon as a dispute opens.
        cancellation: customer cancellation windows (largest ``hours_before`` first wins).
        no_show_fee_bps: what a no-show (or a cancellation after the start) pays.
        start_grace_minutes: how early before the start a service may be completed.
        process: the booking process (states, transitions, timers) as data.
    """

    default_currency: str = "gbp"
    currencies: list[str] = msgspec.field(default_factory=lambda: ["gbp", "eur", "jpy"])
    provider_share_bps: Bps = 6000
    deposit_bps: Bps = 2000
    off_session_after_days: Annotated[int, msgspec.Meta(ge=1, le=7)] = 6
    reverse_shares_on_lost_dispute: bool = True
    auto_submit_evidence: bool = False
    cancellation: list[CancellationWindow] = msgspec.field(
        default_factory=lambda: [
            CancellationWindow(hours_before=48, fee_bps=0),
            CancellationWindow(hours_before=0, fee_bps=2000),
        ]
    )
    no_show_fee_bps: Bps = 10_000
    start_grace_minutes: Annotated[int, msgspec.Meta(ge=0)] = 15
    process: ProcessSpec = msgspec.field(default_factory=lambda: DEFAULT_PROCESS)

    def __post_init__(self) -> None:
        for index, code in enumerate([self.default_currency, *self.currencies]):
            key = "default_currency" if index == 0 else f"currencies[{index - 1}]"
            if not is_known_currency(code) or code != code.lower():
                raise ConfigError(
                    f"{CONFIG_KEY}.{key}", f"{code!r} is not a lowercase ISO 4217 code"
                )
        if self.default_currency not in self.currencies:
            raise ConfigError(f"{CONFIG_KEY}.default_currency", "must be one of `currencies`")
        hours = [window.hours_before for window in self.cancellation]
        if len(set(hours)) != len(hours):
            raise ConfigError(f"{CONFIG_KEY}.cancellation", "two windows share hours_before")
        self.process.check(f"{CONFIG_KEY}.process")

    def windows(self) -> list[CancellationWindow]:
        """The cancellation windows, largest ``hours_before`` first."""
        return sorted(self.cancellation, key=lambda window: window.hours_before, reverse=True)
