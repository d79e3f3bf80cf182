"""Hook implementations of the notifier plugin (hookimpls only).

The two broadcast hooks turn what happened into outbox rows and return at once:
they never await network I/O and never raise into the engine (a notice that
cannot be queued is logged and dropped, the money movement stands). Delivery
happens in ``engine.notifier.delivery.run_delivery_loop``, which
``register_startup`` starts in every API and worker process.
"""

from __future__ import annotations

import logging

from engine.core.contributions import (
    CliCommand,
    ConfigSection,
    PluginRuntime,
    Registrar,
    StartupFunction,
    TableApp,
)
from engine.core.orders import LifecycleEvent, PayoutFailure
from engine.core.plugins import hookimpl
from engine.notifier import cli, delivery
from engine.notifier.config import PLUGIN, NotifierConfig
from engine.notifier.outbox import enqueue, lifecycle_notifications, payout_failure_notifications
from engine.notifier.tables import APP_CONFIG

log = logging.getLogger(__name__)


def _config(runtime: PluginRuntime) -> NotifierConfig | None:
    config = runtime.config(PLUGIN)
    return config if isinstance(config, NotifierConfig) else None


@hookimpl
def register_config_schema(register: Registrar[ConfigSection]) -> None:
    """Declare ``[plugins.notifier]`` (see ``NotifierConfig``)."""
    register(ConfigSection(plugin=PLUGIN, schema=NotifierConfig))


@hookimpl
def register_tables(register: Registrar[TableApp]) -> None:
    """The ``notifier_outbox`` table."""
    register(TableApp(plugin=PLUGIN, app_config=APP_CONFIG))


@hookimpl
def register_startup(register: Registrar[StartupFunction]) -> None:
    """Start the delivery loop in the background once the process's services are open."""
    register(delivery.start_in_background)


@hookimpl
def register_cli_commands(register: Registrar[CliCommand]) -> None:
    """``marketplace notifier status|retry-dead``."""
    register(cli.command())


@hookimpl
def on_lifecycle_event(event: LifecycleEvent, runtime: PluginRuntime) -> None:
    """Queue a notice of ``event`` for each configured channel (if ``events`` wants it)."""
    try:
        config = _config(runtime)
        if config is not None:
            enqueue(runtime, lifecycle_notifications(event, config))
    except Exception:  # a notice must never break the engine (see the hookspec)
        log.exception("notifier: could not queue %s for %s", event.name, event.subject_id)


@hookimpl
def on_payout_failure(failure: PayoutFailure, runtime: PluginRuntime) -> None:
    """Queue a plain-language notice of ``failure`` for each configured channel."""
    try:
        config = _config(runtime)
        if config is not None:
            enqueue(runtime, payout_failure_notifications(failure, config))
    except Exception:  # a notice must never break the engine (see the hookspec)
        log.exception(
            "notifier: could not queue the failure of %s for %s",
            failure.stripe_object_id,
            failure.account_id,
        )
