"""Database access: binding Piccolo tables to one engine, a raw asyncpg pool, migrations.

No piccolo_conf module: the engine builds one ``PostgresEngine`` from settings and
binds every enabled app's tables to it, so several databases (tests) never mix.
Hot paths (webhook intake, ledger posting) use the asyncpg pool directly.

Migrations are per app (the engine's ``marketplace`` app first, then each enabled
plugin's): an app's tables are created once, then any Piccolo migration modules
in its ``migrations_folder_path`` run in name order; each step is recorded in
``marketplace_migrations`` so ``migrate`` is idempotent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from piccolo.engine.postgres import PostgresEngine
from piccolo.table import Table

from engine.core.contributions import TableApp
from engine.core.tables import CORE_TABLES

__all__ = ["CORE_APP", "Database", "bind_tables", "engine_apps", "migrate"]

log = logging.getLogger(__name__)

CORE_APP = "marketplace"

_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS marketplace_migrations (
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, name)
)
"""

_PENDING_INDEX = (
    "CREATE INDEX IF NOT EXISTS marketplace_webhook_events_mailbox_pending "
    "ON marketplace_webhook_events (account, seq NULLS FIRST, id) WHERE status = 'pending'"
)

# The dead letter by mailbox, oldest first (the admin's list and replay, the dashboard).
_DEAD_INDEX = (
    "CREATE INDEX IF NOT EXISTS marketplace_webhook_events_dead "
    "ON marketplace_webhook_events (account, id) WHERE status = 'dead'"
)

# An account's latest payout by Stripe's time (``engine.worker.handlers``, every payout
# event): one index probe however many payouts the account has had.
_LATEST_PAYOUT_INDEX = (
    "CREATE INDEX IF NOT EXISTS marketplace_payouts_account_latest "
    "ON marketplace_payouts (account_id, created_at DESC, stripe_payout_id DESC)"
)

# Constraints Piccolo's column API cannot express; part of the core's first migration.
_CORE_EXTRA_DDL: tuple[str, ...] = (
    _PENDING_INDEX,
    _DEAD_INDEX,
    _LATEST_PAYOUT_INDEX,
    "CREATE INDEX IF NOT EXISTS marketplace_ledger_entries_account_currency "
    "ON marketplace_ledger_entries (account, currency)",
)

# Take a mailbox's lease and read its batch in one round trip, as two statements:
# a VOLATILE function takes a fresh snapshot for each statement it runs, so the
# read sees every event the version returned by the lease counts, even when the
# lease waited on a concurrent accept (one statement would keep its snapshot from
# before the wait). Used by ``engine.webhooks.mailbox`` (``_LEASE_AND_READ``).
_MAILBOX_LEASE_FUNCTION = """
CREATE OR REPLACE FUNCTION marketplace_mailbox_lease(
    p_account text, p_owner text, p_lease_seconds float8, p_limit int
) RETURNS TABLE (
    out_version bigint, out_epoch bigint, out_id bigint, out_payload text,
    out_received_at timestamptz
) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_version bigint;
    v_epoch bigint;
BEGIN
    UPDATE marketplace_webhook_accounts a
    SET lease_owner = p_owner, lease_epoch = a.lease_epoch + 1,
        lease_until = now() + make_interval(secs => p_lease_seconds)
    WHERE a.account = p_account AND a.scheduled AND NOT a.parked
      AND (a.lease_until IS NULL OR a.lease_until < now())
      AND (a.backoff_until IS NULL OR a.backoff_until <= now())
    RETURNING a.version, a.lease_epoch INTO v_version, v_epoch;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT v_version, v_epoch, e.id, e.payload::text, e.received_at
        FROM marketplace_webhook_events e
        WHERE e.account = p_account AND e.status = 'pending'
        ORDER BY e.seq NULLS FIRST, e.id
        LIMIT p_limit;
    IF NOT FOUND THEN
        RETURN QUERY SELECT v_version, v_epoch, NULL::bigint, NULL::text, NULL::timestamptz;
    END IF;
END
$fn$
"""


