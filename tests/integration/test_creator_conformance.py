"""creator_subscriptions passes the engine's conformance check with its own real sample events."""

from __future__ import annotations

from engine.testing.conformance import IDEMPOTENT, SPLIT, TABLES, check_plugin


async def test_creator_subscriptions_conforms_with_real_events(database_url: str) -> None:
    report = await check_plugin("creator_subscriptions", database_url=database_url)
    report.raise_for_failures()
    assert report.result(IDEMPOTENT).status == "passed"
    assert report.result(TABLES).status == "passed"
    assert report.result(SPLIT).status == "passed"
