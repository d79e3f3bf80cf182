"""Hook implementations of the creator_subscriptions plugin (hookimpls only)."""

from __future__ import annotations

from typing import Any

from engine.core.contributions import (
    ConfigSection,
    DashboardPanel,
    PeriodicTask,
    Registrar,
    Route,
    TableApp,
    WebhookRegistration,
)
from engine.core.money import Money
from engine.core.orders import PLATFORM, Commission, Order, SplitLeg, SplitPlan
from engine.core.plugins import hookimpl
from plugins.creator_subscriptions import adoption, panels, webhooks
from plugins.creator_subscriptions.config import PLUGIN, CreatorSubscriptionsConfig
from plugins.creator_subscriptions.tables import APP_CONFIG


@hookimpl
def register_config_schema(register: Registrar[ConfigSection]) -> None:
    """Declare ``[plugins.creator_subscriptions]``."""
    register(ConfigSection(plugin=PLUGIN, schema=CreatorSubscriptionsConfig))


@hookimpl
def register_tables(register: Registrar[TableApp]) -> None:
    """Creators, tiers, fans, subscriptions, invoices, payments (``creator_subscriptions_*``)."""
    register(TableApp(plugin=PLUGIN, app_config=APP_CONFIG))


@hookimpl
def register_webhook_handlers(register: Registrar[WebhookRegistration]) -> None:
    """Subscriptions, invoices and one-time payments, order-insensitive and idempotent."""
    for registration in webhooks.registrations():
        register(registration)


@hookimpl
def register_routes(register: Registrar[Route]) -> None:
    """The ``/v1/creator_subscriptions/...`` controllers."""
    from plugins.creator_subscriptions.controllers import CONTROLLERS

    for controller in CONTROLLERS:
        register(controller)


@hookimpl
def register_dashboard_panels(register: Registrar[DashboardPanel]) -> None:
    """A creator's members and renewals; the operator's creators needing attention."""
    for panel in panels.panels():
        register(panel)


@hookimpl
def register_periodic_tasks(register: Registrar[PeriodicTask]) -> None:
    """Write the engine's ``meaning_metadata`` on subscriptions made before the plugin
    did, a bounded batch per run (``adoption``), so their invoices are this plugin's to
    post; in the worker, so no process waits on Stripe to start."""

    async def run(services: Any) -> None:
        await adoption.mark_subscriptions(services, limit=adoption.MARK_BATCH)

    register(PeriodicTask(adoption.MARK_TASK, adoption.MARK_EVERY_SECONDS, run))


@hookimpl
def resolve_split(order: Order, price: Money, commission: Commission) -> SplitPlan | None:
    """Destination charges: the platform keeps the fee, the creator gets the rest."""
    if order.plugin != PLUGIN:
        return None
    creator = order.beneficiaries["creator"]
    return SplitPlan(
        total=price,
        legs=(
            SplitLeg(PLATFORM, commission.amount),
            SplitLeg("creator", price - commission.amount, creator),
        ),
    )