# Take the leases of up to N mailboxes and read each one's batch in one round trip
# (``engine.webhooks.mailbox``, ``Mailbox.drain_many``): one statement leases every
# key that is free, each with its own fencing token, locking the rows in key order
# (two such calls with overlapping keys never deadlock); a later statement, with a
# fresh snapshot as in ``marketplace_mailbox_lease``, reads up to ``p_limit``
# pending events of each leased key. A key not returned was not free; a leased key
# with nothing pending comes back as one row with a NULL id.
_MAILBOX_LEASE_MANY_FUNCTION = """
CREATE OR REPLACE FUNCTION marketplace_mailbox_lease_many(
    p_accounts text[], p_owner text, p_lease_seconds float8, p_limit int
) RETURNS TABLE (
    out_account text, out_version bigint, out_epoch bigint, out_id bigint,
    out_payload text, out_received_at timestamptz
) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_accounts text[];
    v_versions bigint[];
    v_epochs bigint[];
BEGIN
    WITH locked AS (
        SELECT a.account FROM marketplace_webhook_accounts a
        WHERE a.account = ANY(p_accounts)
        ORDER BY a.account
        FOR UPDATE
    ), leased AS (
        UPDATE marketplace_webhook_accounts a
        SET lease_owner = p_owner, lease_epoch = a.lease_epoch + 1,
            lease_until = now() + make_interval(secs => p_lease_seconds)
        FROM locked
        WHERE a.account = locked.account AND a.scheduled AND NOT a.parked
          AND (a.lease_until IS NULL OR a.lease_until < now())
          AND (a.backoff_until IS NULL OR a.backoff_until <= now())
        RETURNING a.account, a.version, a.lease_epoch
    )
    SELECT array_agg(account), array_agg(version), array_agg(lease_epoch)
    INTO v_accounts, v_versions, v_epochs
    FROM leased;
    IF v_accounts IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT l.account, l.version, l.epoch, e.id, e.payload::text, e.received_at
        FROM unnest(v_accounts, v_versions, v_epochs) WITH ORDINALITY
            AS l(account, version, epoch, position)
        LEFT JOIN LATERAL (
            SELECT ev.id, ev.payload, ev.received_at, ev.seq
            FROM marketplace_webhook_events ev
            WHERE ev.account = l.account AND ev.status = 'pending'
            ORDER BY ev.seq NULLS FIRST, ev.id
            LIMIT p_limit
        ) e ON true
        ORDER BY l.position, e.seq NULLS FIRST, e.id;
END
$fn$
"""


# Accept several verified events in one round trip and one commit (``Mailbox.accept_many``,
# the intake's group commit): the accept statement of ``engine.webhooks.mailbox`` once per
# event, in the order given (the caller sorts them by mailbox key, so that concurrent
# calls lock mailbox rows in one order and never deadlock). One row per event, with its
# position (1-based) in the arrays.
_MAILBOX_ACCEPT_MANY_FUNCTION = """
CREATE OR REPLACE FUNCTION marketplace_mailbox_accept_many(
    p_ids text[], p_accounts text[], p_types text[], p_livemodes boolean[],
    p_created bigint[], p_payloads text[]
) RETURNS TABLE (
    out_position int, out_version bigint, out_newly_scheduled boolean, out_parked boolean,
    out_inserted boolean
) LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        RETURN QUERY
        WITH acc AS (
            INSERT INTO marketplace_webhook_accounts AS a
                (account, version, scheduled, scheduled_at, lease_owner, lease_epoch, parked,
                 attempts, last_error, handled, updated_at)
            SELECT p_accounts[i], 1, true, now(), '', 0, false, 0, '', 0, now()
            WHERE NOT EXISTS (
                SELECT 1 FROM marketplace_webhook_events WHERE event_id = p_ids[i]
            )
            ON CONFLICT (account) DO UPDATE SET
                version = a.version + 1,
                scheduled = true,
                scheduled_at = CASE WHEN a.scheduled THEN a.scheduled_at ELSE now() END,
                updated_at = now()
            RETURNING a.version, a.scheduled_at = now() AS newly_scheduled, a.parked
        ), ev AS (
            INSERT INTO marketplace_webhook_events
                (event_id, account, seq, type, livemode, created, payload, status, attempts,
                 last_error, received_at)
            SELECT p_ids[i], p_accounts[i], acc.version, p_types[i], p_livemodes[i],
                   p_created[i], p_payloads[i]::jsonb, 'pending', 0, '', now()
            FROM acc
            ON CONFLICT (event_id) DO NOTHING
            RETURNING 1
        )
        SELECT i, acc.version, acc.newly_scheduled, acc.parked, EXISTS (SELECT 1 FROM ev)
        FROM acc;
    END LOOP;
END
$fn$
"""


