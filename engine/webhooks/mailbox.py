"""Mailboxes in PostgreSQL: the source of truth for webhook processing.

The inbox table holds every verified event (unique on Stripe's id) under a
mailbox key: the unit of order and isolation, chosen per event by the
``resolve_mailbox_key`` hook (a connected account, ``platform``, or a key a
plugin chose such as a booking). Each key has one row in
``marketplace_webhook_accounts`` with a scheduling token and a fenced lease.
The protocol:

1. ``accept``: in one statement, bump the mailbox's ``version`` and insert the
   event with that version as its ``seq``, under the mailbox row's lock (so
   ``seq`` is the order accepts commit in); if the mailbox was not
   ``scheduled`` it becomes scheduled and the caller publishes one "drain
   <key>" task. The broker holds at most one task per key, so a flood on one
   key is one task, queued behind every other key's.
2. ``drain``: the worker takes the key's lease, which bumps ``lease_epoch``
   (the fencing token), then, in a later statement of the same round trip (a
   later snapshot, so the events read always include every event the
   returned version counts), reads a bounded batch of pending events in
   ``seq`` order and applies them in one transaction. The statement that
   marks them handled checks the token first and holds the mailbox row until
   the commit: a drain whose
   lease was taken over raises ``LeaseLost`` and its transaction, handlers'
   writes included, rolls back. It clears ``scheduled`` only if the version
   is unchanged (else the key is re-queued at the back). While a drain runs,
   ``LeaseKeeper`` renews its lease and cancels it before the lease could end
   unrenewed (``engine.webhooks.leases``). ``drain_many`` leases several keys
   in one round trip (``marketplace_mailbox_lease_many``), each with its own
   token, and applies each key as above, in its own fenced transaction, or
   (``shared=True``, the worker's way) every key in one transaction whose one
   marking statement checks every key's token.
3. A failing event backs the key off with jitter; after ``max_attempts`` the
   event is dead and the key parked (its later events wait, preserving
   order) until replayed. Both writes are fenced like the marks.
4. ``sweep``: re-schedules keys whose backoff has passed, whose lease expired
   (a worker died) or whose task went missing (a broker lost it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg

from engine.core.mailboxes import default_mailbox_key
from engine.webhooks.leases import Connect, HeldLeases, LeaseKeeper
from engine.webhooks.screening import QUARANTINE_MAILBOX, Quarantined

__all__ = [
    "Accepted",
    "DeadLetter",
    "DrainOutcome",
    "LeaseLost",
    "Mailbox",
    "backoff_seconds",
]

log = logging.getLogger(__name__)

EventHandler = Callable[
    [Mapping[str, Any], asyncpg.Connection], Awaitable[Callable[[], None] | None]
]
"""``handle(event, conn)`` -> an optional action to run after the commit."""

Route = Callable[[Mapping[str, Any]], str]
"""``route(event)`` -> the event's mailbox key (``Plugins.mailbox_key`` in the engine)."""

# The mailbox row first (its lock orders concurrent accepts of one key), then
# the event with the new version as its seq. A duplicate that is already
# committed changes nothing; two concurrent deliveries of one new event both
# bump the version (harmless: a version only has to grow when something
# arrived) and the second insert does nothing.
_ACCEPT = """
WITH acc AS (
    INSERT INTO marketplace_webhook_accounts AS a
        (account, version, scheduled, scheduled_at, lease_owner, lease_epoch, parked,
         attempts, last_error, handled, updated_at)
    SELECT $2, 1, true, now(), '', 0, false, 0, '', 0, now()
    WHERE NOT EXISTS (SELECT 1 FROM marketplace_webhook_events WHERE event_id = $1)
    ON CONFLICT (account) DO UPDATE SET
        version = a.version + 1,
        scheduled = true,
        scheduled_at = CASE WHEN a.scheduled THEN a.scheduled_at ELSE now() END,
        updated_at = now()
    RETURNING version, scheduled_at = now() AS newly_scheduled, parked
), ev AS (
    INSERT INTO marketplace_webhook_events
        (event_id, account, seq, type, livemode, created, payload, status, attempts,
         last_error, received_at)
    SELECT $1, $2, acc.version, $3, $4, $5, $6::jsonb, 'pending', 0, '', now() FROM acc
    ON CONFLICT (event_id) DO NOTHING
    RETURNING 1
)
SELECT acc.version, acc.newly_scheduled, acc.parked, EXISTS (SELECT 1 FROM ev) AS inserted
FROM acc
"""

