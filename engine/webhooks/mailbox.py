"""Per-account mailboxes in PostgreSQL: the source of truth for webhook processing.

The inbox table holds every verified event (unique on Stripe's id); each account
(``"platform"`` for the platform's own events) has one row in
``marketplace_webhook_accounts`` with a scheduling token. The protocol:

1. ``accept``: in one statement, insert the event and bump the account's
   ``version``; if the account was not ``scheduled`` it becomes scheduled and the
   caller publishes one "drain <account>" task. So the broker holds at most one
   task per account and a flood on one account is one task, queued behind every
   other account's.
2. ``drain``: the worker takes the account's lease, applies a bounded batch of
   pending events in arrival order, then clears ``scheduled`` only if the
   version is unchanged (else re-queues at the back). A failing event backs the
   account off with jitter; after ``max_attempts`` the event is dead and the
   account parked (its later events wait, preserving order) until replayed.
3. ``sweep``: re-schedules accounts whose backoff has passed, whose lease
   expired (a worker died) or whose task went missing (a broker lost it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from engine.core.contributions import MAILBOX_ACCOUNT_METADATA

__all__ = [
    "PLATFORM_ACCOUNT",
    "Accepted",
    "DeadLetter",
    "DrainOutcome",
    "Mailbox",
    "backoff_seconds",
]

PLATFORM_ACCOUNT = "platform"

EventHandler = Callable[
    [Mapping[str, Any], asyncpg.Connection], Awaitable[Callable[[], None] | None]
]
"""``handle(event, conn)`` -> an optional action to run after the commit."""

_ACCEPT = """
WITH ev AS (
    INSERT INTO marketplace_webhook_events
        (event_id, account, type, livemode, created, payload, status, attempts,
         last_error, received_at)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb, 'pending', 0, '', now())
    ON CONFLICT (event_id) DO NOTHING
    RETURNING account
), acc AS (
    INSERT INTO marketplace_webhook_accounts AS a
        (account, version, scheduled, scheduled_at, lease_owner, parked, attempts,
         last_error, handled, updated_at)
    SELECT account, 1, true, now(), '', false, 0, '', 0, now() FROM ev
    ON CONFLICT (account) DO UPDATE SET
        version = a.version + 1,
        scheduled = true,
        scheduled_at = CASE WHEN a.scheduled THEN a.scheduled_at ELSE now() END,
        updated_at = now()
    RETURNING version, scheduled_at = now() AS newly_scheduled, parked
)
SELECT version, newly_scheduled, parked FROM acc
"""

# An event of another Stripe API version (``engine.webhooks.versions``): stored dead with
# its reason, the account's row made if new, nothing scheduled or parked.
_ACCEPT_DEAD = """
WITH ev AS (
    INSERT INTO marketplace_webhook_events
        (event_id, account, type, livemode, created, payload, status, attempts,
         last_error, received_at)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb, 'dead', 0, $7, now())
    ON CONFLICT (event_id) DO NOTHING
    RETURNING account
), acc AS (
    INSERT INTO marketplace_webhook_accounts AS a
        (account, version, scheduled, lease_owner, parked, attempts, last_error, handled,
         updated_at)
    SELECT account, 0, false, '', false, 0, '', 0, now() FROM ev
    ON CONFLICT (account) DO NOTHING
)
SELECT count(*) AS inserted FROM ev
"""

# Take the lease and read the batch in one statement (one snapshot: the version
# returned is never newer than the events read, which the release relies on).
_LEASE_AND_FETCH = """
WITH lease AS (
    UPDATE marketplace_webhook_accounts
    SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)
    WHERE account = $1 AND scheduled AND NOT parked
      AND (lease_until IS NULL OR lease_until < now())
      AND (backoff_until IS NULL OR backoff_until <= now())
    RETURNING version
)
SELECT lease.version, e.id, e.payload::text AS payload, e.received_at
FROM lease
LEFT JOIN LATERAL (
    SELECT id, payload, received_at FROM marketplace_webhook_events
    WHERE account = $1 AND status = 'pending'
    ORDER BY id
    LIMIT $4
) e ON true
ORDER BY e.id
"""

_MARK_HANDLED_MANY = """
UPDATE marketplace_webhook_events
SET status = 'handled', handled_at = clock_timestamp(), attempts = attempts + 1
WHERE id = ANY($1::bigint[])
"""

# Mark the batch handled and, if nothing new arrived (version unchanged), clear
# the scheduling token: one round trip at the end of an idle drain.
_MARK_AND_RELEASE_IF_IDLE = """
WITH marked AS (
    UPDATE marketplace_webhook_events
    SET status = 'handled', handled_at = clock_timestamp(), attempts = attempts + 1
    WHERE id = ANY($4::bigint[])
    RETURNING 1
)
UPDATE marketplace_webhook_accounts
SET scheduled = false, scheduled_at = NULL, lease_owner = '', lease_until = NULL,
    attempts = 0, last_error = '', handled = handled + (SELECT count(*) FROM marked),
    updated_at = now()
