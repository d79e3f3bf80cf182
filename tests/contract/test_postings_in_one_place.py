"""The engine builds ledger postings in one place: ``engine/core/postings.py``.

Every ``.py`` file of the engine, the shipped plugins, the example, the scripts
and the benchmarks is parsed; constructing a ``Posting`` or an ``Entry``
(``Posting(...)``, ``Posting.transfer(...)``, ``Entry(...)``, under whatever
name they were imported as, or as ``ledger.Posting(...)``) or defining a
``*_posting`` / ``*_postings`` function anywhere else fails, naming the file,
line and what, unless ``_ALLOWED`` lists it with why. The list only shrinks: an
entry whose construction is gone fails ``test_every_posting_exception_is_still_needed``.
Tests are not scanned: they build postings to inject what reconciliation must find.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("engine", "plugins", "examples", "scripts", "bench")
HOME = "engine/core/postings.py"

# (file, what) built outside engine/core/postings.py, and why it may be.
_ALLOWED: dict[tuple[str, str], str] = {
    ("engine/core/ledger.py", "Entry(...)"): (
        "Posting.transfer, the two-entry posting the builders use, lives with the Posting type"
    ),
    ("bench/dashboard.py", "Posting(...)"): (
        "the dashboard benchmark seeds a large ledger directly, with no Stripe behind it"
    ),
    ("bench/dashboard.py", "Entry(...)"): "the same seeded ledger's entries",
}

_BUILDER = re.compile(r"_postings?$")
_TYPES = ("Posting", "Entry")


def sources() -> Iterator[tuple[str, str]]:
    """``(path, source)`` of every scanned file but the postings module itself."""
    for folder in SCANNED:
        for path in sorted((REPO / folder).rglob("*.py")):
            where = str(path.relative_to(REPO))
            if where == HOME or "__pycache__" in path.parts or ".egg-info" in where:
                continue
            yield where, path.read_text(encoding="utf-8")


def postings_built(source: str) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for each posting or entry ``source`` builds, and each builder it defines."""
    tree = ast.parse(source)
    aliases = {name: name for name in _TYPES}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "engine.core.ledger":
            for alias in node.names:
                if alias.name in _TYPES:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _BUILDER.search(node.name):
            yield node.lineno, f"def {node.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "transfer":
                func = func.value
            if isinstance(func, ast.Name) and func.id in aliases:
                yield node.lineno, f"{aliases[func.id]}(...)"
            elif isinstance(func, ast.Attribute) and func.attr in _TYPES:
                yield node.lineno, f"{func.attr}(...)"


def found() -> dict[tuple[str, str], list[int]]:
    """Every ``(file, what)`` built outside the postings module, with its lines."""
    built: dict[tuple[str, str], list[int]] = {}
    for where, source in sources():
        for line, what in postings_built(source):
            built.setdefault((where, what), []).append(line)
    return built


def test_the_scan_sees_postings_entries_and_builders() -> None:
    source = """
from engine.core.ledger import Posting as P, Entry
from engine.core import ledger

def payout_posting(x):
    return P(key="k", kind="c", entries=(Entry("a", x), Entry("b", -x)), occurred_at=x)

async def refund_postings(x):
    return [P.transfer("k", "r", "a", "b", x, occurred_at=x), ledger.Posting(key="k")]

def unrelated(x):
    return x.transfer(1), Entryway(2)
"""
    assert sorted(postings_built(source)) == [
        (5, "def payout_posting"),
        (6, "Entry(...)"),
        (6, "Entry(...)"),
        (6, "Posting(...)"),
        (8, "def refund_postings"),
        (9, "Posting(...)"),
        (9, "Posting(...)"),
    ]


def test_the_scan_covers_the_engine_plugins_example_scripts_and_benchmarks() -> None:
    seen = {where.split("/")[0] for where, _ in sources()}
    assert seen == set(SCANNED)
    assert HOME not in {where for where, _ in sources()}
    assert any(
        what == "def charge_posting"
        for _, what in postings_built((REPO / HOME).read_text(encoding="utf-8"))
    )


def test_the_engine_builds_postings_in_one_place() -> None:
    outside = [
        f"{where}:{lines[0]}: {what}"
        for (where, what), lines in sorted(found().items())
        if (where, what) not in _ALLOWED
    ]
    assert not outside, (
        f"ledger postings are built in {HOME} (the engine's builders, keyed by the Stripe "
        "object), not here:\n" + "\n".join(outside)
    )


def test_every_posting_exception_is_still_needed() -> None:
    """``_ALLOWED`` only shrinks: an entry whose construction is gone must go too."""
    built = found()
    for where, what in _ALLOWED:
        assert (REPO / where).exists(), f"{where} is gone: drop its _ALLOWED entry"
        assert (where, what) in built, f"{where} no longer builds {what}: drop its _ALLOWED entry"
