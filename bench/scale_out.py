"""Scale-out: end-to-end events/s drained by one worker process and by three.

Runs alone (``python bench/scale_out.py``): embedded PostgreSQL (durable) and
NATS in a temporary directory, `marketplace serve` taking the events and
`marketplace worker` processes draining them, each in its own process. For
each worker count, 6,000 signed ``payout.paid`` Connect events over 200
accounts are accepted first (no worker running), then the workers start; the
rate is the events handled over the time from the first to the last one
handled (so process start-up is not counted). Same events, same machine, in
one run: the ratio is what adding workers buys here.

On a 2-core machine the ratio is bounded by the cores: PostgreSQL, the workers
and their handlers share two CPUs, so three workers cannot be three times one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webhooks import (
    PYTHON,
    _engine_env,
    _events,
    _know,
    _load,
    _process,
    _truncate,
)

from engine.infra.nats_server import EmbeddedNats
from engine.infra.postgres import EmbeddedPostgres
from engine.infra.processes import find_free_port

EVENTS = 6_000
ACCOUNTS = [f"acct_scale_{n}" for n in range(200)]
MARKETPLACE = str(Path(PYTHON).parent / "marketplace")


async def _drained_rate(database_url: str, expected: int, timeout: float = 600) -> float:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = await conn.fetchrow(
                "SELECT count(*) AS n, min(handled_at) AS first, max(handled_at) AS last "
                "FROM marketplace_webhook_events WHERE status = 'handled'"
            )
            if row["n"] >= expected:
                seconds = (row["last"] - row["first"]).total_seconds()
                return float(row["n"]) / max(seconds, 1e-6)
            await asyncio.sleep(0.2)
        raise RuntimeError(f"not all {expected} events were drained in {timeout:.0f} s")
    finally:
        await conn.close()


def _run(work: Path, database_url: str, nats_url: str, workers: int) -> float:
    env = _engine_env(database_url, nats_url, f"SCALE{workers}")
    port = find_free_port()
    with _process(
        [MARKETPLACE, "serve", "--port", str(port)], env, work / f"serve-{workers}.log", port
    ):
        taken = _load(
            port, "/webhooks/stripe/connect", list(_events(ACCOUNTS, EVENTS, f"w{workers}")), 0
        )
        if taken["ok"] != EVENTS:
            raise RuntimeError(f"the intake took {taken['ok']} of {EVENTS}: {taken}")
        with contextlib.ExitStack() as running:
            for n in range(workers):
                log = work / f"worker-{workers}-{n}.log"
                running.enter_context(_process([MARKETPLACE, "worker"], env, log))
            return asyncio.run(_drained_rate(database_url, EVENTS))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    postgres = EmbeddedPostgres(work / "pg", fast=False)
    nats_server = EmbeddedNats(work / "nats")
    rates: dict[int, float] = {}
    try:
        database_url = postgres.start()
        nats_url = nats_server.start()
        subprocess.run(
            [MARKETPLACE, "migrate"],
            env={**os.environ, **_engine_env(database_url, nats_url, "SCALE")},
            check=True,
            capture_output=True,
        )
        asyncio.run(_know(database_url, ACCOUNTS))
        for workers in (1, 3):
            asyncio.run(_truncate(database_url))
            rates[workers] = _run(work, database_url, nats_url, workers)
            print(f"{workers} worker(s): {rates[workers]:.0f} events/s")
    finally:
        nats_server.stop()
        postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench: scale_out_1_worker_events_per_s {rates[1]:.0f}")
    print(f"bench: scale_out_3_workers_events_per_s {rates[3]:.0f}")
    print(f"bench: scale_out_ratio {rates[3] / rates[1]:.2f}")


if __name__ == "__main__":
    main()
