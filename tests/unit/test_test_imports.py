"""Test modules import shared test code from ``tests/support`` (``support.*``, on
pytest's ``pythonpath``), never from another test module as ``tests.<...>``: that name
resolves only when the working directory is on ``sys.path`` (``python -m pytest``),
not under ``make test``'s ``pytest``, so such a file fails to collect on a clean clone."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imports_of_tests_package(source: str, label: str) -> list[str]:
    """``label:line: module`` for each import of the ``tests`` package in ``source``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.extend(
            f"{label}:{node.lineno}: {name}"
            for name in names
            if name == "tests" or name.startswith("tests.")
        )
    return found


def test_no_test_module_imports_the_tests_package() -> None:
    offenders = [
        hit
        for path in sorted(TESTS.rglob("*.py"))
        for hit in imports_of_tests_package(
            path.read_text(encoding="utf-8"), str(path.relative_to(TESTS))
        )
    ]
    assert offenders == [], "import shared test code from support.* instead:\n" + "\n".join(
        offenders
    )


def test_the_check_finds_such_imports_and_leaves_support_alone() -> None:
    source = (
        "from tests.integration.test_x import y\n"
        "import tests.support\n"
        "from support.outside import Orders\n"
        "from testsuite import z\n"
    )
    assert imports_of_tests_package(source, "sample.py") == [
        "sample.py:1: tests.integration.test_x",
        "sample.py:2: tests.support",
    ]
