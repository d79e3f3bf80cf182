"""Three embedded nats-servers as one JetStream cluster: a replicated stream survives its leader."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from engine.infra.nats_cluster import EmbeddedNatsCluster


async def test_a_replicated_stream_keeps_its_messages_when_its_leader_dies(tmp_path: Path) -> None:
    cluster = EmbeddedNatsCluster(tmp_path, 3)
    await asyncio.to_thread(cluster.start)
    try:
        client = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1)
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="DRILL", subjects=["drill"], num_replicas=3))
        for n in range(10):
            await js.publish("drill", str(n).encode())
        leader = await cluster.stream_leader("DRILL")
        await asyncio.to_thread(cluster.kill, leader)
        for _ in range(600):  # a new leader is elected; publishing works again
            try:
                await js.publish("drill", b"after", timeout=1)
                break
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.1)
        info = await js.stream_info("DRILL")
        assert info.state.messages == 11
        assert await cluster.stream_leader("DRILL") != leader
        await asyncio.to_thread(cluster.start_node, leader)
        await client.close()
    finally:
        await asyncio.to_thread(cluster.stop)
