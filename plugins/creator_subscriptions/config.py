"""Settings of the creator_subscriptions plugin (``[plugins.creator_subscriptions]``)."""

from __future__ import annotations

from typing import Annotated

import msgspec


class CreatorSubscriptionsConfig(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """How subscriptions behave; every field has a working default."""

    default_currency: str = "usd"
    dunning_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    dunning_interval_days: Annotated[int, msgspec.Meta(ge=1, le=30)] = 3
    cancel_after_failed_retries: bool = True
    intervals: list[str] = msgspec.field(default_factory=lambda: ["month", "year"])