# Later schema changes of the core, in order: (step name, statements). Each runs once
# per database (recorded in marketplace_migrations), also on databases made before it.
_CORE_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "0001_workers",
        (
            # One row per worker process: /ready tells whether any worker still pulls.
            """CREATE TABLE IF NOT EXISTS marketplace_workers (
                worker TEXT PRIMARY KEY,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                last_pull_at TIMESTAMPTZ,
                stopped_at TIMESTAMPTZ
            )""",
        ),
    ),
    (
        "0002_live_settings",
        (
            # Versions of settings changed at run time (engine.live_settings).
            """CREATE TABLE IF NOT EXISTS marketplace_live_settings (
                name TEXT PRIMARY KEY,
                version BIGINT NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
        ),
    ),
    (
        # Fenced leases and per-mailbox order (issue 14); no-ops on a database whose
        # tables were just created from the current classes.
        "0003_fenced_mailboxes",
        (
            "ALTER TABLE marketplace_webhook_accounts "
            "ADD COLUMN IF NOT EXISTS lease_epoch BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE marketplace_webhook_events ADD COLUMN IF NOT EXISTS seq BIGINT",
            _PENDING_INDEX,
            "DROP INDEX IF EXISTS marketplace_webhook_events_account_pending",
            _MAILBOX_LEASE_FUNCTION,
        ),
    ),
    (
        "0004_periodic_runs",
        (
            # When each periodic task may next run (engine.worker.periodic).
            """CREATE TABLE IF NOT EXISTS marketplace_periodic_runs (
                name VARCHAR(200) PRIMARY KEY,
                next_due TIMESTAMPTZ NOT NULL DEFAULT now(),
                started_at TIMESTAMPTZ,
                owner VARCHAR(128) NOT NULL DEFAULT ''
            )""",
        ),
    ),
    (
        "0005_held_shares",
        (
            # A beneficiary's share of a charge held while its account cannot be paid
            # (engine.payments.movements.hold_share); released once, or taken off.
            """CREATE TABLE IF NOT EXISTS marketplace_held_shares (
                id BIGSERIAL PRIMARY KEY,
                idempotency_key TEXT NOT NULL UNIQUE,
                plugin TEXT NOT NULL,
                reference TEXT NOT NULL,
                charge_id TEXT NOT NULL,
                role TEXT NOT NULL,
                destination TEXT NOT NULL,
                amount BIGINT NOT NULL,
                currency VARCHAR(3) NOT NULL,
                transfer_group TEXT NOT NULL DEFAULT '',
                reason TEXT NOT NULL DEFAULT '',
                attempts INTEGER NOT NULL DEFAULT 0,
                status TEXT NOT NULL DEFAULT 'held',
                stripe_transfer_id TEXT,
                held_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                released_at TIMESTAMPTZ,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX IF NOT EXISTS marketplace_held_shares_waiting "
            "ON marketplace_held_shares (destination) WHERE status = 'held'",
        ),
    ),
    (
        # Batched drains (``Mailbox.drain_many``): many mailboxes leased in one round
        # trip, each with its own fencing token.
        "0006_mailbox_lease_many",
        (_MAILBOX_LEASE_MANY_FUNCTION,),
    ),
    (
        # Where each account's next payout refresh lists from (engine.payments.payouts):
        # the Stripe ``created`` of the newest payout its last refresh listed.
        "0007_payout_refresh",
        (
            """CREATE TABLE IF NOT EXISTS marketplace_payout_refresh (
                account_id TEXT PRIMARY KEY,
                listed_from BIGINT NOT NULL,
                refreshed_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )""",
        ),
    ),
    (
        # The intake's group commit (``Mailbox.accept_many``): events accepted together
        # in one round trip and one commit.
        "0008_mailbox_accept_many",
        (_MAILBOX_ACCEPT_MANY_FUNCTION,),
    ),
    (
        # Indexes for the webhook path's steady writes and reads: an event's row is
        # written twice (accepted, then handled), so it keeps only the indexes its
        # readers need (its id, Stripe's id, the pending and the dead partial indexes;
        # not every event by account or by status); an account's latest payout, read
        # for every payout event, is one index probe, not a sort of all its payouts.
        "0009_webhook_indexes",
        (
            "DROP INDEX IF EXISTS marketplace_webhook_events_account",
            "DROP INDEX IF EXISTS marketplace_webhook_events_status",
            _DEAD_INDEX,
            _LATEST_PAYOUT_INDEX,
        ),
    ),
)


