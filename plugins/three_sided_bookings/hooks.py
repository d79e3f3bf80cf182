"""Hook implementations of the three_sided_bookings plugin (hookimpls only)."""

from __future__ import annotations

from typing import Any

from engine.core.contributions import (
    CliCommand,
    ConfigSection,
    PeriodicTask,
    PluginRuntime,
    Registrar,
    Route,
    StartupFunction,
    StripeEvent,
    TableApp,
    WebhookRegistration,
)
from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitPlan
from engine.core.plugins import hookimpl
from plugins.three_sided_bookings import tasks, webhooks
from plugins.three_sided_bookings.config import PLUGIN, ThreeSidedBookingsConfig
from plugins.three_sided_bookings.legacy import adopt_legacy_holds
from plugins.three_sided_bookings.split import PROVIDER, VENUE, split_booking, terms_from_attributes
from plugins.three_sided_bookings.tables import APP_CONFIG


@hookimpl
def register_config_schema(register: Registrar[ConfigSection]) -> None:
    """Declare ``[plugins.three_sided_bookings]``."""
    register(ConfigSection(plugin=PLUGIN, schema=ThreeSidedBookingsConfig))


@hookimpl
def resolve_split(
    order: Order, price: Money, commission: Commission, runtime: PluginRuntime
) -> SplitPlan | None:
    """Platform fee first; the rest between provider and venue by the booking's terms.

    The terms (provider agreement rate, venue rate or fixed fee) travel in
    ``order.attributes`` (see ``ShareTerms.as_attributes``); without them the
    provider gets ``provider_share_bps`` of the net and the venue the rest.
    Synchronous and pure.
    """
    if order.plugin != PLUGIN or not {PROVIDER, VENUE} <= set(order.beneficiaries):
        return None
    config: ThreeSidedBookingsConfig = runtime.config(PLUGIN)
    terms = terms_from_attributes(order.attributes, config.provider_share_bps)
    return split_booking(
        price,
        commission.amount,
        terms,
        order.beneficiaries[PROVIDER],
        order.beneficiaries[VENUE],
    )


@hookimpl
def register_tables(register: Registrar[TableApp]) -> None:
    """Catalogue, bookings and money movements (``three_sided_bookings_*`` tables)."""
    register(TableApp(plugin=PLUGIN, app_config=APP_CONFIG))


@hookimpl
def register_webhook_handlers(register: Registrar[WebhookRegistration]) -> None:
    """Disputes, held-transfer release on ``account.updated``, ledger follow-up."""
    for registration in webhooks.registrations():
        register(registration)


@hookimpl
def resolve_mailbox_key(event: StripeEvent) -> str | None:
    """One mailbox per booking (``three_sided_bookings:booking:<id>``); see ``webhooks``."""
    return webhooks.mailbox_key(event)


@hookimpl
def resolve_movement_meaning(
    stripe_object: dict[str, Any], runtime: PluginRuntime
) -> tuple[str, str] | None:
    """A charge or transfer made outside the engine for a booking is the booking's
    (``transfer_group = booking:<id>``, or ``metadata[booking_id]``); see ``webhooks``.
    Synchronous and pure."""
    return webhooks.movement_meaning(stripe_object)


@hookimpl
def register_periodic_tasks(register: Registrar[PeriodicTask]) -> None:
    """Take the timed transitions that are due (expiry, auto-complete, held-share retries)."""

    async def run(services: Any) -> None:
        await tasks.run_due_timers(services)

    register(PeriodicTask("three_sided_bookings.timers", 30.0, run))


@hookimpl
def register_cli_commands(register: Registrar[CliCommand]) -> None:
    """``marketplace bookings-timers``: run the due timed transitions (cron-friendly)."""
    register(tasks.cli_command())


@hookimpl
def register_startup(register: Registrar[StartupFunction]) -> None:
    """Hand shares held in the plugin's old table to the engine (``legacy``)."""

    async def start(services: Any) -> None:
        await adopt_legacy_holds(services)

    register(start)


@hookimpl
def register_routes(register: Registrar[Route]) -> None:
    """``/v1/three_sided_bookings/...``: catalogue, bookings, actions, reconciliation."""
    from plugins.three_sided_bookings.controllers import ROUTES

    for controller in ROUTES:
        register(controller)
