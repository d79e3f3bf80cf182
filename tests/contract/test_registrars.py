"""``register_*`` hooks take typed registrars: mypy refuses a wrong registration, the
engine refuses one at load, and every shipped implementation is annotated with them."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from engine.core import hookspecs
from engine.core.contributions import (
    CliCommand,
    ConfigSection,
    DashboardPanel,
    PeriodicTask,
    Registrar,
    Route,
    StartupFunction,
    TableApp,
    TaskFunction,
    WebhookRegistration,
)
from engine.core.errors import PluginError
from engine.core.plugins import build_plugins, hookimpl
from engine.core.settings import settings_from_mapping
from engine.scaffold.generator import PluginNames, render

REPO = Path(__file__).resolve().parents[2]

EXPECTED: dict[str, object] = {
    "register_config_schema": ConfigSection,
    "register_account_roles": str,
    "register_tables": TableApp,
    "register_routes": Route,
    "register_webhook_handlers": WebhookRegistration,
    "register_cli_commands": CliCommand,
    "register_dashboard_panels": DashboardPanel,
    "register_startup": StartupFunction,
    "register_periodic_tasks": PeriodicTask,
    "register_tasks": TaskFunction,
}


def test_every_register_hook_takes_a_typed_registrar() -> None:
    specs = {
        name: function
        for name, function in vars(hookspecs).items()
        if name.startswith("register_") and hasattr(function, "marketplace_spec")
    }
    assert set(specs) == set(EXPECTED), "a new register_* hook needs its registrar type here"
    for name, function in specs.items():
        annotation = typing.get_type_hints(function, vars(hookspecs))["register"]
        assert typing.get_origin(annotation) is Registrar, f"{name}(register) is not a Registrar"
        assert typing.get_args(annotation) == (EXPECTED[name],), name


_WRONG = """
from engine.core.contributions import PeriodicTask, Registrar, Route, TaskFunction


def not_async() -> None:
    return None


async def job(services: object) -> None:
    return None


def register_routes(register: Registrar[Route]) -> None:
    register("/v1/wrong")  # line 14
    register(PeriodicTask("wrong.timer", 60.0, job))  # line 15


def register_tasks(register: Registrar[TaskFunction]) -> None:
    register(not_async)  # line 19


def register_periodic_tasks(register: Registrar[PeriodicTask]) -> None:
    register(job)  # line 23
"""

_RIGHT = """
from engine.core.contributions import PeriodicTask, Registrar, Route, TaskFunction


async def job(services: object) -> None:
    return None


class Controller:
    path = "/v1/right"


def register_routes(register: Registrar[Route]) -> None:
    register(Controller)


def register_tasks(register: Registrar[TaskFunction]) -> None:
    register(job)


def register_periodic_tasks(register: Registrar[PeriodicTask]) -> None:
    register(PeriodicTask("right.timer", 60.0, job))
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "plugin_hooks.py"
    module.write_text(source, encoding="utf-8")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(module),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_mypy_refuses_a_wrong_registration(tmp_path: Path) -> None:
    result = _mypy(tmp_path, _WRONG)
    flagged = sorted(
        int(line.split(":")[1]) for line in result.stdout.splitlines() if ": error:" in line
    )
    assert flagged == [14, 15, 19, 23], result.stdout + result.stderr


def test_mypy_accepts_the_right_registrations(tmp_path: Path) -> None:
    result = _mypy(tmp_path, _RIGHT)
    assert result.returncode == 0, result.stdout + result.stderr


def _hook_sources() -> list[tuple[str, str]]:
    paths = [
        *sorted((REPO / "plugins").glob("*/hooks.py")),
        *sorted((REPO / "engine").glob("*/hooks.py")),
        REPO / "examples" / "course_sales" / "course_sales" / "hooks.py",
    ]
    sources = [(str(path.relative_to(REPO)), path.read_text(encoding="utf-8")) for path in paths]
    template = REPO / "engine" / "scaffold" / "templates" / "plugin" / "package" / "hooks.py.tmpl"
    sources.append(
        (
            str(template.relative_to(REPO)),
            render(template.read_text(encoding="utf-8"), PluginNames("demo_model")),
        )
    )
    return sources


