"""Plugin loading and the one typed door to the hooks.

``build_plugins(settings)`` discovers plugins through the ``marketplace.plugins``
entry point group, registers the essential engine plugins and the enabled ones,
checks every hook implementation against the specs, validates each plugin's
config section, and returns a ``Plugins`` facade. The rest of the engine calls
the facade, never ``pm.hook`` directly.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

import msgspec
import pluggy

from engine.core import hookspecs
from engine.core.contributions import (
    CliCommand,
    ConfigSection,
    DashboardPanel,
    PeriodicTask,
    PluginRuntime,
    Route,
    StartupFunction,
    TableApp,
    TaskFunction,
    WebhookRegistration,
)
from engine.core.errors import ConfigError, PluginError
from engine.core.mailboxes import default_mailbox_key, is_mailbox_key
from engine.core.money import Money
from engine.core.orders import Commission, LifecycleEvent, Order, PayoutFailure, SplitPlan
from engine.core.settings import Settings

__all__ = [
    "CORE_ACCOUNT_ROLES",
    "ENTRY_POINT_GROUP",
    "ESSENTIAL_PLUGINS",
    "PluginInfo",
    "Plugins",
    "build_plugins",
    "hookimpl",
    "installed_plugins",
]

ENTRY_POINT_GROUP = "marketplace.plugins"

CORE_ACCOUNT_ROLES: tuple[str, ...] = ("creator", "provider", "venue")
"""Connected-account roles the engine knows without any plugin."""

_ROLE = re.compile(r"[a-z][a-z0-9_]{0,31}")

# Registered whatever the config says: the engine's own defaults (trylast
# money hooks). Like pytest's essential plugins, they cannot be disabled.
ESSENTIAL_PLUGINS: tuple[str, ...] = ("engine_defaults",)

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin, as ``marketplace plugins`` lists it."""

    name: str
    target: str
    enabled: bool
    essential: bool
    hooks: tuple[str, ...]


