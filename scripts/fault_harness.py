"""The long run of the webhook pipeline's fault-injection harness (``support.faults``).

    python scripts/fault_harness.py --seeds 500                 # seeds 1..500, simulated
    python scripts/fault_harness.py --seeds 500 --chaos-every 25  # and every 25th seed for real
    python scripts/fault_harness.py --seed 123 [--chaos]        # replay one seed

Starts its own embedded PostgreSQL (and, for chaos seeds, NATS) in a temporary
directory. Every seed runs the in-process simulation (real mailbox SQL on real
PostgreSQL, simulated workers, broker and clock); with ``--chaos-every N`` each
Nth seed also runs the process-level chaos (worker subprocesses over NATS
JetStream, SIGKILL, NATS restarted and its stream deleted, PostgreSQL
restarted). Each seed prints one line; a broken invariant prints the seed and
the command that replays it, and the run ends non-zero. ``make test`` runs a
short version (``tests/integration/test_fault_harness.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support import faults  # noqa: E402

from engine.core.db import migrate  # noqa: E402
from engine.infra.postgres import EmbeddedPostgres  # noqa: E402


async def _simulated(database_url: str, seeds: list[int]) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        await faults.create_schema(conn)
    finally:
        await conn.close()
    failed: list[int] = []
    reports: list[faults.Report] = []
    for seed in seeds:
        started = time.monotonic()
        try:
            report = await faults.simulate(seed, database_url)
        except faults.InvariantBroken as broken:
            failed.append(seed)
            print(f"FAILED {broken}\n  replay: python scripts/fault_harness.py --seed {seed}")
            continue
        reports.append(report)
        print(f"{report.line()} ({time.monotonic() - started:.1f} s)", flush=True)
    print(f"simulated: {faults.summarise(reports)}")
    return failed


async def _chaotic(work: Path, seeds: list[int]) -> list[int]:
    from support import chaos

    failed: list[int] = []
    for seed in seeds:
        started = time.monotonic()
        try:
            report = await chaos.run(seed, work / f"chaos-{seed}")
        except faults.InvariantBroken as broken:
            failed.append(seed)
            replay = f"python scripts/fault_harness.py --seed {seed} --chaos"
            print(f"FAILED chaos {broken}\n  replay: {replay}")
            continue
        print(f"chaos {report.line()} ({time.monotonic() - started:.1f} s)", flush=True)
    return failed


def _not_a_cut_connections_ssl_probe(record: logging.LogRecord) -> bool:
    """False for asyncio's report of asyncpg's SSL-negotiation future on a connection the
    harness cut: asyncpg leaves it unretrieved when such a connection is seen closed
    (``unexpected connection_lost() call``), once per connection, and it says nothing."""
    exc = record.exc_info[1] if record.exc_info else None
    return "unexpected connection_lost() call" not in f"{record.getMessage()} {exc}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="run seeds 1..SEEDS")
    parser.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--chaos", action="store_true", help="with --seed: the process-level run")
    parser.add_argument(
        "--chaos-every", type=int, default=0, metavar="N", help="also chaos every Nth seed"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncio").addFilter(_not_a_cut_connections_ssl_probe)
    if args.seed is not None:
        seeds = [args.seed]
        chaos_seeds = [args.seed] if args.chaos else []
    else:
        seeds = list(range(args.first, args.first + args.seeds))
        chaos_seeds = [s for s in seeds if args.chaos_every and s % args.chaos_every == 0]
    work = Path(tempfile.mkdtemp(prefix="fault-harness-"))
    postgres = EmbeddedPostgres(work / "pg", fast=True)
    started = time.monotonic()
    try:
        database_url = postgres.start()
        asyncio.run(migrate(database_url))
        failed = asyncio.run(_simulated(database_url, seeds))
    finally:
        postgres.stop()
    if chaos_seeds:
        failed += asyncio.run(_chaotic(work, chaos_seeds))
    took = time.monotonic() - started
    print(
        f"fault harness: {len(seeds)} simulated seed(s), {len(chaos_seeds)} chaos seed(s), "
        f"{len(failed)} failed {sorted(set(failed))} in {took:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
