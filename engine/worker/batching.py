"""Batched draining: drain tokens from JetStream grouped into multi-key drains.

A worker takes "drain <key>" tokens off the stream and, instead of one drain (a
lease, a read and its own connection) per token, hands the keys to a
``DrainBatcher``: up to ``[worker] drains`` drains run at once, each leasing up
to ``[worker] keys_per_drain`` ready keys in one round trip
(``Mailbox.drain_many(shared=True)``: one fencing token per key, the keys applied
one after the other in one transaction, every key's token checked by the one
statement that marks them all before the commit).
``TokenReceiver`` reads the stream, holds at most ``[worker] concurrency``
tokens unfinished (queued or draining), and acks a
token once its key's drain has finished; any other task (a plugin's) goes to
taskiq's own receiver.

Fairness is kept: a key is in at most one drain at a time, a drain takes keys
in the order their tokens arrived, and a key with more pending events is
re-queued at the back of the stream, as before. A duplicate token for a key
already waiting is merged into it (both acked after the one drain).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from taskiq import AckableMessage, AsyncBroker
from taskiq.receiver import Receiver

__all__ = ["DrainBatcher", "TokenReceiver"]

log = logging.getLogger(__name__)

Done = Callable[[], Awaitable[None]]
"""Called once the key's drain finished (acks the token, frees its slot)."""

DrainKeys = Callable[[list[str]], Awaitable[Any]]
"""``drain(keys)``: drains those keys once (``Worker.drain_many``)."""


class DrainBatcher:
    """Runs up to ``drains`` drains at once, each over up to ``keys_per_drain`` keys.

    ``submit(key, done)`` queues a key (merged with a queued token of the same
    key); a drain starts as soon as a drain slot is free, with the queued keys
    not being drained right now, oldest first. Under load keys gather while
    every slot is busy, so drains grow towards ``keys_per_drain``; when idle a
    single key is drained at once, without waiting for company.
    """

    def __init__(self, drain: DrainKeys, *, drains: int = 4, keys_per_drain: int = 16) -> None:
        if drains < 1 or keys_per_drain < 1:
            raise ValueError("drains and keys_per_drain must be at least 1")
        self._drain = drain
        self.drains = drains
        self.keys_per_drain = keys_per_drain
        self._queued: dict[str, list[Done]] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def queued(self) -> int:
        """Keys waiting for a drain."""
        return len(self._queued)

    @property
    def running(self) -> int:
        """Drains running now."""
        return len(self._tasks)

    def submit(self, key: str, done: Done) -> None:
        """Queue ``key``; ``done`` is called after the drain that takes it."""
        self._queued.setdefault(key, []).append(done)
        self._start()

    def _start(self) -> None:
        while len(self._tasks) < self.drains:
            batch: list[str] = []
            for key in self._queued:
                if key not in self._running:
                    batch.append(key)
                    if len(batch) == self.keys_per_drain:
                        break
            if not batch:
                return
            dones = [done for key in batch for done in self._queued.pop(key)]
            self._running.update(batch)
            task = asyncio.create_task(self._run(batch, dones), name="mailbox-drain")
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._start()

    async def _run(self, batch: list[str], dones: Sequence[Done]) -> None:
        try:
            await self._drain(batch)
        except Exception:  # one drain failing must not stop the others or lose the acks
            log.exception("drain of %d mailbox(es) failed", len(batch))
        finally:
            self._running.difference_update(batch)
            for done in dones:
                try:
                    await done()
                except Exception:  # an ack NATS refused: the token is redelivered later
                    log.warning("could not ack a drain token", exc_info=True)

    async def wait(self) -> None:
        """Wait until nothing is queued or draining (tests, shutdown)."""
        while self._tasks or self._queued:
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            else:
                self._start()
                await asyncio.sleep(0)

    async def close(self) -> None:
        """Cancel the running drains (their transactions roll back; leases run out)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class TokenReceiver:
    """Reads the broker's stream: drain tokens to the batcher, other tasks to taskiq.

    At most ``concurrency`` messages are unfinished at once; a drain token is
    acked after its key's drain, another task as taskiq's receiver acks it.
    """

    def __init__(
        self,
        broker: AsyncBroker,
        batcher: DrainBatcher,
        *,
        drain_task: str,
        concurrency: int = 64,
    ) -> None:
        self._broker = broker
        self._batcher = batcher
        self._drain_task = drain_task
        self._slots = asyncio.Semaphore(concurrency)
        self._others = Receiver(broker, run_startup=False, max_async_tasks=concurrency)
        self._other_tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Receive until cancelled."""
        async for message in self._broker.listen():
            await self._slots.acquire()
            try:
                self.receive(message)
            except Exception:  # never let one message stop the receiver
                self._slots.release()
                log.exception("could not take a message from the stream")

    def receive(self, message: bytes | AckableMessage) -> None:
        """Hand one message on (a slot is held for it, released when it is finished)."""
        data = message.data if isinstance(message, AckableMessage) else message
        try:
            parsed = self._broker.formatter.loads(message=data)
        except Exception:  # not a taskiq message: taskiq's receiver logs and acks it
            parsed = None
        if parsed is not None and parsed.task_name == self._drain_task and parsed.args:
            # One token may name several keys (the intake's group commit): acked when
            # the drains of all of them have finished.
            keys = list(dict.fromkeys(str(arg) for arg in parsed.args))
            done = self._done(message, len(keys))
            for key in keys:
                self._batcher.submit(key, done)
            return
        task = asyncio.create_task(self._others.callback(message=message))
        self._other_tasks.add(task)
        task.add_done_callback(self._other_finished)

    def _done(self, message: bytes | AckableMessage, keys: int = 1) -> Done:
        left = [keys]

        async def done() -> None:
            left[0] -= 1
            if left[0] > 0:
                return
            try:
                await _ack(message)
            finally:
                self._slots.release()

        return done

    def _other_finished(self, task: asyncio.Task[None]) -> None:
        self._other_tasks.discard(task)
        self._slots.release()


async def _ack(message: bytes | AckableMessage) -> None:
    if not isinstance(message, AckableMessage):
        return  # a broker without acks
    outcome = message.ack()
    if isinstance(outcome, Awaitable):
        await outcome
