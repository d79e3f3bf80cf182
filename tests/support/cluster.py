"""Many processes on one machine: a three-node NATS cluster, `marketplace serve`s and workers.

``running_cluster(...)`` starts a JetStream cluster (stream replicas 3), API
processes with the real CLI (``marketplace serve --config FILE``) and worker
processes (``support.cluster_worker``: ``run_worker`` with the test recorder
plugin, which ``marketplace worker`` cannot load), all from one TOML config,
against one PostgreSQL database. ``flood(...)`` sends signed ``test.recorded``
events to the API processes, in order per account, retrying on another
process when one does not answer (as Stripe retries). The recorder's table
says what was applied, how often and in what order; ``stall_seconds`` reads
the longest time during which events waited and none was handled.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from engine.core.db import migrate
from engine.core.plugins import build_plugins
from engine.core.settings import load_settings
from engine.infra.nats_cluster import EmbeddedNatsCluster
from engine.infra.processes import find_free_port, port_accepts
from engine.testing.events import signed
from support.accounts import know_accounts
from support.recorder import create_schema
from support.stripe_events import event

TESTS = Path(__file__).resolve().parents[1]
MARKETPLACE = Path(sys.executable).with_name("marketplace")
ADMIN_KEY = "mk_clusteradmin_" + "c" * 40
CONNECT_SECRET = "whsec_cluster_connect"
PLATFORM_SECRET = "whsec_cluster_platform"
RULES = '[[plugins.commission_rules.rules]]\nid = "default"\nrate_bps = 1000\n'


def _config(database_url: str, nats_urls: Sequence[str], stream: str) -> str:
    servers = ", ".join(f'"{url}"' for url in nats_urls)
    return f"""
[engine]
live_settings_poll_seconds = 2.0

[api]
bootstrap_admin_key = "{ADMIN_KEY}"

[database]
url = "{database_url}"
pool_min = 1
pool_max = 6

[nats]
url = [{servers}]
stream = "{stream}"
replicas = 3

[stripe]
secret_key = "sk_test_cluster"
api_base = "http://127.0.0.1:{find_free_port()}"
max_network_retries = 0
webhook_secrets = ["{PLATFORM_SECRET}"]
connect_webhook_secrets = ["{CONNECT_SECRET}"]

[webhooks]
lease_seconds = 10
sweep_interval_seconds = 0.5
backoff_base_seconds = 0.05
backoff_max_seconds = 0.5

[worker]
concurrency = 16
heartbeat_seconds = 1.0

[plugins]
enabled = ["commission_rules"]

