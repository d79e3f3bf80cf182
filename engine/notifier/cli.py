"""``marketplace notifier``: see how notification delivery is doing and retry dead ones."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncpg

from engine.core.contributions import CliCommand
from engine.core.settings import require_database_url
from engine.notifier.outbox import dead_notifications, outbox_summary, retry_dead

__all__ = ["command"]


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("status", help="counts by channel and status, and the latest dead ones")
    retry = actions.add_parser("retry-dead", help="make dead notifications pending again")
    retry.add_argument("--id", action="append", default=[], help="one notification id (repeatable)")


async def _status(pool: asyncpg.Pool) -> None:
    summary = await outbox_summary(pool)
    if not summary:
        print("no notifications")
    for channel, counts in sorted(summary.items()):
        line = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
        print(f"{channel:<8} {line}")
    for row in await dead_notifications(pool, limit=20):
        print(f"dead  {row['id']}  {row['channel']}  {row['kind']}  {row['last_error']}")


async def _run(args: argparse.Namespace, url: str) -> None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        if args.action == "status":
            await _status(pool)
        else:
            count = await retry_dead(pool, args.id)
            print(f"{count} notification(s) pending again")
    finally:
        await pool.close()


def _main(args: argparse.Namespace, settings: Any) -> int:
    asyncio.run(_run(args, require_database_url(settings)))
    return 0


def command() -> CliCommand:
    """The ``notifier`` sub-command."""
    return CliCommand(
        name="notifier",
        help="notification delivery: status, retry dead notifications",
        configure=_configure,
        run=_main,
    )
