"""A test plugin whose webhook handler records what it handled, in order, per account.

Events of type ``test.recorded`` carry ``data.object.metadata.seq`` (a per-account
sequence number). The handler writes one row per event in the handler's
transaction, notes an inversion when a lower sequence arrives after a higher
one, and counts a second application of the same event as a duplicate (which
the mailbox must make impossible). Accounts listed in ``test_poison`` fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import asyncpg

from engine.core.contributions import WebhookRegistration
from engine.core.plugins import hookimpl

EVENT_TYPE = "test.recorded"

SCHEMA = """
CREATE TABLE IF NOT EXISTS test_recorded (
    event_id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    seq BIGINT NOT NULL,
    inversion BOOLEAN NOT NULL DEFAULT false,
    duplicates INT NOT NULL DEFAULT 0,
    worker_pid INT NOT NULL DEFAULT 0,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS test_recorded_account ON test_recorded (account, seq);
CREATE TABLE IF NOT EXISTS test_poison (account TEXT PRIMARY KEY);
"""


async def create_schema(conn: asyncpg.Connection) -> None:
    """Create the recorder's tables."""
    await conn.execute(SCHEMA)


async def record(event: Any, ctx: Any) -> None:
    """Record ``event``; fail for poisoned accounts."""
    conn: asyncpg.Connection = ctx.conn
    account = event.get("account") or "platform"
    seq = int(event["data"]["object"]["metadata"]["seq"])
    if await conn.fetchval("SELECT 1 FROM test_poison WHERE account = $1", account):
        raise RuntimeError(f"poisoned account {account}")
    last = await conn.fetchval("SELECT max(seq) FROM test_recorded WHERE account = $1", account)
    await conn.execute(
        """
        INSERT INTO test_recorded (event_id, account, seq, inversion, worker_pid)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (event_id) DO UPDATE SET duplicates = test_recorded.duplicates + 1
        """,
        event["id"],
        account,
        seq,
        last is not None and seq < last,
        os.getpid(),  # which worker process applied it
    )


class Recorder:
    """The plugin object (register it with ``build_plugins(extra={"recorder": Recorder()})``)."""

    @hookimpl
    def register_webhook_handlers(self, register: Callable[[WebhookRegistration], None]) -> None:
        register(WebhookRegistration(EVENT_TYPE, record, "recorder.record"))
