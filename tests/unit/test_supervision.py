"""Background tasks are never silent: restarted saying so, or ending the command."""

from __future__ import annotations

import asyncio
import logging

import pytest

from engine.supervision import TaskEnded, restarting, wait_for_stop


async def test_a_task_that_dies_is_logged_with_its_traceback_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    restarted = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("pool went away")
        restarted.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.INFO, logger="marketplace"):
        task = asyncio.create_task(restarting("sweeper", flaky, first_delay=0.01))
        await asyncio.wait_for(restarted.wait(), timeout=30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert runs == [0, 1]
    died = [r for r in caplog.records if "sweeper died" in r.getMessage()]
    assert len(died) == 1
    assert died[0].exc_info is not None
    assert "pool went away" in caplog.text
    assert "restarting sweeper" in caplog.text


async def test_a_task_that_returns_on_its_own_is_restarted_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0

    async def returns() -> None:
        nonlocal runs
        runs += 1
        if runs >= 3:
            await asyncio.Event().wait()

    task = asyncio.create_task(restarting("receiver", returns, first_delay=0.01))
    while runs < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    assert "receiver returned on its own" in caplog.text


async def test_a_dead_task_ends_the_command_with_its_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()

    async def worker() -> None:
        raise ConnectionRefusedError("nats: no servers available")

    async def api() -> None:
        await stop.wait()

    tasks = {
        "the webhook worker": asyncio.create_task(worker()),
        "the API": asyncio.create_task(api()),
    }
    with pytest.raises(TaskEnded) as ended:
        await wait_for_stop(stop, tasks)
    assert ended.value.name == "the webhook worker"
    assert isinstance(ended.value.cause, ConnectionRefusedError)
    assert "the webhook worker stopped unexpectedly (ConnectionRefusedError" in str(ended.value)
    assert stop.is_set()  # the others wind down
    await tasks["the API"]
    logged = [r for r in caplog.records if r.getMessage() == "the webhook worker died"]
    assert logged
    assert logged[0].exc_info is not None


async def test_stopping_on_purpose_is_not_a_failure() -> None:
    stop = asyncio.Event()

    async def api() -> None:
        await stop.wait()

    tasks = {"the API": asyncio.create_task(api())}
    stop.set()
    await wait_for_stop(stop, tasks)
    await tasks["the API"]
