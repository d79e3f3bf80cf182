"""Webhook pipeline under failure: worker crashes, broker loss, restarts, many workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from support.pipeline import Pipeline, running_pipeline
from support.stripe_events import event

from engine.infra.nats_server import EmbeddedNats
from engine.infra.postgres import EmbeddedPostgres

TESTS = Path(__file__).resolve().parents[1]


class WorkerProcesses:
    """Worker subprocesses with their own log files, stopped by pid."""

    def __init__(self, database_url: str, nats_url: str, stream: str, logs: Path) -> None:
        self._args = [database_url, nats_url, stream]
        self._logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        log = (self._logs / f"worker-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "support.worker_main", *self._args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def workers_factory(tmp_path: Path) -> Iterator[list[WorkerProcesses]]:
    made: list[WorkerProcesses] = []
    yield made
    for group in made:
        group.stop_all()


async def _send_in_order(pipeline: Pipeline, accounts: list[str], per_account: int) -> None:
    """Each account's events are sent one after another (so arrival order = sequence)."""

    async def one(account: str) -> None:
        for seq in range(1, per_account + 1):
            await pipeline.deliver(event(account, seq))

    await asyncio.gather(*(one(account) for account in accounts))


async def _assert_exactly_once_in_order(pipeline: Pipeline, expected: int) -> None:
    assert await pipeline.recorded() == expected
    assert await pipeline.fetchval("SELECT sum(duplicates) FROM test_recorded") == 0
    assert not await pipeline.fetchval("SELECT bool_or(inversion) FROM test_recorded")
    pending = await pipeline.fetchval(
        "SELECT count(*) FROM marketplace_webhook_events WHERE status <> 'handled'"
    )
    assert pending == 0


@pytest.fixture
async def pipeline(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Pipeline]:
    async with running_pipeline(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


async def test_two_worker_processes_keep_per_account_order(
    pipeline: Pipeline, workers_factory: list[WorkerProcesses], tmp_path: Path
) -> None:
    workers = WorkerProcesses(
        pipeline.settings.database.url,
        pipeline.settings.nats.url,
        pipeline.settings.nats.stream,
        tmp_path,
    )
    workers_factory.append(workers)
    workers.start()
    workers.start()
    await _wait_for_listening_workers(pipeline, 2)
    accounts = [f"acct_order_{n}" for n in range(20)]
    await _send_in_order(pipeline, accounts, 50)
    await pipeline.wait_until(
        lambda: _is(pipeline.recorded(), 1000), timeout=90, what="1,000 events"
    )
    await _assert_exactly_once_in_order(pipeline, 1000)
    worker_processes = await pipeline.fetchval(
        "SELECT count(DISTINCT worker_pid) FROM test_recorded"
    )
    assert worker_processes == 2  # both processes took part, and order still held


async def test_worker_killed_mid_run_loses_nothing_and_doubles_nothing(
    pipeline: Pipeline, workers_factory: list[WorkerProcesses], tmp_path: Path
) -> None:
    workers = WorkerProcesses(
        pipeline.settings.database.url,
        pipeline.settings.nats.url,
        pipeline.settings.nats.stream,
        tmp_path,
    )
    workers_factory.append(workers)
    victim = workers.start()
    accounts = [f"acct_crash_{n}" for n in range(10)]
    sending = asyncio.create_task(_send_in_order(pipeline, accounts, 100))
    await pipeline.wait_until(lambda: _at_least(pipeline.recorded(), 100), what="some progress")
    victim.kill()  # SIGKILL: no cleanup, leases stay held until they expire
    victim.wait()
    await sending
    workers.start()
    await pipeline.wait_until(lambda: _is(pipeline.recorded(), 1000), timeout=120, what="recovery")
    await _assert_exactly_once_in_order(pipeline, 1000)


async def test_deleting_the_stream_under_load_loses_nothing(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    accounts = [f"acct_loss_{n}" for n in range(10)]
    sending = asyncio.create_task(_send_in_order(pipeline, accounts, 60))
    await pipeline.wait_until(lambda: _at_least(pipeline.recorded(), 50), what="some progress")
    client = await nats.connect(pipeline.settings.nats.url)
    try:
        await client.jetstream().delete_stream(pipeline.settings.nats.stream)
    finally:
        await client.close()
    await sending
    await pipeline.wait_until(
        lambda: _is(pipeline.recorded(), 600), timeout=120, what="the sweeper"
    )
    await _assert_exactly_once_in_order(pipeline, 600)


async def test_restarting_nats_and_postgres_loses_nothing(tmp_path: Path, unique_name: str) -> None:
    postgres = EmbeddedPostgres(tmp_path / "pg", fast=False)
    nats_server = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(postgres.start)
    await asyncio.to_thread(nats_server.start)
    try:
        async with running_pipeline(postgres.url, nats_server.url, unique_name.upper()) as pipeline:
            pipeline.start_worker()
            accounts = [f"acct_restart_{n}" for n in range(5)]
            await _send_in_order(pipeline, accounts, 40)
            await asyncio.to_thread(nats_server.restart)
            await _send_in_order(pipeline, [f"acct_after_nats_{n}" for n in range(5)], 20)
            await pipeline.wait_until(
                lambda: _is(pipeline.recorded(), 300), timeout=90, what="after NATS restart"
            )
            await asyncio.to_thread(postgres.restart)
            await _deliver_with_retry(pipeline, [f"acct_after_pg_{n}" for n in range(5)], 20)
            await pipeline.wait_until(
                lambda: _is(pipeline.recorded(), 400), timeout=90, what="after PG restart"
            )
            await _assert_exactly_once_in_order(pipeline, 400)
    finally:
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)


async def _wait_for_listening_workers(pipeline: Pipeline, count: int) -> None:
    """Until ``count`` workers are pulling from the durable consumer (both can take tokens)."""
    stream = pipeline.settings.nats.stream
    client = await nats.connect(pipeline.settings.nats.url)
    try:
        js = client.jetstream()
        for _ in range(300):
            try:
                info = await js.consumer_info(stream, f"{stream.lower()}_workers")
                if (info.num_waiting or 0) >= count:
                    return
            except nats.js.errors.NotFoundError:
                pass  # no worker has created the consumer yet
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} workers never listened on {stream}")
    finally:
        await client.close()


async def _deliver_with_retry(pipeline: Pipeline, accounts: list[str], per_account: int) -> None:
    """Deliver like Stripe: an error answer (database still reconnecting) is retried."""
    for account in accounts:
        for seq in range(1, per_account + 1):
            body = event(account, seq)
            for _ in range(50):
                try:
                    await pipeline.deliver(body)
                    break
                except (OSError, ConnectionError, Exception):  # Stripe retries any non-2xx
                    await asyncio.sleep(0.2)


async def _is(value: object, expected: int) -> bool:
    return bool(await value == expected)  # type: ignore[misc]


async def _at_least(value: object, expected: int) -> bool:
    return bool(await value >= expected)  # type: ignore[misc]
