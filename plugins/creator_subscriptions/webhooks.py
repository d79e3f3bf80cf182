"""Stripe event handlers: subscriptions, invoices and one-time payments.

Every handler runs inside the mailbox transaction (``ctx.conn``) and is
idempotent: ledger postings are keyed by the Stripe object, rows are upserted
by Stripe id, and state only moves forward (``plugins.creator_subscriptions.sync``).
Lifecycle notifications go out after commit. A handler ignores objects that
are not this plugin's (the metadata says whose they are), because every
subscription on the platform arrives here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from engine.core.contributions import HandlerContext, StripeEvent, WebhookRegistration
from engine.core.orders import LifecycleEvent
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env
from plugins.creator_subscriptions.one_time import settle_one_time_payment

__all__ = ["registrations"]

Handler = Callable[[StripeEvent, Any], Awaitable[None]]


def _object(event: StripeEvent) -> dict[str, Any]:
    data = event.get("data") or {}
    obj = data.get("object") if isinstance(data, dict) else None
    return dict(obj) if isinstance(obj, dict) else {}


def _announce(ctx: Any, env: Env, notices: list[LifecycleEvent]) -> None:
    plugins = env.plugins
    for notice in notices:
        ctx.after_commit(lambda notice=notice: plugins.notify_lifecycle(notice))


async def on_payment_intent_succeeded(event: StripeEvent, ctx: HandlerContext) -> None:
    """Settle a tip or pay-per-view whose API call did not finish (a no-op otherwise)."""
    intent = _object(event)
    if (intent.get("metadata") or {}).get("plugin") != PLUGIN:
        return
    env = Env.of(ctx.services)
    notices = await settle_one_time_payment(env, ctx.conn, intent)  # type: ignore[attr-defined]
    _announce(ctx, env, notices)


def registrations() -> list[WebhookRegistration]:
    """Every handler of the plugin, by Stripe event type."""
    table: list[tuple[str, Handler]] = [
        ("payment_intent.succeeded", on_payment_intent_succeeded),
    ]
    return [
        WebhookRegistration(event_type, handler, f"{PLUGIN}.{handler.__name__}")
        for event_type, handler in table
    ]