# ``_ACCEPT`` for several events in one round trip and one commit, through
# ``marketplace_mailbox_accept_many`` (core migration ``0008``). One row per event
# accepted or found already stored, by its 1-based position; none for a duplicate
# of an event earlier in the same call.
_ACCEPT_MANY = """
SELECT out_position AS position, out_version AS version,
       out_newly_scheduled AS newly_scheduled, out_parked AS parked, out_inserted AS inserted
FROM marketplace_mailbox_accept_many($1::text[], $2::text[], $3::text[], $4::bool[],
                                     $5::bigint[], $6::text[])
"""

# An event of another Stripe API version (``engine.webhooks.versions``): stored dead
# with its reason, nothing scheduled or parked. It takes the mailbox's current
# version as its seq without bumping it (under the row's lock), so a replay applies
# it after the events accepted before it and before those accepted after.
_ACCEPT_DEAD = """
WITH acc AS (
    INSERT INTO marketplace_webhook_accounts AS a
        (account, version, scheduled, lease_owner, lease_epoch, parked, attempts,
         last_error, handled, updated_at)
    SELECT $2, 0, false, '', 0, false, 0, '', 0, now()
    WHERE NOT EXISTS (SELECT 1 FROM marketplace_webhook_events WHERE event_id = $1)
    ON CONFLICT (account) DO UPDATE SET updated_at = a.updated_at
    RETURNING version
), ev AS (
    INSERT INTO marketplace_webhook_events
        (event_id, account, seq, type, livemode, created, payload, status, attempts,
         last_error, received_at)
    SELECT $1, $2, acc.version, $3, $4, $5, $6::jsonb, 'dead', 0, $7, now() FROM acc
    ON CONFLICT (event_id) DO NOTHING
    RETURNING 1
)
SELECT count(*) AS inserted FROM ev
"""

# Take the lease (bumping the fencing token) and read the batch: two statements
# in one round trip, through the function ``marketplace_mailbox_lease`` (core
# migration ``0003``). The read is a statement of its own, so under READ
# COMMITTED its snapshot is taken after the lease, and it sees every event the
# version returned by the lease counts (one statement would keep the snapshot
# from before the lease waited on a concurrent accept, and the mailbox could be
# released as idle with an event unread). No row: the lease is not free. One
# row with a NULL id: leased, nothing pending.
_LEASE_AND_READ = """
SELECT out_version AS version, out_epoch AS lease_epoch, out_id AS id,
       out_payload AS payload, out_received_at AS received_at
FROM marketplace_mailbox_lease($1, $2, $3, $4)
"""

# Lease several mailboxes and read each one's batch in one round trip, through
# ``marketplace_mailbox_lease_many`` (core migration ``0006``): the same two
# statements as ``_LEASE_AND_READ`` for many keys, each key with its own token.
# A key not returned was not free; a leased key with nothing pending is one row
# with a NULL id.
_LEASE_MANY_AND_READ = """
SELECT out_account AS account, out_version AS version, out_epoch AS lease_epoch,
       out_id AS id, out_payload AS payload, out_received_at AS received_at
FROM marketplace_mailbox_lease_many($1::text[], $2, $3, $4)
"""

# The end of a drain: check the token (and keep the mailbox row locked until
# the commit), mark the batch handled, release the lease, and clear the
# scheduling token only when nothing arrived since the lease ($3 = version)
# and the batch was not full ($5).
_MARK_AND_RELEASE = """
WITH fence AS (
    UPDATE marketplace_webhook_accounts
    SET scheduled = scheduled AND NOT (version = $3 AND $5),
        scheduled_at = CASE WHEN version = $3 AND $5 THEN NULL ELSE now() END,
        lease_owner = '', lease_until = NULL, attempts = 0, last_error = '',
        handled = handled + cardinality($4::bigint[]), updated_at = now()
    WHERE account = $1 AND lease_epoch = $2
    RETURNING scheduled
), marked AS (
    UPDATE marketplace_webhook_events
    SET status = 'handled', handled_at = clock_timestamp(), attempts = attempts + 1
    WHERE id = ANY($4::bigint[]) AND status = 'pending' AND EXISTS (SELECT 1 FROM fence)
    RETURNING 1
)
SELECT scheduled, (SELECT count(*) FROM marked) AS marked FROM fence
"""

