"""The fault harness's short run (the long one: ``python scripts/fault_harness.py --seeds 500``).

Simulated seeds on the run's PostgreSQL, then one process-level chaos run with
every fault kind (worker SIGKILL, NATS restarted, its stream deleted,
PostgreSQL restarted and killed). A failure names its seed; replay it with
``python scripts/fault_harness.py --seed N`` (``--chaos`` for the chaos run).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import asyncpg
import pytest
from support import chaos, faults

SIMULATED_SEEDS = range(1, 13)
CHAOS_SEED = 7
REPLAYED_SEEDS = (8, 9)
"""Seeds whose runs cut every connection, kill workers, take leases over and renew."""


@pytest.fixture
async def harness_database(fresh_database_url: str) -> str:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await faults.create_schema(conn)
    finally:
        await conn.close()
    return fresh_database_url


async def test_simulated_seeds_keep_every_invariant(harness_database: str) -> None:
    reports = [await faults.simulate(seed, harness_database) for seed in SIMULATED_SEEDS]
    print("\n".join(report.line() for report in reports))
    steps = sum((report.steps for report in reports), start=Counter[str]())
    # The faults really happened (a schedule that injects nothing proves nothing).
    for fault in ("kill worker", "cut connections", "expire and take over", "lose tokens"):
        assert steps[fault] > 0, fault
    assert steps["drain lost"] > 0
    assert steps["batched drain"] > 0  # Mailbox.drain_many ran under the same faults
    assert steps["shared drain"] > 0  # and its one-transaction way (the worker's) too
    assert sum(report.before_replay.dead for report in reports) > 0


@pytest.mark.parametrize("seed", REPLAYED_SEEDS)
async def test_a_seed_run_again_takes_the_same_steps_to_the_same_end(
    harness_database: str, seed: int
) -> None:
    """What a failing seed's replay command relies on: the same seed, the same run (the
    steps, the faults and what each led to), not only the same scenario."""
    first = await faults.simulate(seed, harness_database)
    again = await faults.simulate(seed, harness_database)
    for fault in ("cut connections", "kill worker", "expire and take over", "renew"):
        assert first.steps[fault] > 0, fault
    assert again.schedule == first.schedule
    assert (again.before_replay, again.after_replay) == (first.before_replay, first.after_replay)


async def test_a_chaos_run_with_every_fault_keeps_every_invariant(tmp_path: Path) -> None:
    report = await chaos.run(CHAOS_SEED, tmp_path, every_fault=True)
    print(report.line())
    for fault in chaos.FAULTS:
        assert report.steps[fault] == 1, fault
