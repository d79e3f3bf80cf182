"""The conformance check: the properties every plugin must keep, checked from the outside.

``await check_plugin(name, database_url=...)`` loads the plugin (from its entry
point, or the object you pass), and checks, each as a named property:

- ``hooks are well-formed``: pluggy registers it, ``check_pending()`` passes (no
  misspelled hook), every hook implementation is a plain ``def`` (an ``async
  def`` first-result hook returns a coroutine, which always "wins"), and no
  function named like a hook lacks ``@hookimpl``.
- ``contributions are well-formed``: the config schema has a default for every
  field; tables are Piccolo tables named ``<plugin>_...``; webhook handlers and
  tasks are ``async def``; handler names start with ``<plugin>.``.
- ``prices stay in the order's currency`` / ``commissions stay within the
  price`` (when the plugin prices or takes a commission) and ``splits sum to
  the price``: hypothesis draws orders (amounts in 0-, 2- and 3-decimal
  currencies, every commission from zero to the whole price) and checks that
  each split's legs sum exactly to the price, in its currency, pay only the
  order's beneficiaries and are deterministic.
- ``tables migrate up``: on a new database the plugin's app migrates, every
  table exists, and migrating again changes nothing.
- ``webhook handlers are idempotent``: on that database, inside one
  transaction that is rolled back, each sample event is handled, the state
  (the plugin's tables, the ledger, payments and transfers) is snapshotted,
  the same event is handled again, and the two snapshots must be equal.

A plugin describes its orders and sample events with a ``conformance()``
function in a ``conformance`` module next to its hooks module, returning a
``ConformanceSpec`` (see ``docs/plugins.md``). Without one the check draws
generic orders and builds one sample event per handled type from Stripe's
example objects.

Each property is ``passed``, ``failed``, ``not applicable`` (nothing to check:
the plugin does not implement ``resolve_price``, contributes no tables, handles
no webhooks) or ``not checked`` (it applies but this run could not check it: no
database given, or the tables it needs did not migrate). A property that was
not checked is never reported, counted or summarised as passed.

The database checks need a PostgreSQL server (``database_url``: any database
the role may create databases from); without one they are not checked.
"""

from __future__ import annotations

import contextlib
import inspect
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import import_module
from types import ModuleType
from typing import Any

import asyncpg
import msgspec
import pluggy
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from engine.core import hookspecs
from engine.core.contributions import ConfigSection, TableApp, WebhookRegistration
from engine.core.errors import ConfigError
from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitPlan
from engine.core.plugins import Plugins, build_plugins, installed_plugins
from engine.core.settings import Settings, settings_from_mapping
from engine.testing.events import stripe_event
from engine.testing.strategies import orders as order_strategy

__all__ = [
    "COMMISSION",
    "CONTRIBUTIONS",
    "FAILED",
    "IDEMPOTENT",
    "NOT_APPLICABLE",
    "NOT_CHECKED",
    "PASSED",
    "PRICE",
    "PROPERTIES",
    "SPLIT",
    "TABLES",
    "WELL_FORMED",
    "CheckResult",
    "ConformanceError",
    "ConformanceReport",
    "ConformanceSpec",
    "EventSamples",
    "SampleContext",
    "check_plugin",
    "default_samples",
    "find_spec",
    "load_plugin",
]

WELL_FORMED = "hooks are well-formed"
CONTRIBUTIONS = "contributions are well-formed"
PRICE = "prices stay in the order's currency"
COMMISSION = "commissions stay within the price"
SPLIT = "splits sum to the price"
TABLES = "tables migrate up"
IDEMPOTENT = "webhook handlers are idempotent"
PROPERTIES = (WELL_FORMED, CONTRIBUTIONS, PRICE, COMMISSION, SPLIT, TABLES, IDEMPOTENT)
"""Every property, in the order the check reports them."""

