"""A seeded fault-injection harness for the webhook pipeline, and the invariants it checks.

In the spirit of TigerBeetle's simulator: a seed fixes a whole run (the events,
which of them fail, hang or are delivered twice, the delivery order, and a
schedule of faults), and after the run one checker decides:

1. every event's effect was applied exactly once (the handler's effect row
   counts its applications; only committed ones count);
2. order per mailbox key: effects committed in the order the events were
   accepted (``seq``), and an event is handled only after every earlier one;
3. nothing stranded: every event is handled, or dead, or waits behind a dead
   event of its own key;
4. dead letters only where a handler really failed: dead events are exactly
   ones whose handler always fails (``poison``), never ones that failed only
   a few times (``transient``), hung past their lease or met a crash;
5. after the poison is fixed and the parked keys replayed, every event is
   handled exactly once, in order.

Two levels share the scenario and the checker:

- ``simulate(seed, database_url)`` runs the real ``Mailbox`` (its SQL, leases,
  fencing and keeper) on real PostgreSQL with simulated workers, broker and
  clock, in one process: a step at a time, each step waiting until every
  drain has finished, waits at a hung handler's gate or waits on a database
  lock such a hung drain holds, and until every client has seen a cut
  connection, so that a seed replays the same run (``Report.schedule``;
  tokens are drawn from the seed, not from the order drains finished in; a
  lease or a backoff runs out only when a step says time passed). Faults:
  duplicated tokens, lost tokens (a deleted stream), reordered tokens,
  handlers hanging past their lease (the lease is expired and taken over
  meanwhile), renewals that find the lease gone, workers killed mid-drain
  (their backends terminated), database connections all cut at once (a
  PostgreSQL restart as the clients see it), intake calls failing or their
  answer lost after the commit, and redelivered.
- ``chaos(seed, ...)`` (``support.chaos``) runs the real processes: the
  intake, worker subprocesses over NATS JetStream, SIGKILL, NATS restarted,
  its stream deleted, PostgreSQL restarted. Timing there is the machine's, so
  a seed replays the same faults, not the same interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from engine.core.mailboxes import default_mailbox_key
from engine.testing.events import stripe_event
from engine.webhooks.mailbox import Mailbox
from support.accounts import know_accounts

log = logging.getLogger(__name__)

EVENT_TYPE = "harness.effect"
MAX_ATTEMPTS = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS harness_effects (
    event_id TEXT PRIMARY KEY,
    applied INT NOT NULL DEFAULT 1,
    worker TEXT NOT NULL,
    position BIGSERIAL
);
CREATE TABLE IF NOT EXISTS harness_poison (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS harness_transient (event_id TEXT PRIMARY KEY, remaining INT NOT NULL);
"""

RESET = """
TRUNCATE harness_effects, harness_poison, harness_transient,
         marketplace_webhook_events, marketplace_webhook_accounts RESTART IDENTITY
"""


# What a cut connection raises: the server's FATAL, a closed socket, or (asyncpg's
# first use of a pooled connection the server dropped) an internal client error.
CUT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class HandlerFailed(Exception):
    """What a harness handler raises when its event is meant to fail."""


class InvariantBroken(AssertionError):
    """A run broke an invariant; the message says which, with the seed."""


# ---------------------------------------------------------------- the scenario


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One event of a run and what its handler will do."""

    event_id: str
    account: str | None  # a Connect event's account (keyed by the engine's default)
    booking: int | None  # else a platform event keyed per booking by the harness's route
    poison: bool  # the handler always fails until the poison is cleared
    transient: int  # the handler fails this many times first (< MAX_ATTEMPTS)
    slow: bool  # the handler hangs (at a gate, or sleeping past the lease)

    def body(self) -> dict[str, Any]:
        """The Stripe event (its ``data.object.metadata`` tells the handler what to do)."""
        metadata: dict[str, str] = {}
        if self.booking is not None:
            metadata["booking"] = str(self.booking)
        if self.slow:
            metadata["slow"] = "1"
        return stripe_event(
            EVENT_TYPE,
            {"id": f"obj_{self.event_id}", "object": "harness", "metadata": metadata},
            account=self.account,
            event_id=self.event_id,
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a seed decides before the run starts."""

    seed: int
    events: tuple[PlannedEvent, ...]
    deliveries: tuple[str, ...]  # event ids in delivery order, duplicates included
    workers: int
    batch_size: int

    @property
    def poisoned(self) -> frozenset[str]:
        """Ids of the events whose handler always fails."""
        return frozenset(event.event_id for event in self.events if event.poison)


