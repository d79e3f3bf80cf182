"""A worker process of the multi-process test (``support.cluster``).

Run as ``python -m support.cluster_worker <config.toml>`` with ``tests/`` on
``PYTHONPATH``: ``run_worker`` with the config's settings and the recorder
plugin added (which ``marketplace worker`` cannot load: it is not installed).
SIGTERM stops it cleanly; SIGKILL is a crash.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from engine.core.plugins import build_plugins
from engine.core.settings import load_settings, replace_section
from engine.worker.runtime import run_worker
from support.recorder import Recorder


async def main(config: str) -> None:
    settings = load_settings(Path(config), environ={})
    settings = replace_section(settings, "plugins", enabled=[*settings.plugins.enabled, "recorder"])
    plugins = build_plugins(settings, extra={"recorder": Recorder()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(settings, plugins=plugins, stop=stop)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1]))
