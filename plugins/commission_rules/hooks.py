"""Hook implementations of the commission_rules plugin."""

from __future__ import annotations

from collections.abc import Callable

from engine.core.contributions import ConfigSection
from engine.core.plugins import hookimpl
from plugins.commission_rules.config import CommissionRulesConfig

PLUGIN = "commission_rules"


@hookimpl
def register_config_schema(register: Callable[[ConfigSection], None]) -> None:
    """Declare ``[plugins.commission_rules]``."""
    register(ConfigSection(plugin=PLUGIN, schema=CommissionRulesConfig))