PASSED = "passed"
FAILED = "failed"
NOT_APPLICABLE = "not applicable"
"""Nothing to check: the plugin does not contribute what the property is about."""
NOT_CHECKED = "not checked"
"""The property applies but this run could not check it (no database, a failed prerequisite)."""
STATUSES = (PASSED, FAILED, NOT_APPLICABLE, NOT_CHECKED)

# Sub-commands the engine itself defines; a plugin's command must not shadow one
# (tests/contract/test_conformance.py checks this against the CLI's parser).
_ENGINE_COMMANDS = frozenset(
    {
        "up",
        "serve",
        "migrate",
        "plugins",
        "worker",
        "replay",
        "stripe-setup-webhooks",
        "sandbox",
        "reconcile",
        "payouts",
        "new-plugin",
        "conformance",
    }
)
_AUDIENCES = frozenset({"account", "admin"})
_ENGINE_STATE_QUERIES = {
    "ledger": "SELECT t.idempotency_key, e.account, e.amount, e.currency "
    "FROM marketplace_ledger_entries e "
    "JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction",
    "marketplace_payments": "SELECT * FROM marketplace_payments",
    "marketplace_transfers": "SELECT * FROM marketplace_transfers",
    "marketplace_refunds": "SELECT * FROM marketplace_refunds",
}


# ---------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True)
class SampleContext:
    """What a plugin's sample-event function gets to prepare its samples.

    Attributes:
        plugin: the plugin's name.
        services: the engine's services on the check's database, with the gateway
            pointed at the check's sandbox.
        conn: the transaction the handlers will run in (write set-up rows here;
            everything is rolled back afterwards).
        stripe: the real SDK (``stripe.StripeClient``) against that sandbox, to
            create the Stripe objects the samples refer to.
    """

    plugin: str
    services: Any
    conn: asyncpg.Connection
    stripe: Any


EventSamples = Callable[[SampleContext], Awaitable[Sequence[Mapping[str, Any]]]]
"""``async def samples(ctx) -> [event, ...]``: Stripe events for the idempotency check."""


