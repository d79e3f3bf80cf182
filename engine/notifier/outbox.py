"""Writing notifications into the outbox without blocking or failing the caller.

The hooks run synchronously inside the engine's event loop, right after a
money movement committed. ``enqueue`` therefore only builds the rows (cheap,
pure) and schedules their insert as a task; it never awaits and never raises.
Where that is impossible (no running loop, no services: unit tests, a sync
thread) or the insert keeps failing (the database is restarting), the rows wait
in ``runtime.state("notifier")["pending"]`` until the delivery loop of the same
process stores them.

The hooks fire after the business transaction committed, so a process that
dies between that commit and the outbox insert loses the notification (never
the money movement); everything after the insert is retried until sent or dead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from engine.core.contributions import PluginRuntime
from engine.core.money import Money
from engine.core.orders import LifecycleEvent, PayoutFailure
from engine.notifier.config import PLUGIN, NotifierConfig
from engine.notifier.messages import (
    Message,
    lifecycle_message,
    payout_failure_message,
    payout_failure_reason,
)
from engine.notifier.tables import STATUS_DEAD, STATUS_PENDING

__all__ = [
    "MAX_PENDING",
    "Notification",
    "dead_notifications",
    "enqueue",
    "flush_pending",
    "lifecycle_notifications",
    "outbox_summary",
    "payout_failure_kind",
    "payout_failure_notifications",
    "retry_dead",
    "store",
]

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
"""Most notifications kept in memory per process while the database is unreachable."""

PENDING = "pending"
TASKS = "tasks"
WAKE = "wake"

# Inserting is retried in the background for about half a minute before the
# rows are parked in memory, so a database fail-over does not lose them.
_STORE_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

_INSERT = """
INSERT INTO notifier_outbox
    (id, kind, channel, payload, status, attempts, next_attempt_at, last_error, created_at)
VALUES ($1, $2, $3, $4::jsonb, 'pending', 0, now(), '', now())
ON CONFLICT (id) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Notification:
    """One outbox row: a notification for one channel.

    ``id`` is the idempotency id the receiver sees (``Idempotency-Key`` header,
    ``id`` in the body, the email's ``Message-ID``); it never changes on retry.
    """

    id: str
    kind: str
    channel: str
    payload: Mapping[str, Any]