def bind_tables(engine: PostgresEngine, tables: Iterable[type[Table]]) -> None:
    """Point each table class at ``engine`` (instead of a piccolo_conf lookup)."""
    for table in tables:
        table._meta._db = engine


def engine_apps() -> list[tuple[str, Sequence[type[Table]], Sequence[str]]]:
    """The engine's own apps after the core: ``(name, tables, extra DDL)``, migrated in order.

    Imported here, not at module level: those packages are adapters around the core.
    """
    from engine.dashboard import tables as dashboard
    from engine.reconciliation import tables as reconciliation

    return [
        (reconciliation.APP_NAME, reconciliation.TABLES, reconciliation.EXTRA_DDL),
        (dashboard.APP_NAME, dashboard.TABLES, dashboard.EXTRA_DDL),
    ]


def engine_app_steps() -> list[tuple[str, Sequence[tuple[str, Sequence[str]]]]]:
    """The engine apps' migrations after their first tables: ``(name, steps)``, in order."""
    from engine.reconciliation import tables as reconciliation

    return [(reconciliation.APP_NAME, reconciliation.STEPS)]


def _table_classes(app: TableApp) -> list[type[Table]]:
    classes = getattr(app.app_config, "table_classes", [])
    return [cls for cls in classes if isinstance(cls, type) and issubclass(cls, Table)]


class _SharedEngine:
    """One Piccolo engine (and pool) for one database in one event loop, with its users."""

    def __init__(self, url: str) -> None:
        self.engine = PostgresEngine(config={"dsn": url}, log_queries=False)
        self.users = 0
        # Opening and closing the pool await; without the lock two users starting
        # at once (the API and a worker in `marketplace up`) could each see no pool,
        # open one each, and the second would replace the first under a transaction.
        self.lock = asyncio.Lock()


