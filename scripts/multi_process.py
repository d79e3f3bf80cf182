"""The multi-process drill, longer: 3,000 events over 50 accounts on a three-node NATS cluster.

Two `marketplace serve` and three worker processes; during the flood the
stream's leader node, one worker and one API process are SIGKILLed and brought
back (twice). Checks that nothing is lost, applied twice or out of order, that
a commission change made through one API process reaches the other, and
reports the longest processing stall (target: under 10 s).

    .venv/bin/python scripts/multi_process.py [--accounts 50 --per-account 60]

Needs PostgreSQL: an embedded one is started (or MARKETPLACE_TEST_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from integration.test_multi_process import (  # noqa: E402
    change_commission_everywhere,
    lose_one_of_each,
    wait_applied_at_least,
)
from support.cluster import running_cluster  # noqa: E402

from engine.infra.databases import create_database  # noqa: E402
from engine.testing.infra import services_for_tests  # noqa: E402


async def drill(work: Path, accounts: int, per_account: int) -> int:
    with services_for_tests(work / "services") as urls:
        database = await create_database(urls.database_url, "multi_process")
        async with running_cluster(work / "cluster", database, "MULTIPROCESS") as cluster:
            total = accounts * per_account
            flood = asyncio.create_task(cluster.flood(accounts, per_account))
            for share in (4, 2):
                await wait_applied_at_least(cluster, total // share)
                leader = await lose_one_of_each(cluster)
                print(f"killed NATS node n{leader + 1} (the stream's leader), a worker, an API")
            await flood
            await cluster.wait_ready()
            await change_commission_everywhere(cluster)
            seen = await cluster.wait_applied(total)
            stall = await cluster.stall_seconds()
    print(f"events {total}; {seen}; sends retried {cluster.failed_sends}")
    print(f"bench: multi_process_events {total}")
    print(f"bench: multi_process_lost {total - seen['applied']}")
    print(f"bench: multi_process_duplicates {seen['duplicates']}")
    print(f"bench: multi_process_inversions {seen['inversions']}")
    print(f"bench: multi_process_longest_stall_s {stall:.1f}")
    good = seen == {"applied": total, "duplicates": 0, "inversions": 0, "dead": 0}
    return 0 if good else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--per-account", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="multi-process-") as work:
        return asyncio.run(drill(Path(work), args.accounts, args.per_account))


if __name__ == "__main__":
    raise SystemExit(main())
