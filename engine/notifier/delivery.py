"""Delivering the outbox: signed webhooks and SMTP email, retried until sent or dead.

``deliver_due(services, config)`` runs one pass: it claims the due rows with
``FOR UPDATE SKIP LOCKED`` (so any number of processes can deliver side by
side without sending a row twice), leases them by pushing ``next_attempt_at``
past the time a send can take, commits, and only then talks to the network,
so no transaction or row lock is held across slow I/O. Each row then becomes
``sent``, or ``pending`` again after an exponential backoff with jitter, or
``dead`` after ``max_attempts``. A process that dies mid-send leaves its rows
leased; they are tried again when the lease runs out (the receiver dedupes by
the notification id).

``run_delivery_loop(services, stop)`` repeats passes until ``stop`` is set or
the services are closed, one loop per channel so that a hung mail server never
holds back webhooks (or a dead endpoint emails). ``start_in_background`` (the
plugin's ``register_startup`` function) runs it in every API and worker
process; rows are claimed with ``SKIP LOCKED``, so more processes only add
capacity.

The senders (what goes over the wire) live in ``engine.notifier.senders``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import asyncpg
import httpx

from engine.notifier.config import CHANNEL_EMAIL, CHANNEL_WEBHOOK, PLUGIN, NotifierConfig
from engine.notifier.outbox import WAKE, flush_pending
from engine.notifier.senders import Claimed, DeliveryError, send_email, send_webhook
from engine.observability import log_context
from engine.webhooks.mailbox import backoff_seconds

__all__ = [
    "LOOPS",
    "deliver_due",
    "next_due_in",
    "notifier_config",
    "purge_sent",
    "run_delivery_loop",
    "start_in_background",
]

log = logging.getLogger(__name__)

# Mail servers throttle parallel connections from one client; a few at a time
# keeps a pass of many emails from being refused wholesale.
EMAIL_CONCURRENCY = 4
PURGE_EVERY_SECONDS = 3600.0
LOOPS = "delivery_loops"
_ERROR_LIMIT = 500

_CLAIM = """
UPDATE notifier_outbox AS o
SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
FROM (
    SELECT id FROM notifier_outbox
    WHERE next_attempt_at <= now() AND status = 'pending' AND channel = $3
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) AS due
WHERE o.id = due.id
RETURNING o.id, o.kind, o.channel, o.payload::text AS payload, o.attempts
"""

# Guarded by ``attempts``: if our lease ran out and another process re-claimed
# the row, its outcome is the one that counts.
_MARK_SENT = """
UPDATE notifier_outbox
SET status = 'sent', sent_at = now(), next_attempt_at = NULL, last_error = ''
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

_MARK_FAILED = """
UPDATE notifier_outbox
SET last_error = $3,
    status = CASE WHEN $4 THEN 'dead' ELSE 'pending' END,
    next_attempt_at = CASE WHEN $4 THEN NULL ELSE now() + make_interval(secs => $5) END
WHERE id = $1 AND attempts = $2 AND status = 'pending'
"""

_NEXT_DUE = """
SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now())::float8
FROM notifier_outbox WHERE next_attempt_at IS NOT NULL AND channel = $1
"""

_PURGE = """
DELETE FROM notifier_outbox
WHERE status = 'sent' AND sent_at < now() - make_interval(days => $1)
"""


def notifier_config(services: Any) -> NotifierConfig | None:
    """The notifier's config when the plugin is enabled in ``services``, else ``None``."""
    runtime = services.plugins.runtime
    if PLUGIN not in runtime.enabled:
        return None
    config = runtime.config(PLUGIN)
    return config if isinstance(config, NotifierConfig) else None


def _lease_seconds(config: NotifierConfig, channel: str) -> float:
    # Long enough for the slowest pass of the channel, so no other process
    # re-sends rows still in flight: webhooks of a batch go out concurrently,
    # emails EMAIL_CONCURRENCY at a time, each up to its timeout. The margin
    # covers connecting and recording the outcome.
    if channel == CHANNEL_EMAIL:
        rounds = math.ceil(config.batch_size / EMAIL_CONCURRENCY)
        return 60.0 + rounds * config.smtp_timeout_seconds
    return 60.0 + 2 * config.webhook_timeout_seconds