def route(event: Mapping[str, Any]) -> str:
    """The harness's mailbox keys: a booking's platform events per booking, else the engine's."""
    data = event.get("data") or {}
    metadata = (data.get("object") or {}).get("metadata") or {}
    booking = metadata.get("booking")
    if booking and not event.get("account"):
        return f"harness:booking:{booking}"
    return default_mailbox_key(event)


def plan(seed: int, *, slow_share: float = 0.15) -> Scenario:
    """The events, their fates and the delivery order a seed decides."""
    rng = random.Random(seed)
    keys: list[tuple[str | None, int | None]] = []
    for index in range(rng.randint(2, 6)):
        if rng.random() < 0.5:
            keys.append((f"acct_h{seed}k{index}", None))
        else:
            keys.append((None, index))
    events: list[PlannedEvent] = []
    for account, booking in keys:
        for _ in range(rng.randint(1, 10)):
            failing = rng.random()
            events.append(
                PlannedEvent(
                    event_id=f"evt_h{seed}_{len(events)}",
                    account=account,
                    booking=booking,
                    poison=failing < 0.05,
                    transient=rng.randint(1, MAX_ATTEMPTS - 1) if failing > 0.85 else 0,
                    slow=rng.random() < slow_share,
                )
            )
    deliveries = [event.event_id for event in events]
    deliveries += [event.event_id for event in events if rng.random() < 0.2]  # duplicates
    rng.shuffle(deliveries)  # Stripe does not deliver in order
    return Scenario(
        seed=seed,
        events=tuple(events),
        deliveries=tuple(deliveries),
        workers=rng.randint(2, 4),
        batch_size=rng.choice((1, 2, 3, 50)),
    )


async def prepare(conn: asyncpg.Connection, scenario: Scenario) -> None:
    """Empty the mailboxes and effects, then record which handlers fail.

    The scenario's connected accounts are stored as the platform's (real workers
    apply no event of an unknown account).
    """
    await conn.execute(RESET)
    await know_accounts(conn, [event.account for event in scenario.events if event.account])
    await conn.executemany(
        "INSERT INTO harness_poison (event_id) VALUES ($1)",
        [(event.event_id,) for event in scenario.events if event.poison],
    )
    await conn.executemany(
        "INSERT INTO harness_transient (event_id, remaining) VALUES ($1, $2)",
        [(event.event_id, event.transient) for event in scenario.events if event.transient],
    )


async def apply_effect(
    event: Mapping[str, Any], conn: asyncpg.Connection, aux: Any, worker: str
) -> None:
    """The handler's work once it decided to succeed; fails for poison and transient events.

    The transient counter is spent on ``aux`` (another connection, outside the
    drain's transaction) so a failure counts even though its transaction rolls back.
    """
    event_id = str(event["id"])
    if await conn.fetchval("SELECT 1 FROM harness_poison WHERE event_id = $1", event_id):
        raise HandlerFailed(f"{event_id} is poisoned")
    spent = await _spend_transient_failure(aux, event_id)
    if spent is not None:
        raise HandlerFailed(f"{event_id} fails transiently ({spent} more)")
    await conn.execute(
        "INSERT INTO harness_effects (event_id, worker) VALUES ($1, $2) "
        "ON CONFLICT (event_id) DO UPDATE SET applied = harness_effects.applied + 1",
        event_id,
        worker,
    )


async def _spend_transient_failure(aux: Any, event_id: str) -> int | None:
    """Count one planned failure down; a connection cut by a fault is retried, not counted
    (the handler's own failure is what is planned, not the harness's bookkeeping)."""
    for attempt in range(10):
        try:
            async with aux.acquire() as side:
                spent: int | None = await side.fetchval(
                    "UPDATE harness_transient SET remaining = remaining - 1 "
                    "WHERE event_id = $1 AND remaining > 0 RETURNING remaining",
                    event_id,
                )
                return spent
        except (
            OSError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            asyncpg.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError,
        ):
            await asyncio.sleep(0.01 * (attempt + 1))
    raise HandlerFailed("the harness's own connection kept failing")


# ---------------------------------------------------------------- the checker