class _Engines:
    """The process's one owner of Piccolo engines: one per database URL and event loop.

    Piccolo binds tables to an engine globally, so every ``Database`` of one
    database in one loop (``marketplace up`` runs the API, a worker and the
    plugins' start-up hooks together; tests do too) shares one engine and pool,
    opened by its first user and closed by its last. A pool belongs to the loop
    that opened it, so code in another loop (a CLI command run with
    ``asyncio.run``) gets its own; a closed loop's engines go with it.
    """

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop | _NoLoop, dict[str, _SharedEngine]
        ] = weakref.WeakKeyDictionary()

    def get(self, url: str) -> _SharedEngine:
        """The engine for ``url`` in the running loop (made on first use, without a pool)."""
        engines = self._by_loop.setdefault(_current_loop(), {})
        shared = engines.get(url)
        if shared is None:
            shared = engines[url] = _SharedEngine(url)
        return shared

    async def acquire(self, url: str, max_size: int) -> _SharedEngine:
        """Count one more user of ``url``'s engine, opening its pool for the first."""
        shared = self.get(url)
        async with shared.lock:
            if shared.users == 0:
                await shared.engine.start_connection_pool(min_size=1, max_size=max_size)
            shared.users += 1
        return shared

    async def release(self, shared: _SharedEngine) -> None:
        """Count one user less; the last one closes the pool."""
        async with shared.lock:
            shared.users -= 1
            if shared.users == 0 and shared.engine.pool is not None:
                await shared.engine.close_connection_pool()

    def live(self, url: str) -> _SharedEngine | None:
        """An engine of ``url`` with users in any loop (where tables go back to), if any."""
        for engines in list(self._by_loop.values()):
            shared = engines.get(url)
            if shared is not None and shared.users:
                return shared
        return None


class _NoLoop:
    """Stands for "no running loop" (synchronous callers), as a weak-referenceable key."""


_NO_LOOP = _NoLoop()
_ENGINES = _Engines()


