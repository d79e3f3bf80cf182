"""Events and webhooks: every state change records an `evt_`; endpoints get signed deliveries.

Deliveries run as background asyncio tasks of the app, concurrently (so, as with
Stripe, order is not guaranteed), each retried with a compressed version of
Stripe's backoff (`SandboxOptions.webhook_retry_delays`) on a non-2xx answer or a
connection error. Platform endpoints receive the platform's own events; endpoints
created with `connect=true` receive events of connected accounts, which carry a
top-level `account`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import httpx
import msgspec

from engine.sandbox.objects import API_VERSION, build, new_id
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Obj

SIGNATURE_HEADER = "Stripe-Signature"


def emit(
    state: SandboxState,
    type_: str,
    obj: Obj,
    *,
    account: str,
    previous: Obj | None = None,
) -> Obj:
    """Record event `type_` about `obj` (snapshotted now) on `account`."""
    data: Obj = {"object": msgspec.Raw(msgspec.json.encode(obj))}
    if previous:
        data["previous_attributes"] = previous
    request_id, idempotency_key = state.current_request
    event = build(
        "event",
        new_id("evt"),
        state.now(),
        api_version=API_VERSION,
        data=data,
        pending_webhooks=0,
        request={"id": request_id, "idempotency_key": idempotency_key},
        type=type_,
    )
    if account != state.platform_id:
        event["account"] = account
    state.put(event, account, "event")
    if state.store.webhook_endpoints:
        targets = matching_endpoints(state, event)
        if targets:
            event["pending_webhooks"] = len(targets)
            state.outbox.append(event["id"])
    return event


def matching_endpoints(state: SandboxState, event: Obj) -> list[str]:
    """Ids of the enabled endpoints that should receive `event`."""
    connected = "account" in event
    out = []
    for endpoint_id in state.store.webhook_endpoints:
        endpoint = state.find(endpoint_id)
        if endpoint is None or endpoint["status"] != "enabled":
            continue
        if bool(state.private(endpoint_id).get("connect")) != connected:
            continue
        enabled = endpoint["enabled_events"]
        if "*" in enabled or event["type"] in enabled:
            out.append(endpoint_id)
    return out


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    """The `Stripe-Signature` header value for `payload`, as Stripe computes it."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class WebhookDispatcher:
    """Hands queued events to their endpoints from the app's event loop."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._semaphore: asyncio.Semaphore | None = None

    def pump(self) -> None:
        """Start deliveries for every queued event (call from the event loop)."""
        state = self.state
        if not state.outbox:
            return
        queued, state.outbox[:] = list(state.outbox), []
        for event_id in queued:
            event = state.find(event_id)
            if event is None:
                continue
            for endpoint_id in matching_endpoints(state, event):
                delivery = self._record(event, endpoint_id)
                task = asyncio.get_running_loop().create_task(self._deliver(delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _record(self, event: Obj, endpoint_id: str) -> Obj:
        endpoint = self.state.objects[endpoint_id]
        delivery: Obj = {
            "id": new_id("whdel"),
            "event": event["id"],
            "event_type": event["type"],
            "account": event.get("account"),
            "endpoint": endpoint_id,
            "url": endpoint["url"],
            "status": "pending",
            "attempts": [],
            "created": time.time(),
        }
        self.state.store.deliveries[delivery["id"]] = delivery
        return delivery

    async def _deliver(self, delivery: Obj) -> None:
        state = self.state
        event = state.find(delivery["event"])
        secret = state.private(delivery["endpoint"]).get("secret", "")
        if event is None:
            return
        body = msgspec.json.encode(event)
        delays = (0.0, *state.options.webhook_retry_delays)
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(state.options.webhook_concurrency)
        for attempt, delay in enumerate(delays):
            if delay:
                await asyncio.sleep(delay)
            outcome = await self._attempt(delivery["url"], body, secret)
            delivery["attempts"].append({"at": time.time(), **outcome})
            status = outcome.get("status")
            if isinstance(status, int) and 200 <= status < 300:
                delivery["status"] = "succeeded"
                break
            if attempt == len(delays) - 1:
                delivery["status"] = "failed"
        event["pending_webhooks"] = max(0, int(event["pending_webhooks"]) - 1)

    async def _attempt(self, url: str, body: bytes, secret: str) -> dict[str, Any]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.state.options.webhook_timeout)
        assert self._semaphore is not None
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        }
        async with self._semaphore:
            try:
                response = await self._client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
        return {"status": response.status_code, "error": None}

    def pending(self) -> int:
        return len(self._tasks) + len(self.state.outbox)

    async def wait_idle(self, limit_s: float) -> bool:
        """Wait until no delivery is in flight; False if still busy after `limit_s`."""
        deadline = time.monotonic() + limit_s
        while True:
            self.pump()
            if not self._tasks:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
