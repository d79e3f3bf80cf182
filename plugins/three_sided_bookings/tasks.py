"""Background work: taking the timed transitions that are due (unpaid expiry, auto-complete,
settlement retries).

``run_due_timers(services)`` is registered as the taskiq task
``three_sided_bookings.run_due_timers``; ``marketplace bookings-timers`` runs
it once (or every ``--every`` seconds) for cron or a side process. Settlement
after completion does not wait for it: it runs right after the completion.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from engine.core.contributions import CliCommand
from engine.core.settings import Settings
from plugins.three_sided_bookings.bookings import BookingService

__all__ = ["cli_command", "run_due_timers"]


async def run_due_timers(services: Any, limit: int = 100) -> list[tuple[int, str, str]]:
    """Take every timed transition due now; return ``(booking, transition, outcome)``."""
    return await BookingService(services).run_due_timers(limit=limit)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep running, checking every SECONDS (default: once)",
    )


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from engine.services import Services

    async def main() -> None:
        services = await Services.start(settings, connect_nats=False)
        try:
            while True:
                for booking, name, outcome in await run_due_timers(services):
                    print(f"booking {booking}: {name} -> {outcome}")
                if args.every <= 0:
                    return
                await asyncio.sleep(args.every)
        finally:
            await services.close()

    asyncio.run(main())
    return 0


def cli_command() -> CliCommand:
    """The ``marketplace bookings-timers`` command."""
    return CliCommand(
        name="bookings-timers",
        help="Take the bookings' timed transitions that are due (expiry, auto-complete, settle)",
        configure=_configure,
        run=_run,
    )
