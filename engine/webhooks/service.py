"""Start and stop the webhook machinery an API process needs (intake + publisher).

The API app factory calls ``await WebhookService.start(services)`` in its
lifespan and puts ``service.intake`` in ``app.state["webhook_intake"]``; admin
routes use ``service.mailbox`` and ``service.scheduler`` for dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine.observability import Metrics
from engine.services import Services
from engine.webhooks.intake import WebhookIntake
from engine.webhooks.mailbox import Mailbox
from engine.webhooks.setup import warn_about_endpoint_versions
from engine.worker.broker import MailboxBroker
from engine.worker.runtime import Scheduler, make_broker, make_mailbox, register_plugin_tasks

__all__ = ["WebhookService"]

log = logging.getLogger(__name__)


class WebhookService:
    """Intake, mailbox and drain publisher for one API process."""

    def __init__(
        self, broker: MailboxBroker, mailbox: Mailbox, scheduler: Scheduler, intake: WebhookIntake
    ) -> None:
        self.broker = broker
        self.mailbox = mailbox
        self.scheduler = scheduler
        self.intake = intake
        self.version_check: asyncio.Task[object] | None = None

    @classmethod
    async def start(cls, services: Services, metrics: Metrics) -> WebhookService:
        """Connect the publishing broker (needs ``nats.url``) and build the intake."""
        broker = make_broker(services.settings)
        register_plugin_tasks(broker, services.plugins)
        await broker.startup()
        mailbox = make_mailbox(services)
        scheduler = Scheduler(broker)
        intake = WebhookIntake(services.settings, mailbox, scheduler, metrics)
        service = cls(broker, mailbox, scheduler, intake)
        # In the background: a slow or unreachable Stripe must not hold up start-up.
        service.version_check = asyncio.create_task(warn_about_endpoint_versions(services.gateway))
        return service

    async def replay(
        self, *, event_ids: list[str] | None = None, account: str | None = None
    ) -> list[str]:
        """Make dead events pending again and publish their accounts; return the accounts."""
        accounts = await self.mailbox.replay(event_ids=event_ids or (), account=account)
        for name in accounts:
            await self.scheduler.requeue(name)
        return accounts

    async def close(self) -> None:
        """Stop publish retries and disconnect the broker."""
        if self.version_check is not None and not self.version_check.done():
            self.version_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.version_check
        await self.scheduler.close()
        try:
            await self.broker.shutdown()
        except Exception:  # shutting down anyway
            log.warning("broker shutdown failed", exc_info=True)