@pytest.mark.parametrize(("where", "source"), _hook_sources(), ids=lambda value: value[:60])
def test_shipped_register_hooks_are_annotated_with_registrars(where: str, source: str) -> None:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("register_"):
            register = next(arg for arg in node.args.args if arg.arg == "register")
            annotation = ast.unparse(register.annotation) if register.annotation else ""
            expected = EXPECTED[node.name]
            wanted = getattr(expected, "__name__", "") if isinstance(expected, type) else ""
            assert annotation.startswith("Registrar["), f"{where}: {node.name}({annotation})"
            if wanted:
                assert annotation == f"Registrar[{wanted}]", f"{where}: {node.name}"


class _SyncTask:
    @hookimpl
    def register_tasks(self, register: Registrar[TaskFunction]) -> None:
        register(lambda: None)  # type: ignore[arg-type, return-value]  # the mistake under test


class _NotARoute:
    @hookimpl
    def register_routes(self, register: Registrar[Route]) -> None:
        register("/v1/not_a_route")  # type: ignore[arg-type]  # the mistake under test


def test_the_engine_refuses_a_wrong_registration_too() -> None:
    settings = settings_from_mapping({"plugins": {"enabled": ["sync_task", "not_a_route"]}})
    plugins = build_plugins(settings, extra={"sync_task": _SyncTask(), "not_a_route": _NotARoute()})
    with pytest.raises(PluginError) as refused:
        plugins.tasks()
    assert refused.value.key == "plugins.sync_task"
    assert "register_tasks: register() expects an async def" in refused.value.problem
    with pytest.raises(PluginError, match="expects a controller or route handler"):
        plugins.routes()


async def send_receipt(enrollment_id: int) -> None:
    """A plugin's background task."""


class _Receipts:
    @hookimpl
    def register_tasks(self, register: Registrar[TaskFunction]) -> None:
        register(send_receipt)


def test_a_registered_task_is_a_taskiq_task_named_after_its_plugin() -> None:
    from engine.worker.runtime import make_broker, register_plugin_tasks

    settings = settings_from_mapping({"plugins": {"enabled": ["receipts"]}})
    plugins = build_plugins(settings, extra={"receipts": _Receipts()})
    assert plugins.tasks() == [("receipts.send_receipt", send_receipt)]
    broker = make_broker(settings)
    register_plugin_tasks(broker, plugins)
    task = broker.find_task("receipts.send_receipt")
    assert task is not None
    assert task.original_func is send_receipt


def not_a_handler() -> None:
    """A plain function: callable, so it passes the type, but no route."""


class _PlainFunctionRoute:
    @hookimpl
    def register_routes(self, register: Registrar[Route]) -> None:
        register(not_a_handler)


def test_the_api_refuses_a_route_that_is_no_controller_or_handler() -> None:
    from engine.api.app import _plugin_handlers

    settings = settings_from_mapping({"plugins": {"enabled": ["plain"]}})
    plugins = build_plugins(settings, extra={"plain": _PlainFunctionRoute()})
    with pytest.raises(PluginError, match="expects a Litestar controller class or route handler"):
        _plugin_handlers(plugins)
    shipped = build_plugins(settings_from_mapping({}))
    assert len(_plugin_handlers(shipped)) == len(shipped.routes()) > 0


async def task_a() -> None:
    """Plugin a's task."""


async def task_b() -> None:
    """Plugin b's task."""


async def task_c() -> None:
    """Plugin c's task."""


class _TasksA:
    @hookimpl
    def register_tasks(self, register: Registrar[TaskFunction]) -> None:
        register(task_a)


class _TasksB:
    @hookimpl
    def register_tasks(self, register: Registrar[TaskFunction]) -> None:
        register(task_b)


class _TasksC:
    @hookimpl(tryfirst=True)
    def register_tasks(self, register: Registrar[TaskFunction]) -> None:
        register(task_c)


def test_tasks_are_collected_in_pluggys_order_each_named_after_its_plugin() -> None:
    settings = settings_from_mapping({"plugins": {"enabled": ["c", "a", "b"]}})
    plugins = build_plugins(settings, extra={"a": _TasksA(), "b": _TasksB(), "c": _TasksC()})
    assert [name for name, _ in plugins.tasks()] == ["c.task_c", "b.task_b", "a.task_a"]
