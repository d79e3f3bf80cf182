"""A worker process with the recorder plugin, for crash and scale-out tests.

Run as ``python -m support.worker_main <database_url> <nats_url> <stream>`` with
``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from engine.worker.runtime import run_worker
from support.pipeline import pipeline_settings, recorder_plugins


async def main(database_url: str, nats_url: str, stream: str) -> None:
    settings = pipeline_settings(database_url, nats_url, stream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(settings, plugins=recorder_plugins(settings), stop=stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(*sys.argv[1:4]))