@dataclass(frozen=True, slots=True)
class ConformanceSpec:
    """What a plugin tells the check about itself (all optional).

    Attributes:
        orders: a hypothesis strategy of the plugin's orders, usually
            ``engine.testing.strategies.orders(...)`` with its kinds and roles.
        config: the plugin's config section for the check (default: its defaults).
        events: ``async def samples(ctx: SampleContext) -> list[event]``, the
            events its webhook handlers are checked with (build them with
            ``engine.testing.events.stripe_event``).
        max_examples: hypothesis examples per money property.
    """

    orders: st.SearchStrategy[Order] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    events: EventSamples | None = None
    max_examples: int = 200


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one property (``passed``, ``failed``, ``not applicable``,
    ``not checked``) and why."""

    name: str
    status: str
    details: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """Whether the property broke."""
        return self.status == FAILED


@dataclass(frozen=True, slots=True)
class ConformanceReport:
    """Every property's result for one plugin."""

    plugin: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """Whether no property broke; see ``complete`` for whether every one was checked."""
        return not self.failures

    @property
    def complete(self) -> bool:
        """Whether every property that applies was checked (none is ``not checked``)."""
        return not self.not_checked

    @property
    def passed(self) -> tuple[CheckResult, ...]:
        """The properties that were checked and held."""
        return self._with(PASSED)

    @property
    def not_checked(self) -> tuple[CheckResult, ...]:
        """The properties that apply but were not checked: never count them as passed."""
        return self._with(NOT_CHECKED)

    def _with(self, status: str) -> tuple[CheckResult, ...]:
        return tuple(result for result in self.results if result.status == status)

    def summary(self) -> str:
        """``"4 passed, 0 failed, 1 not applicable, 2 not checked"``."""
        return ", ".join(f"{len(self._with(status))} {status}" for status in STATUSES)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The properties that broke."""
        return tuple(result for result in self.results if result.failed)

    def result(self, name: str) -> CheckResult:
        """The result of the property called ``name``."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def text(self) -> str:
        """One line per property, with details and warnings indented under it."""
        lines = [f"conformance of {self.plugin}:"]
        for result in self.results:
            lines.append(f"  {result.status.upper():<14} {result.name}")
            lines.extend(f"                 {detail}" for detail in result.details)
            lines.extend(f"                 warning: {warning}" for warning in result.warnings)
        lines.append(self.summary())
        if self.not_checked:
            names = ", ".join(result.name for result in self.not_checked)
            lines.append(f"NOT CHECKED (not passed): {names}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise ``ConformanceError`` naming every broken property."""
        if self.failures:
            raise ConformanceError(self)


class ConformanceError(AssertionError):
    """A plugin broke at least one conformance property; the message names each."""

    def __init__(self, report: ConformanceReport) -> None:
        broken = "; ".join(
            f"{result.name!r}: {' | '.join(result.details) or 'failed'}"
            for result in report.failures
        )
        super().__init__(f"{report.plugin} broke {len(report.failures)} property(ies): {broken}")
        self.report = report


# ---------------------------------------------------------------- loading


def load_plugin(name: str) -> object:
    """The installed plugin ``name`` (its entry point's object).

    Raises:
        ConfigError: no plugin of that name is installed.
    """
    installed = installed_plugins()
    if name not in installed:
        known = ", ".join(sorted(installed)) or "none"
        raise ConfigError("plugin", f"no installed plugin {name!r} (installed: {known})")
    loaded: object = installed[name].load()
    return loaded


def _module_of(plugin: object) -> str:
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return type(plugin).__module__


def find_spec(plugin: object) -> ConformanceSpec:
    """The plugin's declared ``ConformanceSpec``, or the defaults.

    Looked up as a ``conformance`` attribute of the plugin object (a function
    returning the spec), else ``conformance()`` in the module ``conformance``
    beside the plugin's module (``course_sales.hooks`` -> ``course_sales.conformance``).
    """
    declared = getattr(plugin, "conformance", None)
    if callable(declared):
        return _as_spec(declared())
    package = _module_of(plugin).rpartition(".")[0]
    if package:
        module_name = f"{package}.conformance"
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
        else:
            function = getattr(module, "conformance", None)
            if callable(function):
                return _as_spec(function())
    return ConformanceSpec()


def _as_spec(value: object) -> ConformanceSpec:
    if not isinstance(value, ConformanceSpec):
        raise TypeError(f"conformance() must return a ConformanceSpec, not {value!r}")
    return value


# ---------------------------------------------------------------- hooks


def _hook_names() -> list[str]:
    return sorted(
        name
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, f"{hookspecs.PROJECT}_spec")
    )


def _is_async(function: object) -> bool:
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - async callable objects count too
    return inspect.iscoroutinefunction(call)


def _check_hooks(name: str, plugin: object) -> tuple[CheckResult, pluggy.PluginManager | None]:
    problems: list[str] = []
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        return CheckResult(WELL_FORMED, FAILED, (f"pluggy refused to register it: {exc}",)), None
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        problems.append(f"implements a hook the engine does not have: {exc}")
    for caller in pm.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if _is_async(impl.function):
                problems.append(
                    f"{caller.name} is async: hooks are called synchronously (a coroutine "
                    "is never None, so an async first-result hook always wins); do async "
                    "work in a task or webhook handler"
                )
            elif inspect.isgeneratorfunction(impl.function) and not (
                impl.hookwrapper or impl.wrapper
            ):
                problems.append(f"{caller.name} is a generator function, not a hook")
    for hook in _hook_names():
        candidate = getattr(plugin, hook, None)
        if callable(candidate) and pm.parse_hookimpl_opts(plugin, hook) is None:
            problems.append(f"{hook} is defined without @hookimpl, so it is never called")
    status = FAILED if problems else PASSED
    return CheckResult(WELL_FORMED, status, tuple(problems)), pm


# ---------------------------------------------------------------- contributions


