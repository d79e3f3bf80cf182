"""A running webhook pipeline for tests: migrated database, intake, in-process workers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from engine.core.db import migrate
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import Settings, settings_from_mapping
from engine.observability import Metrics
from engine.services import Services
from engine.webhooks.service import WebhookService
from engine.worker.runtime import run_worker
from support.accounts import know_accounts
from support.recorder import Recorder, create_schema
from support.stripe_events import signed

PLATFORM_SECRET = "whsec_platform_test"
CONNECT_SECRET = "whsec_connect_test"


def pipeline_settings(
    database_url: str,
    nats_url: str,
    stream: str,
    *,
    plugins: tuple[str, ...] = (),
    stripe_api_base: str = "",
    secret_key: str = "sk_test_pipeline",  # noqa: S107 - a test-mode key the sandbox accepts
    **webhooks: Any,
) -> Settings:
    """Settings for a test pipeline: quick retries, quick sweeps, the recorder plugin.

    ``plugins`` enables installed plugins besides the recorder;
    ``stripe_api_base`` is where handlers' Stripe calls go; ``secret_key`` sets the
    mode (a ``sk_live_`` key refuses test-mode events).
    """
    policy = {
        "max_attempts": 3,
        "backoff_base_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "sweep_interval_seconds": 0.2,
        "lease_seconds": 5,
        "batch_size": 50,
        **webhooks,
    }
    return settings_from_mapping(
        {
            "database": {"url": database_url, "pool_max": 10},
            "nats": {"url": nats_url, "stream": stream},
            "stripe": {
                "webhook_secrets": [PLATFORM_SECRET],
                "connect_webhook_secrets": ["whsec_old_rotated_out", CONNECT_SECRET],
                "api_base": stripe_api_base,
                "secret_key": secret_key,
                # Keep a Stripe call's bound below the short lease.
                "max_network_retries": 0,
                "timeout_seconds": 2.0,
            },
            "webhooks": policy,
            "worker": {"concurrency": 32},
            "plugins": {"enabled": ["recorder", *plugins]},
        }
    )


def recorder_plugins(settings: Settings) -> Plugins:
    """Plugins with the recorder enabled."""
    return build_plugins(settings, extra={"recorder": Recorder()})


@dataclass
class Pipeline:
    """Intake + mailbox + publisher on a fresh database, with workers on demand."""

    settings: Settings
    plugins: Plugins
    services: Services
    webhooks: WebhookService
    _workers: list[tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)
    _known: set[str] = field(default_factory=set)

    async def deliver(
        self, body: dict[str, Any], *, timestamp: int | None = None, known: bool = True
    ) -> Any:
        """Deliver one event through the intake as Stripe would (signed).

        With ``known`` a Connect event's account is first stored as one of the
        platform's (the worker applies no event of an unknown account).
        """
        connect = bool(body.get("account"))
        if connect and known and body["account"] not in self._known:
            await know_accounts(self.services.db.pool, [body["account"]])
            self._known.add(body["account"])
        payload, headers = signed(
            body, CONNECT_SECRET if connect else PLATFORM_SECRET, timestamp=timestamp
        )
        return await self.webhooks.intake.receive(
            payload, headers["Stripe-Signature"], connect=connect
        )

    def start_worker(self) -> None:
        """Start one more in-process worker."""
        stop = asyncio.Event()
        task = asyncio.create_task(run_worker(self.settings, plugins=self.plugins, stop=stop))
        self._workers.append((stop, task))

    async def stop_workers(self) -> None:
        """Stop every in-process worker."""
        for stop, _ in self._workers:
            stop.set()
        for _, task in self._workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        self._workers.clear()

    async def fetchval(self, query: str, *args: Any) -> Any:
        """One value from the pipeline's database."""
        async with self.services.db.pool.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def wait_until(
        self, predicate: Callable[[], Any], *, timeout: float = 60, what: str = "condition"
    ) -> None:
        """Poll ``predicate`` (sync or async) until true, or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    async def recorded(self, account: str | None = None) -> int:
        """How many test events were handled (for one account, or all)."""
        if account is None:
            return int(await self.fetchval("SELECT count(*) FROM test_recorded"))
        return int(
            await self.fetchval("SELECT count(*) FROM test_recorded WHERE account = $1", account)
        )


@contextlib.asynccontextmanager
async def running_pipeline(
    database_url: str, nats_url: str, stream: str, **options: Any
) -> AsyncIterator[Pipeline]:
    """Migrate, start services and the intake; stop everything afterwards.

    ``options`` go to ``pipeline_settings`` (plugins, webhook policy).
    """
    settings = pipeline_settings(database_url, nats_url, stream, **options)
    plugins = recorder_plugins(settings)
    await migrate(database_url, plugins.table_apps())
    conn = await asyncpg.connect(database_url)
    try:
        await create_schema(conn)
    finally:
        await conn.close()
    services = await Services.start(settings, plugins=plugins)
    webhooks_service = await WebhookService.start(services, Metrics())
    pipeline = Pipeline(settings, plugins, services, webhooks_service)
    try:
        yield pipeline
    finally:
        await pipeline.stop_workers()
        await webhooks_service.close()
        await services.close()
