"""The fault harness with real processes: the intake, worker subprocesses, NATS, PostgreSQL.

``run(seed, work)`` starts its own PostgreSQL and NATS under ``work``, the
webhook intake in this process and worker subprocesses
(``support.chaos_worker``), then delivers the seed's events (duplicated, out
of order, several at once, retried like Stripe when the intake cannot answer)
in rounds, with one fault between rounds, drawn from the seed: a worker
killed with SIGKILL (and a fresh one started), NATS restarted, the JetStream
stream deleted, PostgreSQL restarted (stopped cleanly or killed). Like a
process manager, the harness restarts a worker that exits by itself. Some
handlers sleep longer than the lease (2 s), so their leases must be renewed.
When the pipeline has settled, ``support.faults.check`` judges, the poison is
cleared, the parked keys are replayed through the admin path, and it judges
again. The machine decides the timing, so a seed replays the same faults,
not the same interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import nats

from engine.core.contributions import StripeEvent, WebhookRegistration
from engine.core.db import migrate
from engine.core.plugins import Plugins, build_plugins, hookimpl
from engine.core.settings import Settings, settings_from_mapping
from engine.infra.nats_server import EmbeddedNats
from engine.infra.postgres import EmbeddedPostgres
from engine.observability import Metrics
from engine.services import Services
from engine.testing.events import signed
from engine.webhooks.service import WebhookService
from support import faults

TESTS = Path(__file__).resolve().parents[1]
SECRET = "whsec_chaos"
LEASE_SECONDS = 2
FAULTS = ("kill worker", "restart nats", "delete stream", "restart postgres", "kill postgres")


class HarnessPlugin:
    """The harness as a plugin: its events' mailbox keys and its effect handler."""

    @hookimpl
    def resolve_mailbox_key(self, event: StripeEvent) -> str | None:
        key = faults.route(event)
        return key if key.startswith("harness:") else None

    @hookimpl
    def register_webhook_handlers(self, register: Callable[[WebhookRegistration], None]) -> None:
        register(WebhookRegistration(faults.EVENT_TYPE, _handle, "harness.effect"))


async def _handle(event: StripeEvent, ctx: Any) -> None:
    if event["data"]["object"]["metadata"].get("slow"):
        await asyncio.sleep(LEASE_SECONDS * 1.5)  # past the lease: it must be renewed
    await faults.apply_effect(event, ctx.conn, ctx.services.db.pool, str(os.getpid()))


def settings(database_url: str, nats_url: str, stream: str, batch_size: int) -> Settings:
    """The same settings for the intake and every worker."""
    return settings_from_mapping(
        {
            "database": {"url": database_url, "pool_max": 6},
            "nats": {"url": nats_url, "stream": stream},
            "stripe": {
                "webhook_secrets": [SECRET],
                "connect_webhook_secrets": [SECRET],
                "max_network_retries": 0,
                "timeout_seconds": 1.0,
            },
            "webhooks": {
                "max_attempts": faults.MAX_ATTEMPTS,
                "backoff_base_seconds": 0.05,
                "backoff_max_seconds": 0.2,
                "sweep_interval_seconds": 0.2,
                "lease_seconds": LEASE_SECONDS,
                "batch_size": batch_size,
            },
            "worker": {"concurrency": 8},
            "plugins": {"enabled": ["harness"]},
        }
    )


def plugins(configured: Settings) -> Plugins:
    """Plugins with the harness enabled."""
    return build_plugins(configured, extra={"harness": HarnessPlugin()})


