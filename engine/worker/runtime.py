"""The worker process: batched mailbox drains fed from JetStream, plus the sweeper.

``run_worker(settings)`` builds the services, the broker (as a worker) and the
dispatcher from the enabled plugins, registers the drain task and runs the
token receiver (``engine.worker.batching``: drain tokens batched into drains,
plugins' tasks to taskiq's receiver) and the sweeper until stopped. ``Scheduler`` is the publishing
half used by the API (and by the worker to re-queue an account at the back).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from prometheus_client import start_http_server
from taskiq import Context, TaskiqDepends

from engine.core.contributions import PeriodicTask
from engine.core.plugins import Plugins
from engine.core.settings import Settings
from engine.observability import Metrics, log_context
from engine.payments.payouts import payout_refresh_task
from engine.services import Services
from engine.supervision import restarting
from engine.webhooks.mailbox import DrainOutcome, Mailbox
from engine.webhooks.screening import UnknownConnectedAccount, ensure_applicable, live_key
from engine.webhooks.setup import warn_about_endpoint_versions
from engine.webhooks.versions import ensure_engine_version
from engine.worker.batching import DrainBatcher, TokenReceiver
from engine.worker.broker import DRAIN_TASK, MailboxBroker
from engine.worker.dispatch import Dispatcher
from engine.worker.handlers import core_fallbacks, core_registrations
from engine.worker.heartbeat import Heartbeat
from engine.worker.periodic import run_periodic

__all__ = [
    "Scheduler",
    "Worker",
    "make_broker",
    "make_mailbox",
    "periodic_tasks",
    "register_plugin_tasks",
    "run_worker",
]

log = logging.getLogger(__name__)

_KNOWN_ACCOUNTS_CACHED = 100_000
"""Bound of a worker's cache of known connected accounts (cleared when full)."""


async def _drain_account(account: str, context: Context = TaskiqDepends()) -> str:  # noqa: B008 - taskiq injects by default value
    """taskiq task: drain one account's mailbox (the worker is in broker state)."""
    worker: Worker = context.state.worker
    return await worker.drain(account)


def make_broker(settings: Settings) -> MailboxBroker:
    """A broker for ``settings.nats`` with the drain task registered."""
    broker = MailboxBroker(
        settings.nats.servers,
        stream=settings.nats.stream,
        replicas=settings.nats.replicas,
        ack_wait_seconds=max(300.0, float(settings.webhooks.lease_seconds) * 2),
        max_ack_pending=max(1000, settings.worker.concurrency * 8),
    )
    broker.register_task(_drain_account, task_name=DRAIN_TASK)
    return broker


def register_plugin_tasks(broker: MailboxBroker, plugins: Plugins) -> None:
    """Register every enabled plugin's ``register_tasks`` functions on ``broker``."""
    for name, function in plugins.tasks():
        broker.register_task(function, task_name=name)


def periodic_tasks(services: Services) -> list[PeriodicTask]:
    """The periodic tasks a worker runs: the engine's own, then every enabled plugin's.

    The engine's: ``engine.payouts.refresh`` every ``[worker] payout_refresh_seconds``
    (unless 0), Stripe's payout lists applied to every account
    (``engine.payments.payouts.refresh_all_payouts``).
    """
    engine: list[PeriodicTask] = []
    every = services.settings.worker.payout_refresh_seconds
    if every > 0:
        engine.append(payout_refresh_task(every))
    return [*engine, *services.plugins.periodic_tasks()]


def make_mailbox(services: Services) -> Mailbox:
    """The mailbox with the retry policy from ``settings.webhooks``.

    Events are keyed by the plugins' ``resolve_mailbox_key``; leases are
    renewed on a connection of their own (``LeaseKeeper``).
    """
    hooks = services.settings.webhooks
    url = services.db.url
    return Mailbox(
        services.db.pool,
        max_attempts=hooks.max_attempts,
        backoff_base=hooks.backoff_base_seconds,
        backoff_cap=hooks.backoff_max_seconds,
        batch_size=hooks.batch_size,
        lease_seconds=hooks.lease_seconds,
        route=services.plugins.mailbox_key,
        renew_with=lambda: asyncpg.connect(url),
    )


