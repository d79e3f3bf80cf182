"""The ``reconciliation`` plugin: the workers reconcile on a schedule kept in the database.

With the plugin enabled, a worker starts a run when none has happened yet and
then only when the latest run (whoever started it) is ``every_minutes`` old;
a bad config key stops start-up with the key named.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from support.stack import Stack, running_stack

from engine.core.errors import ConfigError
from engine.core.plugins import build_plugins
from engine.core.settings import settings_from_mapping
from engine.reconciliation.schedule import CHECK_SECONDS, TASK, due, run_when_due
from engine.reconciliation.store import recent_runs


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=["reconciliation"],
        config={"plugins": {"reconciliation": {"every_minutes": 5}}},
    ) as running:
        yield running


def test_the_plugin_registers_one_periodic_task_and_checks_its_config() -> None:
    settings = settings_from_mapping({"plugins": {"enabled": ["reconciliation"]}})
    tasks = build_plugins(settings).periodic_tasks()
    assert [(task.name, task.every_seconds) for task in tasks] == [(TASK, CHECK_SECONDS)]
    with pytest.raises(ConfigError) as bad:
        build_plugins(
            settings_from_mapping(
                {"plugins": {"enabled": ["reconciliation"], "reconciliation": {"every_hours": 1}}}
            )
        )
    assert bad.value.key.startswith("plugins.reconciliation")
    assert "every_hours" in f"{bad.value.key} {bad.value.problem}"


async def test_the_worker_reconciles_once_then_waits_for_the_interval(stack: Stack) -> None:
    pool = stack.services.db.pool
    for _ in range(200):  # the worker's first check runs as it starts
        runs = await recent_runs(pool)
        if runs and runs[0].finished_at is not None:
            break
        await asyncio.sleep(0.05)
    assert [(run.trigger, run.status) for run in runs] == [("task", "completed")]
    assert not await due(stack.services)
    await run_when_due(stack.services)
    assert len(await recent_runs(pool)) == 1
    later = datetime.now(UTC) + timedelta(minutes=5, seconds=1)
    assert await due(stack.services, now=later)