class _Workers:
    def __init__(self, args: list[str], logs: Path) -> None:
        self._args = args
        self._logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{TESTS.parent}"}
        self.started += 1
        with (self._logs / f"worker-{self.started}.log").open("wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "support.chaos_worker", *self._args],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def kill(self, rng: random.Random) -> None:
        alive = [p for p in self.processes if p.poll() is None]
        victim = rng.choice(alive)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.processes.remove(victim)

    async def supervise(self, counts: Counter[str]) -> None:
        """Restart a worker that exited by itself, as a process manager would (a worker
        that cannot reach PostgreSQL while it starts exits)."""
        while True:
            for process in list(self.processes):
                if process.poll() is not None:
                    self.processes.remove(process)
                    counts["worker exited, restarted"] += 1
                    self.start()
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _Run:
    def __init__(self, seed: int, work: Path) -> None:
        self.seed = seed
        self.work = work
        self.scenario = faults.plan(seed, slow_share=0.08)
        self.rng = random.Random(seed * 104729 + 3)
        # Durable settings: the intake's commits must survive PostgreSQL being killed.
        self.postgres = EmbeddedPostgres(work / "pg", fast=False)
        self.nats = EmbeddedNats(work / "nats")
        self.stream = f"CHAOS{seed}"
        self.counts: Counter[str] = Counter()
        self.settings: Settings | None = None
        self.services: Services | None = None
        self.webhooks: WebhookService | None = None

    @contextlib.asynccontextmanager
    async def servers(self) -> AsyncIterator[None]:
        await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(self.nats.start)
        try:
            yield
        finally:
            await asyncio.to_thread(self.nats.stop)
            await asyncio.to_thread(self.postgres.stop)

    async def deliver(self, event_id: str, bodies: Mapping[str, dict[str, Any]]) -> None:
        """Deliver like Stripe: anything but a 2xx is tried again, later."""
        assert self.webhooks is not None
        body = bodies[event_id]
        for attempt in range(200):
            payload, headers = signed(body, SECRET)
            try:
                await self.webhooks.intake.receive(
                    payload, headers["Stripe-Signature"], connect=bool(body.get("account"))
                )
                return
            except Exception:  # a 5xx to Stripe: it retries
                self.counts["intake retried"] += 1
                await asyncio.sleep(min(1.0, 0.05 * (attempt + 1)))
        raise faults.InvariantBroken(f"seed {self.seed}: {event_id} was never accepted")

    async def fault(self, name: str, workers: _Workers) -> None:
        self.counts[name] += 1
        if name == "kill worker":
            workers.kill(self.rng)
            workers.start()
        elif name == "restart nats":
            await asyncio.to_thread(self.nats.restart)
        elif name == "delete stream":
            client = await nats.connect(self.nats.url)
            try:
                await client.jetstream().delete_stream(self.stream)
            except Exception:  # already gone: the fault happened anyway
                self.counts["stream already gone"] += 1
            finally:
                await client.close()
        elif name in {"restart postgres", "kill postgres"}:
            await asyncio.to_thread(self.postgres.restart, hard=name == "kill postgres")

    async def settled(self, conn: asyncpg.Connection, timeout: float) -> None:
        """Until no event is pending outside a parked key (or ``timeout`` passes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            open_events = await conn.fetchval(
                """
                SELECT count(*) FROM marketplace_webhook_events e
                WHERE e.status = 'pending' AND NOT EXISTS (
                    SELECT 1 FROM marketplace_webhook_events d
                    WHERE d.account = e.account AND d.status = 'dead')
                """
            )
            if open_events == 0:
                return
            await asyncio.sleep(0.2)

    async def connect(self) -> asyncpg.Connection:
        for _ in range(100):
            try:
                return await asyncpg.connect(self.postgres.url)
            except (OSError, asyncpg.PostgresError):
                await asyncio.sleep(0.2)
        return await asyncpg.connect(self.postgres.url)


async def run(seed: int, work: Path, *, every_fault: bool = False) -> faults.Report:
    """One chaos run; ``every_fault`` makes its faults one of each kind, in the seed's order."""
    work.mkdir(parents=True, exist_ok=True)
    chaos = _Run(seed, work)
    scenario = chaos.scenario
    if every_fault:
        schedule = list(FAULTS)
        chaos.rng.shuffle(schedule)
    else:
        schedule = [chaos.rng.choice((*FAULTS, "none")) for _ in range(chaos.rng.randint(2, 4))]
    async with chaos.servers():
        configured = settings(chaos.postgres.url, chaos.nats.url, chaos.stream, scenario.batch_size)
        chaos.settings = configured
        built = plugins(configured)
        await migrate(chaos.postgres.url, built.table_apps())
        conn = await asyncpg.connect(chaos.postgres.url)
        try:
            await faults.create_schema(conn)
            await faults.prepare(conn, scenario)
        finally:
            await conn.close()
        chaos.services = await Services.start(configured, plugins=built)
        chaos.webhooks = await WebhookService.start(chaos.services, Metrics())
        workers = _Workers(
            [chaos.postgres.url, chaos.nats.url, chaos.stream, str(scenario.batch_size)],
            work,
        )
        supervising: asyncio.Task[None] | None = None
        try:
            for _ in range(scenario.workers):
                workers.start()
            supervising = asyncio.create_task(workers.supervise(chaos.counts))
            bodies = {event.event_id: event.body() for event in scenario.events}
            deliveries = list(scenario.deliveries)
            rounds = len(schedule) + 1
            size = max(1, -(-len(deliveries) // rounds))
            for index in range(rounds):
                # Each fault strikes while a round of deliveries is under way.
                fault = schedule[index - 1] if index else "none"
                striking = (
                    asyncio.create_task(chaos.fault(fault, workers)) if fault != "none" else None
                )
                batch = deliveries[index * size : (index + 1) * size]
                for start in range(0, len(batch), 8):  # several at once, same keys included
                    await asyncio.gather(
                        *(chaos.deliver(event_id, bodies) for event_id in batch[start : start + 8])
                    )
                if striking is not None:
                    await striking
            conn = await chaos.connect()
            try:
                await chaos.settled(conn, timeout=180)
                before = await faults.check(conn, scenario, replayed=False)
                await conn.execute("DELETE FROM harness_poison")
                for key in before.parked_keys:
                    await chaos.webhooks.replay(account=key)
                await chaos.settled(conn, timeout=120)
                after = await faults.check(conn, scenario, replayed=True)
            finally:
                await conn.close()
        finally:
            if supervising is not None:
                supervising.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervising
            workers.stop()
            await chaos.webhooks.close()
            await chaos.services.close()
    chaos.counts["worker processes"] = workers.started
    return faults.Report(
        seed=seed,
        events=len(scenario.events),
        deliveries=len(scenario.deliveries),
        workers=scenario.workers,
        steps=chaos.counts,
        before_replay=before,
        after_replay=after,
    )