async def _claim(pool: asyncpg.Pool, config: NotifierConfig, channel: str) -> list[Claimed]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(_CLAIM, config.batch_size, _lease_seconds(config, channel), channel)
    return [
        Claimed(
            id=row["id"],
            kind=row["kind"],
            channel=row["channel"],
            body=str(row["payload"]).encode(),
            attempts=int(row["attempts"]),
        )
        for row in rows
    ]


async def _mark_sent(pool: asyncpg.Pool, row: Claimed) -> None:
    async with pool.acquire() as conn:
        await conn.execute(_MARK_SENT, row.id, row.attempts)


async def _mark_failed(
    pool: asyncpg.Pool, config: NotifierConfig, row: Claimed, error: str
) -> bool:
    dead = row.attempts >= config.max_attempts
    delay = backoff_seconds(row.attempts, config.backoff_base_seconds, config.backoff_cap_seconds)
    async with pool.acquire() as conn:
        await conn.execute(_MARK_FAILED, row.id, row.attempts, error[:_ERROR_LIMIT], dead, delay)
    return dead


async def _deliver_one(
    pool: asyncpg.Pool,
    config: NotifierConfig,
    http: httpx.AsyncClient,
    email_gate: asyncio.Semaphore,
    row: Claimed,
) -> bool:
    account = str(row.payload.get("account") or "")
    with log_context(account=account, subject=row.id):
        try:
            if row.channel == CHANNEL_WEBHOOK:
                await send_webhook(http, config, row)
            elif row.channel == CHANNEL_EMAIL:
                async with email_gate:
                    if pool.is_closing():
                        # Shutting down: do not start a send that may take a
                        # whole SMTP timeout; the lease hands the row on.
                        return False
                    await send_email(config, row)
            else:
                raise DeliveryError(f"unknown channel {row.channel!r}")
        except DeliveryError as exc:
            dead = await _mark_failed(pool, config, row, str(exc))
            if dead:
                log.error(
                    "notifier: %s %s (%s) is dead after %d attempts: %s",
                    row.channel,
                    row.id,
                    row.kind,
                    row.attempts,
                    exc,
                )
            else:
                log.warning(
                    "notifier: %s %s attempt %d failed: %s", row.channel, row.id, row.attempts, exc
                )
            return False
        await _mark_sent(pool, row)
        log.info("notifier: %s %s (%s) sent", row.channel, row.id, row.kind)
        return True


async def deliver_due(
    services: Any,
    config: NotifierConfig,
    *,
    channel: str | None = None,
    http: httpx.AsyncClient | None = None,
) -> int:
    """Claim the due notifications and try each once; return how many were tried.

    Args:
        services: the engine's ``Services`` (only ``services.db.pool`` is used).
        config: the notifier's config (channels, retry policy).
        channel: deliver only this channel's rows; every configured channel
            (one after the other) when omitted.
        http: a client to reuse across passes; one is made for this pass if omitted.

    Returns:
        The number of rows claimed (sent, rescheduled or dead). ``batch_size``
        for one channel means more may be due right away.
    """
    pool: asyncpg.Pool = services.db.pool
    channels = (channel,) if channel else config.channels
    tried = 0
    async with contextlib.AsyncExitStack() as stack:
        client: httpx.AsyncClient = (
            http if http is not None else await stack.enter_async_context(httpx.AsyncClient())
        )
        for name in channels:
            tried += await _deliver_channel(pool, config, name, client)
    return tried


async def _deliver_channel(
    pool: asyncpg.Pool, config: NotifierConfig, channel: str, http: httpx.AsyncClient
) -> int:
    rows = await _claim(pool, config, channel)
    if not rows:
        return 0
    email_gate = asyncio.Semaphore(EMAIL_CONCURRENCY)
    results = await asyncio.gather(
        *(_deliver_one(pool, config, http, email_gate, row) for row in rows),
        return_exceptions=True,
    )
    for row, result in zip(rows, results, strict=True):
        if isinstance(result, BaseException):
            # Marking failed (database gone): the lease expires and the row is
            # tried again, which the idempotency id makes harmless.
            log.warning("notifier: could not record the outcome of %s: %s", row.id, result)
    return len(rows)


async def next_due_in(pool: asyncpg.Pool, channel: str) -> float | None:
    """Seconds until ``channel``'s next pending row is due (negative: overdue; None: none)."""
    async with pool.acquire() as conn:
        value = await conn.fetchval(_NEXT_DUE, channel)
    return None if value is None else float(value)


