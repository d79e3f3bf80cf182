"""Dispatch one Stripe event to the engine's core handlers, then the plugins' handlers,
then the engine's fallbacks (what no plugin did: an invoice's charge nobody posted).

Handlers run inside the mailbox's transaction (``ctx.conn``), so their database
writes commit together with the event's "handled" mark. Side effects that must
follow the commit (lifecycle notifications, payout-failure hooks) go through
``ctx.after_commit``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from engine.core.contributions import HandlerContext, StripeEvent, WebhookRegistration

__all__ = ["Dispatcher", "EventContext", "stripe_object"]

log = logging.getLogger(__name__)


class EventContext(HandlerContext):
    """The worker's ``HandlerContext``: one per handler and event."""

    def __init__(self, services: Any, conn: asyncpg.Connection, plugin: str) -> None:
        self._services = services
        self._conn = conn
        self._plugin = plugin
        self._after: list[Callable[[], None]] = []

    @property
    def services(self) -> Any:
        """The engine's ``Services``."""
        return self._services

    @property
    def conn(self) -> asyncpg.Connection:
        """The connection of the event's transaction."""
        return self._conn

    @property
    def plugin_config(self) -> Any:
        """The config struct of the handler's plugin (None for the engine's own)."""
        try:
            return self._services.plugins.runtime.config(self._plugin)
        except KeyError:
            return None

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the event's transaction has committed."""
        self._after.append(action)

    def run_after_commit(self) -> None:
        """Run the queued actions; failures are logged, never raised."""
        for action in self._after:
            try:
                action()
            except Exception:  # notifications must not fail the event
                log.exception("after-commit action failed")
        self._after.clear()


class Dispatcher:
    """Routes events by type to registered handlers (``"*"`` matches every type).

    ``after`` are handlers run after every other one of the event (the wildcard
    ones too): the engine's fallbacks, which act on what the plugins did not.
    """

    def __init__(
        self,
        services: Any,
        registrations: Sequence[WebhookRegistration],
        *,
        after: Sequence[WebhookRegistration] = (),
    ) -> None:
        self._services = services
        self._by_type: dict[str, list[WebhookRegistration]] = defaultdict(list)
        for registration in registrations:
            self._by_type[registration.event_type].append(registration)
        self._after: dict[str, list[WebhookRegistration]] = defaultdict(list)
        for registration in after:
            self._after[registration.event_type].append(registration)

    def handlers_for(self, event_type: str) -> list[WebhookRegistration]:
        """Handlers for ``event_type`` in registration order, wildcard ones next, the
        ``after`` ones last."""
        return [
            *self._by_type.get(event_type, ()),
            *self._by_type.get("*", ()),
            *self._after.get(event_type, ()),
        ]

    async def handle(self, event: StripeEvent, conn: asyncpg.Connection) -> list[EventContext]:
        """Run every matching handler; return their contexts for after-commit actions."""
        contexts: list[EventContext] = []
        for registration in self.handlers_for(str(event.get("type", ""))):
            plugin = registration.name.split(".", 1)[0]
            ctx = EventContext(self._services, conn, plugin)
            await registration.handler(event, ctx)
            contexts.append(ctx)
        return contexts


def stripe_object(event: Mapping[str, Any]) -> dict[str, Any]:
    """``event.data.object`` as a dict."""
    data = event.get("data") or {}
    obj = data.get("object") if isinstance(data, Mapping) else None
    return dict(obj) if isinstance(obj, Mapping) else {}
