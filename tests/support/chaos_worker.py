"""A worker process of the chaos harness (``support.chaos``).

Run as ``python -m support.chaos_worker <database_url> <nats_url> <stream> <batch_size>``
with ``tests/`` on ``PYTHONPATH``; SIGTERM stops it cleanly, SIGKILL is a crash.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from engine.worker.runtime import run_worker
from support.chaos import plugins, settings


async def main(database_url: str, nats_url: str, stream: str, batch_size: str) -> None:
    configured = settings(database_url, nats_url, stream, int(batch_size))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(configured, plugins=plugins(configured), stop=stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(*sys.argv[1:5]))