WHERE account = $1 AND version = $2 AND lease_owner = $3 AND $5
RETURNING 1
"""

_RELEASE_AND_REQUEUE = """
UPDATE marketplace_webhook_accounts
SET scheduled_at = now(), lease_owner = '', lease_until = NULL,
    attempts = 0, last_error = '', handled = handled + $3, updated_at = now()
WHERE account = $1 AND lease_owner = $2
RETURNING 1
"""

_FAIL_EVENT = """
UPDATE marketplace_webhook_events
SET attempts = attempts + 1, last_error = $2,
    status = CASE WHEN attempts + 1 >= $3 THEN 'dead' ELSE status END
WHERE id = $1
RETURNING status, attempts
"""

_BACK_OFF = """
UPDATE marketplace_webhook_accounts
SET lease_owner = '', lease_until = NULL, scheduled_at = now(),
    backoff_until = now() + make_interval(secs => $3), parked = $4,
    attempts = $5, last_error = $6, handled = handled + $7, updated_at = now()
WHERE account = $1 AND lease_owner = $2
"""

_SWEEP = """
UPDATE marketplace_webhook_accounts
SET scheduled_at = now(), backoff_until = NULL
WHERE scheduled AND NOT parked
  AND (lease_until IS NULL OR lease_until < now())
  AND (
        (backoff_until IS NOT NULL AND backoff_until <= now())
     OR (backoff_until IS NULL AND scheduled_at < now() - make_interval(secs => $1))
  )
RETURNING account
"""

_ORPHANS = """
WITH orphans AS (
    SELECT DISTINCT e.account FROM marketplace_webhook_events e
    JOIN marketplace_webhook_accounts a ON a.account = e.account
    WHERE e.status = 'pending' AND NOT a.scheduled AND NOT a.parked
)
UPDATE marketplace_webhook_accounts a
SET scheduled = true, scheduled_at = now()
FROM orphans WHERE a.account = orphans.account AND NOT a.scheduled
RETURNING a.account
"""


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2**(attempt-1)``."""
    ceiling: float = min(cap, base * (2.0 ** max(0, attempt - 1)))
    return ceiling / 2 + random.random() * ceiling / 2


@dataclass(frozen=True, slots=True)
class Accepted:
    """Result of ``accept``: whether the event is new and whether to publish a drain."""

    inserted: bool
    account: str
    version: int = 0
    publish: bool = False


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    """What one drain did: ``state`` is busy, idle, requeue, backoff or parked."""

    state: str
    handled: int = 0
    error: str = ""
    lag_seconds: tuple[float, ...] = ()
    """Receipt-to-handled time of each event handled in this drain."""


class _LoneEventFailed(Exception):
    """A single-event batch failed; carries the row to record against."""

    def __init__(self, row_id: int, error: Exception) -> None:
        super().__init__(str(error))
        self.row_id = row_id
        self.error = error


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered event, for the admin API."""

    event_id: str
    account: str
    type: str
    attempts: int
    last_error: str
    received_at: datetime


def _account_id(value: Any) -> str | None:
    """An ``acct_...`` id from a string or an expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value.startswith("acct_") else None


def event_account(event: Mapping[str, Any]) -> str:
    """The mailbox an event belongs to.

    A connected account's own event goes to that account's mailbox. A platform
    event about money bound for one connected account (a destination charge, a
    subscription with ``transfer_data``, its invoices by the subscription metadata's
    ``MAILBOX_ACCOUNT_METADATA``, a transfer) goes to that account's mailbox too,
    so one creator's traffic or failures never queue behind another's; anything
    else is the platform's.
    """
    account = event.get("account")
    if account:
        return str(account)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if isinstance(obj, Mapping):
        transfer_data = obj.get("transfer_data")
        if isinstance(transfer_data, Mapping):
            destination = _account_id(transfer_data.get("destination"))
            if destination:
                return destination
        # An invoice has no transfer_data in the engine's API version: its subscription's
        # metadata snapshot names the account (``MAILBOX_ACCOUNT_METADATA``).
        parent = obj.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
        metadata = details.get("metadata") if isinstance(details, Mapping) else None
        if isinstance(metadata, Mapping):
            destination = _account_id(metadata.get(MAILBOX_ACCOUNT_METADATA))
            if destination:
                return destination
        if obj.get("object") == "transfer":
            destination = _account_id(obj.get("destination"))
            if destination:
                return destination
    return PLATFORM_ACCOUNT