{RULES}"""


@dataclass
class Process:
    """One API or worker process, its log and how to start it again."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str]
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """The running processes and what the test needs to reach them."""

    nats: EmbeddedNatsCluster
    apis: list[Process]
    workers: list[Process]
    database_url: str
    stream: str
    failed_sends: int = 0
    _next: itertools.cycle[int] = field(default_factory=lambda: itertools.cycle(range(64)))

    async def wait_ready(self, seconds: float = 180.0) -> None:
        """Until every API process answers /ready (its worker check off) on its port."""
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=5) as client:
            for api in self.apis:
                while True:
                    try:
                        if (await client.get(f"{api.url}/ready")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{api.name} not ready; see {api.log}")
                    await asyncio.sleep(0.2)

    async def send(self, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        """Deliver one event like Stripe: to some API process, retried until one answers 2xx."""
        payload, headers = signed(body, CONNECT_SECRET)
        for attempt in range(600):
            api = self.apis[(next(self._next) + attempt) % len(self.apis)]
            try:
                response = await client.post(
                    f"{api.url}/webhooks/stripe/connect", content=payload, headers=headers
                )
                if response.status_code < 300:
                    return
            except httpx.HTTPError:
                pass
            self.failed_sends += 1
            await asyncio.sleep(0.05)
        raise AssertionError(f"no API process took event {body['id']}")

    async def flood(self, accounts: int, per_account: int, *, prefix: str = "acct_flood") -> int:
        """Send ``per_account`` events to each of ``accounts``, in order per account."""
        names = [f"{prefix}_{n:03d}" for n in range(accounts)]
        conn = await asyncpg.connect(self.database_url)
        try:
            await know_accounts(conn, names)  # the platform's accounts, as onboarding stores them
        finally:
            await conn.close()
        async with httpx.AsyncClient(timeout=10) as client:

            async def one(account: str) -> None:
                for seq in range(1, per_account + 1):
                    await self.send(client, event(account, seq))

            await asyncio.gather(*(one(name) for name in names))
        return accounts * per_account

    async def recorder(self) -> dict[str, int]:
        """Recorded events, second applications and out-of-order applications."""
        conn = await asyncpg.connect(self.database_url)
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS applied, COALESCE(sum(duplicates), 0) AS duplicates, "
                "count(*) FILTER (WHERE inversion) AS inversions FROM test_recorded"
            )
            dead = await conn.fetchval(
                "SELECT count(*) FROM marketplace_webhook_events WHERE status = 'dead'"
            )
        finally:
            await conn.close()
        return {
            "applied": int(row["applied"]),
            "duplicates": int(row["duplicates"]),
            "inversions": int(row["inversions"]),
            "dead": int(dead),
        }

    async def wait_applied(self, expected: int, seconds: float = 600.0) -> dict[str, int]:
        deadline = time.monotonic() + seconds
        while True:
            seen = await self.recorder()
            if seen["applied"] >= expected or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.5)

    async def stall_seconds(self) -> float:
        """The longest time during which some event waited and no event was handled."""
        conn = await asyncpg.connect(self.database_url)
        try:
            received = [
                r["at"].timestamp()
                for r in await conn.fetch(
                    "SELECT received_at AS at FROM marketplace_webhook_events ORDER BY 1"
                )
            ]
            handled = [
                r["at"].timestamp()
                for r in await conn.fetch("SELECT handled_at AS at FROM test_recorded ORDER BY 1")
            ]
        finally:
            await conn.close()
        return longest_stall(received, handled)


def longest_stall(received: Sequence[float], handled: Sequence[float]) -> float:
    """Longest gap between handlings (or from a receipt to the next handling) while a
    received event was still unhandled."""
    longest = 0.0
    waiting = 0
    last = None
    events = sorted([(t, 1) for t in received] + [(t, -1) for t in handled])
    for moment, change in events:
        if change == 1:
            if waiting == 0:
                last = moment
            waiting += 1
        else:
            if last is not None and waiting > 0:
                longest = max(longest, moment - last)
            waiting = max(0, waiting - 1)
            last = moment
    return longest


@asynccontextmanager
async def running_cluster(
    work: Path, database_url: str, stream: str, *, apis: int = 2, workers: int = 3
) -> AsyncIterator[Cluster]:
    """The whole deployment under ``work``; every process stopped at the end."""
    work.mkdir(parents=True, exist_ok=True)
    nats_cluster = EmbeddedNatsCluster(work / "nats", 3)
    await asyncio.to_thread(nats_cluster.start)
    config = work / "marketplace.toml"
    config.write_text(_config(database_url, nats_cluster.urls, stream), encoding="utf-8")
    settings = load_settings(config, environ={})
    await migrate(database_url, build_plugins(settings).table_apps())
    conn = await asyncpg.connect(database_url)
    try:
        await create_schema(conn)
    finally:
        await conn.close()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MARKETPLACE_")}
    env["PYTHONPATH"] = str(TESTS)
    api_processes = []
    for n in range(apis):
        port = find_free_port()
        api_processes.append(
            Process(
                f"api-{n}",
                [str(MARKETPLACE), "--config", str(config), "serve", "--port", str(port)],
                work / f"api-{n}.log",
                env,
                port,
            )
        )
    worker_processes = [
        Process(
            f"worker-{n}",
            [sys.executable, "-m", "support.cluster_worker", str(config)],
            work / f"worker-{n}.log",
            env,
        )
        for n in range(workers)
    ]
    cluster = Cluster(nats_cluster, api_processes, worker_processes, database_url, stream)
    try:
        for process in [*api_processes, *worker_processes]:
            process.start()
        await cluster.wait_ready()
        yield cluster
    finally:
        for process in [*api_processes, *worker_processes]:
            process.stop()
        await asyncio.to_thread(nats_cluster.stop)
        for api in api_processes:
            assert api.port is not None
            if port_accepts("127.0.0.1", api.port):
                raise AssertionError(f"{api.name} still listens after it was stopped")
