"""Mailbox leases kept alive while a drain runs, and drains stopped before their lease ends.

A drain holds its mailbox through a lease: ``lease_until`` in PostgreSQL plus a
fencing token, ``lease_epoch``, bumped by every lease taken. The token makes a
drain safe (every write it makes checks the token, so a drain whose lease was
taken over commits nothing); this module makes it live and bounded:

- one ``LeaseKeeper`` per process renews every lease its drains hold, every
  third of the lease, in one statement on a connection of its own (never one
  from the pool, which busy drains can exhaust); a batched drain's leases are
  held together (``hold_many``) and each key is worked on in its ``turn``;
- each drain runs under a local deadline, ``asyncio.timeout_at``, set to the
  moment the lease was asked for (or last renewed) plus the lease less a
  margin. A successful renewal pushes the deadline out; a renewal that finds
  the token moved (the lease was taken over) fires it at once. So a drain
  that cannot renew, whatever it is waiting on (a Stripe call, a lock), is
  cancelled before its lease can run out, and one that lost its lease stops;
- once a drain's token was checked by the statement that marks its batch (which
  holds the mailbox row until the commit), its timer is off (``HeldLeases.fence``):
  the commit is not cut short.

The deadline uses this process's monotonic clock and the lease the database's
``now()``; the deadline starts from the moment the request was *sent*, so it
is always earlier than the database's expiry, and the margin absorbs clock
rate differences and the time a cancellation takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

__all__ = ["HeldLeases", "LeaseKeeper"]

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]

# Renew the leases still held with this token, skipping rows another statement
# has locked right now (an intake, or a drain committing): they are tried again
# next round, and one busy row never delays the others. ``moved`` is true when
# the token moved on (or the row is gone): that drain lost its lease. A lease
# released under its own token (``lease_until`` NULL) was released by its drain's
# own committed statement: neither held nor lost, that drain is finishing.
_RENEW = """
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::bigint[]) AS w(account, epoch)
), lockable AS (
    SELECT a.account FROM marketplace_webhook_accounts a
    JOIN wanted w ON a.account = w.account AND a.lease_epoch = w.epoch
    WHERE a.lease_until IS NOT NULL
    FOR UPDATE OF a SKIP LOCKED
), renewed AS (
    UPDATE marketplace_webhook_accounts a
    SET lease_until = now() + make_interval(secs => $3)
    FROM lockable WHERE a.account = lockable.account
    RETURNING a.account
)
SELECT w.account, w.epoch,
       EXISTS (SELECT 1 FROM renewed r WHERE r.account = w.account) AS renewed,
       NOT EXISTS (
           SELECT 1 FROM marketplace_webhook_accounts a
           WHERE a.account = w.account AND a.lease_epoch = w.epoch
       ) AS moved
