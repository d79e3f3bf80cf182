"""A JetStream cluster of embedded nats-servers on one machine, for tests and drills.

Each node is an ``EmbeddedNats`` with a cluster listener and routes to the
others. A lone node cannot elect JetStream's meta leader (that takes a quorum),
so a node counts as started once it accepts clients, and ``start()`` then waits
until JetStream answers through the cluster. ``kill(i)`` / ``start_node(i)``
take one node down (SIGKILL, as a crash) and bring it back on the same ports
and data, so a test can lose any node, the stream's leader included
(``stream_leader``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

import nats
import nats.errors

from engine.infra.nats_server import EmbeddedNats, _ignore_nats_error
from engine.infra.processes import find_free_port
from engine.infra.server import EmbeddedServiceError, _run_in_private_loop

__all__ = ["EmbeddedNatsCluster"]


class _ClusterNode(EmbeddedNats):
    """One node: client port, cluster port, routes to its peers."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        *,
        cluster_name: str,
        cluster_port: int,
        routes: list[str],
        server_name: str,
    ) -> None:
        super().__init__(data_dir, port, server_name=server_name)
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes

    def _command(self, port: int) -> list[str]:
        return [
            *super()._command(port),
            *("--cluster_name", self.cluster_name),
            *("--cluster", f"nats://{self.host}:{self.cluster_port}"),
            *("--routes", ",".join(self.routes)),
        ]

    async def _probe(self) -> bool:
        # Ready once it accepts clients; JetStream needs the cluster (checked by the cluster).
        return self._listening()


class EmbeddedNatsCluster:
    """``size`` nodes named ``n1`` ... ``n<size>`` in ``base``, one JetStream cluster."""

    def __init__(self, base: Path, size: int = 3, *, name: str = "marketplace") -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        ports = [(find_free_port(), find_free_port()) for _ in range(size)]
        routes = [f"nats://127.0.0.1:{cluster}" for _, cluster in ports]
        self.nodes = [
            _ClusterNode(
                base / f"n{index + 1}",
                client,
                cluster_name=name,
                cluster_port=cluster,
                routes=[route for other, route in enumerate(routes) if other != index],
                server_name=f"n{index + 1}",
            )
            for index, (client, cluster) in enumerate(ports)
        ]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (the engine's ``nats.url`` list)."""
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 120.0) -> list[str]:
        """Start every node and wait until JetStream answers; return the client URLs."""
        for node in self.nodes:
            node.start()
        self.wait_for_jetstream(timeout)
        return self.urls

    def start_node(self, index: int) -> None:
        """Bring one node back (same ports and data)."""
        self.nodes[index].start()

    def kill(self, index: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.nodes[index].kill()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def wait_for_jetstream(self, timeout: float = 120.0) -> None:
        """Block until JetStream answers through the cluster (a meta leader is elected)."""
        # Synchronous like the nodes' start, so callable from inside a running loop too.
        _run_in_private_loop(functools.partial(self._wait_for_jetstream, timeout))

    async def _wait_for_jetstream(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                client = await nats.connect(
                    servers=self.urls, connect_timeout=2, error_cb=_ignore_nats_error
                )
            except (OSError, nats.errors.Error) as error:
                last = f"{type(error).__name__}: {error}"
                await asyncio.sleep(0.2)
                continue
            try:
                await client.jetstream().account_info()
                return
            except (OSError, nats.errors.Error) as error:
                last = f"JetStream: {type(error).__name__}: {error}"
            finally:
                await client.close()
            await asyncio.sleep(0.2)
        raise EmbeddedServiceError(f"the NATS cluster's JetStream did not answer: {last}")

    async def stream_leader(self, stream: str) -> int:
        """The index of the node leading ``stream``."""
        client = await nats.connect(servers=self.urls, error_cb=_ignore_nats_error)
        try:
            info = await client.jetstream().stream_info(stream)
        finally:
            await client.close()
        if info.cluster is None or info.cluster.leader is None:
            raise EmbeddedServiceError(f"stream {stream} has no leader right now")
        return int(info.cluster.leader.removeprefix("n")) - 1
