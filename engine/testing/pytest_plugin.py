"""The testing kit's pytest plugin: ``mp_*`` fixtures for testing a plugin against the engine.

Registered through the ``pytest11`` entry point, so it is active wherever the
engine is installed (``-p no:marketplace`` turns it off). Every fixture is
prefixed ``mp_`` so it never clashes with a project's own fixtures, and nothing
starts unless a test asks for it.

Fixtures:

- ``mp_service_urls`` (session): PostgreSQL and NATS for the run, embedded on
  free ports unless ``MARKETPLACE_TEST_DATABASE_URL`` / ``MARKETPLACE_TEST_NATS_URL``
  name servers to use.
- ``mp_enabled_plugins`` (session): the plugins to enable, from the
  ``marketplace_plugins`` ini option (default: every installed plugin).
- ``mp_config`` (per test): settings merged over the kit's; override it in your
  ``conftest.py`` (``{"plugins": {"my_plugin": {"share_bps": 2500}}}``).
- ``mp_plugins`` (per test): the ``Plugins`` facade for those plugins and that
  config, to unit-test hooks without any I/O.
- ``mp_database_url`` (per test): a new database, migrated with the engine's
  and the enabled plugins' tables; dropped afterwards.
- ``mp_sandbox`` (per test): the offline Stripe sandbox over HTTP.
- ``mp_services`` (per test): the engine's services on ``mp_database_url`` with
  the gateway on ``mp_sandbox`` (no NATS): ledger, gateway, plugins.
- ``mp_stack`` (per test): the whole stack (sandbox, API over HTTP, worker);
  see ``engine.testing.stack.Stack``.
- ``mp_conformance`` (per test): ``await mp_conformance("my_plugin")`` runs the
  conformance check with the run's database server and returns the report.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from engine.core.plugins import Plugins
    from engine.infra.embedded import ServiceUrls
    from engine.sandbox.testing import RunningSandbox
    from engine.services import Services
    from engine.testing.conformance import ConformanceReport
    from engine.testing.infra import Databases
    from engine.testing.stack import Stack

__all__ = [
    "mp_config",
    "mp_conformance",
    "mp_database_url",
    "mp_databases",
    "mp_enabled_plugins",
    "mp_plugins",
    "mp_sandbox",
    "mp_service_urls",
    "mp_services",
    "mp_stack",
]

INI_PLUGINS = "marketplace_plugins"

T = TypeVar("T")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ``marketplace_plugins`` ini option."""
    parser.addini(
        INI_PLUGINS,
        type="args",
        default=[],
        help="plugins the marketplace kit's fixtures enable (default: every installed plugin)",
    )


def _in_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private loop in a thread.

    Session fixtures are synchronous so they work whatever event loop scope the
    project's tests use; their asynchronous set-up runs here, away from it.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(work()))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="marketplace-kit")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@pytest.fixture(scope="session")
def mp_service_urls() -> Iterator[ServiceUrls]:
    """PostgreSQL and NATS for the run (embedded unless named by environment variables)."""
    from engine.testing.infra import services_for_tests

    root = Path(tempfile.mkdtemp(prefix="marketplace-kit-"))
    try:
        with services_for_tests(root) as urls:
            yield urls
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mp_databases(mp_service_urls: ServiceUrls) -> Iterator[Databases]:
    """Fresh databases on the run's server; every one left is dropped at the end."""
    from engine.testing.infra import Databases

    databases = Databases(mp_service_urls.database_url)
    yield databases
    _in_thread(databases.close)


@pytest.fixture(scope="session")
def mp_enabled_plugins(pytestconfig: pytest.Config) -> list[str]:
    """The plugins to enable: the ``marketplace_plugins`` ini option, else every installed one."""
    from engine.core.plugins import ESSENTIAL_PLUGINS, installed_plugins

    configured = [str(name) for name in pytestconfig.getini(INI_PLUGINS)]
    if configured:
        return configured
    return sorted(name for name in installed_plugins() if name not in ESSENTIAL_PLUGINS)


@pytest.fixture
def mp_config() -> dict[str, Any]:
    """Settings merged over the kit's for ``mp_plugins``, ``mp_services`` and ``mp_stack``."""
    return {}


def _settings_mapping(enabled: list[str], config: dict[str, Any], **sections: Any) -> Any:
    from engine.testing.stack import merge_config

    return merge_config({**sections, "plugins": {"enabled": enabled}}, config)


@pytest.fixture
def mp_plugins(mp_enabled_plugins: list[str], mp_config: dict[str, Any]) -> Plugins:
    """The plugin facade for the enabled plugins and ``mp_config`` (no I/O)."""
    from engine.core.plugins import build_plugins
    from engine.core.settings import settings_from_mapping

    return build_plugins(settings_from_mapping(_settings_mapping(mp_enabled_plugins, mp_config)))


@pytest_asyncio.fixture
async def mp_database_url(mp_databases: Databases, mp_plugins: Plugins) -> AsyncIterator[str]:
    """A new database migrated with the engine's and the enabled plugins' tables."""
    url = await mp_databases.fresh(mp_plugins.table_apps())
    yield url
    await mp_databases.drop(url)


@pytest.fixture
def mp_sandbox() -> Iterator[RunningSandbox]:
    """The offline Stripe sandbox on a free port (``mp_sandbox.client()`` is the real SDK)."""
    from engine.sandbox.testing import running_sandbox

    with running_sandbox() as sandbox:
        yield sandbox


@pytest_asyncio.fixture
async def mp_services(
    mp_database_url: str,
    mp_sandbox: RunningSandbox,
    mp_enabled_plugins: list[str],
    mp_config: dict[str, Any],
) -> AsyncIterator[Services]:
    """The engine's services on a fresh database, the gateway on the sandbox, no NATS."""
    from engine.core.plugins import build_plugins
    from engine.core.settings import settings_from_mapping
    from engine.services import Services

    raw = _settings_mapping(
        mp_enabled_plugins,
        mp_config,
        database={"url": mp_database_url, "pool_min": 1, "pool_max": 5},
        stripe={"secret_key": "sk_test_kit", "api_base": mp_sandbox.url, "max_network_retries": 0},
    )
    settings = settings_from_mapping(raw)
    services = await Services.start(settings, plugins=build_plugins(settings), connect_nats=False)
    yield services
    await services.close()


@pytest_asyncio.fixture
async def mp_stack(
    mp_database_url: str,
    mp_service_urls: ServiceUrls,
    mp_enabled_plugins: list[str],
    mp_config: dict[str, Any],
) -> AsyncIterator[Stack]:
    """The whole stack on a fresh database with the enabled plugins and ``mp_config``."""
    from engine.testing.stack import running_stack

    stream = f"MPKIT_{secrets.token_hex(4).upper()}"
    async with running_stack(
        mp_database_url,
        mp_service_urls.nats_url,
        stream,
        plugins=mp_enabled_plugins,
        config=mp_config,
    ) as stack:
        yield stack


@pytest.fixture
def mp_conformance(
    mp_service_urls: ServiceUrls,
) -> Callable[..., Awaitable[ConformanceReport]]:
    """``await mp_conformance(name, plugin=None, spec=None)``: the conformance report."""
    from engine.testing.conformance import check_plugin

    async def check(name: str, plugin: object | None = None, **options: Any) -> ConformanceReport:
        return await check_plugin(
            name, plugin, database_url=mp_service_urls.database_url, **options
        )

    return check