def installed_plugins() -> dict[str, EntryPoint]:
    """Every plugin installed in this environment, by entry point name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load(name: str, entry_point: EntryPoint) -> object:
    try:
        return entry_point.load()
    except Exception as exc:
        raise PluginError(
            f"plugins.{name}", f"failed to import {entry_point.value}: {exc}"
        ) from exc


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


class Plugins:
    """Typed facade over the plugin manager: the engine's only caller of hooks."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        settings: Settings,
        configs: Mapping[str, Any],
        infos: Iterable[PluginInfo],
    ) -> None:
        self._pm = pm
        self.settings = settings
        self.runtime = PluginRuntime(settings, configs)
        self.infos: tuple[PluginInfo, ...] = tuple(infos)

    # ------------------------------------------------------------ money path

    def price(self, order: Order) -> Money:
        """What the customer pays for ``order`` (``resolve_price``)."""
        result: Money | None = self._pm.hook.resolve_price(order=order, runtime=self.runtime)
        if result is None:  # only possible if a plugin unregistered the defaults
            return order.amount
        if result.currency != order.amount.currency:
            raise PluginError("resolve_price", "returned an amount in another currency")
        return result

    def commission(self, order: Order, price: Money) -> Commission:
        """The platform's fee for a priced order (``resolve_commission``)."""
        result: Commission | None = self._pm.hook.resolve_commission(
            order=order, price=price, runtime=self.runtime
        )
        if result is None:
            raise PluginError("resolve_commission", "no implementation returned a commission")
        if result.amount.currency != price.currency or not (
            0 <= result.amount.amount <= price.amount
        ):
            raise PluginError(
                "resolve_commission",
                f"rule {result.rule_id} returned {result.amount} for a price of {price}",
            )
        return result

    def split(self, order: Order, price: Money, commission: Commission) -> SplitPlan:
        """How ``price`` divides among platform and beneficiaries (``resolve_split``)."""
        result: SplitPlan | None = self._pm.hook.resolve_split(
            order=order, price=price, commission=commission, runtime=self.runtime
        )
        if result is None:
            raise PluginError("resolve_split", f"no split for {order.plugin}/{order.kind}")
        if result.total != price:
            raise PluginError(
                "resolve_split", f"split total {result.total} is not the price {price}"
            )
        return result

    # ------------------------------------------------------------ webhook routing

    def mailbox_key(self, event: Mapping[str, Any]) -> str:
        """The mailbox ``event`` is queued in (``resolve_mailbox_key``).

        A key that does not fit ``MAILBOX_KEY_PATTERN`` is a plugin bug: it is
        logged as an error and the engine's default key is used, so the event
        is still accepted and processed.
        """
        key = self._pm.hook.resolve_mailbox_key(event=event, runtime=self.runtime)
        if is_mailbox_key(key):
            return str(key)
        log.error(
            "resolve_mailbox_key returned %r for %s; using the engine's default key",
            key,
            event.get("id"),
        )
        return default_mailbox_key(event)

    # ------------------------------------------------------------ movements

    def movement_meaning(self, stripe_object: Mapping[str, Any]) -> tuple[str, str]:
        """``(reference, plugin)`` of a movement no payment record names
        (``resolve_movement_meaning``); ``("", "")`` when no plugin says, or the
        one that answered failed (logged: the movement is posted all the same)."""
        try:
            found = self._pm.hook.resolve_movement_meaning(
                stripe_object=stripe_object, runtime=self.runtime
            )
        except Exception:
            log.exception("resolve_movement_meaning failed for %s", stripe_object.get("id"))
            return "", ""
        if found is None:
            return "", ""
        reference, plugin = found
        return str(reference or ""), str(plugin or "")

    # ------------------------------------------------------------ broadcasts

    def notify_lifecycle(self, event: LifecycleEvent) -> None:
        """Broadcast a lifecycle event; a failing plugin is logged, never raised."""
        self._broadcast("on_lifecycle_event", event=event)

    def notify_payout_failure(self, failure: PayoutFailure) -> None:
        """Broadcast a payout failure; a failing plugin is logged, never raised."""
        self._broadcast("on_payout_failure", failure=failure)

    def _broadcast(self, name: str, **kwargs: Any) -> None:
        # pluggy calls the implementations in its order (tryfirst, then the latest
        # registered, then trylast) inside every wrapper; each implementation was
        # isolated when the plugins loaded (``_isolate_broadcasts``), so one that
        # raises is logged and the others still run. A wrapper that raises is
        # logged here: a notification never breaks the money path.
        try:
            getattr(self._pm.hook, name)(runtime=self.runtime, **kwargs)
        except Exception:
            log.exception("a plugin's wrapper of %s failed", name)

    # ------------------------------------------------------------ contributions

    def _collect(self, hook_name: str, kind: type[T]) -> list[T]:
        collected: list[T] = []

        def register(item: T) -> None:
            if not isinstance(item, kind):
                raise PluginError(hook_name, f"register() expects {kind.__name__}, got {item!r}")
            collected.append(item)

        getattr(self._pm.hook, hook_name)(register=register)
        return collected

    def _collect_functions(self, hook_name: str, *, coroutine: bool) -> list[Callable[..., Any]]:
        collected: list[Callable[..., Any]] = []

        def register(item: Callable[..., Any]) -> None:
            if not callable(item) or (coroutine and not inspect.iscoroutinefunction(item)):
                wanted = "an async def" if coroutine else "a controller or route handler"
                raise PluginError(hook_name, f"register() expects {wanted}, got {item!r}")
            collected.append(item)

        getattr(self._pm.hook, hook_name)(register=register)
        return collected

    def table_apps(self) -> list[TableApp]:
        """Every enabled plugin's Piccolo app."""
        return self._collect("register_tables", TableApp)

    def routes(self) -> list[Route]:
        """Every enabled plugin's controllers and route handlers."""
        return self._collect_functions("register_routes", coroutine=False)

    def webhook_handlers(self) -> list[WebhookRegistration]:
        """Every enabled plugin's Stripe event handlers."""
        return self._collect("register_webhook_handlers", WebhookRegistration)

    def cli_commands(self) -> list[CliCommand]:
        """Every enabled plugin's CLI sub-commands."""
        return self._collect("register_cli_commands", CliCommand)

    def dashboard_panels(self) -> list[DashboardPanel]:
        """Every enabled plugin's dashboard panels."""
        return self._collect("register_dashboard_panels", DashboardPanel)

    def account_roles(self) -> frozenset[str]:
        """Roles connected accounts may have: the engine's and every enabled plugin's."""
        roles = set(CORE_ACCOUNT_ROLES)
        for role in self._collect("register_account_roles", str):
            if not _ROLE.fullmatch(role):
                raise PluginError("register_account_roles", f"bad role name {role!r}")
            roles.add(role)
        return frozenset(roles)

    def periodic_tasks(self) -> list[PeriodicTask]:
        """Every enabled plugin's scheduled work (``register_periodic_tasks``)."""
        return self._collect("register_periodic_tasks", PeriodicTask)

    def startup_functions(self) -> list[StartupFunction]:
        """Every enabled plugin's start-up coroutine functions (``register_startup``)."""
        return self._collect_functions("register_startup", coroutine=True)

    def tasks(self) -> list[tuple[str, TaskFunction]]:
        """Every enabled plugin's background task functions, as ``(task name, function)``.

        The name is ``<plugin>.<function name>``.
        """
        named: list[tuple[str, TaskFunction]] = []
        everyone = [plugin for _, plugin in self._pm.list_name_plugin()]
        # One pluggy call per plugin (its own wrappers apply), in pluggy's order,
        # so each task is named after the plugin that registered it.
        for impl in reversed(self._pm.hook.register_tasks.get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                continue
            others = [plugin for plugin in everyone if plugin is not impl.plugin]

            def register(task: TaskFunction, _plugin: str = impl.plugin_name) -> None:
                if not inspect.iscoroutinefunction(task):
                    raise PluginError(
                        f"plugins.{_plugin}",
                        f"register_tasks: register() expects an async def, got {task!r}",
                    )
                named.append((f"{_plugin}.{getattr(task, '__name__', 'task')}", task))

            self._pm.subset_hook_caller("register_tasks", remove_plugins=others)(register=register)
        return named

    def is_enabled(self, name: str) -> bool:
        """Whether plugin ``name`` is registered (essential or enabled)."""
        return self._pm.get_plugin(name) is not None


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, ...]:
    return tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))


