"""What a booking action works with: the engine's services, the locked booking, the request.

One :class:`BookingContext` lives for one transition: actions read the booking
from it, write through its connection (inside the transition's transaction),
add what they did to ``data`` (kept in the audit trail) and queue notifications
for after the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.core.orders import LifecycleEvent, PayoutFailure
from engine.gateway import StripeGateway
from engine.payments.movements import MoneyScope
from engine.services import Services
from plugins.three_sided_bookings.config import PLUGIN, ThreeSidedBookingsConfig
from plugins.three_sided_bookings.store import BookingRecord, Connection, load_booking

__all__ = ["ActionParams", "BookingContext", "Notices"]


@dataclass(frozen=True, slots=True)
class ActionParams:
    """What a request (or a Stripe event) brings to a transition.

    Attributes:
        payment_method: the card to pay with (``pm_...``), for ``pay``.
        amount: the amount to refund, for ``refund`` (``None``: everything left).
        reason: free text kept in the audit trail.
        statement: the operator's statement added to dispute evidence.
        dispute: the Stripe dispute object, for the dispute transitions.
        refund: a Stripe refund made outside the plugin, for ``refunded_in_stripe``
            (``amount`` is then its amount).
        intent: a PaymentIntent or SetupIntent the customer authenticated (3D Secure):
            the transition it completes uses it instead of asking Stripe again.
        request: the request's identity (the caller's API key and its
            ``Idempotency-Key``): a transition this booking already took for it is
            not taken again, and the refunds it makes are keyed by it.
    """

    payment_method: str | None = None
    amount: int | None = None
    reason: str = ""
    statement: str = ""
    dispute: dict[str, Any] | None = None
    refund: dict[str, Any] | None = None
    intent: str | None = None
    request: str | None = None


class Notices:
    """Notifications to send once the transaction has committed (never before)."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._pending: list[Callable[[], None]] = []

    def lifecycle(self, name: str, subject_id: str, **data: Any) -> None:
        """Queue ``three_sided_bookings.<name>`` for ``on_lifecycle_event``."""
        event = LifecycleEvent(
            f"{PLUGIN}.{name}",
            subject_id=subject_id,
            account_id=data.pop("account_id", None),
            data=data,
        )
        self._pending.append(lambda: self._services.plugins.notify_lifecycle(event))

    def payout_failure(self, failure: PayoutFailure) -> None:
        """Queue an ``on_payout_failure`` broadcast (a share was held)."""
        self._pending.append(lambda: self._services.plugins.notify_payout_failure(failure))

    def extend(self, other: Notices) -> None:
        """Take over another transaction's notifications."""
        self._pending += other._pending
        other._pending = []

    def drain(self) -> list[Callable[[], None]]:
        """Hand the queued notifications over (for ``ctx.after_commit``)."""
        pending, self._pending = self._pending, []
        return pending

    def send(self) -> None:
        """Send them now (the caller has committed); plugin failures are logged by the engine."""
        for notify in self.drain():
            notify()


@dataclass
class BookingContext:
    """One transition's working state (see the module docstring)."""

    services: Services
    config: ThreeSidedBookingsConfig
    conn: Connection
    booking: BookingRecord
    now: datetime
    actor: str
    params: ActionParams = field(default_factory=ActionParams)
    data: dict[str, Any] = field(default_factory=dict)
    notify: Notices = field(init=False)

    def __post_init__(self) -> None:
        self.notify = Notices(self.services)

    @property
    def gateway(self) -> StripeGateway:
        """The Stripe gateway."""
        return self.services.gateway

    @property
    def money(self) -> MoneyScope:
        """The engine's money calls for this booking, in this transition's transaction."""
        return MoneyScope(
            self.services.gateway, self.services.ledger, self.conn, PLUGIN, self.booking.reference
        )

    async def reload(self) -> BookingRecord:
        """Re-read the booking after an action changed it."""
        self.booking = await load_booking(self.conn, self.booking.id)
        return self.booking

    def record(self, key: str, value: Any) -> None:
        """Set ``key`` in the audit trail's data (a fact: the fee, the window ...)."""
        self.data[key] = value

    def add(self, key: str, value: Any) -> None:
        """Append ``value`` to the list under ``key`` (charges, transfers, refunds ...)."""
        self.data.setdefault(key, []).append(value)