def _current_loop() -> asyncio.AbstractEventLoop | _NoLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return _NO_LOOP


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's reset query (a round trip per use).

    asyncpg has already rolled back any open transaction. The engine changes no
    other session state on pooled connections: no SET, LISTEN only on
    connections of its own (``engine.live_settings``), and every session-level
    advisory lock is released by the code that took it, in a ``finally``. A
    connection that broke meanwhile is closed by the pool.
    """
    del connection


class Database:
    """One PostgreSQL database: a Piccolo engine for the ORM and an asyncpg pool.

    Use ``await db.start()`` before queries and ``await db.close()`` at shutdown.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 20,
        synchronous_commit: bool = True,
    ) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._server_settings = {} if synchronous_commit else {"synchronous_commit": "off"}
        self._shared: _SharedEngine | None = None
        self._tables: list[type[Table]] = []
        self._pool: asyncpg.Pool | None = None

    @property
    def engine(self) -> PostgresEngine:
        """The Piccolo engine this database's tables are bound to."""
        return (self._shared or _ENGINES.get(self.url)).engine

    def bind(self, apps: Sequence[TableApp] = ()) -> None:
        """Bind the core tables and the given plugin apps' tables to this database."""
        self._tables = list(CORE_TABLES)
        for _, tables, _ in engine_apps():
            self._tables += tables
        for app in apps:
            self._tables += _table_classes(app)
        bind_tables(self.engine, self._tables)

    async def start(self) -> None:
        """Open the connection pools."""
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self._min_size,
                max_size=self._max_size,
                server_settings=self._server_settings,
                reset=_keep_session,
            )
            self._shared = await _ENGINES.acquire(self.url, max(2, self._max_size // 2))
            bind_tables(self._shared.engine, self._tables)

    async def close(self) -> None:
        """Close the pools; tables go back to another loop's engine for this database."""
        if self._pool is None:
            return
        await self._pool.close()
        self._pool = None
        shared, self._shared = self._shared, None
        if shared is None:
            return
        await _ENGINES.release(shared)
        if shared.users == 0:
            live = _ENGINES.live(self.url)
            if live is not None:
                bind_tables(live.engine, self._tables)

    @property
    def pool(self) -> asyncpg.Pool:
        """The asyncpg pool (``start()`` first)."""
        if self._pool is None:
            raise RuntimeError("Database.start() was not called")
        return self._pool

    async def ping(self) -> bool:
        """Whether the database answers ``SELECT 1``."""
        try:
            async with self.pool.acquire(timeout=2) as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False


async def _applied(conn: asyncpg.Connection, app: str) -> set[str]:
    rows = await conn.fetch("SELECT name FROM marketplace_migrations WHERE app = $1", app)
    return {row["name"] for row in rows}


async def _record(conn: asyncpg.Connection, app: str, name: str) -> None:
    await conn.execute(
        "INSERT INTO marketplace_migrations (app, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        app,
        name,
    )


def _ddl(table: type[Table]) -> list[str]:
    statements: Any = table.create_table(if_not_exists=True).ddl
    return [str(statement) for statement in statements]


async def _create_tables(
    conn: asyncpg.Connection, app: str, tables: Sequence[type[Table]], extra: Sequence[str] = ()
) -> bool:
    if "0000_tables" in await _applied(conn, app):
        return False
    async with conn.transaction():
        for table in tables:
            for statement in _ddl(table):
                await conn.execute(statement)
        for statement in extra:
            await conn.execute(statement)
        await _record(conn, app, "0000_tables")
    return True


async def _run_steps(
    conn: asyncpg.Connection, app: str, steps: Sequence[tuple[str, Sequence[str]]]
) -> list[str]:
    done = await _applied(conn, app)
    ran: list[str] = []
    for name, statements in steps:
        if name in done:
            continue
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)
            await _record(conn, app, name)
        ran.append(f"{app}:{name}")
    return ran


async def _run_piccolo_migrations(conn: asyncpg.Connection, app: TableApp) -> list[str]:
    folder = getattr(app.app_config, "migrations_folder_path", "")
    # Blocking path checks are fine here: migrations run once, before serving.
    if not folder or not Path(folder).is_dir():  # noqa: ASYNC240
        return []
    done = await _applied(conn, app.plugin)
    ran: list[str] = []
    for path in sorted(Path(folder).glob("*.py")):  # noqa: ASYNC240
        if path.name.startswith("_") or path.stem in done:
            continue
        spec = importlib.util.spec_from_file_location(f"_migration_{app.plugin}_{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        statements = getattr(module, "STATEMENTS", None)
        if statements is not None:
            # A plain-SQL migration: run on the migrating connection, with its record.
            ran += await _run_steps(conn, app.plugin, [(path.stem, tuple(statements))])
            continue
        manager = await module.forwards()
        await manager.run()
        await _record(conn, app.plugin, path.stem)
        ran.append(f"{app.plugin}:{path.stem}")
    return ran


async def migrate(database_url: str, apps: Sequence[TableApp] = ()) -> list[str]:
    """Apply the core's and the given plugin apps' migrations; return what ran.

    Safe to run repeatedly and concurrently with other ``migrate`` calls
    (an advisory lock serialises them).
    """
    # Piccolo renders DDL through the engine a table is bound to. Running code keeps
    # its binding (any PostgresEngine renders the same DDL); tables bound to nothing
    # yet get a pool-less engine for the migration and are unbound again after.
    every = [*CORE_TABLES, *(t for _, ts, _ in engine_apps() for t in ts)]
    every += [t for app in apps for t in _table_classes(app)]
    unbound = [table for table in every if table._meta._db is None]
    bind_tables(PostgresEngine(config={"dsn": database_url}, log_queries=False), unbound)
    ran: list[str] = []
    conn: asyncpg.Connection = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock(727274)")
        await conn.execute(_MIGRATIONS_DDL)
        if await _create_tables(conn, CORE_APP, CORE_TABLES, _CORE_EXTRA_DDL):
            ran.append(f"{CORE_APP}:0000_tables")
        ran += await _run_steps(conn, CORE_APP, _CORE_STEPS)
        for name, tables, extra in engine_apps():
            if await _create_tables(conn, name, tables, extra):
                ran.append(f"{name}:0000_tables")
        for name, steps in engine_app_steps():
            ran += await _run_steps(conn, name, steps)
        for app in apps:
            if await _create_tables(conn, app.plugin, _table_classes(app)):
                ran.append(f"{app.plugin}:0000_tables")
            ran += await _run_piccolo_migrations(conn, app)
        await conn.execute("SELECT pg_advisory_unlock(727274)")
    finally:
        await conn.close()
    for table in unbound:
        table._meta._db = None
    for step in ran:
        log.info("migration applied: %s", step)
    return ran
