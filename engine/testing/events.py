"""Stripe-shaped webhook events for tests, and the signatures Stripe would put on them.

``stripe_event(...)`` builds an event envelope the way Stripe sends one;
``signed(...)`` returns the raw payload and headers for an endpoint secret, so
a test can deliver it over HTTP exactly as Stripe does (``Stack.send_event``
does both for the running stack).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping
from typing import Any

from engine.stripe_version import STRIPE_API_VERSION
from engine.webhooks.signature import sign

__all__ = ["API_VERSION", "signed", "stripe_event"]

API_VERSION = STRIPE_API_VERSION
"""The API version the sample events claim: the engine's (another one is parked at intake)."""

_sequence = itertools.count(1)


def stripe_event(
    event_type: str,
    obj: Mapping[str, Any],
    *,
    account: str | None = None,
    event_id: str | None = None,
    created: int | None = None,
    previous_attributes: Mapping[str, Any] | None = None,
    api_version: str = API_VERSION,
) -> dict[str, Any]:
    """A Stripe event envelope around ``obj`` (``account`` set for a Connect event).

    Args:
        event_type: Stripe's event type, ``"payment_intent.succeeded"``.
        obj: the object as ``data.object`` (a dict in Stripe's JSON shape).
        account: the connected account the event belongs to; ``None`` for the platform.
        event_id: a fixed ``evt_`` id (repeat it to simulate a redelivery).
        created: the event's unix time (default now).
        previous_attributes: ``data.previous_attributes`` for ``*.updated`` events.
        api_version: the version the event claims to be rendered in (the engine's by
            default; another one is parked at intake).
    """
    data: dict[str, Any] = {"object": dict(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    body: dict[str, Any] = {
        "id": event_id or f"evt_kit_{next(_sequence)}_{time.time_ns()}",
        "object": "event",
        "api_version": api_version,
        "created": int(time.time()) if created is None else created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    if account:
        body["account"] = account
    return body


def signed(
    body: Mapping[str, Any], secret: str, *, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The raw payload and the headers Stripe would send for ``body`` under ``secret``."""
    payload = json.dumps(body).encode()
    return payload, {
        "Stripe-Signature": sign(payload, secret, timestamp),
        "Content-Type": "application/json",
    }
