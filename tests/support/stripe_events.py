"""Build and sign Stripe-shaped events for the webhook tests."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from engine.webhooks.signature import sign

_counter = itertools.count(1)


def event(
    account: str | None,
    seq: int,
    *,
    event_type: str = "test.recorded",
    obj: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A Stripe event envelope (``account`` None for a platform event)."""
    body: dict[str, Any] = {
        "id": event_id or f"evt_test_{next(_counter)}_{time.time_ns()}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": obj or {"id": f"obj_{seq}", "object": "test", "metadata": {"seq": seq}}},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    if account:
        body["account"] = account
    return body


def signed(
    body: dict[str, Any], secret: str, *, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The raw payload and headers Stripe would send."""
    payload = json.dumps(body).encode()
    return payload, {
        "Stripe-Signature": sign(payload, secret, timestamp),
        "Content-Type": "application/json",
    }
