"""Order-insensitive mirroring of a Stripe subscription into our row (pure, no I/O).

Stripe repeats events and does not keep their order, so every group of fields
that Stripe changes independently carries the ``created`` time of the event
that last set it. ``merge`` applies a snapshot of the Stripe subscription only
to the groups whose stamp is not newer than the event:

- ``status``: an older event never applies, and a terminal state
  (``canceled``, ``incomplete_expired``) is final whatever the stamps say,
  because Stripe never reopens a cancelled subscription. Two statuses stamped
  with the same second are ambiguous (below); until resolved, the one further
  along the lifecycle (``STATUS_RANK``) is kept.
- ``period``: the current period only moves forward (the later end wins).
- ``price``, ``cancel``, ``pause``: the newer event wins. Two different values
  stamped with the same second cannot be ordered from the events alone:
  ``merge`` reports them as ``ambiguous`` and the caller re-reads the
  subscription from Stripe and applies that with ``force=True``.

The result also names what changed, so the handler can announce it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "STATUS_RANK",
    "TERMINAL_STATUSES",
    "Merge",
    "SubscriptionState",
    "merge",
    "merge_status",
    "snapshot_of",
]

TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})

STATUS_RANK: Mapping[str, int] = {
    "pending": 0,
    "incomplete": 1,
    "trialing": 2,
    "active": 3,
    "past_due": 4,
    "unpaid": 5,
    "paused": 6,
    "incomplete_expired": 7,
    "canceled": 8,
}
"""How far along the lifecycle a status is; breaks ties between same-second events."""


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """The mirrored fields of one subscription, with the stamp of each group."""

    status: str = "pending"
    status_at_event: int = 0
    stripe_price_id: str = ""
    price_at_event: int = 0
    current_period_start: int = 0
    current_period_end: int = 0
    cancel_at_period_end: bool = False
    cancel_at: int | None = None
    canceled_at: int | None = None
    cancel_at_event: int = 0
    paused: bool = False
    pause_behavior: str = ""
    pause_at_event: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The same fields as Stripe shows them in one subscription object."""

    status: str
    stripe_price_id: str
    current_period_start: int
    current_period_end: int
    cancel_at_period_end: bool
    cancel_at: int | None
    canceled_at: int | None
    paused: bool
    pause_behavior: str


@dataclass(frozen=True, slots=True)
class Merge:
    """The state after applying one event, and what it changed."""

    state: SubscriptionState
    changed: frozenset[str] = field(default_factory=frozenset)
    ambiguous: bool = False


def _optional_int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def snapshot_of(subscription: Mapping[str, Any]) -> Snapshot:
    """Read the mirrored fields from a Stripe ``subscription`` object.

    The current period is the subscription items' (``items.data[].current_period_*``,
    the engine's API version): a subscription has one period, so the first item's.
    """
    items = (subscription.get("items") or {}).get("data") or []
    first: Mapping[str, Any] = items[0] if items else {}
    price = first.get("price") or {}
    price_id = str(price.get("id") if isinstance(price, Mapping) else price or "")
    start = first.get("current_period_start") or 0
    end = first.get("current_period_end") or 0
    pause = subscription.get("pause_collection") or {}
    return Snapshot(
        status=str(subscription.get("status") or "incomplete"),
        stripe_price_id=price_id,
        current_period_start=int(start),
        current_period_end=int(end),
        cancel_at_period_end=bool(subscription.get("cancel_at_period_end")),
        cancel_at=_optional_int(subscription.get("cancel_at")),
        canceled_at=_optional_int(subscription.get("canceled_at")),
        paused=bool(pause),
        pause_behavior=str(pause.get("behavior") or "") if isinstance(pause, Mapping) else "",
    )


def merge_status(
    state: SubscriptionState, status: str, created: int, *, force: bool = False
) -> tuple[SubscriptionState, bool]:
    """Apply one status seen at ``created`` (see the module rules).

    Returns the new state and whether the event was ambiguous (a different,
    non-terminal status stamped with the same second). ``force`` (a fresh read
    from Stripe) wins such a tie outright.
    """
    held = state.status
    if held == "failed":
        # Refused at creation (its first payment declined; the API cancelled it at
        # Stripe): nothing was subscribed, and Stripe's later events about the
        # cancelled subscription must not bring it into view as "canceled".
        return state, False
    if held in TERMINAL_STATUSES or status == held:
        if status == held and created > state.status_at_event:
            return replace(state, status_at_event=created), False
        return state, False
    stamp = state.status_at_event
    tie = created == stamp
    if status in TERMINAL_STATUSES or created > stamp or (force and tie):
        return replace(state, status=status, status_at_event=max(created, stamp)), False
    if tie and STATUS_RANK.get(status, 0) > STATUS_RANK.get(held, 0):
        return replace(state, status=status), True
    return state, tie


def merge(
    state: SubscriptionState, snapshot: Snapshot, created: int, *, force: bool = False
) -> Merge:
    """Apply a Stripe snapshot seen in an event created at ``created``.

    Args:
        state: what we hold.
        snapshot: the subscription as the event shows it.
        created: the event's ``created`` (for a fresh read from Stripe: the
            newest stamp we hold, with ``force=True``).
        force: the snapshot is Stripe's current state (a re-read), so it wins
            every group whose stamp is not newer than ``created``.
    """
    changed: set[str] = set()
    new = state

    after_status, ambiguous = merge_status(new, snapshot.status, created, force=force)
    if after_status.status != new.status:
        changed.add("status")
    new = after_status

    if snapshot.current_period_end > new.current_period_end:
        new = replace(
            new,
            current_period_start=snapshot.current_period_start,
            current_period_end=snapshot.current_period_end,
        )
        changed.add("period")

    def decide(stamp: int, same: bool) -> bool:
        nonlocal ambiguous
        if created > stamp or (force and created >= stamp):
            return not same
        if created == stamp and not same:
            ambiguous = True
        return False

    if decide(new.price_at_event, snapshot.stripe_price_id == new.stripe_price_id):
        new = replace(new, stripe_price_id=snapshot.stripe_price_id, price_at_event=created)
        changed.add("price")
    elif created > new.price_at_event:
        new = replace(new, price_at_event=created)

    cancel_now = (snapshot.cancel_at_period_end, snapshot.cancel_at, snapshot.canceled_at)
    cancel_held = (new.cancel_at_period_end, new.cancel_at, new.canceled_at)
    if decide(new.cancel_at_event, cancel_now == cancel_held):
        new = replace(
            new,
            cancel_at_period_end=snapshot.cancel_at_period_end,
            cancel_at=snapshot.cancel_at,
            canceled_at=snapshot.canceled_at,
            cancel_at_event=created,
        )
        changed.add("cancel")
    elif created > new.cancel_at_event:
        new = replace(new, cancel_at_event=created)

    pause_now = (snapshot.paused, snapshot.pause_behavior)
    if decide(new.pause_at_event, pause_now == (new.paused, new.pause_behavior)):
        new = replace(
            new,
            paused=snapshot.paused,
            pause_behavior=snapshot.pause_behavior,
            pause_at_event=created,
        )
        changed.add("pause")
    elif created > new.pause_at_event:
        new = replace(new, pause_at_event=created)

    if force:
        ambiguous = False
    return Merge(state=new, changed=frozenset(changed), ambiguous=ambiguous)
