"""The wire shape of one commission rule, shared by the config file, the database and the API.

``RuleSpec`` is what an operator writes; it is deliberately loose about values
(any integer, any scope key) so that every semantic check happens in one place,
:func:`plugins.commission_rules.rules.parse_rule`, with one message style that
names the rule and the field, wherever the rule came from.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from engine.api.fields import Line, Text

__all__ = ["Amounts", "RuleSpec"]

Whole = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""Any integer PostgreSQL's bigint holds: the rule's own checks say which make sense."""
ScopeText = Annotated[Line, msgspec.Meta(max_length=200)]

Amounts = Whole | dict[ScopeText, Whole]
"""A money amount in minor units: one integer (the rule must then be scoped to a
currency) or a table per currency (``{gbp = 30, eur = 30}``)."""


class RuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One commission rule as written (see ``docs/commission_rules.md``).

    Attributes:
        id: the rule's name; several entries with one id are versions of one
            rule over time and must not overlap in time.
        description: free text for people; not part of the rule's version.
        rate_bps: the percentage part in basis points (``1200`` is 12 %); an
            integer, or a decimal string for fractional points (``"1250.5"``).
        fixed: a fixed fee added to the percentage part.
        minimum: the smallest fee (before the final clamp into ``[0, price]``).
        maximum: the largest fee.
        scope: what the rule applies to: ``plugin``, ``kind``, ``service_type``,
            ``tier``, ``currency`` and one key per beneficiary role
            (``creator``, ``provider``, ``venue`` by default). Empty = the default.
        min_monthly_volume: volume tier: applies only when the account's
            month-to-date gross volume (order currency, minor units) is at least this.
        effective_from: in force from this instant (inclusive), with a UTC offset.
        effective_to: in force until this instant (exclusive), with a UTC offset.
    """

    id: Annotated[Line, msgspec.Meta(max_length=200)]
    description: Annotated[Text, msgspec.Meta(max_length=2000)] = ""
    rate_bps: Whole | Annotated[Line, msgspec.Meta(max_length=64)] = 0
    fixed: Amounts | None = None
    minimum: Amounts | None = None
    maximum: Amounts | None = None
    scope: dict[ScopeText, ScopeText] = msgspec.field(default_factory=dict)
    min_monthly_volume: Whole | None = None
    effective_from: datetime | None = None
    effective_to: datetime | None = None
