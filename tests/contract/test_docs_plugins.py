"""docs/plugins.md cannot drift: hooks, public API, fixtures and properties are checked in code.

- The hook reference is generated from ``engine/core/hookspecs.py``
  (``python -m engine.testing.hookdoc --write docs/plugins.md``); a new hook, a
  changed signature or docstring makes the check fail.
- Every name of the public API table exists and is exported (``__all__``), and
  the shipped plugins, the example plugin and the ``new-plugin`` templates
  import nothing else from the engine, nor use another name of an engine module
  they import (``movements.X``) (the proof that the documented API suffices;
  ``_NOT_YET_PUBLIC`` lists the exceptions left, with why). Every money call of
  ``engine.payments.movements`` is in the table.
- The kit's fixtures and the conformance properties are the documented ones.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.scaffold.generator import PluginNames, render
from engine.testing import conformance, hookdoc, pytest_plugin

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "examples" / "course_sales"
TEMPLATES = REPO / "engine" / "scaffold" / "templates" / "plugin"


def _guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def _between(begin: str, end: str) -> str:
    text = _guide()
    return text[text.index(begin) + len(begin) : text.index(end)]


def _table_rows(begin: str, end: str) -> list[list[str]]:
    rows = []
    for line in _between(begin, end).splitlines():
        if line.startswith("| ") and not line.startswith(("| ---", "| module", "| fixture")):
            if line.startswith("| property"):
                continue
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _public_api() -> dict[str, set[str]]:
    api: dict[str, set[str]] = {}
    for module, names in _table_rows("<!-- BEGIN PUBLIC API -->", "<!-- END PUBLIC API -->"):
        api[module.strip("`")] = {name.strip().strip("`") for name in names.split(",")}
    return api


def test_hook_reference_is_the_generated_one() -> None:
    documented = _between(hookdoc.BEGIN, hookdoc.END).strip()
    assert documented == hookdoc.render().strip(), (
        "docs/plugins.md's hook reference is stale: "
        "run python -m engine.testing.hookdoc --write docs/plugins.md"
    )


@pytest.mark.parametrize("hook", hookdoc.hooks(), ids=lambda hook: hook.name)
def test_every_hook_is_documented_with_its_signature(hook: hookdoc.Hook) -> None:
    guide = _guide()
    assert f"### `{hook.name}`" in guide, f"{hook.name} is missing from docs/plugins.md"
    assert hookdoc.render_signature(hook.function) in guide, (
        f"docs/plugins.md documents another signature for {hook.name}"
    )


def test_the_generator_sees_a_changed_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.core import hookspecs

    def register_refunds(register: object, extra: int) -> None:
        """A new hook.

        Args:
            register: the callback.
            extra: something new.
        """

    register_refunds.marketplace_spec = {"firstresult": False}  # type: ignore[attr-defined]
    monkeypatch.setattr(hookspecs, "register_refunds", register_refunds, raising=False)
    stale = hookdoc.render()
    assert "### `register_refunds`" in stale
    assert stale.strip() != _between(hookdoc.BEGIN, hookdoc.END).strip()


def test_public_api_names_exist_and_are_exported() -> None:
    api = _public_api()
    assert "engine.core.plugins" in api
    assert "hookimpl" in api["engine.core.plugins"]
    for module_name, names in api.items():
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None)
        for name in sorted(names):
            assert hasattr(module, name), f"{module_name}.{name} is documented but missing"
            if exported is not None:
                assert name in exported, f"{module_name}.{name} is documented but not in __all__"


def _rendered_templates() -> Iterator[tuple[str, str]]:
    names = PluginNames("demo_model")
    for path in sorted(TEMPLATES.rglob("*.py.tmpl")):
        yield str(path.relative_to(REPO)), render(path.read_text(encoding="utf-8"), names)


def _example_sources() -> Iterator[tuple[str, str]]:
    for path in sorted(EXAMPLE.rglob("*.py")):
        if ".egg-info" not in str(path):
            yield str(path.relative_to(REPO)), path.read_text(encoding="utf-8")


def _shipped_plugin_sources() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "plugins").rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield str(path.relative_to(REPO)), path.read_text(encoding="utf-8")


# Imports outside the public API that a shipped plugin still makes, each with
# why; an entry goes as soon as its import does (the test then fails on it).
_NOT_YET_PUBLIC: dict[tuple[str, str, str], str] = {}


_DYNAMIC_IMPORTS = frozenset({"import_module", "__import__"})


def _engine_imports(source: str) -> Iterator[tuple[str, str]]:
    """Every ``(module, name)`` a source imports; ``name`` is ``""`` for a whole module.

    ``from m import a, b`` gives ``(m, a)`` and ``(m, b)``; ``import m`` and
    ``import m as x``, ``importlib.import_module("m")`` and ``__import__("m")``
    give ``(m, "")``. Relative imports stay inside the package and are skipped.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            called = function.attr if isinstance(function, ast.Attribute) else None
            if isinstance(function, ast.Name):
                called = function.id
            target = node.args[0]
            if called in _DYNAMIC_IMPORTS and isinstance(target, ast.Constant):
                yield str(target.value), ""