def _config_problems(name: str, pm: pluggy.PluginManager) -> list[str]:
    sections: list[ConfigSection] = []
    pm.hook.register_config_schema(register=sections.append)
    problems: list[str] = []
    for section in sections:
        if not isinstance(section, ConfigSection):
            problems.append(f"register_config_schema registered {section!r}, not a ConfigSection")
            continue
        if section.plugin != name:
            problems.append(
                f"config section is registered for {section.plugin!r}; it must be the "
                f"plugin's own name {name!r} ([plugins.{name}])"
            )
        schema = section.schema
        if not (isinstance(schema, type) and issubclass(schema, msgspec.Struct)):
            problems.append(f"config schema {schema!r} is not a msgspec.Struct")
            continue
        try:
            msgspec.convert({}, schema)
        except (msgspec.ValidationError, ConfigError) as exc:
            problems.append(
                f"config schema {schema.__name__} needs a default for every field: {exc}"
            )
    return problems


def _route_paths(item: object) -> list[str]:
    from litestar import Controller, Router
    from litestar.handlers import BaseRouteHandler

    if isinstance(item, type) and issubclass(item, Controller):
        return [str(getattr(item, "path", "/"))]
    if isinstance(item, Router):
        return [str(item.path)]
    if isinstance(item, BaseRouteHandler):
        return sorted(str(path) for path in item.paths)
    raise TypeError(f"{item!r} is not a Litestar controller, router or route handler")


def _table_problems(name: str, apps: Sequence[TableApp]) -> list[str]:
    from piccolo.table import Table

    problems: list[str] = []
    for app in apps:
        if app.plugin != name:
            problems.append(f"TableApp.plugin is {app.plugin!r}, not {name!r}")
        classes = getattr(app.app_config, "table_classes", None)
        if not classes:
            problems.append(f"the Piccolo app of {app.plugin!r} declares no table_classes")
            continue
        for table in classes:
            if not (isinstance(table, type) and issubclass(table, Table)):
                problems.append(f"{table!r} is not a Piccolo Table")
                continue
            tablename = table._meta.tablename
            if not tablename.startswith(f"{name}_"):
                problems.append(f"table {tablename!r} is not prefixed with {name + '_'!r}")
    return problems


def _check_contributions(name: str, pm: pluggy.PluginManager, plugins: Plugins) -> CheckResult:
    problems = _config_problems(name, pm)
    warnings: list[str] = []
    problems += _table_problems(name, plugins.table_apps())
    for item in plugins.routes():
        try:
            paths = _route_paths(item)
        except TypeError as exc:
            problems.append(str(exc))
            continue
        for path in paths:
            if not path.startswith(f"/v1/{name}"):
                warnings.append(f"route {path!r} is not under /v1/{name}/ (the convention)")
    for registration in plugins.webhook_handlers():
        if not registration.name.startswith(f"{name}."):
            problems.append(
                f"webhook handler name {registration.name!r} must start with {name + '.'!r} "
                "(the worker finds the handler's config by it)"
            )
        if not registration.event_type:
            problems.append(f"webhook handler {registration.name!r} names no event type")
        if not _is_async(registration.handler):
            problems.append(f"webhook handler {registration.name!r} must be an async def")
    for task_name, task in plugins.tasks():
        if not _is_async(task):
            problems.append(f"task {task_name!r} must be an async def")
    for periodic in plugins.periodic_tasks():
        if not _is_async(periodic.run):
            problems.append(f"periodic task {periodic.name!r} must be an async def")
    for start in plugins.startup_functions():
        if not _is_async(start):
            problems.append(f"start-up function {start!r} must be an async def")
    for command in plugins.cli_commands():
        if command.name in _ENGINE_COMMANDS:
            problems.append(f"CLI command {command.name!r} shadows the engine's own")
    for panel in plugins.dashboard_panels():
        if panel.audience not in _AUDIENCES:
            problems.append(f"dashboard panel {panel.name!r}: audience must be account or admin")
        if not _is_async(panel.render):
            problems.append(f"dashboard panel {panel.name!r}: render must be an async def")
    status = FAILED if problems else PASSED
    return CheckResult(CONTRIBUTIONS, status, tuple(problems), tuple(warnings))


