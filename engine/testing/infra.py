"""PostgreSQL and NATS for a plugin's test run, and a fresh migrated database per test.

``services_for_tests(root)`` starts embedded PostgreSQL (fsync off) and NATS on free
loopback ports, unless ``MARKETPLACE_TEST_DATABASE_URL`` /
``MARKETPLACE_TEST_NATS_URL`` name servers to use instead (a developer's own
``MARKETPLACE_DATABASE_URL`` is never used for tests). ``Databases`` clones
fresh databases from a template migrated once per set of plugin apps, so each
test starts from clean, migrated state for the price of a file copy.

These are what the kit's ``mp_*`` fixtures use; they work outside pytest too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.core.contributions import TableApp
from engine.core.db import migrate
from engine.infra.databases import create_database, database_name, drop_database
from engine.infra.embedded import Services, ServiceUrls

__all__ = [
    "TEST_DATABASE_URL_VARIABLE",
    "TEST_NATS_URL_VARIABLE",
    "Databases",
    "services_for_tests",
]

TEST_DATABASE_URL_VARIABLE = "MARKETPLACE_TEST_DATABASE_URL"
TEST_NATS_URL_VARIABLE = "MARKETPLACE_TEST_NATS_URL"


@contextlib.contextmanager
def services_for_tests(root: Path) -> Iterator[ServiceUrls]:
    """PostgreSQL and NATS for a test run: the ones named by the environment, or embedded.

    Embedded servers keep their data under ``root`` and stop when the block ends.
    """
    stack = Services(
        root,
        database="marketplace_test",
        fast=True,
        database_url=os.environ.get(TEST_DATABASE_URL_VARIABLE) or None,
        nats_url=os.environ.get(TEST_NATS_URL_VARIABLE) or None,
        use_environment=False,  # a developer's MARKETPLACE_* servers are not for tests
    )
    with stack:
        yield stack.urls


def _fingerprint(apps: Sequence[TableApp]) -> str:
    return ",".join(sorted(app.plugin for app in apps))


class Databases:
    """Fresh databases on one server, cloned from templates migrated once per app set.

    Args:
        server_url: any database on the server the role may connect to; new
            databases are named after it with a random suffix.
    """

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._prefix = f"{database_name(server_url)}_{secrets.token_hex(3)}"
        self._templates: dict[str, str] = {}
        self._created: list[str] = []

    async def template(self, apps: Sequence[TableApp]) -> str:
        """The name of a template database migrated with the core and ``apps``."""
        key = _fingerprint(apps)
        name = self._templates.get(key)
        if name is None:
            name = f"{self._prefix}_tpl{len(self._templates)}"
            url = await create_database(self.server_url, name)
            self._created.append(name)
            await migrate(url, apps)
            self._templates[key] = name
        return name

    async def fresh(self, apps: Sequence[TableApp] = (), *, migrated: bool = True) -> str:
        """URL of a new database (migrated with the core and ``apps`` unless ``migrated=False``)."""
        name = f"{self._prefix}_{secrets.token_hex(4)}"
        template = await self.template(apps) if migrated else None
        url = await create_database(self.server_url, name, template=template)
        self._created.append(name)
        return url

    async def drop(self, url: str) -> None:
        """Drop a database made by ``fresh``."""
        name = database_name(url)
        await drop_database(self.server_url, name)
        if name in self._created:
            self._created.remove(name)

    async def close(self) -> None:
        """Drop every database still left (templates included)."""
        for name in reversed(self._created):
            await drop_database(self.server_url, name)
        self._created.clear()
        self._templates.clear()
