"""Hook implementations of the commission_rules plugin (hookimpls only)."""

from __future__ import annotations

from typing import Any

from engine.core.contributions import (
    CliCommand,
    ConfigSection,
    PluginRuntime,
    Registrar,
    Route,
    StartupFunction,
    TableApp,
)
from engine.core.money import Money
from engine.core.orders import Commission, Order
from engine.core.plugins import hookimpl
from plugins.commission_rules import cli, store
from plugins.commission_rules.config import PLUGIN, CommissionRulesConfig
from plugins.commission_rules.services import active_rules
from plugins.commission_rules.tables import APP_CONFIG


@hookimpl
def register_config_schema(register: Registrar[ConfigSection]) -> None:
    """Declare ``[plugins.commission_rules]`` (the rule set is compiled as it is validated)."""
    register(ConfigSection(plugin=PLUGIN, schema=CommissionRulesConfig))


@hookimpl
def resolve_commission(order: Order, price: Money, runtime: PluginRuntime) -> Commission:
    """The fee from the most specific rule in force (see ``docs/commission_rules.md``).

    Synchronous and pure: the compiled rule set is cached in
    ``runtime.state("commission_rules")``; the lookup checks one bucket per
    scope shape, never every rule.
    """
    return active_rules(runtime).quote(order, price).commission()


@hookimpl
def register_cli_commands(register: Registrar[CliCommand]) -> None:
    """``marketplace commission explain|dry-run``."""
    register(cli.command())


@hookimpl
def register_tables(register: Registrar[TableApp]) -> None:
    """Rule versions and rule sets (``commission_rules_*`` tables)."""
    register(TableApp(plugin=PLUGIN, app_config=APP_CONFIG))


@hookimpl
def register_startup(register: Registrar[StartupFunction]) -> None:
    """Record the config's rule versions and put an admin-saved rule set in force."""

    async def start(services: Any) -> None:
        await store.sync_rules(services.plugins.runtime)

    register(start)


@hookimpl
def register_routes(register: Registrar[Route]) -> None:
    """The admin API: rules, versions, explain, dry run."""
    from plugins.commission_rules.controllers import CommissionRulesController

    register(CommissionRulesController)
