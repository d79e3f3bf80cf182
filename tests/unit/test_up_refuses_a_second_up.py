"""A second ``marketplace up`` on the data directory of a running one starts nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.infra.stack_file import STACK_FILE, RunningStack


def test_a_second_up_on_a_running_stacks_directory_refuses_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine import cli
    from engine.infra import embedded

    def started(*_: object) -> str:
        raise AssertionError("a second up started embedded servers beside the running one")

    monkeypatch.setattr(embedded.EmbeddedPostgres, "start", started)
    monkeypatch.setattr(embedded.EmbeddedNats, "start", started)
    monkeypatch.chdir(tmp_path)
    for name in ("MARKETPLACE_CONFIG", "MARKETPLACE_DATA_DIR", "MARKETPLACE_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / ".marketplace"
    data_dir.mkdir()
    running = RunningStack(
        pid=os.getpid(),  # alive: the up that wrote it still runs
        api_url="http://127.0.0.1:8000",
        database_url="postgresql://postgres@127.0.0.1:5999/marketplace",
        nats_url="nats://127.0.0.1:5998",
    )
    running.write(data_dir)
    written = (data_dir / STACK_FILE).read_text(encoding="utf-8")

    assert cli.main(["up"]) == 1

    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err
    assert "http://127.0.0.1:8000" in err
    assert (data_dir / STACK_FILE).read_text(encoding="utf-8") == written