# ---------------------------------------------------------------- money properties


class _Violation(Exception):
    """A property broke for one drawn example (hypothesis shrinks it)."""


def _describe(order: Order) -> str:
    roles = ", ".join(f"{role}={account}" for role, account in order.beneficiaries.items())
    attributes = dict(order.attributes)
    return (
        f"order(kind={order.kind!r}, amount={order.amount.amount} {order.amount.currency}, "
        f"beneficiaries={{{roles}}}, attributes={attributes})"
    )


def _run_property(
    name: str, strategy: st.SearchStrategy[Any], body: Callable[[Any], str | None], examples: int
) -> CheckResult:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        verbosity=Verbosity.quiet,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )
    @given(strategy)
    def check(case: Any) -> None:
        problem = body(case)
        if problem is not None:
            raise _Violation(problem)

    try:
        check()
    except _Violation as exc:
        return CheckResult(name, FAILED, (str(exc),))
    except Exception as exc:  # hypothesis' own errors (flaky, unsatisfiable ...)
        return CheckResult(name, FAILED, (f"{type(exc).__name__}: {exc}",))
    return CheckResult(name, PASSED)


def _price_property(plugins: Plugins) -> Callable[[Order], str | None]:
    def body(order: Order) -> str | None:
        try:
            price = plugins.price(order)
            again = plugins.price(order)
        except Exception as exc:
            return f"resolve_price raised {type(exc).__name__}: {exc} for {_describe(order)}"
        if price.amount < 0:
            return f"resolve_price returned a negative price {price} for {_describe(order)}"
        if price != again:
            return (
                f"resolve_price is not deterministic ({price} then {again}) for {_describe(order)}"
            )
        return None

    return body


def _commission_property(plugins: Plugins) -> Callable[[Order], str | None]:
    def body(order: Order) -> str | None:
        try:
            price = plugins.price(order)
            commission = plugins.commission(order, price)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc} for {_describe(order)}"
        if commission.amount.currency != price.currency:
            return f"commission {commission.amount} is not in the price's currency"
        return None

    return body


_CommissionCase = tuple[Order, str, int]


def _commission_for(price: Money, how: str, pick: int) -> Commission:
    if how == "zero":
        amount = 0
    elif how == "all":
        amount = price.amount
    elif how == "bps":
        amount = price.amount * (pick % 10_001) // 10_000
    else:
        amount = pick % (price.amount + 1)
    return Commission(Money(amount, price.currency), rule_id="conformance", rate_bps=Decimal(0))


def _plan_of(
    pm: pluggy.PluginManager, plugins: Plugins, order: Order, price: Money, commission: Commission
) -> SplitPlan:
    """The plugin's own plan, or the engine default's when the plugin defers."""
    plan: SplitPlan | None = pm.hook.resolve_split(
        order=order, price=price, commission=commission, runtime=plugins.runtime
    )
    return plugins.split(order, price, commission) if plan is None else plan


def _split_property(
    pm: pluggy.PluginManager, plugins: Plugins
) -> Callable[[_CommissionCase], str | None]:
    def body(case: _CommissionCase) -> str | None:
        order, how, pick = case
        try:
            price = plugins.price(order)
        except Exception as exc:
            return f"resolve_price raised {type(exc).__name__}: {exc} for {_describe(order)}"
        commission = _commission_for(price, how, pick)
        where = (
            f"for {_describe(order)}, price {price.amount}, commission {commission.amount.amount}"
        )
        try:
            plan = _plan_of(pm, plugins, order, price, commission)
        except Exception as exc:
            return f"resolve_split raised {type(exc).__name__}: {exc} {where}"
        leg_sum = sum(leg.amount.amount for leg in plan.legs)
        if leg_sum != price.amount or plan.total != price:
            gap = price.amount - leg_sum
            lost = f"loses {gap}" if gap > 0 else f"creates {-gap}"
            return (
                f"split legs sum to {leg_sum}, not the price {price.amount} "
                f"(the split {lost} minor unit(s)) {where}"
            )
        if any(leg.amount.currency != price.currency for leg in plan.legs):
            return f"a split leg is not in {price.currency} {where}"
        accounts = set(order.beneficiaries.values())
        strangers = [leg for leg in plan.legs if leg.account_id and leg.account_id not in accounts]
        if strangers:
            return f"split pays {strangers[0].account_id}, not a beneficiary of the order, {where}"
        try:
            again = _plan_of(pm, plugins, order, price, commission)
        except Exception as exc:
            return f"resolve_split failed on the second call: {exc} {where}"
        if again != plan:
            return f"resolve_split is not deterministic {where}"
        return None

    return body