def _synchronous_problem(impl: pluggy.HookImpl) -> str | None:
    """Why the engine cannot call ``impl`` as a hook, or ``None`` when it can."""
    function = impl.function
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return "is an async def; hooks are called synchronously, make it a plain def"
    if inspect.isgeneratorfunction(function) and not (impl.wrapper or impl.hookwrapper):
        return "is a generator; only a wrapper (wrapper=True) may yield"
    return None


def _check_synchronous(pm: pluggy.PluginManager) -> None:
    """Refuse an ``async def`` (or generator) hook implementation, naming plugin and hook.

    An ``async def resolve_*`` returns a coroutine, which is never ``None``, so
    it would win every first-result call with a value no caller can use; an
    ``async def on_*`` or ``register_*`` would never run its body. Either is a
    plugin bug that must stop start-up, not misbehave at the first payment.
    """
    for caller in pm.hook.__dict__.values():
        if not isinstance(caller, pluggy.HookCaller):
            continue
        for impl in caller.get_hookimpls():
            problem = _synchronous_problem(impl)
            if problem is not None:
                raise PluginError(f"plugins.{impl.plugin_name}", f"{caller.name} {problem}")


def _isolated(impl: pluggy.HookImpl, hook_name: str) -> Callable[..., Any]:
    function = impl.function

    @functools.wraps(function)
    def isolated(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception:
            # Broadcasts must never break the money path (see hookspecs).
            log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)
            return None

    return isolated


def _isolate_broadcasts(pm: pluggy.PluginManager) -> None:
    """Make each ``on_*`` implementation log its failure instead of raising.

    pluggy stops a hook call at the first implementation that raises, so the
    ones after it would miss the notification. Wrapping each (non-wrapper)
    implementation where pluggy keeps it leaves the call itself to pluggy:
    its order (``tryfirst``/``trylast``) and its wrappers still apply.
    """
    for caller in pm.hook.__dict__.values():
        if not isinstance(caller, pluggy.HookCaller) or not caller.name.startswith("on_"):
            continue
        for impl in caller.get_hookimpls():
            if not (impl.wrapper or impl.hookwrapper):
                # HookImpl.function is Final to type checkers only; pluggy reads it
                # at every call, which is what makes the wrapping take effect.
                setattr(impl, "function", _isolated(impl, caller.name))  # noqa: B010


