"""The taskiq broker over NATS JetStream, hardened for the mailbox protocol.

taskiq-nats' pull broker publishes every task to one subject with one durable
consumer and acks even when a task raised. That is enough here because the
broker only carries "drain <account>" tokens; ordering, retries and dead
letters live in PostgreSQL (``engine.webhooks.mailbox``). What this subclass
adds:

- a work-queue stream (acked tokens are removed) on file storage;
- ``Nats-Msg-Id`` from the ``msg_id`` label, so JetStream drops duplicates;
- API processes only publish (no consumer is created for them);
- a consumer that survives its stream being deleted or NATS restarting: it
  recreates the stream and consumer and goes on (the sweeper re-publishes
  whatever the broker lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import nats.errors
from nats.js import errors as js_errors
from nats.js.api import ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from taskiq import AckableMessage, AsyncBroker, BrokerMessage
from taskiq_nats import PullBasedJetStreamBroker

__all__ = ["DRAIN_TASK", "JETSTREAM_WAIT_SECONDS", "MailboxBroker"]

log = logging.getLogger(__name__)

DRAIN_TASK = "marketplace.drain_account"
JETSTREAM_WAIT_SECONDS = 120.0
"""How long a starting process waits for JetStream to answer before it gives up."""

_TRANSIENT = (
    js_errors.NotFoundError,
    js_errors.ServiceUnavailableError,
    js_errors.NoStreamResponseError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.errors.TimeoutError,
    nats.errors.Error,
)


class MailboxBroker(PullBasedJetStreamBroker):
    """JetStream broker for drain tokens (see the module docstring)."""

    def __init__(
        self,
        servers: str | list[str],
        *,
        stream: str = "MARKETPLACE",
        replicas: int = 1,
        fetch_batch: int = 16,
        ack_wait_seconds: float = 300.0,
        max_ack_pending: int = 1000,
    ) -> None:
        subject = f"{stream.lower()}.drain"
        super().__init__(
            servers=servers,
            subject=subject,
            stream_name=stream,
            durable=f"{stream.lower()}_workers",
            stream_config=StreamConfig(
                name=stream,
                subjects=[subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                num_replicas=replicas,
                duplicate_window=120.0,
            ),
            consumer_config=ConsumerConfig(
                durable_name=f"{stream.lower()}_workers",
                # Tokens are cheap to redeliver but a redelivered token is a
                # wasted drain: wait long before redelivering (the sweeper
                # covers a dead worker), and keep the tokens in NATS rather
                # than in one worker's memory so every worker gets its share.
                ack_wait=ack_wait_seconds,
                max_ack_pending=max_ack_pending,
            ),
            pull_consume_batch=fetch_batch,
            pull_consume_timeout=1.0,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        self.last_pull = time.monotonic()
        """``time.monotonic()`` of the latest answered pull (the worker's heartbeat reports it)."""

    async def startup(self) -> None:
        """Connect and declare the stream; workers also create the durable pull consumer.

        JetStream may not answer for a while (a node of the cluster is down and
        the stream elects a new leader, or the servers are starting): a process
        started meanwhile waits for it, for up to ``JETSTREAM_WAIT_SECONDS``,
        instead of failing to start.
        """
        await AsyncBroker.startup(self)
        await self.client.connect(self.servers, **self.connection_kwargs)
        self.js = self.client.jetstream()
        deadline = time.monotonic() + JETSTREAM_WAIT_SECONDS
        delay = 0.2
        while True:
            try:
                await self._add_or_reuse_stream()
                if self.is_worker_process:
                    await self._startup_consumer()
                return
            except _TRANSIENT as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("JetStream does not answer yet (%r); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def kick(self, message: BrokerMessage) -> None:
        """Publish a token; ``labels["msg_id"]`` becomes ``Nats-Msg-Id``."""
        headers: dict[str, str] = {}
        msg_id = message.labels.get("msg_id")
        if msg_id:
            headers["Nats-Msg-Id"] = str(msg_id)
        try:
            await self.js.publish(self.subject, payload=message.message, headers=headers)
        except (js_errors.NotFoundError, js_errors.NoStreamResponseError):
            # The stream was deleted under us: recreate it and publish again.
            await self._add_or_reuse_stream()
            await self.js.publish(self.subject, payload=message.message, headers=headers)

    async def _add_or_reuse_stream(self) -> None:
        """Create the stream, or bring an existing one to the configured settings.

        taskiq-nats keeps an existing stream as it is; here a changed
        ``[nats] replicas`` is applied to it (JetStream allows changing
        replicas in place; anything it refuses is logged and left alone).
        """
        try:
            await self.js.add_stream(config=self.stream_config)
        except js_errors.BadRequestError as exc:
            if exc.err_code != 10058:  # "stream name already in use"
                raise
            try:
                await self.js.update_stream(config=self.stream_config)
            except js_errors.APIError:
                log.warning(
                    "could not update stream %s; kept as is", self.stream_name, exc_info=True
                )

    async def _recreate(self) -> None:
        await self._add_or_reuse_stream()
        await self._startup_consumer()

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Yield tokens forever, recreating the stream/consumer if they vanish."""
        while True:
            try:
                messages: list[Any] = await self.consumer.fetch(
                    batch=self.pull_consume_batch, timeout=self.pull_consume_timeout
                )
            except TimeoutError:  # nats' own TimeoutError subclasses it: an idle fetch
                self.last_pull = time.monotonic()
                continue
            except _TRANSIENT as exc:
                log.warning("JetStream consumer lost (%s); recreating", exc)
                await asyncio.sleep(0.5)
                try:
                    await self._recreate()
                except _TRANSIENT:
                    log.warning("JetStream not ready yet", exc_info=True)
                continue
            self.last_pull = time.monotonic()
            for message in messages:
                yield AckableMessage(data=message.data, ack=message.ack)
