"""Contract: every hook is documented and typed; every plugin entry point loads cleanly."""

from __future__ import annotations

import inspect
import typing

import pluggy
import pytest

from engine.core import hookspecs
from engine.core.plugins import ENTRY_POINT_GROUP, build_plugins, installed_plugins
from engine.core.settings import settings_from_mapping

HOOKS = [
    (name, function)
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(function, "marketplace_spec")
]


def test_there_are_hooks_of_every_family() -> None:
    names = {name for name, _ in HOOKS}
    assert {"resolve_price", "resolve_commission", "resolve_split"} <= names
    assert {"on_lifecycle_event", "on_payout_failure"} <= names
    assert {"register_tables", "register_routes", "register_webhook_handlers"} <= names
    assert "register_config_schema" in names


@pytest.mark.parametrize(("name", "function"), HOOKS, ids=[name for name, _ in HOOKS])
def test_hook_is_documented_and_typed(name: str, function: typing.Callable[..., object]) -> None:
    doc = inspect.getdoc(function) or ""
    assert len(doc.splitlines()) >= 3, f"{name} needs a docstring for plugin authors"
    hints = typing.get_type_hints(function)
    for parameter in inspect.signature(function).parameters:
        assert parameter in hints, f"{name}({parameter}) has no type"
        assert parameter in doc, f"{name}'s docstring does not describe {parameter!r}"
    assert "return" in hints, f"{name} has no return type"
    if name.startswith("resolve_"):
        assert function.marketplace_spec["firstresult"] is True  # type: ignore[attr-defined]
        assert "Returns:" in doc
    else:
        assert not function.marketplace_spec.get("firstresult")  # type: ignore[attr-defined]
    assert name.startswith(("resolve_", "on_", "register_")), "name must say how results combine"


def test_every_entry_point_loads_and_passes_check_pending() -> None:
    installed = installed_plugins()
    assert {
        "engine_defaults",
        "commission_rules",
        "creator_subscriptions",
        "three_sided_bookings",
    } <= set(installed)
    for name, entry_point in installed.items():
        assert entry_point.group == ENTRY_POINT_GROUP
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(entry_point.load(), name=name)
        pm.check_pending()


SHIPPED = {
    "engine_defaults",
    "commission_rules",
    "creator_subscriptions",
    "notifier",
    "reconciliation",
    "three_sided_bookings",
}


def test_all_shipped_plugins_build_together() -> None:
    plugins = build_plugins(settings_from_mapping({}))
    enabled = {info.name for info in plugins.infos if info.enabled}
    assert enabled >= SHIPPED
