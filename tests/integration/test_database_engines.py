"""One owner of database engines and pools per process: the API, a worker and start-up hooks
started together (as ``marketplace up`` does) share one Piccolo pool and can never race."""

from __future__ import annotations

import asyncio

from engine.core.db import Database, migrate
from engine.core.tables import ConnectedAccount as Account


async def _started_pool(database: Database) -> object:
    await database.start()
    return database.engine.pool


async def test_databases_started_at_once_share_one_piccolo_pool(fresh_database_url: str) -> None:
    for _ in range(10):  # each round starts three users at the same moment
        users = [Database(fresh_database_url, min_size=1, max_size=2) for _ in range(3)]
        for database in users:
            database.bind()
        pools = await asyncio.gather(*(_started_pool(database) for database in users))
        try:
            # Before the fix each start could open its own pool, the last replacing the
            # others under a running transaction ("Pool.release() received invalid
            # connection ... is not a member of this pool").
            assert len({id(pool) for pool in pools}) == 1
            async with Account._meta.db.transaction():
                assert await Account.count() == 0
        finally:
            await asyncio.gather(*(database.close() for database in users))


async def test_queries_keep_working_while_another_user_starts_and_closes(
    fresh_database_url: str,
) -> None:
    first = Database(fresh_database_url)
    first.bind()
    await first.start()
    try:

        async def in_transactions() -> None:
            for _ in range(20):
                async with Account._meta.db.transaction():
                    await Account.count()

        async def come_and_go() -> None:
            for _ in range(5):
                other = Database(fresh_database_url)
                other.bind()
                await other.start()
                await other.close()

        await asyncio.gather(in_transactions(), come_and_go(), in_transactions())
        assert await Account.count() == 0
    finally:
        await first.close()


async def test_migrate_leaves_running_code_bound_to_its_pool(fresh_database_url: str) -> None:
    database = Database(fresh_database_url)
    database.bind()
    await database.start()
    try:
        pool = Account._meta.db.pool
        assert pool is not None
        await asyncio.gather(migrate(fresh_database_url), Account.count())
        assert Account._meta.db.pool is pool
    finally:
        await database.close()