class Scheduler:
    """Publishes "drain <account>" tokens to JetStream, retrying failed publishes at once.

    A publish that fails (no responders while the stream elects a new leader,
    a node lost, a timeout) is retried in the background with backoff for up
    to ``RETRY_WINDOW_SECONDS``, so processing resumes as soon as JetStream
    answers again instead of at the sweeper's next pass; the sweeper still
    covers a process that dies meanwhile. Message ids dedupe the retries.
    """

    RETRY_WINDOW_SECONDS = 120.0
    _FIRST_DELAY = 0.1
    _MAX_DELAY = 2.0

    def __init__(self, broker: MailboxBroker) -> None:
        self._broker = broker
        self._task: Any = broker.find_task(DRAIN_TASK)
        self._retrying: set[asyncio.Task[None]] = set()

    async def _publish(self, accounts: Sequence[str], msg_id: str) -> None:
        await self._task.kicker().with_labels(msg_id=msg_id).kiq(*accounts)

    async def schedule(self, account: str, token: str) -> None:
        """Publish a drain for ``account``; ``token`` makes the message id (dedupe).

        Never raises for a publish JetStream refused: that one is retried.
        """
        await self.schedule_many([(account, token)])

    async def schedule_many(self, tokens: Sequence[tuple[str, str]]) -> None:
        """Publish one drain token for several ``(account, token)`` (the intake's group
        commit): one message whose arguments are the accounts; the worker drains each.

        The message id is made of every account and token (dedupe), as ``schedule``'s.
        Never raises for a publish JetStream refused: that one is retried.
        """
        if not tokens:
            return
        accounts = [account for account, _ in tokens]
        if len(tokens) == 1:
            msg_id = f"drain:{tokens[0][0]}:{tokens[0][1]}"
        else:
            joined = "\n".join(f"{account}:{token}" for account, token in tokens)
            msg_id = f"drains:{hashlib.sha256(joined.encode()).hexdigest()}"
        try:
            await self._publish(accounts, msg_id)
        except Exception as exc:  # whatever NATS raised: the token must still get out
            log.warning("drain publish for %s failed (%s); retrying", ", ".join(accounts), exc)
            task = asyncio.create_task(self._retry(accounts, msg_id))
            self._retrying.add(task)
            task.add_done_callback(self._retrying.discard)

    async def requeue(self, account: str) -> None:
        """Publish a fresh drain for ``account`` at the back of the stream."""
        await self.schedule(account, uuid.uuid4().hex)

    @property
    def retrying(self) -> int:
        """Publishes waiting for JetStream to answer again."""
        return len(self._retrying)

    async def _retry(self, accounts: Sequence[str], msg_id: str) -> None:
        delay = self._FIRST_DELAY
        deadline = time.monotonic() + self.RETRY_WINDOW_SECONDS
        named = ", ".join(accounts)
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            try:
                await self._publish(accounts, msg_id)
            except Exception:  # still down: back off and try again
                delay = min(delay * 2, self._MAX_DELAY)
                continue
            log.info("drain publish for %s went through on retry", named)
            return
        log.warning("drain publish for %s still failing; the sweeper will re-publish", named)

    async def close(self, *, wait_seconds: float = 0.0) -> None:
        """Stop retrying, after ``wait_seconds`` for retries still going (the sweeper
        re-publishes whatever was left)."""
        pending = list(self._retrying)
        if pending and wait_seconds > 0:
            await asyncio.wait(pending, timeout=wait_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class Worker:
    """Drains accounts and sweeps; one per worker process (``run_worker``)."""

    def __init__(
        self, services: Services, scheduler: Scheduler, metrics: Metrics | None = None
    ) -> None:
        self.services = services
        self.scheduler = scheduler
        self.mailbox = make_mailbox(services)
        self.metrics = metrics or Metrics(
            top_mailboxes=services.settings.worker.metrics_top_mailboxes
        )
        services.ledger.observe_conflicts(self.metrics.ledger_conflict)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._live = live_key(services.settings.stripe.secret_key)
        # Connected accounts seen in marketplace_accounts: rows are never deleted, so a
        # known account stays known and is looked up once per worker, not per event.
        self._known_accounts: set[str] = set()
        self.dispatcher = Dispatcher(
            services,
            [*core_registrations(), *services.plugins.webhook_handlers()],
            after=core_fallbacks(),
        )
        lease = float(services.settings.webhooks.lease_seconds)
        if services.gateway.call_deadline_seconds >= lease:
            # Still safe (a drain that cannot renew is stopped in time), but a slow
            # Stripe call would then end drains instead of the call ending first.
            log.warning(
                "a Stripe call may take %.0f s, not below [webhooks] lease_seconds = %.0f: "
                "lower [stripe] timeout_seconds or max_network_retries",
                services.gateway.call_deadline_seconds,
                lease,
            )

    async def _handle(self, event: Any, conn: Any) -> Any:
        with log_context(
            event_id=str(event.get("id", "")), account=str(event.get("account") or "platform")
        ):
            # A replayed malformed, other-mode or other-version event stays dead.
            ensure_applicable(event, live=self._live)
            ensure_engine_version(event)
            await self._ensure_known_account(event, conn)
            contexts = await self.dispatcher.handle(event, conn)

        def after_commit() -> None:
            for ctx in contexts:
                ctx.run_after_commit()

        return after_commit if contexts else None

    async def _ensure_known_account(self, event: Any, conn: Any) -> None:
        """Raise ``UnknownConnectedAccount`` for a Connect event of an account we do not know.

        Retried with backoff like any failure (an event can arrive just before the
        account it concerns is stored), then dead and its mailbox parked.
        """
        account = event.get("account")
        if not account or account in self._known_accounts:
            return
        known = await conn.fetchval(
            "SELECT 1 FROM marketplace_accounts WHERE stripe_account_id = $1", str(account)
        )
        if not known:
            raise UnknownConnectedAccount(str(event.get("id", "")), str(account))
        if len(self._known_accounts) >= _KNOWN_ACCOUNTS_CACHED:
            self._known_accounts.clear()
        self._known_accounts.add(str(account))

    async def drain(self, account: str) -> str:
        """Drain ``account`` once; re-queue it at the back if more remains."""
        with log_context(account=account):
            outcome = await self.mailbox.drain(account, self.owner, self._handle)
            self._record(account, outcome)
            if outcome.state == "requeue":
                await self.scheduler.requeue(account)
            return outcome.state

    async def drain_many(self, accounts: list[str]) -> dict[str, str]:
        """Drain several accounts in one batched drain; re-queue at the back those with
        more to do. Returns each account's outcome state."""
        outcomes = await self.mailbox.drain_many(accounts, self.owner, self._handle, shared=True)
        for account, outcome in outcomes.items():
            with log_context(account=account):
                self._record(account, outcome)
        requeue = [account for account, outcome in outcomes.items() if outcome.state == "requeue"]
        for account in requeue:
            await self.scheduler.requeue(account)
        return {account: outcome.state for account, outcome in outcomes.items()}

    def _record(self, account: str, outcome: DrainOutcome) -> None:
        """Count and log what one mailbox's drain did."""
        failed = outcome.state in {"backoff", "parked"}
        # A permanent failure (an event of another API version) is dead at once.
        dead_at_once = outcome.state == "requeue" and bool(outcome.error)
        self.metrics.drained(
            account,
            handled=outcome.handled,
            lag_seconds=outcome.lag_seconds,
            failed=failed,
            dead=int(outcome.state == "parked" or dead_at_once),
        )
        if failed:
            log.warning("handler failed (%s): %s", outcome.state, outcome.error)
        if dead_at_once:
            log.warning("event dead-lettered: %s", outcome.error)
        if outcome.state == "lost":
            # Another drain holds the mailbox now, or the sweeper hands it on once
            # the lease expires: nothing to publish.
            log.warning("drain stopped: lease lost")
        if outcome.state == "error":
            # The connection failed mid-drain: the lease runs out and the sweeper
            # re-publishes the mailbox.
            log.warning("drain stopped: %s", outcome.error)

    async def sweep_once(self) -> list[str]:
        """Re-publish accounts whose backoff passed, lease expired or token was lost."""
        stale = max(5.0, float(self.services.settings.webhooks.lease_seconds) / 2)
        accounts = await self.mailbox.sweep(stale)
        for account in accounts:
            await self.scheduler.schedule(account, f"sweep:{time.time_ns()}")
        return accounts

    async def sample_pending(self) -> None:
        """Set the pending gauges (per kind, and the busiest mailboxes by name)."""
        self.metrics.pending(await self.mailbox.pending_counts())

    async def sweep_forever(self) -> None:
        """Sweep every ``webhooks.sweep_interval_seconds`` until cancelled.

        Every 30 s or so it also samples the pending gauge (a heavier query).
        """
        interval = self.services.settings.webhooks.sweep_interval_seconds
        sample_every = max(1, int(30 / interval))
        rounds = 0
        while True:
            try:
                swept = await self.sweep_once()
                if swept:
                    log.info("sweeper re-published %d account(s)", len(swept))
                if rounds % sample_every == 0:
                    await self.sample_pending()
            except Exception:  # the sweeper must outlive database/NATS restarts
                log.warning("sweep failed; will retry", exc_info=True)
            rounds += 1
            await asyncio.sleep(interval)


async def run_worker(
    settings: Settings, *, plugins: Plugins | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run one worker process until ``stop`` is set (or forever).

    The receiver, the sweeper, the heartbeat and each periodic task run under
    ``restarting``: one that dies is logged with its traceback and started again.
    """
    services = await Services.start(
        settings, plugins=plugins, connect_nats=False, synchronous_commit=False
    )
    broker = make_broker(settings)
    register_plugin_tasks(broker, services.plugins)
    broker.is_worker_process = True
    scheduler = Scheduler(broker)
    worker = Worker(services, scheduler)
    broker.state.worker = worker
    heartbeat = Heartbeat(
        services.db.pool,
        worker.owner,
        lambda: broker.last_pull,
        every_seconds=settings.worker.heartbeat_seconds,
    )
    await broker.startup()
    batcher = DrainBatcher(
        worker.drain_many,
        drains=settings.worker.drains,
        keys_per_drain=settings.worker.keys_per_drain,
    )
    tasks = [
        asyncio.create_task(
            restarting(
                "webhook receiver",
                lambda: TokenReceiver(
                    broker,
                    batcher,
                    drain_task=DRAIN_TASK,
                    concurrency=settings.worker.concurrency,
                ).run(),
            )
        ),
        asyncio.create_task(restarting("mailbox sweeper", worker.sweep_forever)),
        asyncio.create_task(restarting("worker heartbeat", heartbeat.beat_forever)),
        *(
            asyncio.create_task(
                restarting(
                    f"periodic task {task.name}", functools.partial(run_periodic, services, task)
                )
            )
            for task in periodic_tasks(services)
        ),
        # Advice only, once: a slow or unreachable Stripe must not hold up the worker.
        asyncio.create_task(warn_about_endpoint_versions(services.gateway)),
    ]
    if settings.worker.metrics_port:
        start_http_server(
            settings.worker.metrics_port, addr=settings.api.host, registry=worker.metrics.registry
        )
    log.info("worker %s started", worker.owner)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await batcher.close()
        with contextlib.suppress(Exception):
            await heartbeat.stopped()
        await scheduler.close()
        await broker.shutdown()
        await services.close()
