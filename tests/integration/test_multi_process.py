"""Two `serve` and three worker processes on a three-node NATS cluster, losing one of each.

During a flood of signed events, one NATS server (the stream's leader), one
worker and one API process are killed with SIGKILL and brought back: no event
is lost, none is applied twice, the order per account holds, nothing is
dead-lettered; and a commission change made through one API process is in
force in the other. The longest processing stall is printed (the long run,
``scripts/multi_process.py``, reports it as a figure; no time is asserted here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from support.cluster import ADMIN_KEY, Cluster, running_cluster

ACCOUNTS = 20
PER_ACCOUNT = 15


async def wait_applied_at_least(cluster: Cluster, count: int) -> None:
    for _ in range(2400):
        if (await cluster.recorder())["applied"] >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} events applied")


async def lose_one_of_each(cluster: Cluster) -> int:
    """SIGKILL the stream's leader node, a worker and an API process; bring them back."""
    leader = await cluster.nats.stream_leader(cluster.stream)
    await asyncio.to_thread(cluster.nats.kill, leader)
    cluster.workers[0].kill()
    cluster.apis[0].kill()
    await asyncio.sleep(2)  # the others carry on without them meanwhile
    cluster.workers[0].start()
    cluster.apis[0].start()
    await asyncio.to_thread(cluster.nats.start_node, leader)
    return leader


async def change_commission_everywhere(cluster: Cluster) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"rules": [{"id": "default", "rate_bps": 1234}], "note": "multi-process"}
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        saved = await client.put(f"{cluster.apis[1].url}/v1/commission_rules/rules", json=body)
        assert saved.status_code == 200, saved.text
        for api in cluster.apis:
            for _ in range(600):  # a generous bound; the change arrives by NOTIFY or poll
                rules = (await client.get(f"{api.url}/v1/commission_rules/rules")).json()
                if [rule["content"]["rate_bps"] for rule in rules["rules"]] == [1234]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{api.name} still prices with the old rules: {rules}")


async def test_losing_a_nats_node_a_worker_and_an_api_loses_nothing(
    fresh_database_url: str, tmp_path: Path, unique_name: str
) -> None:
    async with running_cluster(tmp_path, fresh_database_url, unique_name.upper()) as cluster:
        flood = asyncio.create_task(cluster.flood(ACCOUNTS, PER_ACCOUNT))
        await wait_applied_at_least(cluster, ACCOUNTS * PER_ACCOUNT // 4)
        await lose_one_of_each(cluster)
        total = await flood
        await cluster.wait_ready()
        await change_commission_everywhere(cluster)
        seen = await cluster.wait_applied(total)
        assert seen == {"applied": total, "duplicates": 0, "inversions": 0, "dead": 0}
        stall = await cluster.stall_seconds()
        print(
            f"\n{total} events, {cluster.failed_sends} sends retried; longest stall {stall:.1f} s"
        )
