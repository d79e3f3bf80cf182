"""Settings of the commission_rules plugin: the rule set in ``[plugins.commission_rules]``.

The engine converts the section into ``CommissionRulesConfig`` at start-up; its
``__post_init__`` compiles the whole rule set, so an invalid rule stops
start-up with a ``ConfigError`` naming ``plugins.commission_rules.rules[i].<field>``
(msgspec lets errors other than ``TypeError``/``ValueError`` raised there
propagate unchanged, which keeps our key and message intact).
"""

from __future__ import annotations

import msgspec

from plugins.commission_rules.rules import DEFAULT_ROLES, check_roles
from plugins.commission_rules.ruleset import RuleSet, compile_rules
from plugins.commission_rules.schemas import RuleSpec

__all__ = ["CONFIG_KEY", "PLUGIN", "CommissionRulesConfig", "RuleSpec"]

PLUGIN = "commission_rules"
CONFIG_KEY = f"plugins.{PLUGIN}"


class CommissionRulesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The configured rule set; a default rule (empty scope) must always be in force.

    Attributes:
        rules: the rules, see ``RuleSpec`` and ``docs/commission_rules.md``.
        roles: beneficiary roles usable as scope keys (``scope = { venue = "acct_1" }``).
    """

    rules: list[RuleSpec] = msgspec.field(
        default_factory=lambda: [RuleSpec(id="default", rate_bps=1000)]
    )
    roles: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ROLES))

    def __post_init__(self) -> None:
        self.compile()

    def compile(self) -> RuleSet:
        """Validate and index the rules (raises ``ConfigError`` naming the rule and field)."""
        check_roles(self.roles, key=f"{CONFIG_KEY}.roles")
        return compile_rules(self.rules, roles=self.roles, key=f"{CONFIG_KEY}.rules")
