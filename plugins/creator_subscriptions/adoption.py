"""Subscriptions made before the plugin wrote the engine's ``meaning_metadata`` on them.

Every subscription the plugin makes carries ``marketplace_plugin`` and
``marketplace_reference`` (``subscriptions._metadata``), which Stripe copies onto each
invoice when it finalises it; the engine leaves the charges of those invoices to this
plugin (``engine.payments.records.invoice_owner``). One made before carries none, so
the engine would post its renewals' charges as movements made outside it, unnamed,
until ``invoice.paid`` named them. The plugin writes the two keys on each such
subscription once (``meaning_marked`` records that it has):

- in the worker, a periodic task (``MARK_TASK``, every ``MARK_EVERY_SECONDS``, at most
  once per interval across workers) marks up to ``MARK_BATCH`` live ones per run
  (``mark_subscriptions``): one row at a time, each in its own transaction, rows
  another process is marking skipped (``SKIP LOCKED``); a subscription Stripe refuses
  to update is logged and left for the next run. No process waits on this to start,
  however many subscriptions are left to mark;
- when one of its ``customer.subscription.*`` events shows the keys missing
  (``mark_if_unmarked``, from the webhook handler).

Stripe merges metadata on update, so the plugin's other keys stay; the write's
idempotency key is derived from the row (``op_key``), so a retry is one write.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from engine.core.errors import MarketplaceError
from engine.payments.records import MEANING_METADATA, meaning_metadata
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env, op_key
from plugins.creator_subscriptions.sync import TERMINAL_STATUSES

__all__ = [
    "MARK_BATCH",
    "MARK_EVERY_SECONDS",
    "MARK_TASK",
    "mark_if_unmarked",
    "mark_subscription",
    "mark_subscriptions",
]

log = logging.getLogger(__name__)

MARK_TASK = f"{PLUGIN}.meaning_marks"
MARK_EVERY_SECONDS = 60.0
MARK_BATCH = 200

_NOT_LIVE = (*TERMINAL_STATUSES, "pending", "failed")

_NEXT = """
SELECT * FROM creator_subscriptions_subscriptions
WHERE NOT meaning_marked AND stripe_subscription_id IS NOT NULL
  AND status <> ALL($1::text[]) AND id <> ALL($2::bigint[])
ORDER BY id
LIMIT 1
FOR UPDATE SKIP LOCKED
"""

_MARKED = "UPDATE creator_subscriptions_subscriptions SET meaning_marked = true WHERE id = $1"


async def mark_subscription(env: Env, conn: asyncpg.Connection, row: Mapping[str, Any]) -> None:
    """Write ``meaning_metadata`` on ``row``'s Stripe subscription and record it (``conn``).

    Raises:
        MarketplaceError: Stripe refused or failed the update; nothing is recorded.
    """
    await env.gateway.call(
        "subscriptions",
        "update",
        str(row["stripe_subscription_id"]),
        params={"metadata": meaning_metadata(PLUGIN, f"{PLUGIN}:subscription:{row['id']}")},
        idempotency_key=op_key("subscription", row["uid"], "meaning_metadata"),
    )
    await conn.execute(_MARKED, row["id"])


async def mark_subscriptions(services: Any, limit: int | None = None) -> int:
    """Mark live subscriptions not marked yet, at most ``limit`` (all when ``None``);
    how many were."""
    env = Env.of(services)
    marked = 0
    refused: list[int] = []
    while limit is None or marked + len(refused) < limit:
        async with env.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_NEXT, list(_NOT_LIVE), refused)
            if row is None:
                return marked
            try:
                await mark_subscription(env, conn, row)
            except MarketplaceError as exc:
                # Not worth stopping the process: its invoices are posted anyway (by the
                # engine, then named at invoice.paid); the next run tries again.
                log.warning(
                    "could not write meaning_metadata on subscription %s: %s",
                    row["stripe_subscription_id"],
                    exc,
                )
                refused.append(int(row["id"]))
                continue
            marked += 1
    return marked


async def mark_if_unmarked(
    env: Env, conn: asyncpg.Connection, row: Mapping[str, Any], metadata: Mapping[str, Any]
) -> None:
    """From a ``customer.subscription.*`` event of ``row`` whose Stripe ``metadata`` it
    carries: mark a live subscription whose metadata lacks ``marketplace_plugin`` and
    which the plugin never marked (one it marked and someone unmarked is left alone).
    A Stripe failure is logged, never raised: the event is handled all the same."""
    if row["meaning_marked"]:
        return
    if metadata.get(MEANING_METADATA[0]):
        await conn.execute(_MARKED, row["id"])
        return
    if row["status"] in _NOT_LIVE:
        return
    try:
        async with conn.transaction():
            await mark_subscription(env, conn, row)
    except MarketplaceError as exc:
        log.warning(
            "could not write meaning_metadata on subscription %s: %s",
            row["stripe_subscription_id"],
            exc,
        )