def _money_checks(
    pm: pluggy.PluginManager,
    plugin: object,
    plugins: Plugins,
    orders: st.SearchStrategy[Order],
    examples: int,
) -> list[CheckResult]:
    implemented = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
    results: list[CheckResult] = []
    if "resolve_price" in implemented:
        results.append(_run_property(PRICE, orders, _price_property(plugins), examples))
    else:
        reason = ("the plugin does not implement resolve_price",)
        results.append(CheckResult(PRICE, NOT_APPLICABLE, reason))
    if "resolve_commission" in implemented:
        results.append(_run_property(COMMISSION, orders, _commission_property(plugins), examples))
    else:
        reason = ("the plugin does not implement resolve_commission",)
        results.append(CheckResult(COMMISSION, NOT_APPLICABLE, reason))
    cases = st.tuples(
        orders,
        st.sampled_from(["any", "bps", "zero", "all"]),
        st.integers(0, 2**62),
    )
    results.append(_run_property(SPLIT, cases, _split_property(pm, plugins), examples))
    return results


# ---------------------------------------------------------------- database properties


def _table_names(apps: Sequence[TableApp]) -> list[str]:
    from piccolo.table import Table

    names: list[str] = []
    for app in apps:
        for table in getattr(app.app_config, "table_classes", None) or ():
            if isinstance(table, type) and issubclass(table, Table):
                names.append(table._meta.tablename)
    return names


async def _check_tables(url: str, apps: Sequence[TableApp]) -> CheckResult:
    from engine.core.db import migrate

    if not apps:
        return CheckResult(TABLES, NOT_APPLICABLE, ("the plugin contributes no tables",))
    try:
        await migrate(url, apps)
    except Exception as exc:
        return CheckResult(TABLES, FAILED, (f"migrating up failed: {type(exc).__name__}: {exc}",))
    problems: list[str] = []
    conn = await asyncpg.connect(url)
    try:
        for table in _table_names(apps):
            if await conn.fetchval("SELECT to_regclass($1)", table) is None:
                problems.append(f"table {table} does not exist after migrating")
    finally:
        await conn.close()
    again = await migrate(url, apps)
    if again:
        problems.append(f"migrating a second time ran {', '.join(again)} again")
    return CheckResult(TABLES, FAILED if problems else PASSED, tuple(problems))


def _object_type(event_type: str) -> str:
    parts = event_type.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def default_samples(registrations: Sequence[WebhookRegistration]) -> list[dict[str, Any]]:
    """One event per handled type, its object built from Stripe's example of that type."""
    from engine.sandbox.objects import template

    events: list[dict[str, Any]] = []
    types = dict.fromkeys(
        "payment_intent.succeeded" if r.event_type == "*" else r.event_type for r in registrations
    )
    for event_type in types:
        kind = _object_type(event_type)
        try:
            obj: dict[str, Any] = dict(template(kind))
        except KeyError:
            obj = {"object": kind, "metadata": {}}
        obj["id"] = f"{kind[:8]}_conformance_{secrets.token_hex(6)}"
        events.append(stripe_event(event_type, obj))
    return events


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def _snapshot(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, list[str]]:
    state: dict[str, list[str]] = {}
    queries = {table: f"SELECT * FROM {_quote(table)}" for table in tables}  # noqa: S608 - quoted names of the plugin's own tables
    for name, query in {**queries, **_ENGINE_STATE_QUERIES}.items():
        rows = await conn.fetch(query)
        state[name] = sorted(repr(sorted(dict(row).items())) for row in rows)
    return state