@dataclass
class Verdict:
    """What the checker found in one phase."""

    handled: int = 0
    dead: int = 0
    pending: int = 0
    parked_keys: list[str] = field(default_factory=list)


async def check(conn: asyncpg.Connection, scenario: Scenario, *, replayed: bool) -> Verdict:
    """Check every invariant of the module docstring; raise ``InvariantBroken`` naming the seed."""
    problems: list[str] = []
    rows = await conn.fetch(
        "SELECT event_id, account, status, seq, id FROM marketplace_webhook_events "
        "ORDER BY account, seq NULLS FIRST, id"
    )
    effects = {
        row["event_id"]: row
        for row in await conn.fetch("SELECT event_id, applied, position FROM harness_effects")
    }
    parked = {
        row["account"]
        for row in await conn.fetch("SELECT account FROM marketplace_webhook_accounts WHERE parked")
    }
    planned = {event.event_id for event in scenario.events}
    stored = Counter(row["event_id"] for row in rows)
    if set(stored) != planned:
        problems.append(f"inbox holds {sorted(set(stored) ^ planned)} wrongly (missing or unknown)")
    if any(count > 1 for count in stored.values()):
        problems.append("an event is stored twice")
    twice = sorted(event_id for event_id, row in effects.items() if row["applied"] != 1)
    if twice:
        problems.append(f"effects applied more than once: {twice}")
    by_key: dict[str, list[Any]] = {}
    for row in rows:
        by_key.setdefault(row["account"], []).append(row)
    verdict = Verdict(parked_keys=sorted(parked))
    for key, events in by_key.items():
        statuses = [row["status"] for row in events]
        handled = [row["event_id"] for row in events if row["status"] == "handled"]
        verdict.handled += len(handled)
        verdict.dead += statuses.count("dead")
        verdict.pending += statuses.count("pending")
        with_effect = [row["event_id"] for row in events if row["event_id"] in effects]
        if with_effect != handled:
            problems.append(f"{key}: effects {with_effect} but handled {handled}")
        positions = [effects[event_id]["position"] for event_id in handled if event_id in effects]
        if positions != sorted(positions):
            problems.append(f"{key}: applied out of order: {handled} at {positions}")
        first_open = len(handled)
        if statuses[:first_open] != ["handled"] * first_open:
            problems.append(f"{key}: handled after an unhandled event: {statuses}")
        rest = statuses[first_open:]
        if rest:
            if replayed:
                problems.append(f"{key}: {rest} left after the replay")
            elif rest[0] != "dead" or any(status != "pending" for status in rest[1:]):
                problems.append(f"{key}: stranded or blocked without a dead letter: {rest}")
            elif key not in parked:
                problems.append(f"{key}: has a dead letter but is not parked")
            elif events[first_open]["event_id"] not in scenario.poisoned:
                problems.append(
                    f"{key}: {events[first_open]['event_id']} dead but its handler only "
                    "failed transiently, hung or met a crash"
                )
        elif key in parked:
            problems.append(f"{key}: parked with nothing dead")
    if problems:
        raise InvariantBroken(
            f"seed {scenario.seed}: "
            + "; ".join(problems[:12])
            + (f" (+{len(problems) - 12} more)" if len(problems) > 12 else "")
        )
    return verdict


# ---------------------------------------------------------------- the simulation


