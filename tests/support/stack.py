"""The whole stack for end-to-end tests: sandbox, migrated database, API over HTTP, worker.

``running_stack(...)`` starts, in this order: the offline Stripe sandbox (its own
uvicorn thread), the engine's two webhook endpoints registered with the sandbox
through Stripe's own API (their secrets go into the settings), the API (uvicorn
on a free port in this event loop) and one worker. Tests talk to it as an API
client (``stack.http`` with an admin key, or ``stack.client_for(key)``) and
Stripe's events reach it as real signed HTTP deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import stripe

from engine.core.db import migrate
from engine.core.plugins import Plugins, build_plugins, installed_plugins
from engine.core.settings import Settings, settings_from_mapping
from engine.gateway import StripeGateway
from engine.infra.processes import find_free_port
from engine.sandbox.testing import running_sandbox
from engine.services import Services
from engine.webhooks.setup import register_webhook_endpoints
from engine.worker.runtime import run_worker

__all__ = ["Stack", "running_stack"]

SHIPPED = ("commission_rules", "creator_subscriptions", "notifier", "three_sided_bookings")


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Stack:
    """Handles on a running stack."""

    url: str
    settings: Settings
    plugins: Plugins
    services: Services
    sandbox: Any
    admin_key: str
    http: httpx.AsyncClient
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    def stripe(self, stripe_account: str | None = None) -> stripe.StripeClient:
        """The real SDK against the sandbox (what a test uses to act as Stripe's dashboard)."""
        client: stripe.StripeClient = self.sandbox.client(stripe_account=stripe_account)
        return client

    def client_for(self, api_key: str) -> httpx.AsyncClient:
        """An API client with another key (closed with the stack)."""
        client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )
        self._clients.append(client)
        return client

    async def create_key(self, scope: str, account_id: str | None = None) -> str:
        """A new API key through the admin API."""
        body: dict[str, Any] = {"scope": scope, "label": f"test {scope}"}
        if account_id:
            body["account_id"] = account_id
        response = await self.http.post("/v1/api-keys", json=body)
        response.raise_for_status()
        return str(response.json()["key"])

    async def settle(self, timeout: float = 30) -> None:
        """Wait until the sandbox delivered every event and the worker handled them all."""
        await asyncio.to_thread(self.sandbox.wait_for_deliveries)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            async with self.services.db.pool.acquire() as conn:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM marketplace_webhook_events WHERE status = 'pending'"
                )
            if not pending:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{pending} webhook events still pending after {timeout}s")

    async def advance(self, seconds: int) -> None:
        """Move the sandbox's clock, then wait for the resulting events to be handled."""
        await asyncio.to_thread(self.sandbox.advance, seconds)
        await self.settle()


@contextlib.asynccontextmanager
async def running_stack(
    database_url: str,
    nats_url: str,
    stream: str,
    *,
    config: Mapping[str, Any] | None = None,
    extra_plugins: Mapping[str, object] | None = None,
    sandbox_options: Any = None,
) -> AsyncIterator[Stack]:
    """Start the stack on a fresh database; stop everything afterwards."""
    from engine.api.app import create_app

    from engine.api.keys import create_api_key

    port = find_free_port()
    base_url = f"http://127.0.0.1:{port}"
    extra = dict(extra_plugins or {})
    with running_sandbox(options=sandbox_options) as sandbox:
        gateway = StripeGateway("sk_test_e2e", sandbox.url, max_network_retries=0)
        secrets = await register_webhook_endpoints(gateway, base_url)
        enabled = [name for name in SHIPPED if name in installed_plugins()] + list(extra)
        raw = _merge(
            {
                "engine": {"public_url": base_url},
                "api": {"host": "127.0.0.1", "port": port},
                "database": {"url": database_url, "pool_max": 10},
                "nats": {"url": nats_url, "stream": stream},
                "stripe": {
                    "secret_key": "sk_test_e2e",
                    "api_base": sandbox.url,
                    "webhook_secrets": [secrets.platform],
                    "connect_webhook_secrets": [secrets.connect],
                    "max_network_retries": 0,
                },
                "webhooks": {
                    "backoff_base_seconds": 0.05,
                    "backoff_max_seconds": 0.5,
                    "sweep_interval_seconds": 0.2,
                    "max_attempts": 5,
                },
                "plugins": {"enabled": enabled},
            },
            config or {},
        )
        settings = settings_from_mapping(raw)
        plugins = build_plugins(settings, extra=extra)
        await migrate(database_url, plugins.table_apps())
        services = await Services.start(settings, plugins=plugins)
        import uvicorn

        server = uvicorn.Server(
            uvicorn.Config(create_app(services), host="127.0.0.1", port=port, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        stop_worker = asyncio.Event()
        worker = asyncio.create_task(run_worker(settings, plugins=plugins, stop=stop_worker))
        _, admin_key = await create_api_key(services.db.pool, "admin", label="e2e admin")
        http = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        )
        stack = Stack(
            url=base_url,
            settings=settings,
            plugins=plugins,
            services=services,
            sandbox=sandbox,
            admin_key=admin_key,
            http=http,
        )
        try:
            yield stack
        finally:
            for client in (http, *stack._clients):
                await client.aclose()
            stop_worker.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker, 15)
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 15)
            await services.close()
