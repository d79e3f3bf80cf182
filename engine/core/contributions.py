"""What plugins contribute through the ``register_*`` hooks, as typed records.

Each ``register_*`` hook receives a ``register`` callback taking one of these, so
a plugin states what it adds and the engine decides when and how to use it.
Framework objects (Litestar controllers, Piccolo apps, taskiq tasks) are typed as
``object`` here because the domain package does not import those frameworks; the
adapters that consume them check their types.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg

__all__ = [
    "MAILBOX_ACCOUNT_METADATA",
    "CliCommand",
    "ConfigSection",
    "DashboardPanel",
    "HandlerContext",
    "PeriodicTask",
    "PluginRuntime",
    "Registrar",
    "Route",
    "StartupFunction",
    "StripeEvent",
    "TableApp",
    "TaskFunction",
    "WebhookHandler",
    "WebhookRegistration",
]


class PluginRuntime:
    """What the engine hands to the money and notification hooks (as ``runtime``).

    Modelled on datasette's ``datasette`` argument: a hook asks it for its
    plugin's validated config and keeps derived data (a compiled rule index,
    say) in its per-plugin ``state`` instead of module globals.

    Attributes:
        settings: the engine's validated ``Settings``.
        services: the engine's service container once adapters have started it
            (``None`` in pure unit tests).
    """

    def __init__(self, settings: Any, configs: Mapping[str, Any], services: Any = None) -> None:
        self.settings = settings
        self._configs = dict(configs)
        self._state: dict[str, dict[str, Any]] = {}
        self.services = services

    def config(self, plugin: str) -> Any:
        """The validated config struct of ``plugin`` (raises ``KeyError`` if not enabled)."""
        return self._configs[plugin]

    def state(self, plugin: str) -> dict[str, Any]:
        """A mutable per-plugin cache that lives as long as this runtime."""
        return self._state.setdefault(plugin, {})

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the enabled plugins whose config the runtime holds."""
        return tuple(self._configs)


StripeEvent = Mapping[str, Any]
"""A verified Stripe event as Stripe sent it (``id``, ``type``, ``account``, ``data.object``)."""

MAILBOX_ACCOUNT_METADATA = "marketplace_account"
"""Metadata key naming the connected account whose webhook mailbox an object's events go to.

A subscription on the platform paying a connected account (``transfer_data``) has its
events in that account's mailbox; its invoices no longer carry ``transfer_data`` (Stripe
API 2025-03-31 on), so the engine reads this key from the subscription metadata an
invoice carries (``parent.subscription_details.metadata``): set it on such subscriptions
so their invoice events are ordered with the subscription's, in the account's mailbox.
"""


class HandlerContext(Protocol):
    """What a webhook handler uses besides the event; the worker passes one per event.

    The handler runs inside the event's database transaction: write through
    ``conn`` so your rows commit (or roll back) with the event's "handled"
    mark, and defer what must only happen once that commit is done
    (lifecycle notifications, anything outside the database) to
    ``after_commit``. The conformance check passes the same context.
    """

    @property
    def services(self) -> Any:
        """The engine's ``Services`` (``gateway``, ``ledger``, ``plugins``, ``db`` ...)."""

    @property
    def plugin_config(self) -> Any:
        """The validated config struct of the plugin that registered the handler."""

    @property
    def conn(self) -> asyncpg.Connection:
        """The connection of the event's transaction (write here; never commit it)."""

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the event's transaction has committed.

        Actions run in the order registered; one that raises is logged and
        the others still run. They never run when the transaction rolls back
        (the event is then retried and the handler registers them again).
        """


WebhookHandler = Callable[[StripeEvent, HandlerContext], Awaitable[None]]
"""``async def handler(event, ctx) -> None``; must be idempotent (events repeat)."""


_Item_contra = TypeVar("_Item_contra", contravariant=True)


class Registrar(Protocol[_Item_contra]):
    """The ``register`` callback every ``register_*`` hook receives.

    Call it once per thing you contribute; its type parameter says what it
    takes, so a type checker refuses a wrong registration
    (``Registrar[Route]`` refuses a ``PeriodicTask``, ``Registrar[TaskFunction]``
    a plain ``def``). The engine checks what it is given again when it loads.
    """

    def __call__(self, item: _Item_contra, /) -> None:
        """Contribute ``item``."""


Route = type[Any] | Callable[..., Any]
"""A Litestar ``Controller`` subclass or route handler (``@get``/``@post`` ...).

Typed loosely because the domain package does not import Litestar; the API
refuses anything else when it builds the app.
"""

TaskFunction = Callable[..., Awaitable[Any]]
"""A background task: an ``async def`` the workers run as a taskiq task."""

StartupFunction = Callable[[Any], Awaitable[None]]
"""``async def start(services) -> None``, run once a process's services are open."""


@dataclass(frozen=True, slots=True)
class WebhookRegistration:
    """One handler for one Stripe event type (``"*"`` for every type).

    Per event, the engine's core handlers run first, then the plugins' in
    pluggy's order of their ``register_webhook_handlers`` (the latest enabled
    plugin first, ``tryfirst``/``trylast`` honoured; one plugin's handlers in
    the order it registered them), handlers of ``"*"`` last. A handler that
    raises makes the event retry.
    """

    event_type: str
    handler: WebhookHandler
    name: str


@dataclass(frozen=True, slots=True)
class ConfigSection:
    """A plugin's config section ``[plugins.<plugin>]`` and its schema.

    ``schema`` is a ``msgspec.Struct`` subclass with defaults for every field;
    the engine converts the section into it (unknown keys refused) at start-up.
    """

    plugin: str
    schema: type[Any]


@dataclass(frozen=True, slots=True)
class TableApp:
    """A plugin's Piccolo app (tables and migrations), applied by ``marketplace migrate``.

    ``app_config`` is a ``piccolo.conf.apps.AppConfig``; table names are
    prefixed with the plugin's name.
    """

    plugin: str
    app_config: object


@dataclass(frozen=True, slots=True)
class CliCommand:
    """A ``marketplace <name>`` sub-command contributed by a plugin.

    ``configure`` adds arguments to the sub-parser; ``run`` gets the parsed
    arguments and the loaded settings and returns the process exit code.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Any], int]


@dataclass(frozen=True, slots=True)
class PeriodicTask:
    """Work a worker runs every ``every_seconds`` (timers, retries, reconciliation).

    ``run(services)`` is an ``async def``; across all worker processes a task
    runs at most once per interval (the run is claimed in PostgreSQL) and
    never twice at a time (an advisory lock on ``name``). A failure is logged
    and the task runs again at its next interval.
    """

    name: str
    every_seconds: float
    run: Callable[[Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DashboardPanel:
    """A panel on the account dashboard (``audience="account"``) or admin view.

    ``render(services, account_id)`` returns an HTML fragment (already escaped).
    """

    name: str
    title: str
    audience: str
    render: Callable[[Any, str | None], Awaitable[str]]