def _differences(first: Mapping[str, list[str]], second: Mapping[str, list[str]]) -> list[str]:
    found: list[str] = []
    for table, rows in first.items():
        again = second.get(table, [])
        if rows == again:
            continue
        if len(rows) != len(again):
            found.append(
                f"{table} had {len(rows)} row(s) after the first delivery, "
                f"{len(again)} after the second"
            )
            continue
        changed = next(
            (before, after) for before, after in zip(rows, again, strict=True) if before != after
        )
        found.append(
            f"{table} changed on the second delivery: {changed[0][:200]} -> {changed[1][:200]}"
        )
    return found


async def _apply(
    handlers: Sequence[WebhookRegistration],
    event: Mapping[str, Any],
    conn: asyncpg.Connection,
    services: Any,
) -> str | None:
    from engine.worker.dispatch import EventContext

    for registration in handlers:
        plugin = registration.name.split(".", 1)[0]
        try:
            async with conn.transaction():  # a savepoint: a failure leaves the outer one usable
                await registration.handler(event, EventContext(services, conn, plugin))
        except Exception as exc:
            return f"{registration.name} raised {type(exc).__name__}: {exc}"
    return None


async def _check_events(
    name: str,
    *,
    services: Any,
    registrations: Sequence[WebhookRegistration],
    spec: ConformanceSpec,
    stripe: Any,
    tables: Sequence[str],
) -> CheckResult:
    from engine.worker.handlers import core_fallbacks, core_registrations

    problems: list[str] = []
    core = core_registrations()
    fallbacks = core_fallbacks()
    async with services.db.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            context = SampleContext(name, services, conn, stripe)
            try:
                events = (
                    list(await spec.events(context))
                    if spec.events
                    else default_samples(registrations)
                )
            except Exception as exc:
                detail = f"the sample-event function raised {type(exc).__name__}: {exc}"
                return CheckResult(IDEMPOTENT, FAILED, (detail,))
            if not events:
                return CheckResult(
                    IDEMPOTENT, FAILED, ("the sample event function returned no events",)
                )
            for event in events:
                event_type = str(event.get("type", ""))
                own = [r for r in registrations if r.event_type in (event_type, "*")]
                if not own:
                    problems.append(
                        f"no handler of {name} handles the sample event type {event_type!r}"
                    )
                    continue
                handlers = [
                    *(r for r in core if r.event_type == event_type),
                    *own,
                    *(r for r in fallbacks if r.event_type == event_type),
                ]
                label = f"{event_type} {event.get('id')}"
                failure = await _apply(handlers, event, conn, services)
                if failure is not None:
                    problems.append(f"on the first delivery of {label}: {failure}")
                    continue
                first = await _snapshot(conn, tables)
                failure = await _apply(handlers, event, conn, services)
                if failure is not None:
                    problems.append(f"the repeat delivery of {label} failed: {failure}")
                    continue
                changed = _differences(first, await _snapshot(conn, tables))
                if changed:
                    who = ", ".join(r.name for r in own)
                    problems.append(
                        f"handling {label} twice ({who}) is not idempotent: " + "; ".join(changed)
                    )
        finally:
            await transaction.rollback()
    return CheckResult(IDEMPOTENT, FAILED if problems else PASSED, tuple(problems))


def _check_settings(name: str, database_url: str, api_base: str, spec: ConformanceSpec) -> Settings:
    plugins: dict[str, Any] = {"enabled": [name]}
    if spec.config:
        plugins[name] = dict(spec.config)
    return settings_from_mapping(
        {
            "database": {"url": database_url, "pool_min": 1, "pool_max": 4},
            "stripe": {
                "secret_key": "sk_test_conformance",
                "api_base": api_base,
                "max_network_retries": 0,
            },
            "plugins": plugins,
        }
    )


