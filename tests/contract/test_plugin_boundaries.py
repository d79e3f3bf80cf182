"""Plugins never write or query the engine's tables: they call its public functions.

Every ``.py`` file of the shipped plugins (``plugins/``) and of the example
(``examples/``), migrations included, and every file the ``new-plugin``
templates render, is parsed; a string literal (docstrings
aside: they may name a table to explain what the engine keeps) that names one
of the engine's tables fails the test with its file and line. The engine's
tables are the ``marketplace_*`` tables its sources declare (Piccolo
``tablename=`` or ``CREATE TABLE``); a plugin's own tables carry its own prefix.
Querying the engine's tables through its Piccolo classes (``engine.core.tables``,
public for foreign keys from a plugin's tables) is the same by another road and
fails too.

Nor do they build ledger postings: every posting is the engine's
(``engine.core.postings``, posted by ``engine.payments.movements`` and the
engine's webhook handlers), keyed by the Stripe object, so one movement has one
posting whichever path posts it. A plugin that constructs a ``Posting``
(``Posting(...)``, ``Posting.transfer(...)``) or defines a ``*_posting`` /
``*_postings`` function fails the test with its file and line. So does one that
moves money around the engine's calls: posting to the ledger itself
(``ledger.post(...)``), or asking the gateway for a refund, a transfer, a
reversal, a capture, a release, a PaymentIntent's confirmation or an invoice's
payment (``engine.payments.movements`` does those: ``refund``, ``transfer``,
``reverse``, ``capture``, ``release``, ``confirm``, ``pay_invoice``), or asking
a Stripe client for one of them (``client.v1.invoices.pay(...)``), or importing
the Stripe SDK at all (only the engine's gateway talks to Stripe).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from engine.scaffold.generator import PluginNames, render

REPO = Path(__file__).resolve().parents[2]
SCANNED = (REPO / "plugins", REPO / "examples")
TEMPLATES = REPO / "engine" / "scaffold" / "templates" / "plugin"

_DECLARED = re.compile(
    r'tablename\s*=\s*"(marketplace_[a-z0-9_]+)"'
    r"|CREATE TABLE (?:IF NOT EXISTS )?(marketplace_[a-z0-9_]+)"
)
_NAMED = re.compile(r"\bmarketplace_[a-z0-9_]+\b")


def engine_tables() -> frozenset[str]:
    """The tables the engine declares in its sources."""
    names: set[str] = set()
    for path in (REPO / "engine").rglob("*.py"):
        for match in _DECLARED.finditer(path.read_text(encoding="utf-8")):
            names.add(match.group(1) or match.group(2))
    return frozenset(names)


def plugin_sources() -> list[Path]:
    """Every Python file of the shipped plugins and the example."""
    return sorted(
        path
        for root in SCANNED
        for path in root.rglob("*.py")
        if ".egg-info" not in str(path) and "__pycache__" not in path.parts
    )


def _docstrings(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


# Piccolo's ways to query or write a table through its class.
_QUERIES = frozenset(
    {"select", "objects", "insert", "update", "delete", "raw", "count", "exists", "add_m2m"}
)


def _engine_table_classes(tree: ast.AST) -> set[str]:
    """Local names bound to ``engine.core.tables`` classes (kept for foreign keys)."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "engine.core.tables"
        for alias in node.names
    }


