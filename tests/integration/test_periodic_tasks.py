"""Periodic tasks run at most once per interval, whatever the number of workers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.core.contributions import PeriodicTask
from engine.core.settings import settings_from_mapping
from engine.services import Services
from engine.worker.periodic import run_periodic, run_periodic_once

WORKERS = 4

RUNS = """
CREATE TABLE IF NOT EXISTS periodic_test_runs (
    id BIGSERIAL PRIMARY KEY,
    task TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL
)
"""


@pytest.fixture
async def workers(fresh_database_url: str) -> AsyncIterator[list[Services]]:
    """Several workers' services: each its own pools, like separate worker processes."""
    settings = settings_from_mapping(
        {"database": {"url": fresh_database_url, "pool_max": 3}, "plugins": {"enabled": []}}
    )
    started = [await Services.start(settings, connect_nats=False) for _ in range(WORKERS)]
    async with started[0].db.pool.acquire() as conn:
        await conn.execute(RUNS)
    yield started
    for services in started:
        await services.close()


def _recording_task(name: str, every_seconds: float) -> PeriodicTask:
    """A task that records the database time its run was claimed at."""

    async def run(services: Any) -> None:
        async with services.db.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO periodic_test_runs (task, claimed_at) "
                "SELECT name, started_at FROM marketplace_periodic_runs WHERE name = $1",
                name,
            )

    return PeriodicTask(name, every_seconds, run)


async def _runs(services: Services, name: str) -> list[Any]:
    async with services.db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT claimed_at FROM periodic_test_runs WHERE task = $1 ORDER BY id", name
        )
    return [row["claimed_at"] for row in rows]


async def test_of_many_workers_one_runs_each_interval(workers: list[Services]) -> None:
    task = _recording_task("test.hourly", 3600)
    # One after another (the old lock allowed each of these to run) and all at once.
    one_by_one = [await run_periodic_once(services, task) for services in workers]
    together = await asyncio.gather(*(run_periodic_once(services, task) for services in workers))
    assert one_by_one.count(True) == 1
    assert not any(together)
    assert len(await _runs(workers[0], task.name)) == 1

    # The interval passes (on the database's clock): again exactly one run.
    async with workers[0].db.pool.acquire() as conn:
        await conn.execute(
            "UPDATE marketplace_periodic_runs SET next_due = now() WHERE name = $1", task.name
        )
    again = await asyncio.gather(*(run_periodic_once(services, task) for services in workers))
    assert again.count(True) == 1
    assert len(await _runs(workers[0], task.name)) == 2


async def test_workers_looping_together_never_run_a_task_twice_in_one_interval(
    workers: list[Services],
) -> None:
    every = 0.3
    task = _recording_task("test.fast", every)
    loops = [asyncio.create_task(run_periodic(services, task)) for services in workers]
    try:
        for _ in range(600):
            if len(await _runs(workers[0], task.name)) >= 4:
                break
            await asyncio.sleep(0.05)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    runs = await _runs(workers[0], task.name)
    assert len(runs) >= 4, "the workers stopped running the task"
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(runs)]
    assert min(gaps) >= every, gaps  # claim times on the database's clock
