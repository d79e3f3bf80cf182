"""The whole stack for end-to-end tests: sandbox, migrated database, API over HTTP, worker.

``running_stack(...)`` starts, in this order: the offline Stripe sandbox (its own
uvicorn thread), the engine's two webhook endpoints registered with the sandbox
through Stripe's own API (their secrets go into the settings), the API (uvicorn
on a free port in this event loop) and one worker. Tests talk to it as an API
client (``stack.http`` with an admin key, or ``stack.client_for(key)``) and
Stripe's events reach it as real signed HTTP deliveries; ``stack.send_event``
delivers a hand-made event the same way.

Choose the plugins with ``plugins=[...]`` (installed names) and
``extra_plugins={name: object}`` (plugin objects that are not installed, such as
a test's own); the default enables every shipped plugin that is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.core.db import migrate
from engine.core.ledger import PLATFORM, Ledger
from engine.core.money import Money
from engine.core.plugins import Plugins, build_plugins, installed_plugins
from engine.core.settings import Settings, settings_from_mapping
from engine.gateway import StripeGateway
from engine.infra.processes import find_free_port
from engine.sandbox.testing import RunningSandbox, running_sandbox
from engine.services import Services
from engine.testing.events import signed, stripe_event
from engine.testing.ledger import assert_balances, assert_ledger_balanced
from engine.webhooks.setup import CONNECT_PATH, PLATFORM_PATH, register_webhook_endpoints
from engine.worker.runtime import run_worker

__all__ = ["SHIPPED", "Stack", "merge_config", "running_stack"]

SHIPPED = ("commission_rules", "creator_subscriptions", "notifier", "three_sided_bookings")
"""The plugins the engine ships; enabled by default when installed."""

SECRET_KEY = "sk_test_e2e"  # noqa: S105 - the sandbox accepts any sk_test_ key


def merge_config(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, tables recursively (``extra`` wins)."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = merge_config(current, value)
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
    sandbox: RunningSandbox
    admin_key: str
    http: httpx.AsyncClient
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    # ------------------------------------------------------------ Stripe

    def stripe(self, stripe_account: str | None = None) -> Any:
        """The real SDK (a ``stripe.StripeClient``) against the sandbox.

        What a test uses to act as the customer or as Stripe's dashboard.
        """
        return self.sandbox.client(stripe_account=stripe_account)

    async def advance(self, seconds: int, *, allow_dead_letters: bool = False) -> None:
        """Move the sandbox's clock, then wait for the resulting events to be handled."""
        await asyncio.to_thread(self.sandbox.advance, seconds)
        await self.settle(allow_dead_letters=allow_dead_letters)

    async def advance_test_clock(
        self, clock_id: str, seconds: int, *, allow_dead_letters: bool = False
    ) -> None:
        """Move a Stripe test clock forward, then wait for its events to be handled."""

        def advance() -> None:
            client = self.stripe()
            clock = client.v1.test_helpers.test_clocks.retrieve(clock_id)
            client.v1.test_helpers.test_clocks.advance(
                clock_id, params={"frozen_time": int(clock.frozen_time) + seconds}
            )

        await asyncio.to_thread(advance)
        await self.settle(allow_dead_letters=allow_dead_letters)

    # ------------------------------------------------------------ webhooks

    async def send_event(
        self,
        event_type: str,
        obj: Mapping[str, Any],
        *,
        account: str | None = None,
        event_id: str | None = None,
        settle: bool = True,
        api_version: str | None = None,
        allow_dead_letters: bool = False,
    ) -> dict[str, Any]:
        """Deliver a hand-made event to the engine's endpoint, signed as Stripe would.

        Connect events (``account`` set) go to the Connect endpoint with its
        secret; the account must be one the engine created (``onboard`` or
        ``POST /v1/accounts``), as the worker parks events of unknown accounts.
        Returns the endpoint's JSON answer; with ``settle`` waits until the
        worker has handled it (see ``settle`` for ``allow_dead_letters``).
        ``api_version``: the version the event claims (default the engine's;
        another one is parked at intake as a dead letter).
        """
        body = stripe_event(event_type, obj, account=account, event_id=event_id)
        if api_version is not None:
            body["api_version"] = api_version
        stripe_settings = self.settings.stripe
        secrets = (
            stripe_settings.connect_webhook_secrets if account else stripe_settings.webhook_secrets
        )
        payload, headers = signed(body, secrets[0])
        path = CONNECT_PATH if account else PLATFORM_PATH
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            response = await client.post(path, content=payload, headers=headers)
        response.raise_for_status()
        if settle:
            await self.settle(allow_dead_letters=allow_dead_letters)
        answer: dict[str, Any] = response.json()
        return answer

    async def settle(self, seconds: float = 30, *, allow_dead_letters: bool = False) -> None:
        """Wait (up to ``seconds``) until every sandbox delivery is handled by the worker.

        Handlers may call Stripe, which queues more deliveries, so this returns
        only when the sandbox is idle and no event is pending, twice in a row.

        A dead-lettered event is a handler that gave up, not a settled event:
        it fails the wait at once, naming the event, its mailbox and its last
        error, unless the test expects one (``allow_dead_letters=True``; then
        read them with ``dead_events()``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        pending = 0
        while (remaining := deadline - loop.time()) > 0:
            idle = await self._deliveries_idle(min(remaining, 10.0))
            pending = await self._pending_events()
            if not allow_dead_letters:
                await self._fail_on_dead_letters()
            if idle and not pending and await self._deliveries_idle(0):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"not settled after {seconds}s: {pending} webhook events pending, "
            "or sandbox deliveries still in flight"
        )

    async def _fail_on_dead_letters(self) -> None:
        dead = await self.dead_events()
        if dead:
            lines = "\n".join(
                f"  {row['event_id']} {row['type']} (mailbox {row['account']}): {row['last_error']}"
                for row in dead
            )
            raise AssertionError(
                f"{len(dead)} webhook event(s) dead-lettered (a handler gave up):\n{lines}\n"
                "pass allow_dead_letters=True if the test expects this"
            )

    async def _deliveries_idle(self, seconds: float) -> bool:
        answer = await asyncio.to_thread(
            self.sandbox.control, "POST", "/_sandbox/deliveries/wait", timeout=seconds
        )
        return bool(answer.get("idle", True))

    async def _pending_events(self) -> int:
        async with self.services.db.pool.acquire() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM marketplace_webhook_events WHERE status = 'pending'"
            )
        return int(count)

    async def dead_events(self) -> list[dict[str, Any]]:
        """Events the worker gave up on (dead-lettered), with their last error."""
        async with self.services.db.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT event_id, type, account, last_error FROM marketplace_webhook_events "
                "WHERE status = 'dead' ORDER BY id"
            )
        return [dict(row) for row in rows]

    async def authenticate(
        self, action: Mapping[str, Any], outcome: str = "complete", *, settle: bool = True
    ) -> dict[str, Any]:
        """What the customer's browser does with a ``customer_action`` (3D Secure).

        Opens the page its ``next_action`` points to (or the intent's authentication
        page) and completes (``outcome="complete"``) or fails (``"fail"``) it; then,
        with ``settle``, waits until the resulting events are handled. Returns the
        intent as the sandbox left it.
        """
        intent_id = str(action["intent_id"])
        secret = str(action["client_secret"])
        next_action = action.get("next_action") or {}
        page = (next_action.get("use_stripe_sdk") or {}).get("stripe_js") or (
            next_action.get("redirect_to_url") or {}
        ).get("url")
        async with httpx.AsyncClient(timeout=30) as browser:
            if page:
                shown = await browser.get(str(page))
                if shown.status_code != 200:
                    raise AssertionError(f"the authentication page answered {shown.status_code}")
            answer = await browser.post(
                f"{self.sandbox.url}/_sandbox/authenticate/{intent_id}",
                data={"client_secret": secret, "outcome": outcome},
            )
        if answer.status_code not in (200, 303):
            raise AssertionError(f"authenticating {intent_id} failed: {answer.text}")
        if settle:
            await self.settle()
        return await asyncio.to_thread(self._retrieve_intent, intent_id)

    def _retrieve_intent(self, intent_id: str) -> dict[str, Any]:
        client = self.stripe()
        service = client.v1.setup_intents if intent_id.startswith("seti_") else None
        found = (service or client.v1.payment_intents).retrieve(intent_id)
        result: dict[str, Any] = found.to_dict()
        return result

    # ------------------------------------------------------------ API

    def client_for(self, api_key: str) -> httpx.AsyncClient:
        """An API client with another key (closed with the stack)."""
        client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        )
        self._clients.append(client)
        return client

    async def create_key(self, scope: str, account_id: str | None = None) -> str:
        """A new API key through the admin API (``account`` scope needs ``account_id``)."""
        body: dict[str, Any] = {"scope": scope, "label": f"test {scope}"}
        if account_id:
            body["account_id"] = account_id
        response = await self.http.post("/v1/api-keys", json=body)
        response.raise_for_status()
        return str(response.json()["key"])

    async def onboard(
        self, display_name: str, *, role: str = "creator", seconds: float = 30
    ) -> str:
        """A connected account created through the API and fully onboarded; its ``acct_`` id.

        Creates it with ``POST /v1/accounts``, completes Stripe's onboarding in
        the sandbox and waits until the engine has seen it become ``active``.
        """
        created = await self.http.post(
            "/v1/accounts",
            json={"role": role, "display_name": display_name, "email": "owner@example.com"},
        )
        if created.status_code != 201:
            raise AssertionError(f"creating the account failed: {created.text}")
        account_id = str(created.json()["account"]["id"])
        await asyncio.to_thread(
            self.sandbox.control, "POST", f"/_sandbox/accounts/{account_id}/complete_onboarding"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        status = ""
        while loop.time() < deadline:
            await self.settle(seconds)
            status = (await self.http.get(f"/v1/accounts/{account_id}")).json().get("status", "")
            if status == "active":
                return account_id
            await asyncio.sleep(0.1)
        raise AssertionError(f"account {account_id} is {status!r}, not active, after {seconds}s")

    # ------------------------------------------------------------ ledger

    @property
    def ledger(self) -> Ledger:
        """The engine's ledger."""
        return self.services.ledger

    async def balance(self, account: str, currency: str) -> Money:
        """A ledger account's balance in one currency."""
        return await self.ledger.balance(account, currency)

    async def stripe_balance(self, account: str | None, currency: str) -> int:
        """Stripe's balance (available + pending) of ``account`` (None: the platform), in
        minor units of ``currency``: what the ledger's balance must equal."""

        def total() -> int:
            balance = self.stripe(account).v1.balance.retrieve()
            parts = [*balance.available, *balance.pending]
            return sum(int(part.amount) for part in parts if part.currency == currency)

        return await asyncio.to_thread(total)

    async def assert_ledger_is_stripe(self, *accounts: str, currency: str) -> dict[str, int]:
        """Check each ledger account (``platform``, ``acct_...``) equals Stripe's balance
        (available + pending) in ``currency``; returns the balances."""
        found: dict[str, int] = {}
        for account in accounts:
            ledger = (await self.ledger.balances(account)).get(currency, 0)
            stripe = await self.stripe_balance(None if account == PLATFORM else account, currency)
            assert ledger == stripe, f"{account}: ledger {ledger} != Stripe {stripe}"
            found[account] = ledger
        return found

    async def assert_balances(self, expected: Mapping[str, Money]) -> None:
        """Check ledger balances (see ``engine.testing.ledger.assert_balances``)."""
        await assert_balances(self.ledger, expected)

    async def assert_ledger_balanced(self) -> None:
        """Check that every ledger transaction balances."""
        await assert_ledger_balanced(self.ledger)


