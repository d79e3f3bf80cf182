"""Create, clone and drop PostgreSQL databases by URL, for the embedded stack and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import quote, unquote, urlsplit

# asyncpg ships no type information; `unused-ignore` keeps this line valid once the
# data layer adds asyncpg to mypy's ignore_missing_imports overrides.
import asyncpg  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "create_database",
    "database_exists",
    "database_name",
    "drop_database",
    "ensure_database",
    "quote_identifier",
    "with_database",
]

# CREATE DATABASE ... TEMPLATE fails while anything is connected to the template;
# a pool closed a moment ago can take that long to let its backends go.
_TEMPLATE_BUSY_SECONDS = 5.0


def with_database(url: str, database: str) -> str:
    """``url`` pointing at ``database`` instead, keeping user, host, port and query."""
    return urlsplit(url)._replace(path="/" + quote(database, safe="")).geturl()


def database_name(url: str) -> str:
    """The database a PostgreSQL URL points at (``postgres`` when it names none)."""
    return unquote(urlsplit(url).path.lstrip("/")) or "postgres"


def quote_identifier(name: str) -> str:
    """``name`` as a PostgreSQL identifier, safe to splice into DDL."""
    if not name or "\0" in name:
        raise ValueError(f"not a valid PostgreSQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'


async def _execute(server_url: str, statement: str, *args: object) -> object:
    connection = await asyncpg.connect(server_url)
    try:
        return await connection.fetchval(statement, *args)
    finally:
        await connection.close()


async def database_exists(server_url: str, name: str) -> bool:
    """True when the server behind ``server_url`` has a database called ``name``."""
    found = await _execute(server_url, "SELECT 1 FROM pg_database WHERE datname = $1", name)
    return found is not None


async def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (a copy of ``template`` when given) and return its URL.

    ``server_url`` is any database on the server the role may connect to. While
    the template still has connections (a pool being closed), creation is
    retried for a few seconds before the error is raised.
    """
    statement = f"CREATE DATABASE {quote_identifier(name)}"
    if template is not None:
        statement += f" TEMPLATE {quote_identifier(template)}"
    deadline = time.monotonic() + _TEMPLATE_BUSY_SECONDS
    while True:
        try:
            await _execute(server_url, statement)
        except asyncpg.ObjectInUseError:
            if template is None or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            return with_database(server_url, name)


async def ensure_database(server_url: str, name: str) -> str:
    """Create database ``name`` unless it exists; return its URL either way."""
    if not await database_exists(server_url, name):
        # Another process may create it between our check and our CREATE.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await create_database(server_url, name)
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting whoever is still connected."""
    await _execute(server_url, f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")