def _plain(value: Any) -> Any:
    """``json.dumps`` fallback: money as minor units + currency, times as ISO 8601."""
    if isinstance(value, Money):
        return {"amount": value.amount, "currency": value.currency}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def _json_safe(data: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of ``data``; whatever a plugin put there, this does not raise."""
    result: dict[str, Any] = json.loads(json.dumps(dict(data), default=_plain))
    return result


def _per_channel(
    kind: str, channels: Sequence[str], body: dict[str, Any], message: Message
) -> list[Notification]:
    created = int(datetime.now(UTC).timestamp())
    notifications = []
    for channel in channels:
        notification_id = f"ntf_{uuid.uuid4().hex}"
        payload = {
            "id": notification_id,
            "object": "notification",
            "type": kind,
            "created": created,
            **body,
            "message": {"subject": message.subject, "text": message.text},
        }
        notifications.append(Notification(notification_id, kind, channel, payload))
    return notifications


def payout_failure_kind(failure: PayoutFailure) -> str:
    """``engine.payout.failed`` or ``engine.transfer.failed``: a payout failure's notice kind."""
    return f"engine.{failure.kind}.failed"


def payout_failure_notifications(
    failure: PayoutFailure, config: NotifierConfig
) -> list[Notification]:
    """The rows for a payout failure (none when its kind is filtered out or no channel is set)."""
    kind = payout_failure_kind(failure)
    if not config.channels or not config.wants(kind):
        return []
    reason, what_to_do = payout_failure_reason(failure.failure_code)
    body = {
        "account": failure.account_id,
        "subject": failure.stripe_object_id,
        "data": {
            "account_id": failure.account_id,
            "kind": failure.kind,
            "failure_code": failure.failure_code,
            "amount": failure.amount.amount,
            "currency": failure.amount.currency,
            "amount_display": failure.amount.format(),
            "stripe_object_id": failure.stripe_object_id,
            "reference": failure.reference,
            "stripe_message": failure.message,
            "reason": reason,
            "what_to_do": what_to_do,
        },
    }
    return _per_channel(kind, config.channels, body, payout_failure_message(failure))


def lifecycle_notifications(event: LifecycleEvent, config: NotifierConfig) -> list[Notification]:
    """The rows for a lifecycle event (none when its name is filtered out or no channel is set)."""
    if not config.channels or not config.wants(event.name):
        return []
    body = {
        "account": event.account_id,
        "subject": event.subject_id,
        "occurred_at": event.occurred_at.isoformat(),
        "data": _json_safe(event.data),
    }
    return _per_channel(event.name, config.channels, body, lifecycle_message(event))


def _keep(state: MutableMapping[str, Any], notifications: Iterable[Notification]) -> None:
    pending: list[Notification] = state.setdefault(PENDING, [])
    pending.extend(notifications)
    if len(pending) > MAX_PENDING:
        dropped = len(pending) - MAX_PENDING
        del pending[:dropped]
        log.error("notifier: %d unsaved notification(s) dropped (memory bound)", dropped)


def _wake(state: Mapping[str, Any]) -> None:
    """Tell this process's delivery loops (one event per channel) that rows arrived."""
    for event in state.get(WAKE) or ():
        event.set()


async def store(pool: asyncpg.Pool, notifications: Sequence[Notification]) -> None:
    """Insert rows into the outbox in one transaction (existing ids are left alone)."""
    rows = [(n.id, n.kind, n.channel, json.dumps(n.payload)) for n in notifications]
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(_INSERT, rows)


async def _store_in_background(
    runtime: PluginRuntime, notifications: list[Notification], state: MutableMapping[str, Any]
) -> None:
    for delay in (*_STORE_DELAYS, None):
        try:
            await store(runtime.services.db.pool, notifications)
        except Exception as exc:  # a database hiccup must not lose the notice
            if delay is None:
                log.error("notifier: outbox insert failed, kept in memory: %s", exc)
                _keep(state, notifications)
                return
            await asyncio.sleep(delay)
        else:
            _wake(state)
            return


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def enqueue(runtime: PluginRuntime, notifications: list[Notification]) -> None:
    """Queue ``notifications`` for delivery; returns at once, never raises, never awaits.

    Inside a running loop with services, the insert runs as a task (a strong
    reference is kept in the plugin state so it is not garbage-collected
    mid-flight); otherwise the rows wait in ``state["pending"]``.
    """
    if not notifications:
        return
    state = runtime.state(PLUGIN)
    loop = _running_loop()
    if loop is None or runtime.services is None:
        _keep(state, notifications)
        return
    tasks: set[asyncio.Task[None]] = state.setdefault(TASKS, set())
    task = loop.create_task(_store_in_background(runtime, notifications, state))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def flush_pending(pool: asyncpg.Pool, state: MutableMapping[str, Any]) -> int:
    """Store the notifications waiting in memory; on failure they stay for the next try.

    The batch is taken out of the list before the first ``await``, so two
    loops flushing at once never store (or drop) the same rows twice.
    """
    pending: list[Notification] = state.get(PENDING) or []
    if not pending:
        return 0
    batch = list(pending)
    del pending[:]
    try:
        await store(pool, batch)
    except Exception:
        pending[:0] = batch  # back in front, in order, ahead of newer arrivals
        log.warning("notifier: %d notification(s) still waiting for the database", len(batch))
        return 0
    return len(batch)


async def outbox_summary(pool: asyncpg.Pool) -> dict[str, dict[str, int]]:
    """Row counts by channel and status (``{"webhook": {"sent": 3, "dead": 1}}``)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT channel, status, count(*) AS n FROM notifier_outbox GROUP BY channel, status"
        )
    summary: dict[str, dict[str, int]] = {}
    for row in rows:
        summary.setdefault(row["channel"], {})[row["status"]] = int(row["n"])
    return summary


async def dead_notifications(pool: asyncpg.Pool, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent dead rows with their last error, newest first."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, kind, channel, attempts, last_error, created_at FROM notifier_outbox "
            "WHERE status = $1 ORDER BY created_at DESC LIMIT $2",
            STATUS_DEAD,
            limit,
        )
    return [dict(row) for row in rows]


async def retry_dead(pool: asyncpg.Pool, ids: Sequence[str] = ()) -> int:
    """Make dead rows (all, or those in ``ids``) pending again with fresh attempts."""
    async with pool.acquire() as conn:
        result: str = await conn.execute(
            """
            UPDATE notifier_outbox
            SET status = $1, attempts = 0, next_attempt_at = now(), last_error = ''
            WHERE status = $2 AND (cardinality($3::text[]) = 0 OR id = ANY($3))
            """,
            STATUS_PENDING,
            STATUS_DEAD,
            list(ids),
        )
    return int(result.rsplit(maxsplit=1)[-1])
