"""Test helper: the sandbox on a free 127.0.0.1 port in a background uvicorn thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from engine.sandbox.app import SandboxApp, create_app
from engine.sandbox.state import SandboxOptions, SandboxState


@dataclass
class RunningSandbox:
    """A sandbox served over HTTP for the duration of a `with running_sandbox()` block."""

    url: str
    app: SandboxApp
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))
    """A kept-alive plain HTTP client for control endpoints and raw requests."""

    @property
    def state(self) -> SandboxState:
        return self.app.state

    def client(self, api_key: str = "sk_test_x", stripe_account: str | None = None) -> Any:
        """A `stripe.StripeClient` pointed at this sandbox (no network retries)."""
        # Only tests use this helper; the SDK stays out of the sandbox's import path.
        import stripe  # noqa: TID251 - tests drive the real SDK against the sandbox

        return stripe.StripeClient(
            api_key,
            stripe_account=stripe_account,
            base_addresses={"api": self.url, "connect": self.url, "files": self.url},
            max_network_retries=0,
        )

    def control(self, method: str, path: str, **body: Any) -> Any:
        """Call a `/_sandbox/...` control endpoint with a JSON body; returns the JSON answer."""
        response = self.http.request(method, self.url + path, json=body or None)
        response.raise_for_status()
        return response.json()

    def advance(self, seconds: int) -> int:
        """Move the global clock forward; returns the new unix time."""
        return int(self.control("POST", "/_sandbox/clock/advance", seconds=seconds)["now"])

    def wait_for_deliveries(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until no webhook delivery is in flight; returns all deliveries."""
        answer = self.control("POST", "/_sandbox/deliveries/wait", timeout=timeout)
        data: list[dict[str, Any]] = answer["data"]
        return data


def verified_account_params(account_number: str = "000123456789", **overrides: Any) -> Any:
    """`accounts.create` params for a Custom account that Stripe's test values verify at once.

    Individual with dob 1901-01-01, matching address/id/SSN test values, ToS accepted, a
    business URL and a US test bank account (`account_number` picks its payout behaviour).
    Payouts are manual so balances stay put while a test moves the clock.
    """
    params: dict[str, Any] = {
        "type": "custom",
        "country": "US",
        "email": "seller@example.com",
        "capabilities": {
            "card_payments": {"requested": True},
            "transfers": {"requested": True},
        },
        "business_type": "individual",
        "business_profile": {"url": "https://seller.example.com", "mcc": "5734"},
        "individual": {
            "first_name": "Jenny",
            "last_name": "Rosen",
            "dob": {"day": 1, "month": 1, "year": 1901},
            "address": {
                "line1": "address_full_match",
                "city": "San Francisco",
                "postal_code": "94103",
                "state": "CA",
                "country": "US",
            },
            "id_number": "000000000",
            "ssn_last_4": "0000",
        },
        "tos_acceptance": {"date": 1_700_000_000, "ip": "127.0.0.1"},
        "settings": {"payouts": {"schedule": {"interval": "manual"}}},
        "external_account": {
            "object": "bank_account",
            "country": "US",
            "currency": "usd",
            "routing_number": "110000000",
            "account_number": account_number,
        },
    }
    params.update(overrides)
    return params


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_sandbox(
    *,
    state: SandboxState | None = None,
    options: SandboxOptions | None = None,
    app: SandboxApp | None = None,
) -> Iterator[RunningSandbox]:
    """Start the sandbox (or `app`) with uvicorn in a thread; stop it on exit."""
    if app is None:
        app = create_app(state=state or SandboxState(options))
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="stripe-sandbox", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the sandbox did not start")
        time.sleep(0.01)
    running = RunningSandbox(f"http://127.0.0.1:{port}", app)
    try:
        yield running
    finally:
        # A request still held would keep uvicorn's graceful shutdown waiting.
        with contextlib.suppress(httpx.HTTPError):
            running.control("POST", "/_sandbox/holds/release")
        running.http.close()
        server.should_exit = True
        thread.join(timeout=10)