class Mailbox:
    """The mailbox protocol over an asyncpg pool (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        backoff_cap: float = 3600.0,
        batch_size: int = 50,
        lease_seconds: float = 60.0,
    ) -> None:
        self._pool = pool
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds

    async def accept(
        self, event: Mapping[str, Any], raw_body: str, *, dead_reason: str | None = None
    ) -> Accepted:
        """Commit a verified event to its account's mailbox (duplicates change nothing).

        With ``dead_reason`` the event is stored straight into the dead letter with
        that reason (never handled, replayable), and nothing is scheduled.
        """
        account = event_account(event)
        async with self._pool.acquire() as conn:
            if dead_reason is not None:
                inserted = await conn.fetchval(
                    _ACCEPT_DEAD,
                    str(event["id"]),
                    account,
                    str(event.get("type", "")),
                    bool(event.get("livemode", False)),
                    int(event.get("created") or 0),
                    raw_body,
                    dead_reason[:2000],
                )
                return Accepted(inserted=bool(inserted), account=account)
            row = await conn.fetchrow(
                _ACCEPT,
                str(event["id"]),
                account,
                str(event.get("type", "")),
                bool(event.get("livemode", False)),
                int(event.get("created") or 0),
                raw_body,
            )
        if row is None:
            return Accepted(inserted=False, account=account)
        return Accepted(
            inserted=True,
            account=account,
            version=int(row["version"]),
            publish=bool(row["newly_scheduled"]) and not row["parked"],
        )

    async def drain(self, account: str, owner: str, handle: EventHandler) -> DrainOutcome:
        """Apply up to ``batch_size`` pending events of ``account`` in order.

        The batch runs in one transaction with a savepoint per event: a
        handler's writes and its event's "handled" mark commit together, a
        failing handler rolls back only its own savepoint, and the batch costs
        one commit. Workers open their pool with ``synchronous_commit = off``
        (see ``Services.start``): the inbox insert was durable, so a crash that
        loses the last few worker commits loses their effects and marks
        together and those events are simply handled again (handlers are
        idempotent). Intake commits stay synchronous.
        """
        async with self._pool.acquire() as conn:
            leased = await conn.fetch(
                _LEASE_AND_FETCH, account, owner, self.lease_seconds, self.batch_size
            )
            if not leased:
                return DrainOutcome("busy")
            version = int(leased[0]["version"])
            rows = [row for row in leased if row["id"] is not None]
            after: list[Callable[[], None]] = []
            handled_ids: list[int] = []
            # A lone event needs no savepoint: if it fails, the whole
            # transaction rolls back and the failure is recorded afresh.
            savepoints = len(rows) > 1
            try:
                async with conn.transaction():
                    outcome = await self._apply(
                        conn, account, owner, version, rows, handle, handled_ids, after, savepoints
                    )
            except _LoneEventFailed as failure:
                handled_ids.clear()
                after.clear()
                async with conn.transaction():
                    outcome = await self._failed(
                        conn,
                        account=account,
                        owner=owner,
                        row_id=failure.row_id,
                        exc=failure.error,
                        handled=0,
                    )
        for action in after:
            action()
        if handled_ids:
            handled_set = set(handled_ids)
            now = datetime.now(UTC)
            lags = tuple(
                (now - row["received_at"]).total_seconds()
                for row in rows
                if row["id"] in handled_set
            )
            outcome = replace(outcome, lag_seconds=lags)
        return outcome

    async def _apply(  # noqa: PLR0917 - the drain's working set, passed along once
        self,
        conn: asyncpg.Connection,
        account: str,
        owner: str,
        version: int,
        rows: Sequence[Any],
        handle: EventHandler,
        handled_ids: list[int],
        after: list[Callable[[], None]],
        savepoints: bool,
    ) -> DrainOutcome:
        """Run the handlers in order inside the caller's transaction."""
        for row in rows:
            try:
                if savepoints:
                    async with conn.transaction():  # a savepoint per event
                        action = await handle(json.loads(row["payload"]), conn)
                else:
                    action = await handle(json.loads(row["payload"]), conn)
            except Exception as exc:  # any handler failure backs the account off
                if not savepoints:
                    raise _LoneEventFailed(row["id"], exc) from exc
                await conn.execute(_MARK_HANDLED_MANY, handled_ids)
                return await self._failed(
                    conn,
                    account=account,
                    owner=owner,
                    row_id=row["id"],
                    exc=exc,
                    handled=len(handled_ids),
                )
            handled_ids.append(row["id"])
            if action is not None:
                after.append(action)
        may_be_idle = len(rows) < self.batch_size
        if await conn.fetchval(
            _MARK_AND_RELEASE_IF_IDLE, account, version, owner, handled_ids, may_be_idle
        ):
            return DrainOutcome("idle", len(handled_ids))
        await conn.fetchval(_RELEASE_AND_REQUEUE, account, owner, len(handled_ids))
        return DrainOutcome("requeue", len(handled_ids))

    async def _failed(
        self,
        conn: asyncpg.Connection,
        *,
        account: str,
        owner: str,
        row_id: int,
        exc: Exception,
        handled: int,
    ) -> DrainOutcome:
        message = f"{type(exc).__name__}: {exc}"[:2000]
        # An error marked ``permanent`` (an event of another API version) cannot succeed
        # on a retry: dead at once, and the account goes on with its next events.
        permanent = bool(getattr(exc, "permanent", False))
        limit = 1 if permanent else self.max_attempts
        result = await conn.fetchrow(_FAIL_EVENT, row_id, message, limit)
        attempts = int(result["attempts"])
        dead = result["status"] == "dead"
        delay = 0.0 if permanent else backoff_seconds(attempts, self.backoff_base, self.backoff_cap)
        parked = dead and not permanent
        await conn.execute(_BACK_OFF, account, owner, delay, parked, attempts, message, handled)
        if permanent:
            return DrainOutcome("requeue", handled, message)
        return DrainOutcome("parked" if dead else "backoff", handled, message)

    async def sweep(self, stale_after_seconds: float) -> list[str]:
        """Accounts to (re)publish: backoff passed, lease expired, or task lost."""
        async with self._pool.acquire() as conn:
            orphans = await conn.fetch(_ORPHANS)
            rows = await conn.fetch(_SWEEP, stale_after_seconds)
        accounts = {row["account"] for row in rows} | {row["account"] for row in orphans}
        return sorted(accounts)

    async def dead_letters(
        self, *, account: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadLetter]:
        """Dead-lettered events, optionally for one account, oldest first."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                SELECT event_id, account, type, attempts, last_error, received_at
                FROM marketplace_webhook_events
                WHERE status = 'dead' AND ($1::text IS NULL OR account = $1) AND id > $2
                ORDER BY id LIMIT $3
                """,
                account,
                after_id,
                limit,
            )
        return [DeadLetter(**dict(row)) for row in rows]

    async def replay(
        self, *, event_ids: Sequence[str] = (), account: str | None = None
    ) -> list[str]:
        """Make dead events pending again and unpark their accounts; return those accounts.

        The caller publishes a drain for each returned account.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                UPDATE marketplace_webhook_events
                SET status = 'pending', attempts = 0, last_error = ''
                WHERE status = 'dead'
                  AND ((cardinality($1::text[]) > 0 AND event_id = ANY($1))
                       OR ($2::text IS NOT NULL AND account = $2))
                RETURNING account
                """,
                list(event_ids),
                account,
            )
            wanted = sorted({row["account"] for row in rows} | ({account} if account else set()))
            resumed = await conn.fetch(
                """
                UPDATE marketplace_webhook_accounts
                SET parked = false, backoff_until = NULL, attempts = 0, last_error = '',
                    scheduled = true, scheduled_at = now(), lease_owner = '', lease_until = NULL
                WHERE account = ANY($1)
                RETURNING account
                """,
                wanted,
            )
            return sorted(row["account"] for row in resumed)

    async def account_states(self) -> list[dict[str, Any]]:
        """Every mailbox with its pending count, for the admin view and metrics."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """
                WITH unfinished AS (
                    -- one pass over the events not yet handled, not three per account
                    SELECT account,
                           count(*) FILTER (WHERE status = 'pending') AS pending,
                           count(*) FILTER (WHERE status = 'dead') AS dead,
                           min(received_at) FILTER (WHERE status = 'pending') AS oldest_pending
                    FROM marketplace_webhook_events
                    WHERE status IN ('pending', 'dead')
                    GROUP BY account
                )
                SELECT a.account, a.scheduled, a.parked, a.attempts, a.last_error, a.handled,
                       a.backoff_until, COALESCE(u.pending, 0) AS pending,
                       COALESCE(u.dead, 0) AS dead, u.oldest_pending
                FROM marketplace_webhook_accounts a
                LEFT JOIN unfinished u USING (account)
                ORDER BY a.account
                """
            )
        return [dict(row) for row in rows]
