"""A drain token JetStream refuses is published again as soon as it answers, not by the sweeper."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from engine.core.settings import settings_from_mapping
from engine.infra.nats_server import EmbeddedNats
from engine.worker.runtime import Scheduler, make_broker


async def _stream_messages(url: str, stream: str) -> int:
    client = await nats.connect(url)
    try:
        info = await client.jetstream().stream_info(stream)
        return int(info.state.messages)
    finally:
        await client.close()


async def test_a_refused_publish_is_retried_when_jetstream_is_back(
    tmp_path: Path, unique_name: str
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    stream = unique_name.upper()
    settings = settings_from_mapping({"nats": {"url": url, "stream": stream}})
    broker = make_broker(settings)
    await broker.startup()
    scheduler = Scheduler(broker)
    try:
        await scheduler.schedule("acct_before", "v1")
        assert await _stream_messages(url, stream) == 1

        await asyncio.to_thread(server.stop)
        # The publish fails while NATS is away; schedule() neither raises nor drops it.
        await scheduler.schedule("acct_during", "v1")
        assert scheduler.retrying == 1

        await asyncio.to_thread(server.start)
        for _ in range(1200):  # generous on a busy machine; no speed is asserted
            if scheduler.retrying == 0:
                break
            await asyncio.sleep(0.05)
        assert scheduler.retrying == 0, "the refused publish was never retried"
        assert await _stream_messages(url, stream) == 2
    finally:
        await scheduler.close()
        await broker.shutdown()
        await asyncio.to_thread(server.stop)
