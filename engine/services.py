"""The service container: what the API, the workers and plugins share at run time.

Built once per process from settings (nothing at import time): the plugin
facade, the database, the ledger, the Stripe gateway and, when configured, the
NATS connection. ``await Services.start(settings)`` opens them;
``await services.close()`` closes them.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NatsClient

from engine.core.db import Database
from engine.core.ledger import Ledger
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import Settings, require_database_url
from engine.gateway import StripeGateway
from engine.live_settings import LiveSettings
from engine.payments.payability import Payability
from engine.reconciliation.store import open_ledger_conflict_alert

__all__ = ["Services"]

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a request handler, a task or a plugin needs, opened once."""

    settings: Settings
    plugins: Plugins
    db: Database
    ledger: Ledger
    gateway: StripeGateway
    live: LiveSettings
    """Settings changed at run time: ``bump`` after a change, ``watch`` to reload it."""
    nats: NatsClient | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        *,
        plugins: Plugins | None = None,
        connect_nats: bool = True,
        synchronous_commit: bool = True,
    ) -> Services:
        """Open the database pool (and NATS when configured) for ``settings``.

        ``synchronous_commit=False`` is for workers: everything they write is
        derived from durably stored events and is redone if a crash loses it.

        Raises:
            ConfigError: when ``database.url`` is empty (``marketplace up`` fills
                it with the embedded server's URL before calling this).
        """
        require_database_url(settings)
        plugins = plugins or build_plugins(settings)
        db = Database(
            settings.database.url,
            min_size=settings.database.pool_min,
            max_size=settings.database.pool_max,
            synchronous_commit=synchronous_commit,
        )
        db.bind(plugins.table_apps())
        await db.start()
        gateway = StripeGateway(
            settings.stripe.secret_key,
            settings.stripe.api_base,
            max_network_retries=settings.stripe.max_network_retries,
            timeout_seconds=settings.stripe.timeout_seconds,
        )
        gateway.guard = Payability(db.pool)
        nats_client: NatsClient | None = None
        if connect_nats and settings.nats.servers:
            nats_client = await nats.connect(
                servers=settings.nats.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5
            )
        live = LiveSettings(
            db.pool,
            settings.database.url,
            poll_seconds=settings.engine.live_settings_poll_seconds,
            listen=settings.engine.live_settings_listen,
        )
        services = cls(
            settings=settings,
            plugins=plugins,
            db=db,
            ledger=Ledger(
                db.pool, on_conflict=[functools.partial(open_ledger_conflict_alert, db.pool)]
            ),
            gateway=gateway,
            live=live,
            nats=nats_client,
        )
        plugins.runtime.services = services
        # Versions are noted before plugins load their settings, so a change made
        # meanwhile is reloaded rather than missed.
        await live.start()
        for start in plugins.startup_functions():
            await start(services)
        return services

    async def nats_ready(self) -> bool:
        """Whether NATS is connected (true when NATS is not configured)."""
        if self.nats is None:
            return not self.settings.nats.servers
        return bool(self.nats.is_connected)

    async def close(self) -> None:
        """Close NATS, the live-settings watcher and the database pools."""
        await self.live.close()
        if self.nats is not None:
            try:
                await self.nats.drain()
            except Exception:  # closing anyway; a drain timeout must not block shutdown
                log.warning("NATS drain failed", exc_info=True)
            self.nats = None
        await self.db.close()
