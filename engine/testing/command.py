"""The ``marketplace conformance NAME`` sub-command: the conformance check of an installed plugin.

The database properties need a PostgreSQL server where a scratch database can be
created and dropped: ``--database-url``, else ``MARKETPLACE_TEST_DATABASE_URL``,
else an embedded server started for the run (never the configured
``database.url``: the check does not belong on a production server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["EXIT_NOT_CHECKED", "add_conformance_command", "run_conformance"]


def add_conformance_command(sub: Any) -> None:
    """Add ``conformance`` to the ``marketplace`` sub-parsers."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "conformance",
        help="check that an installed plugin keeps the engine's properties",
        description="Hooks well-formed, splits sum to the price (hypothesis), tables migrate "
        "up, webhook handlers idempotent. Exit code 0 when every property that applies was "
        "checked and holds, 1 when a property breaks, 3 when none broke but some were not "
        "checked (--no-database): a property not checked is never reported as passed.",
    )
    parser.add_argument("name", help="the installed plugin's name")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL URL on a server where the check may create a scratch database "
        "(default: MARKETPLACE_TEST_DATABASE_URL, else an embedded server)",
    )
    parser.add_argument(
        "--no-database",
        action="store_true",
        help="do not check the database properties (reported as not checked; exit code 3)",
    )
    parser.add_argument(
        "--max-examples", type=int, default=None, help="hypothesis examples per money property"
    )
    parser.set_defaults(func=run_conformance)


@contextlib.contextmanager
def _database(args: argparse.Namespace) -> Iterator[str | None]:
    from engine.testing.infra import TEST_DATABASE_URL_VARIABLE

    given = args.database_url or os.environ.get(TEST_DATABASE_URL_VARIABLE)
    if args.no_database or given:
        yield None if args.no_database else given
        return
    from engine.infra.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="marketplace-conformance-"))
    server = EmbeddedPostgres(root / "postgres", database="conformance", fast=True)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


EXIT_NOT_CHECKED = 3
"""Exit code when no property broke but some that apply were not checked."""


def run_conformance(args: argparse.Namespace, settings: Any, plugins: Any) -> int:
    """Check the plugin, print the report.

    Returns 0 when every property that applies was checked and holds, 1 when one
    broke, ``EXIT_NOT_CHECKED`` when none broke but some were not checked.
    """
    try:
        from engine.testing.conformance import check_plugin
    except ImportError as exc:  # hypothesis comes with the engine's dev extras
        print(
            f"marketplace conformance needs the engine's test dependencies ({exc.name}): "
            "pip install 'marketplace-engine[dev]'",
            file=sys.stderr,
        )
        return 2

    with _database(args) as url:
        report = asyncio.run(
            check_plugin(args.name, database_url=url, max_examples=args.max_examples)
        )
    print(report.text())
    if not report.ok:
        return 1
    return 0 if report.complete else EXIT_NOT_CHECKED
