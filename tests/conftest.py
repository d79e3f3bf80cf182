"""Session-wide services for the tests: PostgreSQL and NATS, and a fresh database per test.

By default embedded PostgreSQL (fsync off) and NATS JetStream start once per
run on free loopback ports, with their data in a temporary directory (in
/dev/shm when it is roomy) that is deleted afterwards; their logs are copied
to ``test-artifacts/services/`` when a test failed.
``MARKETPLACE_TEST_DATABASE_URL`` / ``MARKETPLACE_TEST_NATS_URL`` name servers
to use instead; on such a PostgreSQL the run gets a database of its own,
dropped at the end. The system servers on 5432 and 4222 are never used unless
named there.

Fixtures:

- ``services`` (session): ``ServiceUrls(database_url, nats_url)``.
- ``database_url`` / ``nats_url`` (session): the same, one at a time; the
  database is shared by the whole run.
- ``fresh_database_url`` (per test): clean state, a new database cloned from
  ``template_database`` and dropped after the test.
- ``template_database`` (session): the name of the template, filled once by
  ``prepare_template``.
- ``unique_name`` (per test): a name for streams and subjects on the shared NATS.

For the run, ``MARKETPLACE_DATABASE_URL`` and ``MARKETPLACE_NATS_URL`` point at
the test servers, so code that reads settings can never reach a developer's own.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.infra.databases import create_database, database_name, drop_database
from engine.infra.embedded import (
    DATABASE_URL_VARIABLE,
    NATS_URL_VARIABLE,
    Services,
    ServiceUrls,
    reap_orphans,
)
from engine.infra.processes import pid_alive

TEST_DATABASE_URL_VARIABLE = "MARKETPLACE_TEST_DATABASE_URL"
TEST_NATS_URL_VARIABLE = "MARKETPLACE_TEST_NATS_URL"

# Run directories are named marketplace-test-<pid of pytest>-<random>, so a later
# run can tell a crashed run's leftovers from those of a run still in progress.
_RUN_DIRECTORY_PREFIX = "marketplace-test-"
_SCRATCH_MINIMUM_BYTES = 2 * 1024**3


_BASETEMP_PREFIX = "marketplace-pytest-"


def pytest_configure(config: pytest.Config) -> None:
    """Give this session a temporary tree of its own, outside ``/tmp/pytest-of-<user>``.

    Tests start PostgreSQL as its own OS account with data under ``tmp_path`` (``up``,
    the chaos harness, clusters), so the directories above are made traversable.
    Every pytest session that starts resets ``/tmp/pytest-of-<user>`` to mode 0700,
    which cut a server starting in another session off its data: a second
    ``make test`` (or any pytest) on the same machine failed this one.
    """
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix=_BASETEMP_PREFIX)
        config.stash[_OWN_BASETEMP] = Path(config.option.basetemp)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's temporary tree (servers under it have stopped)."""
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[Path]()


async def prepare_template(database_url: str) -> None:
    """Fill the template database that every ``fresh_database_url`` is cloned from.

    Called once per session with the URL of the empty template database,
    before the first test asks for a fresh database: the engine's migrations
    and every installed plugin's, so each test starts from a migrated, empty
    database for the price of a file copy. ``migrate`` closes its connection
    before returning (PostgreSQL cannot clone a database in use).
    """
    from engine.core.db import migrate
    from engine.core.plugins import build_plugins, installed_plugins
    from engine.core.settings import settings_from_mapping

    every_plugin = settings_from_mapping({"plugins": {"enabled": sorted(installed_plugins())}})
    await migrate(database_url, build_plugins(every_plugin).table_apps())


