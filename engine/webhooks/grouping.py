"""The intake's group commit: deliveries that arrive together are committed together.

Each verified delivery waits for its own commit before its 2xx, as before; what
changes is that deliveries arriving while others are being committed share one
round trip and one commit (``Mailbox.accept_many``), and one drain token names
every mailbox they newly scheduled (``Scheduler.schedule_many``). At most
``at_once`` commits are in flight; the deliveries arriving meanwhile queue and
go together in the next one (up to ``most``). A delivery alone is committed at
once, alone: nothing waits for company, so a quiet intake answers as fast as it
did and a busy one does less work per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from engine.webhooks.mailbox import Accepted, Mailbox
from engine.worker.runtime import Scheduler

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

_RETRIES = 3
"""Tries of a group that met a deadlock (a mailbox row locked in another order by a
multi-row statement of the worker or the sweeper); PostgreSQL chose it to roll back."""


class GroupCommit:
    """Commits verified deliveries in groups and publishes their drain tokens.

    Args:
        mailbox: where the events are committed.
        scheduler: publishes the drain tokens.
        most: the largest group.
        at_once: groups being committed at the same time.
    """

    def __init__(
        self, mailbox: Mailbox, scheduler: Scheduler, *, most: int = 64, at_once: int = 2
    ) -> None:
        self._mailbox = mailbox
        self._scheduler = scheduler
        self._most = most
        self._at_once = at_once
        self._queue: list[tuple[Mapping[str, Any], str, str, asyncio.Future[Accepted]]] = []
        self._flying: set[asyncio.Task[None]] = set()

    async def accept(self, event: Mapping[str, Any], raw_body: str, key: str) -> Accepted:
        """Commit ``event`` to mailbox ``key`` (with whatever arrives meanwhile) and publish
        its drain when it newly scheduled its mailbox; return once both are done."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._queue.append((event, raw_body, key, future))
        self._launch()
        return await future

    def _launch(self) -> None:
        while self._queue and len(self._flying) < self._at_once:
            group, self._queue = self._queue[: self._most], self._queue[self._most :]
            task = asyncio.create_task(self._commit(group), name="webhook-group-commit")
            self._flying.add(task)
            task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._flying.discard(task)
        self._launch()

    async def _commit(
        self, group: list[tuple[Mapping[str, Any], str, str, asyncio.Future[Accepted]]]
    ) -> None:
        events = [(event, raw, key) for event, raw, key, _ in group]
        outcomes: list[Accepted | Exception]
        try:
            outcomes = list(await self._accept(events))
        except asyncpg.PostgresError:
            # The database refused the statement (one event it cannot store): each
            # event alone, so that only that one fails, as it would have alone.
            outcomes = [await self._alone(event, raw, key) for event, raw, key in events]
        except Exception as exc:  # each delivery fails as it would alone (a 500; Stripe retries)
            outcomes = [exc] * len(group)
        tokens: dict[str, str] = {}
        for one in outcomes:
            if isinstance(one, Accepted) and one.publish:
                tokens.setdefault(one.account, f"v{one.version}")
        if tokens:  # committed: a publish JetStream refuses is retried by the scheduler
            await self._scheduler.schedule_many(list(tokens.items()))
        for (*_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():  # the request was cancelled meanwhile
                continue
            if isinstance(outcome, Accepted):
                future.set_result(outcome)
            else:
                future.set_exception(outcome)

    async def _alone(
        self, event: Mapping[str, Any], raw_body: str, key: str
    ) -> Accepted | Exception:
        try:
            return await self._mailbox.accept(event, raw_body, key=key)
        except Exception as exc:  # this delivery's own failure (a 500; Stripe retries)
            return exc

    async def _accept(self, events: list[tuple[Mapping[str, Any], str, str]]) -> list[Accepted]:
        for attempt in range(1, _RETRIES + 1):
            try:
                return await self._mailbox.accept_many(events)
            except asyncpg.DeadlockDetectedError:
                if attempt == _RETRIES:
                    raise
                log.warning("group commit of %d event(s) met a deadlock; again", len(events))
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