FROM wanted w
"""

# asyncpg raises InternalClientError on the first use of a connection the server
# dropped (a PostgreSQL restart): a connection error like the others.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


@dataclass(slots=True)
class _Held:
    """One lease a drain of this process holds: its deadline, and its timer while it runs.

    ``deadline`` is loop time; ``timeout`` is set only while the drain works on the
    key (a batched drain holds keys waiting for their turn with no timer running).
    """

    key: str
    epoch: int
    deadline: float
    timeout: asyncio.Timeout | None = None
    group: Sequence[_Held] = ()
    """The keys sharing ``timeout`` (``HeldLeases.turn_many``): it fires at their earliest
    deadline."""

    def move_deadline(self, when: float) -> None:
        self.deadline = when
        timeout = self.timeout
        # A timer switched off (``HeldLeases.fence``: the commit is under way) stays off.
        if timeout is not None and not timeout.expired() and timeout.when() is not None:
            timeout.reschedule(min((one.deadline for one in self.group), default=when))


class HeldLeases:
    """The leases a batched drain holds (``LeaseKeeper.hold_many``), one turn per key.

    Every held lease is renewed by the keeper until its key's turn ends; ``turn``
    runs the work on one key under that key's deadline.
    """

    def __init__(self, keeper: LeaseKeeper, held: dict[str, _Held]) -> None:
        self._keeper = keeper
        self._held = held

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        """Run the body while ``key``'s lease holds; ``TimeoutError`` when it does not.

        A key whose deadline already passed (renewals failed while it waited, or
        its lease was found taken over) raises at the body's first await. The
        key's lease is no longer renewed once its turn ends.
        """
        held = self._held[key]
        try:
            async with asyncio.timeout_at(held.deadline) as timeout:
                held.timeout = timeout
                yield
        finally:
            held.timeout = None
            self._keeper.forget(held)

    def fence(self, keys: Sequence[str]) -> None:
        """The token of each of ``keys`` was checked in the turn's transaction: stop its timer.

        The statement that checked it locked the mailbox row until the transaction
        ends, so no other drain can take the lease over meanwhile; a deadline firing
        during the commit could only cut short a commit that then happens anyway (or
        not), and the drain would report lost what it applied, without its after-commit
        actions. A turn fenced on all its keys runs to its end without a deadline. Keys
        whose timer already fired stay as they are (the turn raises ``TimeoutError``).
        """
        timers = [timer for key in keys if (timer := self._held[key].timeout) is not None]
        if len(timers) == len(keys) and not any(timer.expired() for timer in timers):
            for timer in timers:
                timer.reschedule(None)

    @contextlib.asynccontextmanager
    async def turn_many(self, keys: Sequence[str]) -> AsyncIterator[None]:
        """Run the body while every lease of ``keys`` holds, under their earliest deadline.

        For work on several keys in one transaction (``Mailbox.drain_many(shared=True)``):
        ``TimeoutError`` when any of the leases cannot be renewed in time or was found
        taken over (``expired`` then says which). The leases are still renewed after
        the turn (the caller may go on with the keys that hold) until ``hold_many``'s
        body exits.
        """
        group = [self._held[key] for key in keys]
        try:
            async with asyncio.timeout_at(min(one.deadline for one in group)) as timeout:
                for one in group:
                    one.timeout, one.group = timeout, group
                yield
        finally:
            for one in group:
                one.timeout, one.group = None, ()

    def expired(self, keys: Sequence[str]) -> list[str]:
        """Those of ``keys`` whose deadline has passed (at least the earliest one's key)."""
        now = asyncio.get_running_loop().time()
        passed = [key for key in keys if self._held[key].deadline <= now]
        return passed or [min(keys, key=lambda key: self._held[key].deadline)]


class LeaseKeeper:
    """Renews the leases of this process's running drains and bounds each drain by its lease.

    Args:
        connect: opens the keeper's own connection (``asyncpg.connect(url)``);
            ``None`` borrows one from ``pool`` for each renewal (for tools and
            tests whose pool cannot run dry).
        pool: the pool to borrow from when ``connect`` is ``None``.
        lease_seconds: the lease length the mailbox takes.
    """

    def __init__(
        self, lease_seconds: float, *, connect: Connect | None = None, pool: Any = None
    ) -> None:
        if connect is None and pool is None:
            raise ValueError("a LeaseKeeper needs connect or pool")
        self.lease_seconds = float(lease_seconds)
        self.period = self.lease_seconds / 3
        self.margin = min(5.0, self.lease_seconds / 5)
        self._connect = connect
        self._pool = pool
        self._conn: asyncpg.Connection | None = None
        self._held: dict[int, _Held] = {}
        self._task: asyncio.Task[None] | None = None
        self.autorenew = True
        """False: no renewal loop; the caller renews with ``renew()`` (the fault harness's
        simulation does, to decide when time passes)."""

    @contextlib.asynccontextmanager
    async def hold(self, key: str, epoch: int, asked_at: float) -> AsyncIterator[None]:
        """Run the body while the lease ``(key, epoch)`` holds; ``TimeoutError`` when it does not.

        ``asked_at`` is the loop time just before the lease statement was sent.
        """
        async with self.hold_many([(key, epoch)], asked_at) as held, held.turn(key):
            yield

    @contextlib.asynccontextmanager
    async def hold_many(
        self, leases: Sequence[tuple[str, int]], asked_at: float
    ) -> AsyncIterator[HeldLeases]:
        """Hold the leases ``(key, epoch)`` taken in one statement sent at ``asked_at``.

        All of them are renewed together (one statement per round, with every other
        lease of this process) until their key's ``turn`` ends or the body exits.
        """
        deadline = asked_at + self.lease_seconds - self.margin
        held = {key: _Held(key, epoch, deadline) for key, epoch in leases}
        for one in held.values():
            self._held[id(one)] = one
        if held and self.autorenew and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._keep(), name="mailbox-lease-keeper")
        try:
            yield HeldLeases(self, held)
        finally:
            for one in held.values():
                self.forget(one)

    def forget(self, held: _Held) -> None:
        """Stop renewing ``held`` (its drain is done with the key)."""
        self._held.pop(id(held), None)

    async def _keep(self) -> None:
        """Renew every third of the lease while any lease is held, then close the connection.

        An unexpected error is logged and the loop goes on: the drains' deadlines
        still stop them in time if renewals keep failing.
        """
        try:
            while self._held:
                await asyncio.sleep(self.period)
                if not self._held:
                    break
                try:
                    await self.renew()
                except Exception:  # never let the renewal loop die quietly
                    log.exception("mailbox lease renewal failed; retrying")
                    self._close()
        finally:
            self._close()

    async def renew(self) -> None:
        """Renew every lease held now (the keeper does this every third of the lease)."""
        loop = asyncio.get_running_loop()
        holding = list(self._held.items())
        sent_at = loop.time()
        try:
            rows = await asyncio.wait_for(
                self._fetch(
                    [held.key for _, held in holding],
                    [held.epoch for _, held in holding],
                ),
                timeout=self.period,
            )
        except _CONNECTION_ERRORS:
            # The drains' deadlines stand: if this keeps failing they stop in time.
            log.warning("could not renew %d mailbox lease(s)", len(holding), exc_info=True)
            self._close()
            return
        outcome = {(row["account"], row["epoch"]): row for row in rows}
        for token, held in holding:
            if token not in self._held or (held.timeout is not None and held.timeout.expired()):
                continue  # finished or already stopping meanwhile
            row = outcome.get((held.key, held.epoch))
            if row is None:
                continue
            if row["moved"]:
                log.warning("lease on %s lost (epoch %d); stopping its drain", held.key, held.epoch)
                held.move_deadline(loop.time())
            elif row["renewed"]:
                held.move_deadline(sent_at + self.lease_seconds - self.margin)

    async def _fetch(self, keys: list[str], epochs: list[int]) -> list[Any]:
        if self._connect is None:
            async with self._pool.acquire() as conn:
                return list(await conn.fetch(_RENEW, keys, epochs, self.lease_seconds))
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return list(await self._conn.fetch(_RENEW, keys, epochs, self.lease_seconds))

    def _close(self) -> None:
        # terminate(): immediate, and safe in a cancelled task's ``finally``.
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