def engine_table_uses(source: str, tables: frozenset[str]) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for each SQL string naming an engine table or ORM query on one.

    A string is any literal but a docstring (f-strings included, by their
    literal parts); an ORM query is ``Payment.select(...)`` and the like on a
    class imported from ``engine.core.tables``.
    """
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    classes = _engine_table_classes(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            for name in sorted(set(_NAMED.findall(node.value)) & tables):
                yield node.lineno, name
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in _QUERIES
            and isinstance(node.value, ast.Name)
            and node.value.id in classes
        ):
            yield node.lineno, f"{node.value.id}.{node.attr}()"


def _sources() -> Iterator[tuple[str, str]]:
    """``(where, source)`` of the plugins, the example and the rendered ``new-plugin`` files."""
    for path in plugin_sources():
        yield str(path.relative_to(REPO)), path.read_text(encoding="utf-8")
    names = PluginNames("demo_model")
    for path in sorted(TEMPLATES.rglob("*.py.tmpl")):
        yield str(path.relative_to(REPO)), render(path.read_text(encoding="utf-8"), names)


def violations() -> list[str]:
    """Every ``file:line: table`` where a plugin, the example or a template touches one."""
    tables = engine_tables()
    return [
        f"{where}:{line}: {name}"
        for where, source in _sources()
        for line, name in engine_table_uses(source, tables)
    ]


def test_the_engine_tables_are_found() -> None:
    tables = engine_tables()
    for name in ("marketplace_accounts", "marketplace_payments", "marketplace_ledger_entries"):
        assert name in tables


def test_the_scan_sees_sql_and_orm_and_spares_docstrings() -> None:
    source = '''
"""Reads ``marketplace_payments`` through the engine."""
from engine.core.tables import ConnectedAccount, Payment as P
from piccolo.columns import ForeignKey

account = ForeignKey(references=ConnectedAccount)

def f():
    """Not ``marketplace_accounts``."""
    return "SELECT 1 FROM marketplace_accounts a JOIN my_plugin_things t ON true"

def g(x):
    return f"UPDATE marketplace_payments SET x = {x}", P.select().where(P.id == x)
'''
    found = sorted(engine_table_uses(source, engine_tables()))
    assert found == [(10, "marketplace_accounts"), (13, "P.select()"), (13, "marketplace_payments")]


def test_the_scan_covers_every_plugin_the_example_and_the_templates() -> None:
    sources = {tuple(where.split("/")[:2]) for where, _ in _sources()}
    for expected in (
        ("plugins", "creator_subscriptions"),
        ("plugins", "three_sided_bookings"),
        ("plugins", "commission_rules"),
        ("examples", "course_sales"),
        ("engine", "scaffold"),
    ):
        assert expected in sources


def test_no_plugin_touches_an_engine_table() -> None:
    found = violations()
    assert not found, (
        "plugins and examples must call the engine's public functions "
        "(docs/plugins.md), not query its tables:\n" + "\n".join(found)
    )


_POSTING_BUILDER = re.compile(r"_postings?$")


def posting_builders(source: str) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for each place ``source`` builds a ledger posting of its own.

    ``Posting(...)`` or ``Posting.transfer(...)`` (under whatever name
    ``engine.core.ledger.Posting`` was imported as, or as ``ledger.Posting``),
    and any function named ``*_posting`` or ``*_postings``.
    """
    tree = ast.parse(source)
    names = {"Posting"} | {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "engine.core.ledger"
        for alias in node.names
        if alias.name == "Posting"
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _POSTING_BUILDER.search(
            node.name
        ):
            yield node.lineno, f"def {node.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "transfer":
                func = func.value
            if (isinstance(func, ast.Name) and func.id in names) or (
                isinstance(func, ast.Attribute) and func.attr == "Posting"
            ):
                yield node.lineno, "Posting(...)"


def test_the_posting_scan_sees_constructors_and_builders() -> None:
    source = """
from engine.core.ledger import Posting as P, Entry
from engine.core import ledger

def charge_posting(x):
    return P(key="k", kind="c", entries=(), occurred_at=x)

async def refund_postings(x):
    return [P.transfer("k", "r", "a", "b", x, occurred_at=x), ledger.Posting(key="k")]

def post(posting: P) -> None:
    return destination_charge_posting(posting)
"""
    assert sorted(posting_builders(source)) == [
        (5, "def charge_posting"),
        (6, "Posting(...)"),
        (8, "def refund_postings"),
        (9, "Posting(...)"),
        (9, "Posting(...)"),
    ]


def test_no_plugin_builds_its_own_posting() -> None:
    found = [
        f"{where}:{line}: {what}"
        for where, source in _sources()
        for line, what in posting_builders(source)
    ]
    assert not found, (
        "plugins and examples move money through engine.payments.movements and "
        "the engine's postings (engine.core.postings), never a Posting of their own:\n"
        + "\n".join(found)
    )


# Stripe writes that move money: engine.payments.movements makes them (and records and posts them).
_MONEY_WRITES = frozenset(
    {
        ("refunds", "create"),
        ("transfers", "create"),
        ("transfers.reversals", "create"),
        ("payment_intents", "capture"),
        ("payment_intents", "cancel"),
        ("payment_intents", "confirm"),
        ("invoices", "pay"),
    }
)


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` of an attribute chain ("" when it is not one)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _client_money_write(node: ast.Call) -> str | None:
    """``v1.<resource>.<method>`` when ``node`` asks a Stripe client to move money."""
    parts = _dotted(node.func).split(".")
    if "v1" not in parts[:-1]:
        return None
    after = parts[len(parts) - parts[::-1].index("v1") :]
    resource, method = ".".join(after[:-1]), after[-1]
    return f"v1.{resource}.{method}" if (resource, method) in _MONEY_WRITES else None


def money_moved_around_the_engine(source: str) -> Iterator[tuple[int, str]]:
    """``(line, what)`` for each ledger post or money-moving gateway call in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for module in modules:
                if module == "stripe" or module.startswith("stripe."):
                    yield node.lineno, f"import {module}"
            continue
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        client_write = _client_money_write(node)
        if client_write is not None:
            yield node.lineno, f"{client_write}(...)"
            continue
        owner = node.func.value
        owner_name = (
            owner.attr
            if isinstance(owner, ast.Attribute)
            else owner.id
            if isinstance(owner, ast.Name)
            else ""
        )
        if owner_name == "ledger" and node.func.attr in {"post", "post_many"}:
            yield node.lineno, f"ledger.{node.func.attr}(...)"
        elif owner_name == "gateway" and node.func.attr == "call" and len(node.args) >= 2:
            resource, method = node.args[:2]
            if (
                isinstance(resource, ast.Constant)
                and isinstance(method, ast.Constant)
                and (resource.value, method.value) in _MONEY_WRITES
            ):
                yield node.lineno, f"gateway.call({resource.value!r}, {method.value!r})"


def test_the_money_scan_sees_ledger_posts_and_money_writes() -> None:
    source = """
async def f(ctx, env, gateway):
    await ctx.services.ledger.post(p, conn=c)
    await env.ledger.post_many([p])
    await ctx.gateway.call("transfers", "create", params={})
    await gateway.call("payment_intents", "capture", "pi_1")
    await gateway.call("payment_intents", "create", params={})
    await gateway.call("refunds", "retrieve", "re_1")
    await env.gateway.call("payment_intents", "confirm", "pi_1", params={})
    await gateway.call("invoices", "pay", "in_1", params={})
    client.v1.invoices.pay("in_1")
    ctx.stripe.v1.payment_intents.confirm("pi_1")
    client.v1.payment_intents.create(params={})
    import stripe
    from stripe import StripeClient
"""
    assert sorted(money_moved_around_the_engine(source)) == [
        (3, "ledger.post(...)"),
        (4, "ledger.post_many(...)"),
        (5, "gateway.call('transfers', 'create')"),
        (6, "gateway.call('payment_intents', 'capture')"),
        (9, "gateway.call('payment_intents', 'confirm')"),
        (10, "gateway.call('invoices', 'pay')"),
        (11, "v1.invoices.pay(...)"),
        (12, "v1.payment_intents.confirm(...)"),
        (14, "import stripe"),
        (15, "import stripe"),
    ]


def test_no_plugin_moves_money_around_the_engine() -> None:
    found = [
        f"{where}:{line}: {what}"
        for where, source in _sources()
        for line, what in money_moved_around_the_engine(source)
    ]
    assert not found, (
        "refunds, transfers, reversals, captures, releases, confirmations and invoice "
        "payments go through engine.payments.movements, which records and posts them; "
        "only the engine's gateway talks to Stripe:\n" + "\n".join(found)
    )
