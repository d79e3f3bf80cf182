"""``marketplace new-plugin``: the scaffold installs with pip and passes its own tests as made.

The main test follows docs/plugins.md's quick start step by step. The
scaffold is installed with a real ``pip install -e`` into an overlay
environment (``engine.testing.environments``) rather than this one, so other
test runs sharing this environment never see a half-installed ``demo_model``.
Its tests run in a subprocess against this run's PostgreSQL and NATS.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.errors import InvalidInput
from engine.scaffold.generator import check_name, scaffold
from engine.testing.environments import OverlayEnvironment
from engine.testing.infra import TEST_DATABASE_URL_VARIABLE, TEST_NATS_URL_VARIABLE

NAME = "demo_model"
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def _marketplace(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "engine.cli", *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def _quick_start() -> list[str]:
    """The commands of docs/plugins.md's quick start, in order."""
    text = GUIDE.read_text(encoding="utf-8")
    block = text[text.index("<!-- quickstart -->") : text.index("<!-- /quickstart -->")]
    return [
        line.strip()
        for line in block.splitlines()
        if line.strip() and not line.startswith(("```", "<!--"))
    ]


def test_following_the_quick_start_the_scaffold_installs_and_passes_its_tests(
    tmp_path: Path, database_url: str, nats_url: str
) -> None:
    environment = OverlayEnvironment(tmp_path / "venv").create()
    servers = {TEST_DATABASE_URL_VARIABLE: database_url, TEST_NATS_URL_VARIABLE: nats_url}
    cwd = tmp_path / "work"
    cwd.mkdir()
    outputs: list[str] = []
    steps = _quick_start()
    assert steps[0] == f"marketplace new-plugin {NAME}"
    for step in steps:
        match shlex.split(step):
            case ["marketplace", *args]:
                done = environment.run(["python", "-m", "engine.cli", *args], cwd=cwd)
            case ["cd", directory]:
                cwd = cwd / directory
                continue
            case ["pip", "install", "-e", target]:
                # Its dependencies are this environment's; --no-deps keeps it offline.
                done = environment.pip("install", "--no-deps", "-e", target, cwd=cwd)
            case ["pytest", *args]:
                done = environment.run(
                    ["python", "-m", "pytest", "-p", "no:cacheprovider", *args],
                    cwd=cwd,
                    env=servers,
                )
            case _:
                pytest.fail(
                    f"docs/plugins.md's quick start has a step this test cannot follow: {step}"
                )
        assert done.returncode == 0, f"{step}:\n{done.stdout}{done.stderr}"
        outputs.append(done.stdout)
    assert "4 passed" in outputs[-1]

    project = tmp_path / "work" / NAME
    assert {path.relative_to(project).as_posix() for path in project.rglob("*.py")} >= {
        f"{NAME}/hooks.py",
        f"{NAME}/config.py",
        f"{NAME}/tables.py",
        f"{NAME}/controllers.py",
        f"{NAME}/conformance.py",
        f"tests/test_{NAME}.py",
    }
    listed = environment.run(["python", "-m", "engine.cli", "plugins"])
    assert listed.returncode == 0, listed.stderr
    assert f"{NAME}.hooks" in listed.stdout  # installed (disabled until configured)

    lint = subprocess.run(
        [Path(sys.executable).parent / "ruff", "check", "--no-cache", "."],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout

    environment.uninstall(f"marketplace-{NAME.replace('_', '-')}")
    probe = (
        "from importlib.metadata import entry_points as e; "
        "print(sorted(e(group='marketplace.plugins').names))"
    )
    after = environment.run(["python", "-c", probe], cwd=environment.root)
    assert after.returncode == 0, after.stderr
    assert NAME not in after.stdout
    assert "commission_rules" in after.stdout


@pytest.mark.parametrize(
    "name", ["Demo", "9lives", "demo-model", "class", "json", "engine", "x", "demo__model"]
)
def test_bad_plugin_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)


def test_installed_plugin_name_is_refused() -> None:
    with pytest.raises(InvalidInput, match="already installed"):
        check_name("commission_rules")


def test_scaffold_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        scaffold(NAME, tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["keep.txt"]


def test_the_scaffold_is_formatted_as_ruff_formats(tmp_path: Path) -> None:
    scaffold(NAME, tmp_path / NAME)
    formatted = subprocess.run(
        [Path(sys.executable).parent / "ruff", "format", "--check", "--diff", "--no-cache", "."],
        cwd=tmp_path / NAME,
        capture_output=True,
        text=True,
        check=False,
    )
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_cli_reports_a_bad_name(tmp_path: Path) -> None:
    result = _marketplace("new-plugin", "Bad-Name", cwd=tmp_path)
    assert result.returncode == 1
    assert "invalid_input" in result.stderr
    assert "is not a plugin name" in result.stderr
    assert not any(tmp_path.iterdir())