def _validate_sections(
    pm: pluggy.PluginManager, settings: Settings, enabled: Iterable[str]
) -> dict[str, Any]:
    schemas: dict[str, type[Any]] = {}

    def register(section: ConfigSection) -> None:
        schemas[section.plugin] = section.schema

    pm.hook.register_config_schema(register=register)
    configs: dict[str, Any] = {}
    for name in enabled:
        raw = settings.plugins.sections.get(name, {})
        schema = schemas.get(name)
        if schema is None:
            if raw:
                raise ConfigError(f"plugins.{name}", "this plugin takes no configuration")
            configs[name] = None
            continue
        try:
            configs[name] = msgspec.convert(raw, schema, strict=False)
        except msgspec.ValidationError as exc:
            message = str(exc)
            key, _, problem = _split_path(message)
            raise ConfigError(f"plugins.{name}{key}", problem) from None
    return configs


def _split_path(message: str) -> tuple[str, str, str]:
    marker = " - at `$"
    if marker not in message:
        return "", "", message
    problem, _, path = message.partition(marker)
    path = path.rstrip("`")
    if problem.startswith("Object contains unknown field `"):
        field = problem.split("`")[1]
        return f"{path}.{field}", "", "unknown key"
    return path, "", problem


def build_plugins(
    settings: Settings,
    *,
    extra: Mapping[str, object] | None = None,
    available: Mapping[str, EntryPoint] | None = None,
) -> Plugins:
    """Build the plugin facade from settings.

    Args:
        settings: validated settings; ``plugins.enabled`` lists what to activate.
        extra: plugins given as objects (tests, the test kit), by name; they are
            available like installed ones and still need enabling in settings.
        available: installed entry points (defaults to the environment's).

    Raises:
        ConfigError: an enabled plugin that is not installed, a config section
            for an unknown plugin, or a bad plugin config value (names the key).
        PluginError: a plugin that fails to import, implements an unknown hook,
            or implements a hook with an ``async def`` or a generator (naming the
            plugin and the hook).
    """
    entry_points_by_name = dict(installed_plugins() if available is None else available)
    extra = dict(extra or {})
    known = set(entry_points_by_name) | set(extra)
    for index, name in enumerate(settings.plugins.enabled):
        if name not in known:
            raise ConfigError(
                f"plugins.enabled[{index}]",
                f"unknown plugin {name!r} (installed: {', '.join(sorted(known)) or 'none'})",
            )
    for name in settings.plugins.sections:
        if name not in known:
            raise ConfigError(f"plugins.{name}", f"unknown plugin {name!r}")

    pm = _new_manager()
    active = [
        *ESSENTIAL_PLUGINS,
        *(n for n in settings.plugins.enabled if n not in ESSENTIAL_PLUGINS),
    ]
    for name in active:
        plugin = extra[name] if name in extra else _load(name, entry_points_by_name[name])
        pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugins.{exc.plugin}", str(exc)) from exc
    _check_synchronous(pm)
    _isolate_broadcasts(pm)

    configs = _validate_sections(pm, settings, active)
    infos = []
    for name in sorted(known):
        plugin = pm.get_plugin(name)
        target = (
            entry_points_by_name[name].value if name in entry_points_by_name else repr(extra[name])
        )
        infos.append(
            PluginInfo(
                name=name,
                target=target,
                enabled=plugin is not None,
                essential=name in ESSENTIAL_PLUGINS,
                hooks=_hooks_of(pm, plugin) if plugin is not None else (),
            )
        )
    return Plugins(pm, settings, configs, infos)


def describe_hooks(target: object) -> tuple[str, ...]:
    """Names of the hooks a plugin object implements (for disabled plugins' listings)."""
    pm = _new_manager()
    pm.register(target, name="probe")
    return _hooks_of(pm, target)
