"""The rule set in force: compiled from the config once per runtime, or installed explicitly.

The compiled ``RuleSet`` lives in ``runtime.state("commission_rules")`` keyed by
the config object it came from, so the hook compiles once per runtime and never
scans rules linearly. ``install_rules`` swaps in a set from elsewhere (the
database, the admin API) only after it validates, so the previous valid set
stays in force when a new one is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.core.contributions import PluginRuntime
from plugins.commission_rules.config import PLUGIN, CommissionRulesConfig
from plugins.commission_rules.ruleset import RuleSet, compile_rules
from plugins.commission_rules.schemas import RuleSpec

__all__ = ["active_rules", "install_rules"]

_COMPILED = "compiled"
_INSTALLED = "installed"


def active_rules(runtime: PluginRuntime) -> RuleSet:
    """The rule set the hook prices with (installed one first, else the config's)."""
    state = runtime.state(PLUGIN)
    installed: RuleSet | None = state.get(_INSTALLED)
    if installed is not None:
        return installed
    config: CommissionRulesConfig = runtime.config(PLUGIN)
    cached: tuple[CommissionRulesConfig, RuleSet] | None = state.get(_COMPILED)
    if cached is not None and cached[0] is config:
        return cached[1]
    rules = config.compile()
    state[_COMPILED] = (config, rules)
    return rules


def install_rules(
    runtime: PluginRuntime,
    specs: Sequence[RuleSpec],
    *,
    roles: Sequence[str] | None = None,
    key: str = "rules",
) -> RuleSet:
    """Validate ``specs`` and make them the rule set in force.

    Args:
        runtime: the engine's runtime.
        specs: the whole new rule set.
        roles: scope roles (defaults to the configured ones).
        key: the dotted key of the list in its source, for messages.

    Raises:
        ConfigError: naming the rule and field; the previous rule set stays in force.
    """
    config: CommissionRulesConfig = runtime.config(PLUGIN)
    rules = compile_rules(specs, roles=config.roles if roles is None else roles, key=key)
    runtime.state(PLUGIN)[_INSTALLED] = rules
    return rules