class _Broker:
    """Drain tokens as JetStream would hold them, with the faults the seed asks for."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.tokens: list[str] = []

    def publish(self, key: str) -> None:
        self.tokens.append(key)

    def take(self) -> str:
        # Any order, drawn from the seed alone: sorted first, so the order in which
        # concurrent drains happened to publish does not decide which comes next.
        self.tokens.sort()
        return self.tokens.pop(self._rng.randrange(len(self.tokens)))

    def duplicate(self) -> None:
        self.tokens.append(self._rng.choice(sorted(self.tokens)))


class _SimWorker:
    """One worker process: one drain at a time, its own pool, its own lease keeper."""

    def __init__(self, sim: _Simulation, name: str, *, shared: bool = False) -> None:
        self.sim = sim
        self.name = name
        self.shared = shared
        """Batched drains in one transaction (the worker's way) rather than one per key."""
        self.pool: asyncpg.Pool | None = None
        self.mailbox: Mailbox | None = None
        self.task: asyncio.Task[None] | None = None
        self.at_gate: str | None = None
        self.draining: list[str] | None = None

    async def start(self) -> None:
        url = self.sim.database_url
        settings = {"application_name": self.name}
        self.pool = await asyncpg.create_pool(url, min_size=1, max_size=3, server_settings=settings)
        keeper_settings = {"application_name": f"{self.name}-keeper"}
        self.mailbox = Mailbox(
            self.pool,
            max_attempts=MAX_ATTEMPTS,
            backoff_base=300,  # backoffs pass only when the schedule says so
            backoff_cap=300,
            batch_size=self.sim.scenario.batch_size,
            lease_seconds=300,  # time passes only when the schedule says so
            route=route,
            renew_with=lambda: asyncpg.connect(url, server_settings=keeper_settings),
        )
        self.mailbox.keeper.autorenew = False

    @property
    def idle(self) -> bool:
        return self.task is None or self.task.done()

    def drain(self, keys: list[str]) -> None:
        """Drain ``keys``: one alone (``Mailbox.drain``), several batched (``drain_many``)."""
        self.draining = keys
        self.task = asyncio.create_task(self._drain(keys))

    async def _drain(self, keys: list[str]) -> None:
        assert self.mailbox is not None
        try:
            if len(keys) == 1:
                outcomes = {keys[0]: await self.mailbox.drain(keys[0], self.name, self._handle)}
            else:
                # One key after the other (``at_once=1``, or ``shared``: the keys in one
                # transaction): a step's wait for quiet then sees each worker's one
                # transaction at a time, so a seed replays.
                outcomes = await self.mailbox.drain_many(
                    keys, self.name, self._handle, at_once=1, shared=self.shared
                )
        except CUT as exc:
            # The connection was cut (a "restart"): like taskiq, the tokens are gone.
            self.sim.count(f"drain error {type(exc).__name__}")
            return
        finally:
            self.draining = None
        if len(keys) > 1:
            self.sim.count("batched drain")
            if self.shared:
                self.sim.count("shared drain")
        for key, outcome in outcomes.items():
            self.sim.count(f"drain {outcome.state}")
            if outcome.state == "requeue":
                self.sim.broker.publish(key)

    async def _handle(self, event: Mapping[str, Any], conn: asyncpg.Connection) -> None:
        event_id = str(event["id"])
        metadata = event["data"]["object"]["metadata"]
        gate = self.sim.gates.get(event_id)
        if metadata.get("slow") and gate is not None and not gate.is_set():
            self.at_gate = event_id
            try:
                await gate.wait()
            finally:
                self.at_gate = None
        await apply_effect(event, conn, self.sim.aux, self.name)

    async def kill(self) -> None:
        """SIGKILL, as PostgreSQL sees it: the backends go, the transaction rolls back.

        The drain is stopped once its connections are seen closed, so that what it
        met (an error on its connection, or nothing yet) is the seed's, not the timing's.
        """
        connections = [
            holder._con  # the pool's own connection, to see it closed
            for holder in (self.pool._holders if self.pool is not None else ())
            if holder._con is not None
        ]
        if self.mailbox is not None and self.mailbox.keeper._conn is not None:
            connections.append(self.mailbox.keeper._conn)
        await self.sim.terminate(f"application_name IN ('{self.name}', '{self.name}-keeper')")
        for _ in range(5000):
            if all(con.is_closed() for con in connections):
                break
            await asyncio.sleep(0.001)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.pool is not None:
            self.pool.terminate()


class _Simulation:
    def __init__(self, scenario: Scenario, database_url: str, checker: asyncpg.Connection) -> None:
        self.scenario = scenario
        self.database_url = database_url
        self.checker = checker
        self.rng = random.Random(scenario.seed * 7919 + 1)
        self.broker = _Broker(self.rng)
        self.gates = {event.event_id: asyncio.Event() for event in scenario.events if event.slow}
        self.counts: Counter[str] = Counter()
        self.schedule: list[list[str]] = [[]]
        """Each step's action, then what it led to (sorted: drains finishing in one step
        may end in any order), for ``Report.schedule``."""
        self.workers: list[_SimWorker] = []
        self.generation = 0
        self.intake: Mailbox | None = None
        self.intake_pool: asyncpg.Pool | None = None
        self.aux: asyncpg.Pool | None = None
        self.bodies = {event.event_id: event.body() for event in scenario.events}
        self.to_deliver = list(scenario.deliveries)

    def count(self, what: str) -> None:
        self.counts[what] += 1
        self.schedule[-1].append(what)

    async def start(self) -> None:
        url = self.database_url
        self.intake_pool = await asyncpg.create_pool(
            url, min_size=1, max_size=2, server_settings={"application_name": "harness-intake"}
        )
        self.aux = await asyncpg.create_pool(
            url, min_size=1, max_size=4, server_settings={"application_name": "harness-aux"}
        )
        self.intake = Mailbox(self.intake_pool, route=route)
        for _ in range(self.scenario.workers):
            self.workers.append(await self._new_worker())

    async def _new_worker(self) -> _SimWorker:
        self.generation += 1
        # Every other worker drains its batches in one shared transaction, as the
        # engine's worker does; the others key by key (both ways under the same faults).
        worker = _SimWorker(self, f"harness-w{self.generation}", shared=self.generation % 2 == 1)
        await worker.start()
        return worker

    async def stop(self) -> None:
        for gate in self.gates.values():
            gate.set()
        for worker in self.workers:
            await worker.kill()
        for pool in (self.intake_pool, self.aux):
            if pool is not None:
                pool.terminate()

    async def terminate(self, where: str) -> None:
        # Only this database's backends, never the checker's own.
        await self.checker.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608 - the harness's own fragments
            f"WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
        )

    async def expire_leases(self, where: str = "true") -> None:
        """Time passes: the matching leases run out."""
        await self.checker.execute(
            "UPDATE marketplace_webhook_accounts SET lease_until = now() - interval '1 second' "  # noqa: S608 - the harness's own fragments
            f"WHERE lease_until IS NOT NULL AND {where}"
        )

    async def pass_backoffs(self) -> None:
        """Time passes: every backoff runs out (the sweeper then hands those keys on)."""
        await self.checker.execute(
            "UPDATE marketplace_webhook_accounts SET backoff_until = now() - interval '1 second' "
            "WHERE backoff_until IS NOT NULL"
        )

    async def cut_every_connection(self) -> None:
        """Terminate every client's backend (a restart, as clients see it), and wait until
        each client has seen it: its connection closed, its pool back to its floor.

        asyncpg sees a terminated backend when the loop reads the closed socket, and a
        pool then reconnects its floor in the background; a step taken before either
        would meet a dead connection (an error) or a new one by timing. Waiting here
        makes every seed's run take the same path.
        """
        cut = [con for con in self._clients() if con is not None and not con.is_closed()]
        await self.terminate("true")
        pools = [self.intake_pool, self.aux, *(worker.pool for worker in self.workers)]
        for _ in range(5000):
            if all(con.is_closed() for con in cut) and all(
                pool is None
                or (
                    pool._maintenance_task is None  # the floor's reconnection
                    and pool.get_size() >= pool.get_min_size()
                )
                for pool in pools
            ):
                return
            await asyncio.sleep(0.001)
        raise InvariantBroken(f"seed {self.scenario.seed}: the clients never saw the cut")

    def _clients(self) -> list[Any]:
        """The harness's client connections (pools' and keepers'), open or not."""
        pools = [self.intake_pool, self.aux, *(worker.pool for worker in self.workers)]
        clients: list[Any] = [
            holder._con  # the pool's own connection, to see it closed
            for pool in pools
            if pool is not None
            for holder in pool._holders
        ]
        clients += [
            worker.mailbox.keeper._conn for worker in self.workers if worker.mailbox is not None
        ]
        return clients

    async def _let_cancellations_land(self) -> None:
        """Let a drain whose deadline was just moved to now be cancelled and unwind."""
        for _ in range(20):
            await asyncio.sleep(0)

    # ------------------------------------------------------------ steps

    async def deliver(self) -> None:
        event_id = self.to_deliver.pop(0)
        body = self.bodies[event_id]
        assert self.intake is not None
        answer_lost = self.rng.random() < 0.05
        try:
            accepted = await self.intake.accept(body, json.dumps(body))
        except CUT:
            answer_lost, accepted = True, None
        if answer_lost:
            # A non-2xx answer (the intake died after its commit, before its publish, or
            # its connection was cut): Stripe delivers again later.
            self.to_deliver.insert(self.rng.randint(0, len(self.to_deliver)), event_id)
            self.count("intake error")
            return
        if accepted is not None and accepted.publish:
            self.broker.publish(accepted.account)

    async def quiet(self) -> None:
        """Wait until each drain has finished, waits at a gate, or waits on a database lock
        held by a drain that waits at a gate (directly, or through other such waits).

        A lock wait counts only when what it waits for cannot end by itself: a wait on
        a transaction that is about to finish would end by timing, during the next step.
        """
        for _ in range(5000):
            busy = [w for w in self.workers if not w.idle and w.at_gate is None]
            if not busy:
                return
            rows = await self.checker.fetch(
                "SELECT pid, application_name, wait_event_type = 'Lock' AS waits, "
                "pg_blocking_pids(pid) AS blockers FROM pg_stat_activity "
                "WHERE datname = current_database()"
            )
            name_of = {row["pid"]: row["application_name"] for row in rows}
            held = {w.name for w in self.workers if w.at_gate is not None}
            waiting = {row["application_name"]: row for row in rows if row["waits"]}
            stuck = set(held)
            grew = True
            while grew:  # waits on the gated, or on those waiting on them
                grew = False
                for name, row in waiting.items():
                    if (
                        name not in stuck
                        and row["blockers"]
                        and all(name_of.get(pid) in stuck for pid in row["blockers"])
                    ):
                        stuck.add(name)
                        grew = True
            if all(worker.name in stuck for worker in busy):
                return
            await asyncio.sleep(0.002)
        raise InvariantBroken(
            f"seed {self.scenario.seed}: a drain neither finished, hung at its gate, "
            f"nor waited on a lock a hung drain holds for 10 s: "
            f"{[w.draining for w in self.workers]}"
        )

    def _choices(self) -> list[tuple[str, float]]:
        idle = [w for w in self.workers if w.idle]
        at_gate = [w for w in self.workers if w.at_gate is not None]
        choices: list[tuple[str, float]] = []
        if self.to_deliver:
            choices.append(("deliver", 5))
        if self.broker.tokens and idle:
            choices.append(("drain", 5))
        if at_gate:
            choices += [("release", 2), ("expire and take over", 1.5), ("renew", 1)]
        if self.broker.tokens:
            choices += [("duplicate token", 0.4), ("lose tokens", 0.15)]
        choices += [
            ("sweep", 1),
            ("backoffs pass", 0.5),
            ("kill worker", 0.3),
            ("cut connections", 0.08),
        ]
        return choices

    async def step(self) -> str:
        choices = self._choices()
        action = self.rng.choices([c[0] for c in choices], [c[1] for c in choices])[0]
        self.schedule.append([])
        self.count(action)
        if action == "deliver":
            await self.deliver()
        elif action == "drain":
            worker = self.rng.choice([w for w in self.workers if w.idle])
            worker.drain(self.take_some())
        elif action == "release":
            worker = self.rng.choice([w for w in self.workers if w.at_gate is not None])
            self.gates[worker.at_gate or ""].set()
            worker.at_gate = None  # busy again: the next quiet waits for it
        elif action == "expire and take over":
            # The handler hangs past its lease (a slow Stripe call, a paused VM).
            worker = self.rng.choice([w for w in self.workers if w.at_gate is not None])
            await self.expire_leases(f"lease_owner = '{worker.name}'")
            for key in worker.draining or ():
                self.broker.publish(key)
        elif action == "renew":
            worker = self.rng.choice([w for w in self.workers if w.at_gate is not None])
            assert worker.mailbox is not None
            await worker.mailbox.keeper.renew()
            await self._let_cancellations_land()
        elif action == "duplicate token":
            self.broker.duplicate()
        elif action == "lose tokens":
            self.broker.tokens.clear()  # the stream was deleted, NATS restarted empty
        elif action == "sweep":
            await self.sweep()
        elif action == "backoffs pass":
            await self.pass_backoffs()
        elif action == "kill worker":
            index = self.rng.randrange(len(self.workers))
            victim = self.workers[index]
            await victim.kill()
            await self.expire_leases(f"lease_owner = '{victim.name}'")
            self.workers[index] = await self._new_worker()
        elif action == "cut connections":
            await self.cut_every_connection()
            await self.quiet()
            await self.expire_leases()
        return action

    def take_some(self) -> list[str]:
        """One to three tokens, as a batched drain takes the keys it was handed."""
        count = self.rng.randint(1, min(3, len(self.broker.tokens)))
        return [self.broker.take() for _ in range(count)]

    async def sweep(self) -> None:
        assert self.intake is not None
        try:
            swept = await self.intake.sweep(0)  # as if the stale delay had passed
        except CUT:
            self.count("sweep error")
            return
        for key in swept:
            self.broker.publish(key)

    async def settle(self, max_rounds: int = 3000) -> None:
        """Stop injecting faults and run until nothing more can be done."""
        for gate in self.gates.values():
            gate.set()
        for worker in self.workers:
            worker.at_gate = None
        while self.to_deliver:
            await self.deliver()
        idle_rounds = 0
        for _ in range(max_rounds):
            await self.quiet()
            idle = [w for w in self.workers if w.idle]
            if self.broker.tokens and idle:
                # One drain started per round, after the quiet: no two start racing.
                idle[0].drain(self.take_some())
                idle_rounds = 0
                continue
            if len(idle) < len(self.workers):
                await asyncio.sleep(0.001)
                continue
            # Everything is idle: let time pass (dead drains' leases and backoffs run
            # out), then sweep as the sweeper would.
            await self.expire_leases()
            await self.pass_backoffs()
            await self.sweep()
            if self.broker.tokens:
                idle_rounds = 0
                continue
            idle_rounds += 1
            if idle_rounds >= 3:
                return
        raise InvariantBroken(f"seed {self.scenario.seed}: the run never settled")


