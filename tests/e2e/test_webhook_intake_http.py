"""Webhook intake over real HTTP: a signed event is accepted once; nothing else is stored."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from support.stack import Stack, running_stack

from engine.testing.events import signed, stripe_event

CONNECT = "/webhooks/stripe/connect"


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


def _secret(stack: Stack) -> str:
    return stack.settings.stripe.connect_webhook_secrets[0]


async def _stored(stack: Stack) -> int:
    async with stack.services.db.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM marketplace_webhook_events"))


async def test_unverifiable_deliveries_are_4xx_and_store_nothing(stack: Stack) -> None:
    body = stripe_event("test.nothing", {"id": "obj_1", "object": "test"}, account="acct_x")
    payload, headers = signed(body, "whsec_not_ours")
    cases = {
        "bad signature": (payload, headers),
        "old timestamp": signed(body, _secret(stack), timestamp=int(time.time()) - 301),
        "no signature": (payload, {"Content-Type": "application/json"}),
    }
    huge = b'{"id": "evt_big", "object": "event", "type": "x", "pad": "' + b"x" * 5_000_000 + b'"}'
    cases["5 MB body"] = (huge, _signed_raw(huge, _secret(stack)))  # signed, but too big
    not_json = b"this is not json"
    cases["non-JSON"] = (not_json, _signed_raw(not_json, _secret(stack)))
    deep = b'{"id": "evt_deep", "object": "event", "type": "x", "data": ' + b"[" * 5000
    deep += b"]" * 5000 + b"}"
    cases["nested deeper than the decoder goes"] = (deep, _signed_raw(deep, _secret(stack)))
    for name, (content, sent_headers) in cases.items():
        response = await stack.http.post(CONNECT, content=content, headers=sent_headers)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json"), name
    assert await _stored(stack) == 0


async def test_a_signed_event_is_committed_once_before_the_answer(stack: Stack) -> None:
    body = stripe_event("test.nothing", {"id": "obj_2", "object": "test"}, account="acct_y")
    payload, headers = signed(body, _secret(stack))
    first = await stack.http.post(CONNECT, content=payload, headers=headers)
    again = await stack.http.post(CONNECT, content=payload, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    assert again.json()["duplicate"] is True
    assert await _stored(stack) == 1


def _signed_raw(payload: bytes, secret: str) -> dict[str, str]:
    from engine.webhooks.signature import sign

    return {"Stripe-Signature": sign(payload, secret), "Content-Type": "application/json"}
