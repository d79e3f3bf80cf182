"""The conformance check passes for the shipped plugins and names what a broken one breaks."""

from __future__ import annotations

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

from engine.testing.conformance import (
    COMMISSION,
    CONTRIBUTIONS,
    IDEMPOTENT,
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


async def test_without_a_database_the_database_properties_are_skipped() -> None:
    report = await check_plugin("counted_once", IdempotentCounter())
    assert report.ok
    assert report.result(TABLES).status == "skipped"
    assert report.result(IDEMPOTENT).status == "skipped"
    assert report.result(CONTRIBUTIONS).status == "passed"


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