@dataclass
class Report:
    """What one seed did and found."""

    seed: int
    events: int
    deliveries: int
    workers: int
    steps: Counter[str]
    before_replay: Verdict
    after_replay: Verdict
    schedule: tuple[str, ...] = ()
    """The simulation's steps in order, each followed by what it led to: the same for a
    seed run twice (what ``python scripts/fault_harness.py --seed N`` relies on). Empty
    for a chaos run, whose timing is the machine's."""

    def line(self) -> str:
        faults = ", ".join(f"{name} {count}" for name, count in sorted(self.steps.items()))
        return (
            f"seed {self.seed}: {self.events} events, {self.deliveries} deliveries, "
            f"{self.workers} workers; dead {self.before_replay.dead}, parked "
            f"{len(self.before_replay.parked_keys)}, then all {self.after_replay.handled} "
            f"handled once in order [{faults}]"
        )


async def simulate(seed: int, database_url: str, *, steps: int | None = None) -> Report:
    """Run one seed's simulation on ``database_url`` (migrated, harness schema created).

    Raises ``InvariantBroken`` naming the seed when an invariant does not hold.
    """
    scenario = plan(seed)
    checker = await asyncpg.connect(database_url, server_settings={"application_name": "checker"})
    sim = _Simulation(scenario, database_url, checker)
    try:
        await prepare(checker, scenario)
        await sim.start()
        for _ in range(steps if steps is not None else 4 * len(scenario.deliveries) + 10):
            await sim.step()
            await sim.quiet()
        await sim.settle()
        before = await check(checker, scenario, replayed=False)
        await checker.execute("DELETE FROM harness_poison")
        assert sim.intake is not None
        for key in before.parked_keys:
            for replayed in await sim.intake.replay(account=key):
                sim.broker.publish(replayed)
        await sim.settle()
        after = await check(checker, scenario, replayed=True)
    finally:
        await sim.stop()
        await checker.close()
    return Report(
        seed=seed,
        events=len(scenario.events),
        deliveries=len(scenario.deliveries),
        workers=scenario.workers,
        steps=sim.counts,
        schedule=tuple(item for step in sim.schedule for item in (step[:1] + sorted(step[1:]))),
        before_replay=before,
        after_replay=after,
    )


async def create_schema(conn: asyncpg.Connection) -> None:
    """The harness's tables (next to a migrated engine database)."""
    await conn.execute(SCHEMA)


def summarise(reports: Sequence[Report]) -> str:
    """Totals over many seeds."""
    steps: Counter[str] = Counter()
    for report in reports:
        steps.update(report.steps)
    events = sum(report.events for report in reports)
    dead = sum(report.before_replay.dead for report in reports)
    return (
        f"{len(reports)} seeds, {events} events, {dead} dead letters (all poisoned), "
        f"steps: {dict(sorted(steps.items()))}"
    )
