"""Settings of the commission_rules plugin: the rule set in ``[plugins.commission_rules]``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000)]
MinorUnits = Annotated[int, msgspec.Meta(ge=0)]


class RuleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One commission rule as written in config (scopes left out match anything)."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    rate_bps: Bps = 0
    fixed: MinorUnits = 0
    minimum: MinorUnits | None = None
    maximum: MinorUnits | None = None
    plugin: str | None = None
    account: str | None = None
    kind: str | None = None
    service_type: str | None = None
    tier: str | None = None
    currency: str | None = None
    min_monthly_volume: MinorUnits | None = None
    effective_from: datetime | None = None
    effective_to: datetime | None = None


class CommissionRulesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The configured rule set; a ``default`` rule with no scope always exists."""

    rules: list[RuleConfig] = msgspec.field(
        default_factory=lambda: [RuleConfig(id="default", rate_bps=1000)]
    )
