"""The embedded PostgreSQL and NATS the suite and ``marketplace up`` run on, exercised for real."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import nats
import pytest
from nats.js.api import StorageType

from engine.infra import server as server_module
from engine.infra.databases import create_database, database_name, drop_database
from engine.infra.embedded import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedServiceError,
    Services,
    ServiceUrls,
    find_nats_server,
    reap_orphans,
)
from engine.infra.nats_server import MINIMUM_NATS_SERVER
from engine.infra.processes import RESERVED_PORTS, ServerState, find_free_port, pid_alive


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


async def _table_names(database_url: str) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


def test_the_wheels_nats_server_is_used_never_an_old_system_one() -> None:
    version = subprocess.run(
        [str(find_nats_server()), "--version"], capture_output=True, text=True, check=True
    ).stdout
    major, minor = (int(part) for part in version.split("v")[-1].split(".")[:2])
    assert (major, minor) >= MINIMUM_NATS_SERVER


def test_free_ports_avoid_the_system_services() -> None:
    ports = {find_free_port() for _ in range(50)}
    assert not ports & RESERVED_PORTS


@pytest.mark.skipif(
    any(os.environ.get(f"MARKETPLACE_TEST_{name}_URL") for name in ("DATABASE", "NATS")),
    reason="the servers were named explicitly",
)
def test_session_services_are_embedded_on_free_ports(services: ServiceUrls) -> None:
    for url in (services.database_url, services.nats_url):
        assert urlsplit(url).hostname == "127.0.0.1"
        assert urlsplit(url).port not in RESERVED_PORTS
    assert os.environ["MARKETPLACE_DATABASE_URL"] == services.database_url
    assert os.environ["MARKETPLACE_NATS_URL"] == services.nats_url


async def test_postgres_answers_queries_and_keeps_a_table(fresh_database_url: str) -> None:
    connection = await asyncpg.connect(fresh_database_url)
    try:
        assert await connection.fetchval("SELECT 1") == 1
        await connection.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
        await connection.execute("INSERT INTO notes VALUES (1, 'hello')")
        assert await connection.fetchval("SELECT body FROM notes WHERE id = 1") == "hello"
        assert await connection.fetchval("SHOW max_connections") == "300"
    finally:
        await connection.close()


async def test_each_fresh_database_starts_from_the_template(
    database_url: str, fresh_database_url: str, template_database: str
) -> None:
    connection = await asyncpg.connect(fresh_database_url)
    try:
        await connection.execute("CREATE TABLE scratch (id bigint)")
    finally:
        await connection.close()
    other = f"{database_name(database_url)}_other"
    other_url = await create_database(database_url, other, template=template_database)
    try:
        assert "scratch" in await _table_names(fresh_database_url)
        assert "scratch" not in await _table_names(other_url)
    finally:
        await drop_database(database_url, other)


async def test_jetstream_publishes_and_delivers(nats_url: str, unique_name: str) -> None:
    client = await nats.connect(nats_url)
    try:
        stream = client.jetstream()
        await stream.add_stream(
            name=unique_name, subjects=[f"{unique_name}.>"], storage=StorageType.FILE
        )
        for number in range(3):
            ack = await stream.publish(f"{unique_name}.orders", f"order {number}".encode())
            assert ack.seq == number + 1
        reader = await stream.pull_subscribe(f"{unique_name}.>", durable="reader")
        messages = await reader.fetch(3, timeout=5)
        assert [message.data for message in messages] == [b"order 0", b"order 1", b"order 2"]
        for message in messages:
            await message.ack()
        await stream.delete_stream(unique_name)
    finally:
        await client.close()


@pytest.mark.parametrize("hard", [False, True], ids=["stop", "crash"])
async def test_jetstream_stream_survives_a_restart(tmp_path: Path, hard: bool) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    url = await asyncio.to_thread(server.start)
    try:
        client = await nats.connect(url)
        stream = client.jetstream()
        await stream.add_stream(name="orders", subjects=["orders.>"], storage=StorageType.FILE)
        for number in range(5):
            await stream.publish("orders.created", f"order {number}".encode())
        await client.close()
        old_pid = server.pid
        assert old_pid is not None

        assert await asyncio.to_thread(server.restart, hard=hard) == url
        assert not pid_alive(old_pid)

        client = await nats.connect(url)
        stream = client.jetstream()
        assert (await stream.stream_info("orders")).state.messages == 5
        reader = await stream.pull_subscribe("orders.>", durable="after_restart")
        messages = await reader.fetch(5, timeout=5)
        assert [message.data for message in messages] == [f"order {n}".encode() for n in range(5)]
        await client.close()
    finally:
        pid = server.pid
        await asyncio.to_thread(server.stop)
    assert pid is not None
    assert not pid_alive(pid)
    assert not server.state_path.exists()


async def test_postgres_restarts_adopts_and_stops_without_leftovers(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "postgres", database="lifecycle", fast=True)
    url = await asyncio.to_thread(server.start)
    assert database_name(url) == "lifecycle"
    connection = await asyncpg.connect(url)
    await connection.execute("CREATE TABLE kept (id bigint); INSERT INTO kept VALUES (7)")
    await connection.close()
    first_pid = server.pid
    assert first_pid is not None

    # A second owner of the same data directory adopts the running server...
    twin = EmbeddedPostgres(tmp_path / "postgres", database="lifecycle")
    assert await asyncio.to_thread(twin.start) == url
    assert twin.pid == first_pid
    # ...and can stop it.
    await asyncio.to_thread(twin.stop)
    assert not pid_alive(first_pid)

    try:
        # Same port and data after a clean stop, then after a crash (crash recovery).
        assert await asyncio.to_thread(server.start) == url
        assert await asyncio.to_thread(server.restart, hard=True) == url
        connection = await asyncpg.connect(url)
        assert await connection.fetchval("SELECT id FROM kept") == 7
        await connection.close()
    finally:
        last_pid = server.pid
        await asyncio.to_thread(server.stop)
    assert last_pid is not None
    assert not pid_alive(last_pid)
    assert _group_gone(last_pid)
    assert server.log_path.read_text().strip()


async def test_a_taken_port_is_retried_when_the_port_was_ours_to_choose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offered = iter([taken, find_free_port()])
        monkeypatch.setattr(server_module, "find_free_port", lambda host: next(offered))
        server = EmbeddedNats(tmp_path / "nats")
        try:
            url = await asyncio.to_thread(server.start)
            assert urlsplit(url).port != taken
        finally:
            await asyncio.to_thread(server.stop)

        pinned = EmbeddedNats(tmp_path / "pinned", port=taken)
        with pytest.raises(EmbeddedServiceError, match="address already in use"):
            await asyncio.to_thread(pinned.start)
        assert pinned.pid is None


async def test_orphans_are_reaped_only_when_their_owner_is_gone(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    try:
        assert reap_orphans(tmp_path) == []  # we own it and we are alive
        state = ServerState.read(server.state_path)
        assert state is not None
        orphaned = ServerState(state.kind, state.pid, state.port, owner_pid=_dead_pid())
        orphaned.write(server.state_path)
        assert await asyncio.to_thread(reap_orphans, tmp_path) == [server.data_dir]
        assert not pid_alive(state.pid)
    finally:
        await asyncio.to_thread(server.stop)


def test_services_start_nothing_for_configured_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MARKETPLACE_DATABASE_URL", "postgresql://db.example/marketplace")
    stack = Services(tmp_path, nats_url="nats://mq.example:4222")
    with stack:
        assert stack.urls == ServiceUrls(
            database_url="postgresql://db.example/marketplace", nats_url="nats://mq.example:4222"
        )
        assert stack.postgres is None
        assert stack.nats is None
    assert not any(tmp_path.iterdir())