def _is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError):  # a name inside a module, not a module of its own
        return False


def _module_attribute_uses(source: str) -> Iterator[tuple[str, str]]:
    """``(module, name)`` for each ``alias.name`` of an engine module imported by name.

    ``from engine.payments import movements`` then ``movements.charge(...)`` gives
    ``("engine.payments.movements", "charge")``, as ``from engine.payments.movements
    import charge`` would.
    """
    tree = ast.parse(source)
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "engine":
                continue
            for alias in node.names:
                if _is_module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            yield modules[node.value.id], node.attr


def _import_problems(where: str, source: str, api: dict[str, set[str]]) -> list[str]:
    """What ``source`` (the file ``where``) imports that a plugin may not."""
    problems = []
    for module, name in _engine_imports(source):
        if (where, module, name) in _NOT_YET_PUBLIC:
            continue
        root = module.split(".")[0]
        if root == "plugins" and where.startswith("plugins/"):
            own = "plugins." + where.split("/")[1]
            if not (module == own or module.startswith(own + ".")):
                problems.append(f"{where} imports another plugin ({module})")
        elif root == "plugins":
            problems.append(f"{where} imports a shipped plugin ({module})")
        elif root == "stripe":
            problems.append(f"{where} imports stripe; use services.gateway")
        elif root == "engine" and not name:
            problems.append(f"{where}: 'import {module}' (import the documented names instead)")
        elif root == "engine" and name not in api.get(module, set()):
            problems.append(
                f"{where} imports {module}.{name}, which is not in docs/plugins.md's public API"
            )
    for module, name in sorted(set(_module_attribute_uses(source))):
        if (where, module, name) not in _NOT_YET_PUBLIC and name not in api.get(module, set()):
            problems.append(
                f"{where} uses {module}.{name}, which is not in docs/plugins.md's public API"
            )
    return problems


@pytest.mark.parametrize(
    ("where", "source"),
    [*_example_sources(), *_rendered_templates(), *_shipped_plugin_sources()],
    ids=lambda value: value if value.endswith((".py", ".tmpl")) else "",
)
def test_plugins_import_only_the_public_api(where: str, source: str) -> None:
    assert _import_problems(where, source, _public_api()) == []


