"""The conformance check passes for the shipped plugins and names what a broken one breaks."""

from __future__ import annotations

import argparse

import pytest
from hypothesis import strategies as st
from support.broken_plugins import (
    AsyncSplit,
    CountingHandler,
    IdempotentCounter,
    LossySplit,
    Misspelled,
    Unmarked,
)

from engine.testing.command import EXIT_NOT_CHECKED, run_conformance
from engine.testing.conformance import (
    COMMISSION,
    CONTRIBUTIONS,
    FAILED,
    IDEMPOTENT,
    NOT_APPLICABLE,
    NOT_CHECKED,
    PASSED,
    PRICE,
    PROPERTIES,
    SPLIT,
    TABLES,
    WELL_FORMED,
    ConformanceError,
    ConformanceSpec,
    check_plugin,
)
from engine.testing.strategies import orders

# The shipped business models' orders, as their services build them.
SHIPPED_SPECS = {
    "commission_rules": ConformanceSpec(
        orders=st.one_of(
            orders("creator_subscriptions", kinds=["subscription", "tip"], roles=["creator"]),
            orders(
                "three_sided_bookings",
                kinds=["booking"],
                roles=["provider", "venue"],
                attributes=st.fixed_dictionaries(
                    {}, optional={"service_type": st.sampled_from(["massage", "facial"])}
                ),
            ),
        )
    ),
    "creator_subscriptions": ConformanceSpec(
        orders=orders(
            "creator_subscriptions",
            kinds=["subscription", "tip", "pay_per_view"],
            roles=["creator"],
        )
    ),
    "three_sided_bookings": ConformanceSpec(
        orders=orders(
            "three_sided_bookings",
            kinds=["booking", "deposit", "balance"],
            roles=["provider", "venue"],
            attributes=st.fixed_dictionaries(
                {}, optional={"provider_share_bps": st.integers(0, 10_000)}
            ),
        )
    ),
}


@pytest.mark.parametrize("name", sorted(SHIPPED_SPECS))
async def test_shipped_plugin_conforms(name: str, database_url: str) -> None:
    report = await check_plugin(name, spec=SHIPPED_SPECS[name], database_url=database_url)
    report.raise_for_failures()
    assert report.result(SPLIT).status == "passed"
    assert report.result(WELL_FORMED).status == "passed"


async def test_split_that_loses_a_cent_breaks_the_split_property() -> None:
    report = await check_plugin("lossy_split", LossySplit())
    assert [result.name for result in report.failures] == [SPLIT]
    detail = report.result(SPLIT).details[0]
    # Hypothesis shrinks towards an odd remainder of a few minor units; one is lost.
    assert "split legs sum to" in detail
    assert "(the split loses 1 minor unit(s))" in detail
    with pytest.raises(ConformanceError, match="'splits sum to the price'"):
        report.raise_for_failures()


async def test_non_idempotent_handler_breaks_the_idempotency_property(database_url: str) -> None:
    report = await check_plugin("counting_events", CountingHandler(), database_url=database_url)
    assert [result.name for result in report.failures] == [IDEMPOTENT]
    assert report.result(TABLES).status == "passed"
    (detail,) = report.result(IDEMPOTENT).details
    assert "payment_intent.succeeded" in detail
    assert "counting_events.count" in detail
    assert (
        "counting_events_seen had 1 row(s) after the first delivery, 2 after the second" in detail
    )
    with pytest.raises(ConformanceError, match="'webhook handlers are idempotent'"):
        report.raise_for_failures()


async def test_idempotent_handler_passes(database_url: str) -> None:
    report = await check_plugin("counted_once", IdempotentCounter(), database_url=database_url)
    report.raise_for_failures()
    assert report.result(IDEMPOTENT).status == "passed"


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (AsyncSplit(), "resolve_split is async"),
        (Misspelled(), "implements a hook the engine does not have"),
        (Unmarked(), "resolve_split is defined without @hookimpl"),
    ],
    ids=["async-first-result", "misspelled-hook", "missing-hookimpl"],
)
async def test_malformed_hooks_break_well_formedness(plugin: object, message: str) -> None:
    report = await check_plugin("malformed", plugin)
    assert report.failures[0].name == WELL_FORMED
    assert any(message in detail for detail in report.result(WELL_FORMED).details)


async def test_without_a_database_the_database_properties_are_not_checked() -> None:
    report = await check_plugin("counted_once", IdempotentCounter())
    assert report.ok  # nothing broke ...
    assert not report.complete  # ... but not everything was checked
    assert report.result(TABLES).status == NOT_CHECKED
    assert report.result(IDEMPOTENT).status == NOT_CHECKED
    assert report.result(TABLES).details == ("no database given (pass database_url)",)
    assert {result.name for result in report.not_checked} == {TABLES, IDEMPOTENT}
    assert TABLES not in {result.name for result in report.passed}
    assert report.result(CONTRIBUTIONS).status == PASSED
    # It implements neither resolve_price nor resolve_commission: nothing to check there.
    assert report.result(PRICE).status == NOT_APPLICABLE
    assert report.result(COMMISSION).status == NOT_APPLICABLE
    text = report.text()
    assert "NOT CHECKED    tables migrate up" in text
    assert "PASSED         tables migrate up" not in text
    assert "3 passed, 0 failed, 2 not applicable, 2 not checked" in text
    assert "NOT CHECKED (not passed): tables migrate up, webhook handlers are idempotent" in text


async def test_properties_after_a_broken_prerequisite_are_not_checked() -> None:
    report = await check_plugin("malformed", AsyncSplit())
    assert [result.name for result in report.results] == list(PROPERTIES)
    assert report.result(WELL_FORMED).status == FAILED
    for name in PROPERTIES[1:]:
        assert report.result(name).status == NOT_CHECKED
        assert report.result(name).details == ("the hooks are not well-formed",)
    assert not report.passed


def test_the_command_exits_3_when_a_property_was_not_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = argparse.Namespace(
        name="commission_rules", database_url=None, no_database=True, max_examples=5
    )
    assert run_conformance(args, None, None) == EXIT_NOT_CHECKED == 3
    out = capsys.readouterr().out
    assert "NOT CHECKED    tables migrate up" in out
    assert "0 failed" in out
    assert "2 not checked" in out


async def test_commission_outside_the_price_is_reported() -> None:
    from engine.core.money import Money
    from engine.core.orders import Commission, Order
    from engine.core.plugins import hookimpl

    class Greedy:
        @hookimpl
        def resolve_commission(self, order: Order, price: Money) -> Commission:
            return Commission(Money(price.amount + 1, price.currency), rule_id="greedy")

    report = await check_plugin("greedy", Greedy())
    assert report.result(COMMISSION).status == "failed"
    assert "rule greedy returned" in report.result(COMMISSION).details[0]


def test_the_commands_a_plugin_may_not_shadow_are_the_engines() -> None:
    from engine.cli import _parser
    from engine.testing import conformance

    subcommands = next(
        action
        for action in _parser(None)._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    assert set(subcommands.choices) == conformance._ENGINE_COMMANDS
