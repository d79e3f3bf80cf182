"""Every hook a marketplace plugin can implement, documented for plugin authors.

Hook names say how results combine:

- ``resolve_*`` is *first result*: the first implementation returning something
  other than ``None`` wins; the engine ships ``trylast`` defaults so an install
  without a plugin still works. Keep these synchronous and pure (an ``async def``
  returns a coroutine, which is never ``None``, and would always win); the
  engine refuses to load an ``async def`` or generator implementation of any hook.
- ``on_*`` is *broadcast*: every implementation is called in pluggy's order
  (``tryfirst``, then the latest registered, then ``trylast``) inside any
  ``wrapper=True`` implementation; a failure is logged per implementation and
  never stops the others or the money path.
- ``register_*(register)`` *collects*: call ``register(...)`` once per thing you add;
  ``register`` is a ``Registrar[T]`` whose ``T`` says what it takes.

Implement hooks in your plugin's ``hooks.py`` with ``@hookimpl`` (from
``engine.core.plugins``) and register the module under the entry point group
``marketplace.plugins``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy

from engine.core.contributions import (
    CliCommand,
    ConfigSection,
    DashboardPanel,
    PeriodicTask,
    PluginRuntime,
    Registrar,
    Route,
    StartupFunction,
    StripeEvent,
    TableApp,
    TaskFunction,
    WebhookRegistration,
)
from engine.core.money import Money
from engine.core.orders import Commission, LifecycleEvent, Order, PayoutFailure, SplitPlan

__all__ = [
    "PROJECT",
    "hookspec",
    "on_lifecycle_event",
    "on_payout_failure",
    "register_account_roles",
    "register_cli_commands",
    "register_config_schema",
    "register_dashboard_panels",
    "register_periodic_tasks",
    "register_routes",
    "register_startup",
    "register_tables",
    "register_tasks",
    "register_webhook_handlers",
    "resolve_commission",
    "resolve_mailbox_key",
    "resolve_movement_meaning",
    "resolve_price",
    "resolve_split",
]

PROJECT = "marketplace"

hookspec = pluggy.HookspecMarker(PROJECT)

# ---------------------------------------------------------------- pricing


@hookspec(firstresult=True)
def resolve_price(order: Order, runtime: PluginRuntime) -> Money | None:
    """Decide what the customer pays for ``order``.

    Called once per order before commission, by the payments service. First
    result wins; the engine's default (trylast) returns ``order.amount``.

    Args:
        order: the order as the business model proposed it.
        runtime: the engine's ``PluginRuntime`` (your config, your cache); an
            implementation may leave out any argument it does not need.

    Returns:
        The amount to charge, in the order's currency, or ``None`` to let the
        next implementation decide.

    Example::

        @hookimpl
        def resolve_price(order):
            if order.attributes.get("coupon") == "HALF":
                return Money(order.amount.amount // 2, order.amount.currency)
            return None
    """


# ---------------------------------------------------------------- commission


@hookspec(firstresult=True)
def resolve_commission(order: Order, price: Money, runtime: PluginRuntime) -> Commission | None:
    """Compute the platform's fee for a priced order.

    Called after ``resolve_price``. First result wins; the engine's default
    (trylast) applies ``commission.default_bps`` from the config. The
    ``commission_rules`` plugin implements this for every business model.

    Args:
        order: the order being priced (scope values in ``order.attributes``).
        price: the amount the customer pays.
        runtime: the engine's ``PluginRuntime`` (``runtime.config("<plugin>")``).

    Returns:
        A ``Commission`` with ``0 <= amount <= price`` and the rule id/version
        that produced it, or ``None`` to defer.

    Example::

        @hookimpl
        def resolve_commission(order, price):
            fee = apply_rate(price.amount, 1200)  # 12 %
            return Commission(Money(fee, price.currency), rule_id="flat-12")
    """


# ---------------------------------------------------------------- splitting


@hookspec(firstresult=True)
def resolve_split(
    order: Order, price: Money, commission: Commission, runtime: PluginRuntime
) -> SplitPlan | None:
    """Divide a priced order among the platform and the beneficiaries.

    Called after ``resolve_commission``. First result wins: a business model
    answers for its own orders (check ``order.plugin``) and returns ``None``
    for others. The engine's default (trylast) gives the platform the
    commission and the rest to the order's only beneficiary, or shares it with
    ``allocate`` evenly when there are several.

    Args:
        order: the order (``order.beneficiaries`` maps roles to accounts).
        price: the charged amount.
        commission: the platform's fee.
        runtime: the engine's ``PluginRuntime``.

    Returns:
        A ``SplitPlan`` whose legs sum exactly to ``price`` (its constructor
        checks), or ``None``.

    Example::

        @hookimpl
        def resolve_split(order, price, commission):
            if order.plugin != "courses":
                return None
            rest = price - commission.amount
            instructor, affiliate = rest.allocate([80, 20])
            return SplitPlan(price, (
                SplitLeg(PLATFORM, commission.amount),
                SplitLeg("instructor", instructor, order.beneficiaries["instructor"]),
                SplitLeg("affiliate", affiliate, order.beneficiaries["affiliate"]),
            ))
    """


# ---------------------------------------------------------------- webhook routing


@hookspec(firstresult=True)
def resolve_mailbox_key(event: StripeEvent, runtime: PluginRuntime) -> str | None:
    """Choose the webhook mailbox a Stripe event is queued in: its unit of order and isolation.

    Called by the webhook intake for every verified event, before it is
    committed. Events of one key are applied one at a time, in the order they
    were accepted; a key whose event keeps failing backs off, dead-letters and
    parks alone (admin replay per key) while every other key flows. First
    result wins. The engine's default (trylast) keys a connected account's
    events by the account, a platform event about money bound for one
    connected account (``transfer_data``, a transfer's ``destination``) by that
    account, a dispute and a refund by their charge (``dispute:<charge id>``,
    ``refund:<charge id>``) and anything else as ``platform``.

    Answer for your own events only, from the payload alone: keep it
    synchronous and pure (no I/O; it runs in the intake's request). Return the
    same key for every event whose handlers must see each other's effects in
    order (one booking's payment, transfers and refunds), and different keys
    for things that must never wait on each other.

    Args:
        event: the verified event as Stripe sent it.
        runtime: the engine's ``PluginRuntime``.

    Returns:
        A key of 1 to 64 characters (letters, digits, ``_ . : -``), by
        convention ``"<plugin>:<object>:<id>"``, or ``None`` to let the next
        implementation decide. A key that does not fit is logged as an error
        and the engine's default key is used. An implementation that raises
        (a payload shape it did not expect) is logged too, and the event is
        acknowledged and parked in the ``quarantine`` mailbox, never applied:
        read fields defensively.

    Example::

        @hookimpl
        def resolve_mailbox_key(event):
            obj = event["data"]["object"]
            course = (obj.get("metadata") or {}).get("course_id")
            return f"courses:course:{course}" if course else None
    """


# ---------------------------------------------------------------- movements


@hookspec(firstresult=True)
def resolve_movement_meaning(
    stripe_object: Mapping[str, Any], runtime: PluginRuntime
) -> tuple[str, str] | None:
    """Name the business of a movement the engine posts without a payment record.

    Called by the engine's webhook handlers when they post a movement no
    payment record names: a charge or a transfer made outside the engine
    (Stripe's dashboard, a script), and a refund, dispute, reversal or
    application fee refund of such a charge. ``stripe_object`` is Stripe's
    charge, as Stripe returns it now (for a charge and everything done to
    it, a destination charge's transfer reversals included), or the
    transfer as its event carried it (for a transfer made outside the
    engine, not a destination charge's own, and its reversals). The movement
    is posted whatever the answer; the answer only labels its ledger
    transaction (``reference`` and ``plugin``), which a business's statements
    and the finance panel group by. First result wins.

    Answer from the object alone: keep it synchronous and pure (no I/O; it
    runs inside the handler's transaction). An implementation that raises is
    logged and the movement is posted without a meaning.

    Args:
        stripe_object: Stripe's charge or transfer.
        runtime: the engine's ``PluginRuntime``.

    Returns:
        ``(reference, plugin)``: the business object (``"courses:order:7"``)
        and the plugin it belongs to; ``None`` to let the next implementation
        decide (the movement is posted with no meaning when none does).

    Example::

        @hookimpl
        def resolve_movement_meaning(stripe_object):
            order = (stripe_object.get("metadata") or {}).get("course_order")
            return (f"courses:order:{order}", "courses") if order else None
    """


# ---------------------------------------------------------------- lifecycle


@hookspec
def on_lifecycle_event(event: LifecycleEvent, runtime: PluginRuntime) -> None:
    """Be told about a state change (subscription renewed, booking completed ...).

    Broadcast to every plugin, synchronously, after the change is committed.
    Exceptions are logged and swallowed: a notification can never undo or
    block a money movement. Do slow work (email, HTTP) in a task, not here.

    Args:
        event: what changed; ``event.name`` is ``"<plugin>.<object>.<change>"``
            or ``"engine.<object>.<change>"`` for the engine's own.
        runtime: the engine's ``PluginRuntime`` (``runtime.services`` to enqueue work).

    Example::

        @hookimpl
        def on_lifecycle_event(event):
            if event.name == "creator_subscriptions.subscription.past_due":
                queue_dunning_email(event.subject_id)
    """


# ---------------------------------------------------------------- payout failure


@hookspec
def on_payout_failure(failure: PayoutFailure, runtime: PluginRuntime) -> None:
    """React when a connected account could not receive money.

    Broadcast after the engine has flagged the account and recorded the
    failure in the ledger (the funds are back on the account's Stripe balance,
    or the transfer is held for retry). Use it to notify, hold further
    transfers or schedule retries. Exceptions are logged and swallowed; other
    accounts are never affected.

    Args:
        failure: the account, what failed and Stripe's failure code.
        runtime: the engine's ``PluginRuntime``.

    Example::

        @hookimpl
        def on_payout_failure(failure):
            if failure.failure_code == "account_closed":
                alert_operator(failure.account_id)
    """


# ---------------------------------------------------------------- contributions


@hookspec
def register_config_schema(register: Registrar[ConfigSection]) -> None:
    """Declare the plugin's config section ``[plugins.<name>]`` and its schema.

    Called once at start-up, before any other hook, for enabled plugins only.
    The engine validates the section against the schema and refuses to start
    on an unknown key or a bad value, naming the key.

    Args:
        register: call with ``ConfigSection(plugin="<name>", schema=MyConfig)``.
    """


@hookspec
def register_account_roles(register: Registrar[str]) -> None:
    """Declare the roles your business model onboards connected accounts as.

    The engine always knows ``creator``, ``provider`` and ``venue``; a plugin
    for, say, courses adds ``instructor`` and ``affiliate`` so that
    ``POST /v1/accounts`` accepts them. Called each time the API checks an
    account's role (keep it cheap: register constants).

    Args:
        register: call once per role name (lowercase letters, digits, ``_``).
    """


@hookspec
def register_tables(register: Registrar[TableApp]) -> None:
    """Contribute the plugin's Piccolo app (tables and migrations).

    Called by ``marketplace migrate`` and the test kit to migrate every enabled
    plugin's app after the engine's own.

    Args:
        register: call with ``TableApp(plugin="<name>", app_config=APP_CONFIG)``.
    """


@hookspec
def register_routes(register: Registrar[Route]) -> None:
    """Contribute HTTP routes: Litestar controllers or route handlers.

    Called once when the API app is built. Routes are mounted as given; put
    them under ``/v1/<plugin>/...`` and declare guards for the scopes needed.
    Anything but a Litestar ``Controller`` subclass, route handler or
    ``Router`` stops the app from being built (``PluginError``).

    Args:
        register: call once per controller class or route handler.
    """


@hookspec
def register_webhook_handlers(register: Registrar[WebhookRegistration]) -> None:
    """Handle Stripe event types (after the engine's core handlers).

    Called once when a worker starts. Handlers run per event in the worker,
    one event of a mailbox at a time (see ``resolve_mailbox_key``), inside the
    event's transaction (``ctx.conn``, ``ctx.after_commit``: see
    ``HandlerContext``); they must be idempotent because Stripe repeats
    events, and order-insensitive where they can (compare ``created``).

    Args:
        register: call with ``WebhookRegistration("invoice.paid", handler, name)``
            where ``async def handler(event, ctx: HandlerContext) -> None`` and
            ``name`` is ``"<plugin>.<what>"``.
    """


@hookspec
def register_cli_commands(register: Registrar[CliCommand]) -> None:
    """Add ``marketplace <name>`` sub-commands.

    Args:
        register: call with a ``CliCommand``.
    """


@hookspec
def register_dashboard_panels(register: Registrar[DashboardPanel]) -> None:
    """Add panels to the account dashboard or the admin finance view.

    Args:
        register: call with a ``DashboardPanel``.
    """


@hookspec
def register_startup(register: Registrar[StartupFunction]) -> None:
    """Run something once when a process's services have started.

    Called in every API and worker process right after the engine has opened
    the database and the Stripe gateway, before it serves requests or events.
    Use it to load state your synchronous hooks need (a rule set saved by an
    admin, say) into ``runtime.state(...)``.

    Args:
        register: call with ``async def start(services) -> None``; ``services``
            is the engine's service container (``services.plugins.runtime`` is
            the ``PluginRuntime``). An exception stops the process from starting.
    """


@hookspec
def register_periodic_tasks(register: Registrar[PeriodicTask]) -> None:
    """Run work on a schedule in the workers (booking timers, retries, reconciliation).

    Called when a worker starts. Each task runs at most once per
    ``every_seconds`` across all workers, however many there are (a run is
    claimed in PostgreSQL on the database's clock), and never overlaps its
    previous run. A run that fails is not retried before the next interval.

    Args:
        register: call with ``PeriodicTask("<plugin>.<name>", 60, run)`` where
            ``async def run(services) -> None``.
    """


@hookspec
def register_tasks(register: Registrar[TaskFunction]) -> None:
    """Contribute background task functions (plain ``async def``s).

    Every process's broker registers each as a taskiq task named
    ``<plugin>.<function name>``: any process can send it
    (``broker.find_task(name).kiq(...)``) and the workers run it.

    Args:
        register: call once per ``async def``; anything else is refused
            (``PluginError``) when the plugins' tasks are collected.
    """