@pytest.mark.parametrize(
    "statement",
    [
        "from engine.worker.dispatch import Dispatcher",
        "from engine.core.plugins import hookimpl, _new_manager",
        "from engine.core.plugins import *",
        "from engine import services",
        "import engine.core.plugins",
        "import engine.worker.dispatch as dispatch",
        "import importlib\nimportlib.import_module('engine.worker.dispatch')",
        "from importlib import import_module\nimport_module('engine.worker.runtime')",
        "__import__('engine.worker.dispatch')",
        "def later():\n    from engine.worker.runtime import make_broker",
        "if TYPE_CHECKING:\n    from engine.api.app import create_app",
        "import stripe",
        "from plugins.commission_rules.hooks import resolve_commission",
        "from engine.payments import movements\nmovements._charged(scope, intent)",
        "from engine.payments import movements as money\nkeys = money._EXPAND_CHARGE",
        "from engine.core import postings\npostings.charge_posting(charge)",
    ],
)
def test_the_import_check_refuses_every_form_of_a_private_import(statement: str) -> None:
    for where in (
        "plugins/three_sided_bookings/hooks.py",
        "examples/course_sales/course_sales/hooks.py",
    ):
        assert _import_problems(where, statement, _public_api()), statement


def test_every_money_call_is_documented() -> None:
    """docs/plugins.md lists every public money call (``engine.payments.movements.__all__``)."""
    from engine.payments import movements

    documented = _public_api()["engine.payments.movements"]
    assert set(movements.__all__) <= documented, sorted(set(movements.__all__) - documented)


def test_the_attribute_check_reads_module_imports_only() -> None:
    source = (
        "from engine.payments import movements as money\n"
        "from engine.core.money import Money\n"
        "money.charge(scope, Money.zero('usd'))\n"
        "money.post_platform_charge(scope, charge)\n"
    )
    assert sorted(set(_module_attribute_uses(source))) == [
        ("engine.payments.movements", "charge"),
        ("engine.payments.movements", "post_platform_charge"),
    ]


def test_every_exception_left_is_still_needed() -> None:
    """``_NOT_YET_PUBLIC`` only shrinks: an entry whose import is gone must go too."""
    sources = dict([*_example_sources(), *_rendered_templates(), *_shipped_plugin_sources()])
    for where, module, name in _NOT_YET_PUBLIC:
        assert where in sources, f"{where} is gone: drop its _NOT_YET_PUBLIC entry"
        used = set(_engine_imports(sources[where])) | set(_module_attribute_uses(sources[where]))
        assert (module, name) in used, (
            f"{where} no longer imports {module}.{name}: drop its _NOT_YET_PUBLIC entry"
        )


def test_the_import_check_accepts_the_public_api_and_a_plugins_own_modules() -> None:
    source = (
        "from engine.core.plugins import hookimpl\n"
        "from engine.core.contributions import Registrar, Route\n"
        "from plugins.three_sided_bookings.config import PLUGIN\n"
        "from .split import split_booking\n"
        "import asyncpg\n"
        "from engine.payments import movements\n"
        "charged = movements.charge(scope, priced)\n"
        "refunded = movements.refund_destination_charge\n"
    )
    assert _import_problems("plugins/three_sided_bookings/hooks.py", source, _public_api()) == []


def test_the_kit_fixtures_are_the_documented_ones() -> None:
    rows = _table_rows("<!-- BEGIN FIXTURES -->", "<!-- END FIXTURES -->")
    documented = {row[0].strip("`") for row in rows}
    defined = {
        name
        for name, value in inspect.getmembers(pytest_plugin)
        if name.startswith("mp_") and callable(value)
    }
    assert documented == defined


def test_the_conformance_properties_are_the_documented_ones() -> None:
    rows = _table_rows("<!-- BEGIN PROPERTIES -->", "<!-- END PROPERTIES -->")
    documented = {row[0] for row in rows}
    names = {
        conformance.WELL_FORMED,
        conformance.CONTRIBUTIONS,
        conformance.PRICE,
        conformance.COMMISSION,
        conformance.SPLIT,
        conformance.TABLES,
        conformance.IDEMPOTENT,
    }
    assert documented == names == set(conformance.PROPERTIES)


def test_the_kit_commands_are_documented() -> None:
    guide = _guide()
    for command in ("marketplace new-plugin", "marketplace conformance", "marketplace plugins"):
        assert command in guide
    assert re.search(r"-p no:marketplace", guide)