@contextlib.contextmanager
def _sandbox(needed: bool) -> Iterator[Any]:
    if not needed:
        yield None
        return
    from engine.sandbox.testing import running_sandbox

    with running_sandbox() as sandbox:
        yield sandbox


async def _database_checks(
    name: str, plugin: object, spec: ConformanceSpec, plugins: Plugins, server_url: str
) -> list[CheckResult]:
    from engine.services import Services
    from engine.testing.infra import Databases

    apps = plugins.table_apps()
    registrations = plugins.webhook_handlers()
    databases = Databases(server_url)
    try:
        url = await databases.fresh(migrated=False)
        results = [await _check_tables(url, apps)]
        if results[0].failed:
            reason = ("the tables did not migrate",)
            return [*results, CheckResult(IDEMPOTENT, NOT_CHECKED, reason)]
        if not registrations:
            reason = ("the plugin handles no webhooks",)
            return [*results, CheckResult(IDEMPOTENT, NOT_APPLICABLE, reason)]
        with _sandbox(True) as sandbox:
            settings_ = _check_settings(name, url, sandbox.url, spec)
            facade = build_plugins(settings_, extra={name: plugin})
            services = await Services.start(settings_, plugins=facade, connect_nats=False)
            try:
                results.append(
                    await _check_events(
                        name,
                        services=services,
                        registrations=facade.webhook_handlers(),
                        spec=spec,
                        stripe=sandbox.client(),
                        tables=_table_names(apps),
                    )
                )
            finally:
                await services.close()
        return results
    finally:
        await databases.close()


# ---------------------------------------------------------------- entry point


def _unchecked_rest(name: str, results: list[CheckResult], reason: str) -> ConformanceReport:
    """The report when the check stops early: every property not reached is ``not checked``."""
    done = {result.name for result in results}
    rest = [CheckResult(p, NOT_CHECKED, (reason,)) for p in PROPERTIES if p not in done]
    return ConformanceReport(name, (*results, *rest))


async def check_plugin(
    name: str,
    plugin: object | None = None,
    *,
    spec: ConformanceSpec | None = None,
    database_url: str | None = None,
    max_examples: int | None = None,
) -> ConformanceReport:
    """Check every conformance property of plugin ``name``.

    Args:
        name: the plugin's name (entry point, config section, table prefix).
        plugin: the plugin object (a hooks module or an instance); default: the
            installed entry point ``name``.
        spec: what to check it with; default: ``find_spec(plugin)``.
        database_url: a PostgreSQL database URL on a server where the role may
            create databases (one is created and dropped); without it the
            database properties are ``not checked``.
        max_examples: hypothesis examples per money property (overrides the spec).

    Returns:
        The report; ``report.raise_for_failures()`` turns broken properties into
        an ``AssertionError`` that names each, and ``report.complete`` says
        whether every property that applies was checked.
    """
    plugin = load_plugin(name) if plugin is None else plugin
    spec = find_spec(plugin) if spec is None else spec
    examples = max_examples or spec.max_examples
    well_formed, pm = _check_hooks(name, plugin)
    results = [well_formed]
    if pm is None or well_formed.failed:
        return _unchecked_rest(name, results, "the hooks are not well-formed")
    try:
        plugins = build_plugins(_check_settings(name, "", "", spec), extra={name: plugin})
    except ConfigError as exc:
        results.append(CheckResult(CONTRIBUTIONS, FAILED, (f"{exc.key}: {exc.problem}",)))
        return _unchecked_rest(name, results, "the plugin does not load")
    results.append(_check_contributions(name, pm, plugins))
    orders = spec.orders if spec.orders is not None else order_strategy(name)
    results += _money_checks(pm, plugin, plugins, orders, examples)
    if database_url is None:
        reason = ("no database given (pass database_url)",)
        results += [
            CheckResult(TABLES, NOT_CHECKED, reason),
            CheckResult(IDEMPOTENT, NOT_CHECKED, reason),
        ]
    else:
        results += await _database_checks(name, plugin, spec, plugins, database_url)
    return ConformanceReport(name, tuple(results))
