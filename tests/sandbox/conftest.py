"""Fixtures for the sandbox suite: one sandbox per run (reset per test), SDK clients, a
webhook receiver, and helpers that build onboarded connected accounts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import stripe
import uvicorn

from engine.sandbox.state import SandboxOptions
from engine.sandbox.testing import RunningSandbox, running_sandbox, verified_account_params

FAST_RETRIES = SandboxOptions(webhook_retry_delays=(0.05, 0.1, 0.2, 0.4))


@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[RunningSandbox]:
    with running_sandbox(options=FAST_RETRIES) as running:
        yield running


@pytest.fixture
def sandbox(sandbox_server: RunningSandbox) -> RunningSandbox:
    """The session's sandbox, reset to an empty platform for this test."""
    sandbox_server.control("POST", "/_sandbox/reset")
    return sandbox_server


@pytest.fixture
def client(sandbox: RunningSandbox) -> stripe.StripeClient:
    """A platform client (`sk_test_...`) against the reset sandbox."""
    return sandbox.client()  # type: ignore[no-any-return]


@pytest.fixture
def make_account(client: stripe.StripeClient) -> Callable[..., stripe.Account]:
    """Create a Custom account verified at once by Stripe's test values (manual payouts)."""
    return make_account_with(client)


def make_account_with(client: stripe.StripeClient) -> Callable[..., stripe.Account]:
    """An account factory bound to `client` (see the `make_account` fixture)."""

    def make(account_number: str = "000123456789", **overrides: Any) -> stripe.Account:
        params = verified_account_params(account_number, **overrides)
        return client.v1.accounts.create(params=params)

    return make


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    """A local HTTP endpoint recording what it is sent; can refuse the first N requests."""

    url: str
    requests: list[Received] = field(default_factory=list)
    fail_first: int = 0
    seen: int = 0

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.requests):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received {len(self.requests)} requests")
            time.sleep(0.02)


@pytest.fixture(scope="session")
def webhook_server() -> Iterator[WebhookReceiver]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    receiver = WebhookReceiver(f"http://127.0.0.1:{port}/hooks")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        receiver.seen += 1
        status = 500 if receiver.seen <= receiver.fail_first else 200
        if status == 200:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            receiver.requests.append(Received(body, headers))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield receiver
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def webhooks(webhook_server: WebhookReceiver) -> WebhookReceiver:
    """The receiver, emptied for this test."""
    webhook_server.requests.clear()
    webhook_server.fail_first = 0
    webhook_server.seen = 0
    return webhook_server
