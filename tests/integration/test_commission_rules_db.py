"""commission_rules on real PostgreSQL: rule versions stored, a mid-month change, history kept."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.core.db import Database
from engine.core.errors import ConfigError
from engine.core.money import Money
from engine.core.orders import Commission, Order
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import settings_from_mapping
from engine.core.tables import Payment
from engine.services import Services
from plugins.commission_rules import cli
from plugins.commission_rules.schemas import RuleSpec
from plugins.commission_rules.services import active_rules
from plugins.commission_rules.store import (
    RULE_SET_SETTING,
    SOURCE_API,
    SOURCE_CONFIG,
    dry_run_period,
    get_version,
    list_versions,
    load_saved_rule_set,
    save_rule_set,
    sync_rules,
)
from plugins.commission_rules.tables import RuleSetRecord, RuleVersion

TSB = "three_sided_bookings"
MID_MONTH = datetime(2025, 6, 15, tzinfo=UTC)
CONFIG = {
    "rules": [
        {"id": "default", "rate_bps": 1000},
        {"id": "spa", "rate_bps": 1200, "scope": {"plugin": TSB}},
    ]
}


def make_plugins(database_url: str) -> Plugins:
    return build_plugins(
        settings_from_mapping(
            {"database": {"url": database_url}, "plugins": {"commission_rules": CONFIG}}
        )
    )


@pytest.fixture
async def plugins(fresh_database_url: str) -> AsyncIterator[Plugins]:
    plugins = make_plugins(fresh_database_url)
    database = Database(fresh_database_url, min_size=1, max_size=4)
    database.bind(plugins.table_apps())
    await database.start()
    try:
        yield plugins
    finally:
        await database.close()


def booking(day: int, venue: str = "acct_v1") -> Order:
    return Order(
        plugin=TSB,
        kind="booking",
        amount=Money(10_000, "gbp"),
        reference=f"booking:{day}",
        beneficiaries={"provider": "acct_p1", "venue": venue},
        occurred_at=datetime(2025, 6, day, 12, tzinfo=UTC),
    )


async def charge(plugins: Plugins, order: Order) -> Commission:
    """What the payments service does: price, take the commission, record the payment."""
    commission = plugins.commission(order, order.amount)
    plan = plugins.split(order, order.amount, commission)
    legs = [{"role": leg.role, "account_id": leg.account_id} for leg in plan.legs]
    await Payment.insert(
        Payment(
            reference=order.reference,
            plugin=order.plugin,
            kind=order.kind,
            account_id=order.beneficiaries["venue"],
            amount=order.amount.amount,
            currency=order.amount.currency,
            fee_amount=commission.amount.amount,
            rule_id=commission.rule_id,
            rule_version=commission.rule_version,
            split={"legs": legs},
            status="succeeded",
            created_at=order.occurred_at,
        )
    )
    return commission


async def payments() -> list[tuple[str, int, str, int]]:
    rows = await Payment.select(
        Payment.reference, Payment.fee_amount, Payment.rule_id, Payment.rule_version
    ).order_by(Payment.id)
    return [(r["reference"], r["fee_amount"], r["rule_id"], r["rule_version"]) for r in rows]


async def test_rule_change_mid_month_keeps_history(plugins: Plugins) -> None:
    runtime = plugins.runtime
    await sync_rules(runtime)  # start-up: the config's versions are stored
    config_versions = {(v.rule_id, v.version) for v in await list_versions()}
    assert {rule.id for rule in active_rules(runtime).rules} == {"default", "spa"}
    assert config_versions == {(rule.id, rule.version) for rule in active_rules(runtime).rules}

    early = await charge(plugins, booking(3))
    assert (early.rule_id, early.amount.amount) == ("spa", 1_200)

    # The admin ends the 12 % rule mid-month and starts a 14 % one.
    new_rules = [
        RuleSpec(id="default", rate_bps=1000),
        RuleSpec(id="spa", rate_bps=1200, scope={"plugin": TSB}, effective_to=MID_MONTH),
        RuleSpec(id="spa", rate_bps=1400, scope={"plugin": TSB}, effective_from=MID_MONTH),
    ]
    await save_rule_set(runtime, new_rules, note="spa rate rises on the 15th")

    late = await charge(plugins, booking(20))
    assert (late.rule_id, late.amount.amount) == ("spa", 1_400)
    # A booking dated before the change, priced now, still gets the old rate...
    backdated = await charge(plugins, booking(10))
    assert backdated.amount.amount == 1_200
    # ... from the edited version (it gained an end date), not the original one.
    assert backdated.rule_version != early.rule_version

    # History: the first payment is exactly as priced, and its version is still there.
    assert await payments() == [
        ("booking:3", 1_200, "spa", early.rule_version),
        ("booking:20", 1_400, "spa", late.rule_version),
        ("booking:10", 1_200, "spa", backdated.rule_version),
    ]
    spa_versions = await list_versions("spa")
    assert [v.version for v in spa_versions] == [
        early.rule_version,
        backdated.rule_version,
        late.rule_version,
    ]
    assert [v.source for v in spa_versions] == [SOURCE_CONFIG, SOURCE_API, SOURCE_API]
    stored = await get_version("spa", early.rule_version)
    assert stored is not None
    original = stored.rule(active_rules(runtime).roles)
    assert original.version == early.rule_version  # the stored content is that version
    assert original.fee(10_000, "gbp") == 1_200  # and re-prices the payment the same
    assert original.effective_to.year == 9999  # it had no end date when it priced

    # A restart (new runtime, same config file) puts the admin's set back in force.
    again = make_plugins(plugins.settings.database.url)
    in_force = await sync_rules(again.runtime)
    assert in_force.fingerprint == active_rules(runtime).fingerprint
    assert again.commission(booking(20), Money(10_000, "gbp")).amount.amount == 1_400
    saved = await load_saved_rule_set()
    assert saved is not None
    assert [(r.id, r.version) for r in saved.rules] == [(r.id, r.version) for r in in_force.rules]
    # Syncing twice stores nothing new.
    count = await RuleVersion.count()
    await sync_rules(again.runtime)
    assert await RuleVersion.count() == count


async def test_invalid_rule_set_is_refused_and_nothing_changes(plugins: Plugins) -> None:
    runtime = plugins.runtime
    await sync_rules(runtime)
    before = active_rules(runtime)
    versions_before = await RuleVersion.count()
    sets_before = await RuleSetRecord.count()
    with pytest.raises(ConfigError) as info:
        await save_rule_set(
            runtime,
            [
                RuleSpec(id="default", rate_bps=1000),
                RuleSpec(id="spa", rate_bps=1300, scope={"plugin": TSB}),
                RuleSpec(id="venue", rate_bps=900, scope={"venue": "acct_v1"}),
            ],
        )
    assert info.value.key == "rules[2].scope"
    assert "'venue'" in info.value.problem
    assert active_rules(runtime) is before
    assert await RuleVersion.count() == versions_before
    assert await RuleSetRecord.count() == sets_before
    assert await load_saved_rule_set() is None


async def test_dry_run_over_the_payments_table(plugins: Plugins, tmp_path: Path) -> None:
    await sync_rules(plugins.runtime)
    for day in (2, 5, 9):
        await charge(plugins, booking(day, venue="acct_v1" if day != 9 else "acct_v2"))
    await charge(plugins, booking(28))  # outside the period
    proposal = tmp_path / "proposal.toml"
    proposal.write_text(
        '[[rules]]\nid = "default"\nrate_bps = 1000\n\n'
        '[[rules]]\nid = "spa"\nrate_bps = 1500\nscope = { plugin = "three_sided_bookings" }\n'
    )
    proposed = cli.load_rule_file(proposal)
    report = await dry_run_period(
        proposed, datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 15, tzinfo=UTC)
    )
    assert [row.to_dict() for row in report.accounts] == [
        {
            "account": "acct_v1",
            "currency": "gbp",
            "transactions": 2,
            "changed": 2,
            "actual_fee": 2_400,
            "proposed_fee": 3_000,
            "difference": 600,
        },
        {
            "account": "acct_v2",
            "currency": "gbp",
            "transactions": 1,
            "changed": 1,
            "actual_fee": 1_200,
            "proposed_fee": 1_500,
            "difference": 300,
        },
    ]


async def test_cli_dry_run_and_versions_read_the_database(plugins: Plugins, tmp_path: Path) -> None:
    await sync_rules(plugins.runtime)
    await charge(plugins, booking(4))
    proposal = tmp_path / "proposal.toml"
    proposal.write_text('[[rules]]\nid = "default"\nrate_bps = 500\n')
    parser = argparse.ArgumentParser(prog="marketplace")
    command = cli.command()
    command.configure(parser.add_subparsers(dest="command").add_parser(command.name))

    def run(*argv: str) -> str:
        out = io.StringIO()
        # The CLI opens its own pool: run it off the test's event loop.
        assert cli.run(parser.parse_args(["commission", *argv]), plugins.settings, out) == 0
        return out.getvalue()

    text = await asyncio.to_thread(
        run,
        "dry-run",
        "--rules",
        str(proposal),
        "--from",
        "2025-06-01T00:00:00Z",
        "--to",
        "2025-07-01T00:00:00Z",
        "--json",
    )
    assert json.loads(text)["accounts"][0]["proposed_fee"] == 500
    listed = json.loads(await asyncio.to_thread(run, "versions", "--rule", "spa", "--json"))
    assert [item["rule_id"] for item in listed] == ["spa"]
    assert msgspec.convert(listed[0]["content"], RuleSpec, strict=False).rate_bps == 1200


async def _in_force_everywhere(runtimes: list[Any], fingerprint: str) -> None:
    for _ in range(600):  # a generous bound on a busy machine; not a speed assertion
        if all(active_rules(runtime).fingerprint == fingerprint for runtime in runtimes):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a saved rule set did not reach every process")


@pytest.mark.parametrize("notifications", [True, False], ids=["notify", "poll-only"])
async def test_a_rule_set_saved_in_one_process_is_in_force_in_all(
    fresh_database_url: str, nats_url: str, notifications: bool
) -> None:
    settings = settings_from_mapping(
        {
            "engine": {"live_settings_poll_seconds": 0.2, "live_settings_listen": notifications},
            "database": {"url": fresh_database_url, "pool_min": 1, "pool_max": 4},
            "plugins": {"enabled": ["commission_rules"], "commission_rules": CONFIG},
        }
    )
    # Three API processes: each its own plugin runtime and live-settings watcher;
    # without LISTEN (as behind PgBouncer) only the version check brings the change.
    processes = [await Services.start(settings, connect_nats=False) for _ in range(3)]
    try:
        runtimes = [services.plugins.runtime for services in processes]
        saved = await save_rule_set(
            runtimes[0], [RuleSpec(id="default", rate_bps=750)], note="one API process"
        )
        await _in_force_everywhere(runtimes, saved.fingerprint)
        priced = [
            services.plugins.commission(booking(20), Money(10_000, "gbp")) for services in processes
        ]
        assert {(c.rule_id, c.amount.amount) for c in priced} == {("default", 750)}
        assert await processes[2].live.version(RULE_SET_SETTING) == 1
    finally:
        for services in processes:
            await services.close()
