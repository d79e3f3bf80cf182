"""Settings of the creator_subscriptions plugin (``[plugins.creator_subscriptions]``)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["PLUGIN", "CreatorSubscriptionsConfig"]

PLUGIN = "creator_subscriptions"
"""One name everywhere: package, entry point, config section, table prefix, routes."""

Proration = Literal["always_invoice", "create_prorations", "none"]
PauseBehavior = Literal["void", "mark_uncollectible", "keep_as_draft"]


class CreatorSubscriptionsConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """How subscriptions behave; every field has a working default.

    Attributes:
        default_currency: currency of a tier or tip when the request names none.
        dunning_retries: failed renewal attempts tolerated after the first one;
            Stripe retries the invoice on its own schedule, and once this many
            retries have failed too the subscription is cancelled (if
            ``cancel_after_failed_retries``) or left ``past_due``.
        dunning_interval_days: the retry spacing announced to fans in the
            ``past_due`` lifecycle event (Stripe's retry schedule is set on the
            platform's Stripe account).
        cancel_after_failed_retries: cancel when dunning is exhausted.
        intervals: billing intervals tiers may use.
        upgrade_proration: ``proration_behavior`` for a move to a dearer tier
            (``always_invoice`` charges the difference at once).
        downgrade_proration: ``proration_behavior`` for a move to a cheaper
            tier (``create_prorations`` credits the next renewal).
        pause_behavior: ``pause_collection[behavior]`` while paused.
        min_one_time_amount: the smallest tip or pay-per-view price (minor units).
        max_one_time_amount: the largest (minor units).
    """

    default_currency: str = "usd"
    dunning_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    dunning_interval_days: Annotated[int, msgspec.Meta(ge=1, le=30)] = 3
    cancel_after_failed_retries: bool = True
    intervals: list[str] = msgspec.field(default_factory=lambda: ["month", "year"])
    upgrade_proration: Proration = "always_invoice"
    downgrade_proration: Proration = "create_prorations"
    pause_behavior: PauseBehavior = "void"
    min_one_time_amount: Annotated[int, msgspec.Meta(ge=50)] = 100
    max_one_time_amount: Annotated[int, msgspec.Meta(ge=50)] = 1_000_000

    def __post_init__(self) -> None:
        bad = [interval for interval in self.intervals if interval not in {"month", "year"}]
        if bad:
            # msgspec reports ValueError raised here as a validation error with the path.
            raise ValueError(f"intervals: {bad[0]!r} is not month or year")
        if self.min_one_time_amount > self.max_one_time_amount:
            raise ValueError("min_one_time_amount is above max_one_time_amount")