async def purge_sent(pool: asyncpg.Pool, older_than_days: int) -> int:
    """Delete sent rows older than ``older_than_days``; dead rows are kept for inspection."""
    async with pool.acquire() as conn:
        result: str = await conn.execute(_PURGE, older_than_days)
    return int(result.rsplit(maxsplit=1)[-1])


async def _pause(seconds: float, stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Sleep up to ``seconds``; return early when stopped or woken by a fresh insert."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _one_pass(
    services: Any,
    config: NotifierConfig,
    channel: str,
    http: httpx.AsyncClient,
    state: dict[str, Any],
) -> float:
    """Flush, deliver one channel, and say how long to wait before the next pass."""
    pool: asyncpg.Pool = services.db.pool
    await flush_pending(pool, state)
    tried = await deliver_due(services, config, channel=channel, http=http)
    if tried >= config.batch_size:
        return 0.0
    due_in = await next_due_in(pool, channel)
    if due_in is None:
        return config.poll_interval_seconds
    # A floor so rows another process has just locked do not make us spin.
    return min(config.poll_interval_seconds, max(0.01, due_in))


def _database_open(services: Any) -> bool:
    """Whether the services' pool is open and not closing (the process is not stopping)."""
    try:
        pool: asyncpg.Pool = services.db.pool  # raises RuntimeError once closed
    except RuntimeError:
        return False
    return not pool.is_closing()


async def _channel_loop(
    services: Any,
    config: NotifierConfig,
    channel: str,
    http: httpx.AsyncClient,
    stop: asyncio.Event,
    *,
    housekeeping: bool,
) -> None:
    state = services.plugins.runtime.state(PLUGIN)
    wake = asyncio.Event()
    wakers: set[asyncio.Event] = state.setdefault(WAKE, set())
    wakers.add(wake)
    last_purge = 0.0
    try:
        while not stop.is_set() and _database_open(services):
            wake.clear()
            delay = config.poll_interval_seconds
            try:
                delay = await _one_pass(services, config, channel, http, state)
                if housekeeping and time.monotonic() - last_purge >= PURGE_EVERY_SECONDS:
                    last_purge = time.monotonic()
                    await purge_sent(services.db.pool, config.keep_sent_days)
            except Exception:  # the loop must outlive database and network outages
                if not _database_open(services):
                    break  # the process is shutting down, not an outage
                log.warning("notifier: %s delivery pass failed; will retry", channel, exc_info=True)
            if delay > 0:
                await _pause(delay, stop, wake)
    finally:
        wakers.discard(wake)


async def run_delivery_loop(services: Any, stop_event: asyncio.Event | None = None) -> None:
    """Deliver notifications until ``stop_event`` is set or the services are closed.

    Each configured channel runs its own loop, so a hung mail server delays
    only emails and a dead webhook endpoint only webhooks. Returns at once
    when the notifier is not enabled or has no channel. Every failure
    (database or network down) is logged and the loop carries on, so it
    outlives restarts of everything it talks to. Safe to run in several
    processes at once. Cancelling it at any point is safe: leased rows are
    retried when their lease ends.

    Args:
        services: the engine's started ``Services``.
        stop_event: set it to stop after the current pass.
    """
    config = notifier_config(services)
    if config is None or not config.channels:
        return
    stop = stop_event or asyncio.Event()
    log.info("notifier: delivering to %s", ", ".join(config.channels))
    async with httpx.AsyncClient() as http:
        await asyncio.gather(
            *(
                _channel_loop(services, config, channel, http, stop, housekeeping=index == 0)
                for index, channel in enumerate(config.channels)
            )
        )


async def start_in_background(services: Any) -> None:
    """``register_startup``: run ``run_delivery_loop`` for as long as ``services`` are open.

    Does nothing when the notifier has no channel or ``run_delivery`` is off.
    The task is kept in the plugin state (``"delivery_loops"``) so it is not
    garbage-collected; it ends by itself after ``services.close()``, and is
    cancelled with the event loop otherwise (safe: leases cover it).
    """
    config = notifier_config(services)
    if config is None or not config.channels or not config.run_delivery:
        return
    loops: set[asyncio.Task[None]] = services.plugins.runtime.state(PLUGIN).setdefault(LOOPS, set())
    task = asyncio.get_running_loop().create_task(
        run_delivery_loop(services), name="notifier-delivery"
    )
    loops.add(task)
    task.add_done_callback(loops.discard)
