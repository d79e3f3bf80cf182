"""Background tasks that are never silent.

A task of ``up``, ``serve`` or ``worker`` that dies is logged with its
traceback and either restarted (``restarting``, saying so) or ends its command
with a non-zero exit (``wait_for_stop``, which returns the task that ended).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["TaskEnded", "restarting", "wait_for_stop"]

log = logging.getLogger("marketplace")

# A task that ran this long before dying starts its backoff over.
_HEALTHY_RUN_SECONDS = 60.0


class TaskEnded(Exception):
    """A task that should run until the command stops ended first."""

    def __init__(self, name: str, cause: BaseException | None) -> None:
        self.name = name
        self.cause = cause
        why = f"{type(cause).__name__}: {cause}" if cause is not None else "it returned"
        super().__init__(f"{name} stopped unexpectedly ({why})")


async def restarting(
    name: str,
    run: Callable[[], Awaitable[object]],
    *,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> None:
    """Run ``run()`` until cancelled, restarting it whenever it ends or raises.

    Each death is logged with its traceback and the delay before the restart;
    the delay doubles up to ``max_delay`` while it keeps dying quickly.
    """
    delay = first_delay
    while True:
        started = time.monotonic()
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s died; restarting it in %.1f s", name, delay)
        else:
            log.error("%s returned on its own; restarting it in %.1f s", name, delay)
        if time.monotonic() - started >= _HEALTHY_RUN_SECONDS:
            delay = first_delay
        await asyncio.sleep(delay)
        log.info("restarting %s", name)
        delay = min(delay * 2, max_delay)


async def wait_for_stop(stop: asyncio.Event, tasks: Mapping[str, asyncio.Task[Any]]) -> None:
    """Return when ``stop`` is set; raise ``TaskEnded`` if one of ``tasks`` ends first.

    The ended task's exception is logged with its traceback before raising, and
    ``stop`` is set so the other tasks wind down.
    """
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopping, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if stop.is_set():
        return
    for name, task in tasks.items():
        if not task.done():
            continue
        cause = None if task.cancelled() else task.exception()
        if cause is not None:
            log.error("%s died", name, exc_info=cause)
        else:
            log.error("%s stopped unexpectedly", name)
        stop.set()
        raise TaskEnded(name, cause)