def _scratch_roots() -> list[Path]:
    """Where runs keep their servers' data, preferred first: roomy RAM-backed /dev/shm, else /tmp.

    Creating files is slow on some disks (on one VM a CREATE DATABASE took a
    quarter of a second on disk and a fiftieth in RAM), and test data never has
    to outlive the run. A small /dev/shm (Docker's 64 MB) is left alone.
    """
    roots = [Path(tempfile.gettempdir())]
    # Only ever used through mkdtemp, which makes a private directory of its own.
    shared_memory = Path("/dev/shm")  # noqa: S108
    try:
        roomy = shutil.disk_usage(shared_memory).free >= _SCRATCH_MINIMUM_BYTES
    except OSError:
        roomy = False
    if roomy and os.access(shared_memory, os.W_OK | os.X_OK):
        roots.insert(0, shared_memory)
    return roots


def _reap_abandoned_runs(temp_root: Path) -> None:
    """Stop the servers of earlier runs that died without cleaning up; delete their data."""
    for directory in temp_root.glob(f"{_RUN_DIRECTORY_PREFIX}*"):
        owner = directory.name.removeprefix(_RUN_DIRECTORY_PREFIX).split("-", 1)[0]
        if not owner.isdigit() or pid_alive(int(owner)):
            continue
        reap_orphans(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _keep_logs(run_directory: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for log in run_directory.glob("*.log"):
        shutil.copy2(log, destination / log.name)


@pytest.fixture(scope="session")
async def services(request: pytest.FixtureRequest) -> AsyncIterator[ServiceUrls]:
    """PostgreSQL and NATS for the whole run (embedded unless named by environment variables)."""
    roots = _scratch_roots()
    for root in roots:
        _reap_abandoned_runs(root)
    run_directory = Path(
        tempfile.mkdtemp(prefix=f"{_RUN_DIRECTORY_PREFIX}{os.getpid()}-", dir=roots[0])
    )
    shared_server_url = os.environ.get(TEST_DATABASE_URL_VARIABLE) or None
    run_database = "marketplace_test"
    if shared_server_url is not None:
        run_database = f"marketplace_test_{secrets.token_hex(4)}"
    stack = Services(
        run_directory,
        database=run_database,
        fast=True,
        database_url=shared_server_url,
        nats_url=os.environ.get(TEST_NATS_URL_VARIABLE) or None,
        use_environment=False,  # a developer's MARKETPLACE_* servers are not for tests
    )
    try:
        async with stack:
            database_url = stack.urls.database_url
            if shared_server_url is not None:
                database_url = await create_database(shared_server_url, run_database)
            try:
                with pytest.MonkeyPatch.context() as environment:
                    environment.setenv(DATABASE_URL_VARIABLE, database_url)
                    environment.setenv(NATS_URL_VARIABLE, stack.urls.nats_url)
                    yield ServiceUrls(database_url=database_url, nats_url=stack.urls.nats_url)
            finally:
                if shared_server_url is not None:
                    await drop_database(shared_server_url, run_database)
    finally:
        if request.session.testsfailed:
            _keep_logs(run_directory, request.config.rootpath / "test-artifacts" / "services")
        shutil.rmtree(run_directory, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(services: ServiceUrls) -> str:
    """URL of the run's database, shared by every test in the session."""
    return services.database_url


@pytest.fixture(scope="session")
def nats_url(services: ServiceUrls) -> str:
    """URL of the run's NATS server (JetStream enabled); name streams uniquely per test."""
    return services.nats_url


@pytest.fixture(scope="session")
async def template_database(database_url: str) -> AsyncIterator[str]:
    """Name of the template database, created once and filled by ``prepare_template``."""
    name = f"{database_name(database_url)}_template"
    await prepare_template(await create_database(database_url, name))
    yield name
    await drop_database(database_url, name)


@pytest.fixture
async def fresh_database_url(database_url: str, template_database: str) -> AsyncIterator[str]:
    """URL of a new database cloned from the template, for this test alone; dropped after."""
    name = f"{database_name(database_url)}_{secrets.token_hex(4)}"
    url = await create_database(database_url, name, template=template_database)
    yield url
    await drop_database(database_url, name)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test uses, for streams, subjects and consumers on the shared NATS.

    Letters, digits and underscores only, which every NATS name accepts.
    """
    readable = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    return f"{readable}_{secrets.token_hex(4)}"
