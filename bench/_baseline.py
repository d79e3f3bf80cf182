"""The bare baseline for the intake benchmark: verify the HMAC, insert one row, publish.

A minimal ASGI app with no framework: what "accept a webhook durably" costs at
the least, so the engine's intake can be reported as a ratio of it. Run by
``bench/webhooks.py`` under uvicorn in its own process.
"""

from __future__ import annotations

import json
import os
from typing import Any

import asyncpg
import nats

from engine.webhooks.signature import verify

SECRET = os.environ.get("BASELINE_SECRET", "whsec_bench")
DATABASE_URL = os.environ["BASELINE_DATABASE_URL"]
NATS_URL = os.environ["BASELINE_NATS_URL"]
STREAM = os.environ.get("BASELINE_STREAM", "BASELINE")

_state: dict[str, Any] = {}


async def _startup() -> None:
    _state["pool"] = await asyncpg.create_pool(DATABASE_URL, min_size=4, max_size=20)
    async with _state["pool"].acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS baseline_events (event_id TEXT PRIMARY KEY, payload JSONB)"
        )
    client = await nats.connect(NATS_URL)
    js = client.jetstream()
    await js.add_stream(name=STREAM, subjects=[f"{STREAM.lower()}.events"])
    _state["nats"], _state["js"] = client, js


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await _startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = dict(scope["headers"])
    verify(body, headers.get(b"stripe-signature", b"").decode(), [SECRET])
    event_id = json.loads(body)["id"]
    async with _state["pool"].acquire() as conn:
        await conn.execute(
            "INSERT INTO baseline_events VALUES ($1, $2::jsonb) ON CONFLICT DO NOTHING",
            event_id,
            body.decode(),
        )
    await _state["js"].publish(f"{STREAM.lower()}.events", body, headers={"Nats-Msg-Id": event_id})
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b'{"received":true}'})
