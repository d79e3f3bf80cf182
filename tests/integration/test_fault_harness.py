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


async def test_a_chaos_run_with_every_fault_keeps_every_invariant(tmp_path: Path) -> None:
    report = await chaos.run(CHAOS_SEED, tmp_path, every_fault=True)
    print(report.line())
    for fault in chaos.FAULTS:
        assert report.steps[fault] == 1, fault