def _enabled(plugins: Sequence[str] | None, extra: Mapping[str, object]) -> list[str]:
    if plugins is None:
        installed = installed_plugins()
        plugins = [name for name in SHIPPED if name in installed]
    return list(dict.fromkeys([*plugins, *extra]))


@contextlib.asynccontextmanager
async def running_stack(
    database_url: str,
    nats_url: str,
    stream: str,
    *,
    config: Mapping[str, Any] | None = None,
    plugins: Sequence[str] | None = None,
    extra_plugins: Mapping[str, object] | None = None,
    sandbox_options: Any = None,
) -> AsyncIterator[Stack]:
    """Start the stack on a fresh database; stop everything afterwards.

    Args:
        database_url: an empty (or already migrated) database; it is migrated.
        nats_url: a NATS server with JetStream.
        stream: a JetStream stream name no other running stack uses.
        config: settings merged over the stack's (``{"plugins": {"x": {...}}}``
            for a plugin's section, ``{"commission": {"default_bps": 500}}`` ...).
        plugins: installed plugins to enable (default: the shipped ones).
        extra_plugins: plugin objects by name, enabled too (need not be installed).
        sandbox_options: ``engine.sandbox.state.SandboxOptions`` for the sandbox.
    """
    from engine.api.app import create_app
    from engine.api.keys import create_api_key

    port = find_free_port()
    base_url = f"http://127.0.0.1:{port}"
    extra = dict(extra_plugins or {})
    with running_sandbox(options=sandbox_options) as sandbox:
        gateway = StripeGateway(SECRET_KEY, sandbox.url, max_network_retries=0)
        secrets = await register_webhook_endpoints(gateway, base_url)
        raw = merge_config(
            {
                "engine": {"public_url": base_url},
                "api": {"host": "127.0.0.1", "port": port},
                "database": {"url": database_url, "pool_max": 10},
                "nats": {"url": nats_url, "stream": stream},
                "stripe": {
                    "secret_key": SECRET_KEY,
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
                "plugins": {"enabled": _enabled(plugins, extra)},
            },
            config or {},
        )
        settings = settings_from_mapping(raw)
        built = build_plugins(settings, extra=extra)
        await migrate(database_url, built.table_apps())
        services = await Services.start(settings, plugins=built)
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
        worker = asyncio.create_task(run_worker(settings, plugins=built, stop=stop_worker))
        _, admin_key = await create_api_key(services.db.pool, "admin", label="e2e admin")
        http = httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        )
        stack = Stack(
            url=base_url,
            settings=settings,
            plugins=built,
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