# ``_MARK_AND_RELEASE`` for every mailbox of a shared drain (``drain_many(shared=True)``)
# at once: each key's token checked, its batch marked handled and its lease released as
# above. A key not returned lost its lease: the caller raises ``LeaseLost`` and the one
# transaction of the drain rolls back whole. The rows are locked in key order, as the
# intake's group commit and ``marketplace_mailbox_lease_many`` lock them (no deadlock).
_MARK_AND_RELEASE_MANY = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::int[])
        AS i(account, epoch, version, may_be_idle, handled)
), locked AS (
    SELECT a.account FROM marketplace_webhook_accounts a
    WHERE a.account = ANY($1::text[])
    ORDER BY a.account
    FOR UPDATE
), fence AS (
    UPDATE marketplace_webhook_accounts a
    SET scheduled = a.scheduled AND NOT (a.version = i.version AND i.may_be_idle),
        scheduled_at = CASE WHEN a.version = i.version AND i.may_be_idle THEN NULL ELSE now() END,
        lease_owner = '', lease_until = NULL, attempts = 0, last_error = '',
        handled = a.handled + i.handled, updated_at = now()
    FROM input i JOIN locked l ON l.account = i.account
    WHERE a.account = i.account AND a.lease_epoch = i.epoch
    RETURNING a.account, a.scheduled
), marked AS (
    UPDATE marketplace_webhook_events e
    SET status = 'handled', handled_at = clock_timestamp(), attempts = e.attempts + 1
    WHERE e.id = ANY($6::bigint[]) AND e.status = 'pending'
      AND e.account IN (SELECT account FROM fence)
    RETURNING 1
)
SELECT account, scheduled, (SELECT count(*) FROM marked) AS marked FROM fence
"""

# A handler failed: check the token (locking the mailbox row), mark the events
# handled before the failing one, and count the failure on the failing one.
_FAIL_EVENT = """
WITH fence AS (
    SELECT 1 FROM marketplace_webhook_accounts
    WHERE account = $1 AND lease_epoch = $2
    FOR UPDATE
), marked AS (
    UPDATE marketplace_webhook_events
    SET status = 'handled', handled_at = clock_timestamp(), attempts = attempts + 1
    WHERE id = ANY($3::bigint[]) AND status = 'pending' AND EXISTS (SELECT 1 FROM fence)
    RETURNING 1
)
UPDATE marketplace_webhook_events
SET attempts = attempts + 1, last_error = $5,
    status = CASE WHEN attempts + 1 >= $6 THEN 'dead' ELSE status END
WHERE id = $4 AND status = 'pending' AND EXISTS (SELECT 1 FROM fence)
RETURNING status, attempts, (SELECT count(*) FROM marked) AS marked
"""

_BACK_OFF = """
UPDATE marketplace_webhook_accounts
SET lease_owner = '', lease_until = NULL, scheduled_at = now(),
    backoff_until = now() + make_interval(secs => $3), parked = $4,
    attempts = $5, last_error = $6, handled = handled + $7, updated_at = now()
WHERE account = $1 AND lease_epoch = $2
RETURNING 1
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


def _stopped(key: str, exc: Exception) -> DrainOutcome:
    """The outcome of a key whose drain stopped on ``exc`` (a connection failure)."""
    log.warning("drain of %s stopped: %r", key, exc)
    return DrainOutcome("error", error=f"{type(exc).__name__}: {exc}"[:2000])


def _lost(lease: _Lease) -> DrainOutcome:
    """The outcome of a key whose lease was lost: nothing of it committed."""
    log.warning("drain of %s lost its lease (epoch %d); nothing committed", lease.key, lease.epoch)
    return DrainOutcome("lost")


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
    """What one drain did: ``state`` is busy, idle, requeue, backoff, parked, lost or error.

    ``lost``: the lease was taken over, or could not be renewed in time; the
    drain stopped and committed nothing. ``error`` (``drain_many`` only): the
    key's connection failed; nothing of it committed and its lease runs out.
    """

    state: str
    handled: int = 0
    error: str = ""
    lag_seconds: tuple[float, ...] = ()
    """Receipt-to-handled time of each event handled in this drain."""


class LeaseLost(Exception):
    """The drain's fencing token no longer holds its mailbox: it must commit nothing."""


@dataclass(frozen=True, slots=True)
class _Lease:
    key: str
    epoch: int
    version: int


class _EventFailed(Exception):
    """The handler of the batch's ``index``-th event (of mailbox ``key``) failed with ``error``."""

    def __init__(self, index: int, error: Exception, key: str = "") -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error
        self.key = key


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered event, for the admin API."""

    event_id: str
    account: str
    type: str
    attempts: int
    last_error: str
    received_at: datetime


class Mailbox:
    """The mailbox protocol over an asyncpg pool (see the module docstring).

    Args:
        pool: the process's asyncpg pool.
        route: the event's mailbox key (default: the engine's default key).
        renew_with: opens the lease keeper's own connection; without it the
            keeper borrows from ``pool`` (fine when the pool cannot run dry).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_attempts: int = 8,
        backoff_base: float = 1.0,
        backoff_cap: float = 3600.0,
        batch_size: int = 50,
        lease_seconds: float = 60.0,
        route: Route = default_mailbox_key,
        renew_with: Connect | None = None,
    ) -> None:
        self._pool = pool
        self._route = route
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.keeper = LeaseKeeper(lease_seconds, connect=renew_with, pool=pool)
        self.lease_many = True
        """False once ``marketplace_mailbox_lease_many`` was found missing: ``drain_many``
        drains one mailbox at a time."""
        self.accept_many_exists = True
        """False once ``marketplace_mailbox_accept_many`` was found missing: ``accept_many``
        accepts one event at a time."""

    def key_of(self, event: Mapping[str, Any]) -> str:
        """The mailbox ``event`` goes to."""
        return self._route(event)

    async def accept(
        self,
        event: Mapping[str, Any],
        raw_body: str,
        *,
        dead_reason: str | None = None,
        key: str | None = None,
    ) -> Accepted:
        """Commit a verified event to its mailbox (duplicates change nothing).

        With ``dead_reason`` the event is stored straight into the dead letter with
        that reason (never handled, replayable), and nothing is scheduled. ``key``:
        the mailbox when the caller already resolved it (``key_of``).
        """
        key = self.key_of(event) if key is None else key
        async with self._pool.acquire() as conn:
            if dead_reason is not None:
                inserted = await conn.fetchval(
                    _ACCEPT_DEAD,
                    str(event["id"]),
                    key,
                    str(event.get("type", "")),
                    bool(event.get("livemode", False)),
                    int(event.get("created") or 0),
                    raw_body,
                    dead_reason[:2000],
                )
                return Accepted(inserted=bool(inserted), account=key)
            row = await conn.fetchrow(
                _ACCEPT,
                str(event["id"]),
                key,
                str(event.get("type", "")),
                bool(event.get("livemode", False)),
                int(event.get("created") or 0),
                raw_body,
            )
        if row is None:
            return Accepted(inserted=False, account=key)
        # A concurrent duplicate may still have scheduled the mailbox: publish then too.
        return Accepted(
            inserted=bool(row["inserted"]),
            account=key,
            version=int(row["version"]),
            publish=bool(row["newly_scheduled"]) and not row["parked"],
        )

    async def accept_many(
        self, events: Sequence[tuple[Mapping[str, Any], str, str]]
    ) -> list[Accepted]:
        """Commit several verified events ``(event, raw body, key)`` in one statement.

        Each is accepted as ``accept`` accepts one (its own mailbox version, a
        duplicate changes nothing), all in one round trip and one commit. The
        events go in mailbox key order (the order of one key's events kept), so
        that concurrent calls lock mailbox rows in one order. Returns one
        ``Accepted`` per event, in the order given. Without the function (a
        database not yet migrated to core step ``0008``) each is accepted alone.
        """
        if not events:
            return []
        if self.accept_many_exists:
            accepted = await self._accept_many(events)
            if accepted is not None:
                return accepted
        return [await self.accept(event, raw, key=key) for event, raw, key in events]

    async def _accept_many(
        self, events: Sequence[tuple[Mapping[str, Any], str, str]]
    ) -> list[Accepted] | None:
        order = sorted(range(len(events)), key=lambda index: events[index][2])
        ordered = [events[index] for index in order]
        async with self._pool.acquire() as conn:
            try:
                rows = await conn.fetch(
                    _ACCEPT_MANY,
                    [str(event["id"]) for event, _, _ in ordered],
                    [key for _, _, key in ordered],
                    [str(event.get("type", "")) for event, _, _ in ordered],
                    [bool(event.get("livemode", False)) for event, _, _ in ordered],
                    [int(event.get("created") or 0) for event, _, _ in ordered],
                    [raw for _, raw, _ in ordered],
                )
            except asyncpg.UndefinedFunctionError:
                log.warning(
                    "marketplace_mailbox_accept_many is missing (run `marketplace migrate`); "
                    "accepting one event at a time"
                )
                self.accept_many_exists = False
                return None
        found = {int(row["position"]) - 1: row for row in rows}
        accepted: list[Accepted | None] = [None] * len(events)
        for position, index in enumerate(order):
            key = events[index][2]
            row = found.get(position)
            accepted[index] = (
                Accepted(inserted=False, account=key)
                if row is None
                else Accepted(
                    inserted=bool(row["inserted"]),
                    account=key,
                    version=int(row["version"]),
                    publish=bool(row["newly_scheduled"]) and not row["parked"],
                )
            )
        return [one for one in accepted if one is not None]

    async def quarantine(self, event: Quarantined) -> Accepted:
        """Store a malformed event dead in the ``quarantine`` mailbox with its reason.

        Never handled (a replay finds it refused again); a duplicate changes nothing.
        """
        async with self._pool.acquire() as conn:
            inserted = await conn.fetchval(
                _ACCEPT_DEAD,
                event.event_id,
                QUARANTINE_MAILBOX,
                event.type,
                False,
                0,
                event.payload,
                event.reason[:2000],
            )
        return Accepted(inserted=bool(inserted), account=QUARANTINE_MAILBOX)

    async def drain(self, account: str, owner: str, handle: EventHandler) -> DrainOutcome:
        """Apply up to ``batch_size`` pending events of mailbox ``account`` in order.

        The batch runs in one transaction: the handlers' writes and their
        events' "handled" marks commit together, fenced by the lease's token,
        for one commit per batch. A failing handler rolls the batch back; the
        events before it are applied again and its failure recorded. Workers open their pool with
        ``synchronous_commit = off`` (see ``Services.start``): the inbox insert
        was durable, so a crash that loses the last few worker commits loses
        their effects and marks together and those events are simply handled
        again (handlers are idempotent). Intake commits stay synchronous.
        """
        loop = asyncio.get_running_loop()
        async with self._pool.acquire() as conn:
            asked_at = loop.time()
            leased = await conn.fetch(
                _LEASE_AND_READ, account, owner, self.lease_seconds, self.batch_size
            )
            if not leased:
                return DrainOutcome("busy")
            lease = _Lease(account, int(leased[0]["lease_epoch"]), int(leased[0]["version"]))
            rows = [row for row in leased if row["id"] is not None]
            async with self.keeper.hold_many([(lease.key, lease.epoch)], asked_at) as held:
                return await self._drain_leased(conn, lease, rows, handle, held)

    async def drain_many(
        self,
        accounts: Sequence[str],
        owner: str,
        handle: EventHandler,
        *,
        at_once: int = 0,
        shared: bool = False,
    ) -> dict[str, DrainOutcome]:
        """Drain several mailboxes in one go: one round trip leases them all and reads
        their batches, then each is applied as ``drain`` applies one, in its own
        transaction fenced by its own token.

        ``at_once``: how many of the leased mailboxes are applied at the same time,
        each on a connection of its own from the pool (0: all of them; the pool
        bounds them). 1 applies them one after the other on one connection.
        Every leased key is renewed together (``LeaseKeeper.hold_many``) until its
        turn ends, and each key's turn runs under that key's deadline.

        ``shared`` (the worker's way; ``at_once`` is then unused): every leased
        mailbox is applied in one transaction on one connection, the keys one after
        the other, and one statement checks every key's token, marks every batch
        and releases every lease before the one commit (two round trips and a
        commit per drain instead of per key). What holds per key still holds: a key
        whose handler fails, or whose lease is lost or cannot be renewed in time,
        makes the transaction roll back whole, and a new one applies the other keys
        again (handlers are idempotent) with that key's failure recorded or without
        that key; a deadlock or serialization failure (handlers of several keys in
        one transaction) falls back to one transaction per key.

        Returns an outcome per account: ``busy`` for one whose lease was not free,
        ``lost`` for one whose lease was lost (nothing of it committed), and
        ``error`` for one whose connection failed (its lease runs out and the
        sweeper hands it on; with ``at_once=1`` the drain stops there and the keys
        after it are ``error`` too). Without the ``marketplace_mailbox_lease_many``
        function (a database not yet migrated to core step ``0006``) each account
        is drained alone.
        """
        keys = list(dict.fromkeys(accounts))
        if not keys:
            return {}
        if self.lease_many:
            drained = await self._drain_many(keys, owner, handle, at_once, shared)
            if drained is not None:
                return drained
        return {key: await self.drain(key, owner, handle) for key in keys}

    async def _drain_many(
        self, keys: list[str], owner: str, handle: EventHandler, at_once: int, shared: bool
    ) -> dict[str, DrainOutcome] | None:
        """``drain_many`` with the function; ``None`` when it is missing."""
        loop = asyncio.get_running_loop()
        async with self._pool.acquire() as conn:
            asked_at = loop.time()
            try:
                leased = await conn.fetch(
                    _LEASE_MANY_AND_READ, keys, owner, self.lease_seconds, self.batch_size
                )
            except asyncpg.UndefinedFunctionError:
                log.warning(
                    "marketplace_mailbox_lease_many is missing (run `marketplace migrate`); "
                    "draining one mailbox at a time"
                )
                self.lease_many = False
                return None
        batches: dict[str, tuple[_Lease, list[Any]]] = {}
        for row in leased:
            key = str(row["account"])
            if key not in batches:
                batches[key] = (_Lease(key, int(row["lease_epoch"]), int(row["version"])), [])
            if row["id"] is not None:
                batches[key][1].append(row)
        outcomes = {key: DrainOutcome("busy") for key in keys if key not in batches}
        leases = [(lease.key, lease.epoch) for lease, _ in batches.values()]
        async with self.keeper.hold_many(leases, asked_at) as held:
            if shared and batches:
                outcomes.update(await self._drain_shared(batches, handle, held))
            elif at_once == 1:
                async with self._pool.acquire() as conn:
                    for key, (lease, rows) in batches.items():
                        try:
                            outcomes[key] = await self._drain_leased(
                                conn, lease, rows, handle, held
                            )
                        except Exception as exc:  # the connection failed: stop here
                            stopped = _stopped(key, exc)
                            for rest in batches:
                                outcomes.setdefault(rest, stopped)
                            break
            elif batches:
                limit = asyncio.Semaphore(at_once if at_once > 0 else len(batches))

                async def apply(lease: _Lease, rows: list[Any]) -> DrainOutcome:
                    async with limit:
                        try:
                            return await self._drain_leased(None, lease, rows, handle, held)
                        except Exception as exc:  # this key's connection failed
                            return _stopped(lease.key, exc)

                applied = await asyncio.gather(
                    *(apply(lease, rows) for lease, rows in batches.values())
                )
                outcomes.update(zip(batches, applied, strict=True))
        return {key: outcomes[key] for key in keys}

    async def _drain_shared(
        self,
        batches: dict[str, tuple[_Lease, list[Any]]],
        handle: EventHandler,
        held: HeldLeases,
    ) -> dict[str, DrainOutcome]:
        """Apply every leased mailbox in one transaction (``drain_many(shared=True)``).

        A round that cannot commit is rolled back whole and the next one applies
        what is left: without a key that lost its lease, or with a failing key's
        batch cut before its failing event and that failure recorded. Each round
        settles at least one key or one failure, so the rounds end.
        """
        may_be_idle = {key: len(rows) < self.batch_size for key, (_, rows) in batches.items()}
        rows_of = {key: rows for key, (_, rows) in batches.items()}
        failing: dict[str, tuple[Any, Exception]] = {}
        settled: dict[str, DrainOutcome] = {}
        async with self._pool.acquire() as conn:
            while True:
                live = [key for key in batches if key not in settled]
                if not live:
                    return settled
                work = [(batches[key][0], rows_of[key]) for key in live]
                handled: dict[str, list[Any]] = {}
                after: list[Callable[[], None]] = []
                try:
                    async with held.turn_many(live):
                        applied = await self._apply_shared(
                            conn,
                            work,
                            handle,
                            (handled, after),
                            failing,
                            may_be_idle,
                            functools.partial(held.fence, live),
                        )
                except _EventFailed as failure:
                    if isinstance(failure.error, asyncpg.TransactionRollbackError):
                        return settled | await self._one_by_one(conn, live, batches, handle, held)
                    rows = rows_of[failure.key]
                    failing[failure.key] = (rows[failure.index], failure.error)
                    rows_of[failure.key] = rows[: failure.index]
                    continue
                except asyncpg.TransactionRollbackError:
                    return settled | await self._one_by_one(conn, live, batches, handle, held)
                except LeaseLost as lost:
                    settled[str(lost.args[0])] = _lost(batches[str(lost.args[0])][0])
                    continue
                except TimeoutError:
                    for key in held.expired(live):
                        settled[key] = _lost(batches[key][0])
                    continue
                except Exception as exc:  # the connection failed: nothing committed
                    return settled | {key: _stopped(key, exc) for key in live}
                break
        for action in after:
            action()
        now = datetime.now(UTC)
        for key, rows in handled.items():
            lags = tuple((now - row["received_at"]).total_seconds() for row in rows)
            applied[key] = replace(applied[key], lag_seconds=lags)
        return settled | applied

    async def _one_by_one(
        self,
        conn: asyncpg.Connection,
        keys: list[str],
        batches: dict[str, tuple[_Lease, list[Any]]],
        handle: EventHandler,
        held: HeldLeases,
    ) -> dict[str, DrainOutcome]:
        """Apply ``keys`` each in its own transaction (a shared one could not commit)."""
        outcomes: dict[str, DrainOutcome] = {}
        for key in keys:
            lease, rows = batches[key]
            try:
                outcomes[key] = await self._drain_leased(conn, lease, rows, handle, held)
            except Exception as exc:  # the connection failed: stop here
                stopped = _stopped(key, exc)
                return outcomes | {rest: stopped for rest in keys if rest not in outcomes}
        return outcomes

    async def _apply_shared(  # noqa: PLR0917 - the drain's working set, passed along once
        self,
        conn: asyncpg.Connection,
        work: list[tuple[_Lease, list[Any]]],
        handle: EventHandler,
        collected: tuple[dict[str, list[Any]], list[Callable[[], None]]],
        failing: dict[str, tuple[Any, Exception]],
        may_be_idle: dict[str, bool],
        fenced: Callable[[], None],
    ) -> dict[str, DrainOutcome]:
        """One round of ``_drain_shared``: every key's handlers in order, then the fenced
        marks (one statement) and the failures, in one transaction.

        ``fenced`` is called once every key's token was checked (the rows locked until
        the commit): from then on no deadline may cancel the commit."""
        handled, after = collected
        async with conn.transaction():
            for lease, rows in work:
                for index, row in enumerate(rows):
                    try:
                        action = await handle(json.loads(row["payload"]), conn)
                    except Exception as exc:  # the key backs off; the others go on
                        raise _EventFailed(index, exc, lease.key) from exc
                    handled.setdefault(lease.key, []).append(row)
                    if action is not None:
                        after.append(action)
            outcomes: dict[str, DrainOutcome] = {}
            marking: list[tuple[_Lease, list[int]]] = []
            for lease, _ in work:
                ids = [row["id"] for row in handled.get(lease.key, ())]
                if lease.key in failing:
                    failed_row, error = failing[lease.key]
                    outcomes[lease.key] = await self._failed(
                        conn, lease, failed_row["id"], error, ids
                    )
                else:
                    marking.append((lease, ids))
            if marking:
                released = await conn.fetch(
                    _MARK_AND_RELEASE_MANY,
                    [lease.key for lease, _ in marking],
                    [lease.epoch for lease, _ in marking],
                    [lease.version for lease, _ in marking],
                    [may_be_idle[lease.key] for lease, _ in marking],
                    [len(ids) for _, ids in marking],
                    [one for _, ids in marking for one in ids],
                )
                scheduled = {str(row["account"]): bool(row["scheduled"]) for row in released}
                for lease, ids in marking:
                    if lease.key not in scheduled:
                        raise LeaseLost(lease.key)
                    state = "requeue" if scheduled[lease.key] else "idle"
                    outcomes[lease.key] = DrainOutcome(state, len(ids))
            fenced()
            return outcomes

    async def _drain_leased(
        self,
        conn: asyncpg.Connection | None,
        lease: _Lease,
        rows: Sequence[Any],
        handle: EventHandler,
        held: HeldLeases,
    ) -> DrainOutcome:
        """Apply one leased mailbox's batch during its turn; run its after-commit actions.

        ``conn`` None: a connection is taken from the pool first; the turn starts
        once it is there (a key whose deadline passed meanwhile is not applied).
        Nothing awaits between the commit and the end of the turn, so a renewal
        that finds the lease released by that commit cannot stop a finished turn.
        """
        if conn is None:
            async with self._pool.acquire() as own:
                return await self._drain_leased(own, lease, rows, handle, held)
        after: list[Callable[[], None]] = []
        handled: list[Any] = []
        try:
            async with held.turn(lease.key):
                outcome = await self._run_batch(
                    conn,
                    lease,
                    rows,
                    handle,
                    (handled, after),
                    functools.partial(held.fence, [lease.key]),
                )
        except (LeaseLost, TimeoutError):
            log.warning(
                "drain of %s lost its lease (epoch %d); nothing committed",
                lease.key,
                lease.epoch,
            )
            return DrainOutcome("lost")
        for action in after:
            action()
        if handled:
            now = datetime.now(UTC)
            lags = tuple((now - row["received_at"]).total_seconds() for row in handled)
            outcome = replace(outcome, lag_seconds=lags)
        return outcome

    async def _run_batch(  # noqa: PLR0917 - the drain's working set, passed along once
        self,
        conn: asyncpg.Connection,
        lease: _Lease,
        rows: Sequence[Any],
        handle: EventHandler,
        collected: tuple[list[Any], list[Callable[[], None]]],
        fenced: Callable[[], None],
    ) -> DrainOutcome:
        """Apply the batch in one transaction, optimistically: no savepoint per event.

        When a handler fails, the transaction rolls back whole, and a new one
        applies the events before the failing one again (handlers are
        idempotent) and records the failure. Failures are rare; savepoints
        would cost two round trips on every event. ``fenced`` is called once the
        token was checked, before the commit.
        """
        handled, after = collected
        may_be_idle = len(rows) < self.batch_size
        failing: tuple[Any, Exception] | None = None
        while True:
            try:
                async with conn.transaction():
                    outcome = await self._apply(
                        conn, lease, rows, handle, handled, after, failing, may_be_idle
                    )
                    # The token checked and the mailbox row locked until the commit: no
                    # other drain can interleave, so no deadline may cancel the commit
                    # (a commit cut short would report lost what it committed).
                    fenced()
                return outcome
            except _EventFailed as failure:
                handled.clear()
                after.clear()
                failing = (rows[failure.index], failure.error)
                rows = rows[: failure.index]

    async def _apply(  # noqa: PLR0917 - the drain's working set, passed along once
        self,
        conn: asyncpg.Connection,
        lease: _Lease,
        rows: Sequence[Any],
        handle: EventHandler,
        handled: list[Any],
        after: list[Callable[[], None]],
        failing: tuple[Any, Exception] | None,
        may_be_idle: bool,
    ) -> DrainOutcome:
        """Run the handlers in order inside the caller's transaction, then fence and record.

        Records the batch as handled and releases the lease or, when ``failing``
        names the event after these, records its failure instead.
        """
        for index, row in enumerate(rows):
            try:
                action = await handle(json.loads(row["payload"]), conn)
            except Exception as exc:  # any handler failure backs the mailbox off
                raise _EventFailed(index, exc) from exc
            handled.append(row)
            if action is not None:
                after.append(action)
        ids = [row["id"] for row in handled]
        if failing is not None:
            failed_row, error = failing
            return await self._failed(conn, lease, failed_row["id"], error, ids)
        released = await conn.fetchrow(
            _MARK_AND_RELEASE, lease.key, lease.epoch, lease.version, ids, may_be_idle
        )
        if released is None:
            raise LeaseLost(lease.key)
        return DrainOutcome("requeue" if released["scheduled"] else "idle", len(ids))

    async def _failed(
        self,
        conn: asyncpg.Connection,
        lease: _Lease,
        row_id: int,
        exc: Exception,
        handled_ids: list[int],
    ) -> DrainOutcome:
        message = f"{type(exc).__name__}: {exc}"[:2000]
        # An error marked ``permanent`` (an event of another API version) cannot succeed
        # on a retry: dead at once, and the mailbox goes on with its next events.
        permanent = bool(getattr(exc, "permanent", False))
        limit = 1 if permanent else self.max_attempts
        result = await conn.fetchrow(
            _FAIL_EVENT, lease.key, lease.epoch, handled_ids, row_id, message, limit
        )
        if result is None:
            raise LeaseLost(lease.key)
        attempts = int(result["attempts"])
        dead = result["status"] == "dead"
        delay = 0.0 if permanent else backoff_seconds(attempts, self.backoff_base, self.backoff_cap)
        parked = dead and not permanent
        backed_off = await conn.fetchval(
            _BACK_OFF,
            lease.key,
            lease.epoch,
            delay,
            parked,
            attempts,
            message,
            len(handled_ids),
        )
        if backed_off is None:
            raise LeaseLost(lease.key)
        if permanent:
            return DrainOutcome("requeue", len(handled_ids), message)
        return DrainOutcome("parked" if dead else "backoff", len(handled_ids), message)

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

        ``event_ids``: those dead events; one of a parked mailbox revives every dead
        event of that mailbox, since the event that parked it must go first (the
        mailbox's later events never pass it; one refused for good, such as an event
        of another API version, goes straight back to dead). ``account``: every dead
        event of that mailbox. The caller publishes a drain for each returned account.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            named = await conn.fetch(
                "SELECT DISTINCT account FROM marketplace_webhook_events "
                "WHERE status = 'dead' AND event_id = ANY($1::text[])",
                list(event_ids),
            )
            touched = sorted({row["account"] for row in named} | ({account} if account else set()))
            # Locked in key order, as intake and drains lock them: a drain cannot park
            # one of them between this read and the updates below.
            locked = await conn.fetch(
                "SELECT account, parked FROM marketplace_webhook_accounts "
                "WHERE account = ANY($1::text[]) ORDER BY account FOR UPDATE",
                touched,
            )
            rows = await conn.fetch(
                """
                UPDATE marketplace_webhook_events
                SET status = 'pending', attempts = 0, last_error = ''
                WHERE status = 'dead'
                  AND (event_id = ANY($1::text[])
                       OR ($2::text IS NOT NULL AND account = $2)
                       OR account = ANY($3::text[]))
                RETURNING account
                """,
                list(event_ids),
                account,
                [row["account"] for row in locked if row["parked"]],
            )
            wanted = sorted({row["account"] for row in rows} | ({account} if account else set()))
            resumed = await conn.fetch(
                """
                UPDATE marketplace_webhook_accounts
                SET parked = false, backoff_until = NULL, attempts = 0, last_error = '',
                    scheduled = true, scheduled_at = now()
                WHERE account = ANY($1)
                RETURNING account
                """,
                wanted,
            )
            return sorted(row["account"] for row in resumed)

    async def pending_counts(self) -> dict[str, int]:
        """Pending events per mailbox, for mailboxes that have any (reads the pending index)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT account, count(*) AS pending FROM marketplace_webhook_events "
                "WHERE status = 'pending' GROUP BY account"
            )
        return {row["account"]: int(row["pending"]) for row in rows}

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
