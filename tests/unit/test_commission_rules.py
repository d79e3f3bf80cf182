"""commission_rules: fee properties against a reference, config through the real hook path,
invalid rules refused naming rule and field, versions over time, explain, dry run, CLI."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.errors import ConfigError, InvalidInput
from engine.core.money import Money
from engine.core.orders import Order
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import settings_from_mapping
from plugins.commission_rules import cli
from plugins.commission_rules.dry_run import PastTransaction, dry_run
from plugins.commission_rules.explain import explain
from plugins.commission_rules.ruleset import RuleSet, compile_rules
from plugins.commission_rules.schemas import RuleSpec
from plugins.commission_rules.services import active_rules, install_rules

TSB = "three_sided_bookings"
CS = "creator_subscriptions"


def plugins_from_toml(text: str) -> Plugins:
    """Config TOML -> Settings -> plugin manager: the path the engine takes at start-up."""
    return build_plugins(settings_from_mapping(tomllib.loads(text)))


def order(
    plugin: str = TSB,
    *,
    amount: int = 10_000,
    currency: str = "gbp",
    kind: str = "booking",
    beneficiaries: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> Order:
    return Order(
        plugin=plugin,
        kind=kind,
        amount=Money(amount, currency),
        reference="test:1",
        beneficiaries=beneficiaries or {},
        attributes=attributes or {},
        occurred_at=at or datetime(2025, 6, 1, 12, tzinfo=UTC),
    )


# ---------------------------------------------------------------- reference model

BOUNDARIES = [datetime(2025, month, 1, tzinfo=UTC) for month in (2, 3, 4)]


def reference_fee(specs: Sequence[RuleSpec], the_order: Order, price: Money) -> tuple[int, str]:
    """Linear scan over every rule by precedence, then the fee in exact fractions.

    Written from the documented semantics, independently of the plugin's code.
    """
    currency = price.currency
    values: dict[str, str] = {"plugin": the_order.plugin, "kind": the_order.kind}
    values["currency"] = currency
    for name in ("service_type", "tier"):
        if name in the_order.attributes:
            values[name] = str(the_order.attributes[name])
    values.update(the_order.beneficiaries)
    volume = int(the_order.attributes.get("monthly_volume", 0))
    at = the_order.occurred_at

    def applies(spec: RuleSpec) -> bool:
        scope_ok = all(values.get(key) == value for key, value in spec.scope.items())
        start = spec.effective_from or datetime.min.replace(tzinfo=UTC)
        end = spec.effective_to or datetime.max.replace(tzinfo=UTC)
        return scope_ok and start <= at < end and volume >= (spec.min_monthly_volume or 0)

    matching = [spec for spec in specs if applies(spec)]
    assert matching, "a valid rule set always has a default"

    def rank(spec: RuleSpec) -> tuple[int, int]:
        return (len(spec.scope), spec.min_monthly_volume or 0)

    best = max(rank(spec) for spec in matching)
    winners = [spec for spec in matching if rank(spec) == best]
    assert len(winners) == 1, f"ambiguous winners survived validation: {winners}"
    winner = winners[0]

    def amount_of(raw: int | dict[str, int] | None) -> int | None:
        if raw is None:
            return None
        if isinstance(raw, int):
            return raw  # only allowed with a currency scope, which matched
        return raw.get(currency)

    exact = Fraction(price.amount) * Fraction(Decimal(str(winner.rate_bps))) / 10_000
    fee = int(exact + Fraction(1, 2)) if exact >= 0 else 0  # floor(x + 1/2): half-up
    fee += amount_of(winner.fixed) or 0
    low, high = amount_of(winner.minimum), amount_of(winner.maximum)
    if low is not None:
        fee = max(fee, low)
    if high is not None:
        fee = min(fee, high)
    return min(max(fee, 0), price.amount), winner.id


# ---------------------------------------------------------------- strategies

SCOPE_VALUES: dict[str, list[str]] = {
    "plugin": [TSB, CS],
    "kind": ["booking", "subscription"],
    "service_type": ["massage", "facial"],
    "tier": ["gold"],
    "currency": ["gbp", "jpy"],
    "creator": ["c1", "c2"],
    "venue": ["v1", "v2"],
    "provider": ["p1"],
}
CURRENCIES = ["gbp", "jpy", "eur"]


@st.composite
def amounts(draw: st.DrawFn, currency: str | None) -> int | dict[str, int] | None:
    kind = draw(st.sampled_from(["none", "table", "single"] if currency else ["none", "table"]))
    if kind == "none":
        return None
    if kind == "single":
        return draw(st.integers(0, 3_000))
    codes = [currency] if currency else draw(st.lists(st.sampled_from(CURRENCIES), unique=True))
    return {code: draw(st.integers(0, 3_000)) for code in codes}


@st.composite
def rule_specs(draw: st.DrawFn, rule_id: str) -> RuleSpec:
    keys = draw(st.lists(st.sampled_from(sorted(SCOPE_VALUES)), unique=True, max_size=4))
    scope = {key: draw(st.sampled_from(SCOPE_VALUES[key])) for key in keys}
    currency = scope.get("currency")
    rate: int | str = draw(
        st.one_of(
            st.integers(0, 10_000),
            st.decimals(0, 10_000, places=2).map(lambda d: format(d, "f")),
        )
    )
    fixed = draw(amounts(currency))
    minimum = draw(amounts(currency))
    maximum = draw(amounts(currency))
    if isinstance(minimum, int):  # single amounts only come with a currency scope
        minimum = {currency or "gbp": minimum}
    if isinstance(maximum, int):
        maximum = {currency or "gbp": maximum}
    if minimum is not None and maximum is not None:
        for code in set(minimum) & set(maximum):
            minimum[code], maximum[code] = sorted((minimum[code], maximum[code]))
    volume = draw(st.sampled_from([None, 0, 5_000, 50_000])) if currency else None
    dates = draw(st.lists(st.sampled_from(BOUNDARIES), max_size=2, unique=True))
    open_ended: bool = draw(st.booleans())
    start: datetime | None = None
    end: datetime | None = None
    if len(dates) == 2:
        start, end = sorted(dates)
    elif dates and open_ended:
        start = dates[0]
    elif dates:
        end = dates[0]
    return RuleSpec(
        id=rule_id,
        rate_bps=rate,
        fixed=fixed,
        minimum=minimum,
        maximum=maximum,
        scope=scope,
        min_monthly_volume=volume,
        effective_from=start,
        effective_to=end,
    )


@dataclass
class ValidSet:
    specs: list[RuleSpec]
    rules: RuleSet


def as_default(spec: RuleSpec, start: datetime | None, end: datetime | None) -> RuleSpec:
    """``spec`` without scope or tier, in force from ``start`` to ``end``."""
    currency = spec.scope.get("currency", "gbp")

    def table(raw: int | dict[str, int] | None) -> dict[str, int] | None:
        return {currency: raw} if isinstance(raw, int) else raw

    return msgspec.structs.replace(
        spec,
        scope={},
        min_monthly_volume=None,
        effective_from=start,
        effective_to=end,
        fixed=table(spec.fixed),
        minimum=table(spec.minimum),
        maximum=table(spec.maximum),
    )


@st.composite
def valid_rule_sets(draw: st.DrawFn) -> ValidSet:
    """A default (sometimes two versions split at a boundary) plus rules kept only if the
    set still validates, so every example is a valid set of varied shape."""
    split = draw(st.sampled_from([None, *BOUNDARIES]))
    defaults = [as_default(draw(rule_specs("default")), None, split)]
    if split is not None:
        defaults.append(as_default(draw(rule_specs("default")), split, None))
    specs = list(defaults)
    for index in range(draw(st.integers(0, 14))):
        candidate = draw(rule_specs(f"r{index}"))
        try:
            compile_rules([*specs, candidate])
        except ConfigError:
            continue
        specs.append(candidate)
    return ValidSet(specs, compile_rules(specs))


@st.composite
def orders(draw: st.DrawFn, aim: RuleSpec | None = None) -> tuple[Order, Money]:
    """Random orders; with ``aim``, one that satisfies that rule's scope and tier."""
    target = dict(aim.scope) if aim is not None else {}
    currency = target.get("currency") or draw(st.sampled_from(CURRENCIES))
    amount = draw(st.one_of(st.integers(0, 100), st.integers(0, 10**9)))
    attributes: dict[str, Any] = {}
    for name in ("service_type", "tier"):
        if draw(st.booleans()):
            attributes[name] = draw(st.sampled_from(SCOPE_VALUES[name]))
    if draw(st.booleans()):
        attributes["monthly_volume"] = draw(st.sampled_from([0, 4_999, 5_000, 60_000]))
    roles = draw(st.lists(st.sampled_from(["creator", "venue", "provider"]), unique=True))
    beneficiaries = {role: draw(st.sampled_from(SCOPE_VALUES[role])) for role in roles}
    for name in ("service_type", "tier"):
        if name in target:
            attributes[name] = target[name]
    for role in ("creator", "venue", "provider"):
        if role in target:
            beneficiaries[role] = target[role]
    if aim is not None and aim.min_monthly_volume and draw(st.booleans()):
        attributes["monthly_volume"] = aim.min_monthly_volume + draw(st.integers(0, 1))
    moment = draw(
        st.one_of(
            st.sampled_from(BOUNDARIES),
            st.sampled_from(BOUNDARIES).map(lambda b: b - timedelta(microseconds=1)),
            st.datetimes(
                min_value=datetime(2024, 12, 1),
                max_value=datetime(2025, 5, 1),
                timezones=st.just(UTC),
            ),
        )
    )
    the_order = Order(
        plugin=target.get("plugin") or draw(st.sampled_from(SCOPE_VALUES["plugin"])),
        kind=target.get("kind") or draw(st.sampled_from(SCOPE_VALUES["kind"])),
        amount=Money(amount, currency),
        reference="prop",
        beneficiaries=beneficiaries,
        attributes=attributes,
        occurred_at=moment,
    )
    return the_order, the_order.amount


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_rule_sets(), st.data())
def test_fee_is_bounded_integer_deterministic_and_matches_reference(
    rule_set: ValidSet, data: st.DataObject
) -> None:
    aims = st.one_of(st.none(), st.sampled_from(rule_set.specs))
    priced = data.draw(st.lists(aims.flatmap(orders), min_size=1, max_size=8))
    again = compile_rules(rule_set.specs)
    assert [(r.id, r.version) for r in again.rules] == [
        (r.id, r.version) for r in rule_set.rules.rules
    ]
    for the_order, price in priced:
        quote = rule_set.rules.quote(the_order, price)
        fee = quote.fee.amount
        assert type(fee) is int
        assert 0 <= fee <= price.amount
        assert quote.fee.currency == price.currency
        assert again.quote(the_order, price).fee == quote.fee
        expected_fee, expected_rule = reference_fee(rule_set.specs, the_order, price)
        assert (fee, quote.rule.id) == (expected_fee, expected_rule)
        assert quote.rule.fee_steps(price.amount, price.currency)[0] == fee
        explained = explain(the_order, price, rule_set.rules)
        assert explained.fee == quote.fee
        assert explained.winner.id == quote.rule.id


# ---------------------------------------------------------------- real hook path

SPA_CONFIG = """
[[plugins.commission_rules.rules]]
id = "default"
rate_bps = 1000

[[plugins.commission_rules.rules]]
id = "spa"
rate_bps = 1200
scope = { plugin = "three_sided_bookings" }

[[plugins.commission_rules.rules]]
id = "spa-massage"
rate_bps = 1500
scope = { plugin = "three_sided_bookings", service_type = "massage" }

[[plugins.commission_rules.rules]]
id = "venue-v1"
rate_bps = 1000
scope = { plugin = "three_sided_bookings", venue = "acct_v1" }

# Massages at venue v1 match both rules above (2 scope keys each): decide it.
[[plugins.commission_rules.rules]]
id = "venue-v1-massage"
rate_bps = 1000
scope = { plugin = "three_sided_bookings", venue = "acct_v1", service_type = "massage" }

[[plugins.commission_rules.rules]]
id = "creator-c1"
rate_bps = 800
scope = { plugin = "creator_subscriptions", kind = "subscription", creator = "acct_c1" }

[[plugins.commission_rules.rules]]
id = "creators-gbp-1m"
rate_bps = 700
min_monthly_volume = 1000000
scope = { plugin = "creator_subscriptions", currency = "gbp" }

[[plugins.commission_rules.rules]]
id = "creators-gbp-5m"
rate_bps = 500
min_monthly_volume = 5000000
scope = { plugin = "creator_subscriptions", currency = "gbp" }

[[plugins.commission_rules.rules]]
id = "tips"
rate_bps = 500
fixed = { gbp = 20, eur = 20 }
minimum = { gbp = 30 }
maximum = { gbp = 200 }
scope = { plugin = "creator_subscriptions", kind = "tip" }
"""


@pytest.fixture(scope="module")
def spa_plugins() -> Plugins:
    return plugins_from_toml(SPA_CONFIG)


@pytest.mark.parametrize(
    ("service_type", "venue", "fee", "rule_id"),
    [
        ("facial", "acct_v2", 1_200, "spa"),  # 12 % for the business model
        ("massage", "acct_v2", 1_500, "spa-massage"),  # 15 % for massages
        ("facial", "acct_v1", 1_000, "venue-v1"),  # 10 % negotiated by venue v1
        ("massage", "acct_v1", 1_000, "venue-v1-massage"),  # the operator decided the overlap
    ],
)
def test_three_sided_bookings_platform_fee_between_10_and_15_percent(
    spa_plugins: Plugins, service_type: str, venue: str, fee: int, rule_id: str
) -> None:
    booking = order(
        beneficiaries={"provider": "acct_p1", "venue": venue},
        attributes={"service_type": service_type},
    )
    commission = spa_plugins.commission(booking, booking.amount)
    assert commission.amount == Money(fee, "gbp")
    assert commission.rule_id == rule_id
    assert commission.rule_version > 0
    assert commission.rate_bps == Decimal(fee)  # on a price of 10 000, fee == bps
    assert f"rule {rule_id} v{commission.rule_version} won" in commission.explanation
    plan = spa_plugins.split(booking, booking.amount, commission)
    assert plan.platform_amount == commission.amount


def test_creator_specific_rate_and_volume_tiers(spa_plugins: Plugins) -> None:
    def fee(creator: str, volume: int | None, currency: str = "gbp") -> tuple[int, str]:
        attributes = {} if volume is None else {"monthly_volume": volume}
        sub = order(
            CS,
            kind="subscription",
            currency=currency,
            beneficiaries={"creator": creator},
            attributes=attributes,
        )
        commission = spa_plugins.commission(sub, sub.amount)
        return commission.amount.amount, commission.rule_id

    assert fee("acct_c9", None) == (1_000, "default")  # missing volume counts as 0
    assert fee("acct_c1", None) == (800, "creator-c1")
    assert fee("acct_c9", 999_999) == (1_000, "default")
    assert fee("acct_c9", 1_000_000) == (700, "creators-gbp-1m")
    assert fee("acct_c9", 7_000_000) == (500, "creators-gbp-5m")  # the higher tier wins
    assert fee("acct_c9", 7_000_000, "eur") == (1_000, "default")  # tiers are per currency
    # The creator's own deal (3 scope keys) outranks the general tiers (2 keys).
    assert fee("acct_c1", 7_000_000) == (800, "creator-c1")


def test_volume_tier_breaks_ties_between_equally_specific_rules() -> None:
    rules = compile_rules(
        [
            RuleSpec(id="default"),
            RuleSpec(id="creator", rate_bps=800, scope={"plugin": CS, "creator": "c1"}),
            RuleSpec(
                id="big",
                rate_bps=600,
                scope={"plugin": CS, "currency": "gbp"},
                min_monthly_volume=1_000_000,
            ),
        ]
    )
    for volume, winner in [(999_999, "creator"), (1_000_000, "big")]:
        sub = order(CS, beneficiaries={"creator": "c1"}, attributes={"monthly_volume": volume})
        assert rules.quote(sub, sub.amount).rule.id == winner


def test_fixed_fee_and_caps_per_currency(spa_plugins: Plugins) -> None:
    def tip(amount: int, currency: str = "gbp") -> int:
        the_tip = order(CS, kind="tip", amount=amount, currency=currency)
        return spa_plugins.commission(the_tip, the_tip.amount).amount.amount

    assert tip(1_000) == 70  # 5 % = 50, + 20 fixed
    assert tip(100) == 30  # 5 + 20 = 25, raised to the minimum 30
    assert tip(10) == 10  # the minimum cannot exceed the price
    assert tip(100_000) == 200  # 5 000 + 20, capped at 200
    assert tip(100_000, "eur") == 5_020  # no caps configured for eur
    assert tip(100_000, "usd") == 5_000  # no fixed fee configured for usd
    assert tip(0) == 0


def test_fractional_basis_points_round_half_up() -> None:
    plugins = plugins_from_toml(
        '[plugins.commission_rules]\nrules = [{ id = "default", rate_bps = "1250.5" }]'
    )
    for amount, expected in [(200, 25), (100, 13), (1_000_000, 125_050), (1, 0), (4, 1)]:
        the_order = order(amount=amount)
        commission = plugins.commission(the_order, the_order.amount)
        exact = Fraction(amount) * Fraction("1250.5") / 10_000
        assert commission.amount.amount == expected == int(exact + Fraction(1, 2))
        assert commission.rate_bps == Decimal("1250.5")


def test_default_config_file_rules_load(spa_plugins: Plugins) -> None:
    plugins = build_plugins(settings_from_mapping({}))
    the_order = order()
    commission = plugins.commission(the_order, the_order.amount)
    assert (commission.rule_id, commission.amount.amount) == ("default", 1_000)


def test_version_tracks_pricing_content_only() -> None:
    def version(**changes: Any) -> int:
        spec = msgspec.structs.replace(RuleSpec(id="default", rate_bps=1000), **changes)
        return compile_rules([spec]).rules[0].version

    base = version()
    assert base == version()  # stable: same content, same version, on every machine
    assert version(description="just words") == base
    assert version(rate_bps="1000.0") == base  # the same rate written differently
    assert version(rate_bps=1001) != base
    assert version(maximum={"gbp": 500}) != base
    scoped = RuleSpec(id="x", rate_bps=1, scope={"currency": "gbp"}, fixed=30)
    same = RuleSpec(id="x", rate_bps=1, scope={"currency": "GBP"}, fixed={"gbp": 30})
    default = RuleSpec(id="default")
    assert compile_rules([default, scoped]).rules[1].version == (
        compile_rules([default, same]).rules[1].version
    )


# ---------------------------------------------------------------- invalid rules

INVALID: list[tuple[str, str, str, str]] = [
    # (rules TOML, expected key suffix, text in the problem, rule named)
    ('{ id = "default", rate_bps = 10001 }', "rules[0].rate_bps", "over 100 %", "default"),
    ('{ id = "default", rate_bps = "200.5%" }', "rules[0].rate_bps", "not a number", "default"),
    ('{ id = "default", rate_bps = -1 }', "rules[0].rate_bps", "negative", "default"),
    ('{ id = "default", fixed = { gbp = -5 } }', "rules[0].fixed.gbp", "negative", "default"),
    (
        '{ id = "default" }, { id = "g", fixed = -5, scope = { currency = "gbp" } }',
        "rules[1].fixed",
        "negative",
        "g",
    ),
    (
        '{ id = "default", minimum = { gbp = 500 }, maximum = { gbp = 100 } }',
        "rules[0].maximum.gbp",
        "minimum 500 is greater than maximum 100",
        "default",
    ),
    (
        '{ id = "default" }, { id = "g", minimum = 9, maximum = 1, scope = { currency = "gbp" } }',
        "rules[1].maximum",
        "greater than maximum",
        "g",
    ),
    (
        '{ id = "default" }, { id = "x", scope = { currency = "xyz" } }',
        "rules[1].scope.currency",
        "unknown currency",
        "x",
    ),
    (
        '{ id = "default", fixed = { zzz = 5 } }',
        "rules[0].fixed.zzz",
        "unknown currency",
        "default",
    ),
    (
        '{ id = "default" }, { id = "x", scope = { venu = "v1" } }',
        "rules[1].scope.venu",
        "unknown scope key 'venu'",
        "x",
    ),
    (
        '{ id = "default" }, { id = "a", scope = { plugin = "p" } }, '
        '{ id = "b", scope = { venue = "v1" } }',
        "rules[2].scope",
        "equally specific",
        "b",
    ),
    (
        '{ id = "default", effective_from = 2025-06-01T00:00:00Z, '
        "effective_to = 2025-06-01T00:00:00Z }",
        "rules[0].effective_to",
        "must be after effective_from",
        "default",
    ),
    (
        '{ id = "default" }, { id = "n", scope = { tier = "gold" }, '
        "effective_from = 2025-06-01T00:00:00 }",
        "rules[1].effective_from",
        "needs a UTC offset",
        "n",
    ),
    (
        '{ id = "default" }, { id = "t", min_monthly_volume = 100 }',
        "rules[1].min_monthly_volume",
        "needs scope.currency",
        "t",
    ),
    ('{ id = "default", fixed = 30 }', "rules[0].fixed", "needs scope.currency", "default"),
    (
        '{ id = "default" }, { id = "c", fixed = { eur = 1 }, scope = { currency = "gbp" } }',
        "rules[1].fixed.eur",
        "can never apply",
        "c",
    ),
    ('{ id = "no spaces" }', "rules[0].id", "an id is", "no spaces"),
]


@pytest.mark.parametrize(("rules", "key", "problem", "rule_id"), INVALID)
def test_invalid_rule_is_refused_naming_rule_and_field(
    rules: str, key: str, problem: str, rule_id: str
) -> None:
    with pytest.raises(ConfigError) as info:
        plugins_from_toml(f"[plugins.commission_rules]\nrules = [{rules}]")
    assert info.value.key == f"plugins.commission_rules.{key}"
    assert problem in info.value.problem
    assert f"rule {rule_id!r}" in info.value.problem


@pytest.mark.parametrize(
    ("rules", "key", "problem"),
    [
        ('{ id = "x", scope = { plugin = "p" } }', "rules", "no default rule"),
        ("", "rules", "no default rule"),
        (
            '{ id = "default", effective_to = 2025-06-01T00:00:00Z }',
            "rules",
            "from 2025-06-01T00:00:00+00:00 on",
        ),
        (
            '{ id = "default", effective_to = 2025-06-01T00:00:00Z }, '
            '{ id = "default", rate_bps = 1, effective_from = 2025-07-01T00:00:00Z }',
            "rules",
            "from 2025-06-01T00:00:00+00:00 to 2025-07-01T00:00:00+00:00",
        ),
        (
            '{ id = "default", effective_to = 2025-06-01T00:00:00Z }, '
            '{ id = "default", rate_bps = 1, effective_from = 2025-05-01T00:00:00Z }',
            "rules[1].effective_from",
            "versions of one rule must follow each other",
        ),
        ('{ id = "default" }, { id = "default" }', "rules[1]", "repeats rules[0]"),
        ('{ id = "default", venue = "v1" }', "rules[0].venue", "unknown key"),
        ('{ id = "default", rate_bps = 12.5 }', "rules[0].rate_bps", "Expected `int | str`"),
    ],
)
def test_invalid_rule_set_is_refused(rules: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        plugins_from_toml(f"[plugins.commission_rules]\nrules = [{rules}]")
    assert info.value.key == f"plugins.commission_rules.{key}"
    assert problem in info.value.problem


def test_overlap_is_allowed_when_separated_in_time_or_tier() -> None:
    specs = [
        RuleSpec(id="default"),
        RuleSpec(id="a", rate_bps=1, scope={"plugin": TSB}),
        RuleSpec(
            id="b",
            rate_bps=2,
            scope={"venue": "v1"},
            effective_from=datetime(2030, 1, 1, tzinfo=UTC),
        ),
    ]
    with pytest.raises(ConfigError):
        compile_rules(specs)
    # a ends before b starts: no instant where both apply.
    specs[1] = msgspec.structs.replace(specs[1], effective_to=datetime(2030, 1, 1, tzinfo=UTC))
    compile_rules(specs)
    # More specific rules covering the overlap only part of the time are not enough.
    overlap = [
        RuleSpec(id="default"),
        RuleSpec(id="a", rate_bps=1, scope={"plugin": TSB}),
        RuleSpec(id="b", rate_bps=2, scope={"venue": "v1"}),
        RuleSpec(
            id="ab",
            rate_bps=3,
            scope={"plugin": TSB, "venue": "v1"},
            effective_to=datetime(2030, 1, 1, tzinfo=UTC),
        ),
    ]
    with pytest.raises(ConfigError) as info:
        compile_rules(overlap)
    assert "from 2030-01-01T00:00:00+00:00 on" in info.value.problem
    overlap.append(
        RuleSpec(
            id="ab",
            rate_bps=4,
            scope={"plugin": TSB, "venue": "v1"},
            effective_from=datetime(2030, 1, 1, tzinfo=UTC),
        )
    )
    compile_rules(overlap)


def test_roles_are_configurable_and_checked() -> None:
    plugins = plugins_from_toml(
        '[plugins.commission_rules]\nroles = ["instructor"]\nrules = [{ id = "default" }, '
        '{ id = "star", rate_bps = 300, scope = { instructor = "acct_i1" } }]'
    )
    the_order = order("courses", beneficiaries={"instructor": "acct_i1"})
    assert plugins.commission(the_order, the_order.amount).rule_id == "star"
    for roles, index in [('["plugin"]', 0), ('["a", "a"]', 1), ('["not-an-id"]', 0)]:
        with pytest.raises(ConfigError) as info:
            plugins_from_toml(f"[plugins.commission_rules]\nroles = {roles}")
        assert info.value.key == f"plugins.commission_rules.roles[{index}]"


def test_invalid_replacement_leaves_previous_rules_in_force(spa_plugins: Plugins) -> None:
    plugins = plugins_from_toml(SPA_CONFIG)
    before = active_rules(plugins.runtime)
    with pytest.raises(ConfigError):
        install_rules(plugins.runtime, [RuleSpec(id="default", rate_bps=20_000)])
    assert active_rules(plugins.runtime) is before
    installed = install_rules(plugins.runtime, [RuleSpec(id="default", rate_bps=300)])
    assert active_rules(plugins.runtime) is installed
    the_order = order()
    assert plugins.commission(the_order, the_order.amount).amount.amount == 300


def test_compiled_rules_are_cached_per_config(spa_plugins: Plugins) -> None:
    assert active_rules(spa_plugins.runtime) is active_rules(spa_plugins.runtime)


def test_malformed_monthly_volume_is_refused(spa_plugins: Plugins) -> None:
    the_order = order(CS, attributes={"monthly_volume": "lots"})
    with pytest.raises(InvalidInput) as info:
        spa_plugins.commission(the_order, the_order.amount)
    assert info.value.field == "attributes.monthly_volume"


# ---------------------------------------------------------------- rule change mid-month

MID_MONTH = """
[[plugins.commission_rules.rules]]
id = "default"
rate_bps = 1000

[[plugins.commission_rules.rules]]
id = "spa"
rate_bps = 1200
scope = { plugin = "three_sided_bookings" }
effective_to = 2025-06-15T00:00:00Z

[[plugins.commission_rules.rules]]
id = "spa"
rate_bps = 1400
scope = { plugin = "three_sided_bookings" }
effective_from = 2025-06-15T00:00:00Z
"""


def test_rule_change_mid_month_prices_by_the_version_in_force() -> None:
    plugins = plugins_from_toml(MID_MONTH)
    switch = datetime(2025, 6, 15, tzinfo=UTC)
    results = {}
    for label, at in [
        ("before", datetime(2025, 6, 3, tzinfo=UTC)),
        ("last_instant", switch - timedelta(microseconds=1)),
        ("at_switch", switch),
        ("after", datetime(2025, 6, 28, tzinfo=UTC)),
    ]:
        booking = order(at=at)
        commission = plugins.commission(booking, booking.amount)
        results[label] = (commission.rule_id, commission.rule_version, commission.amount.amount)
    assert results["before"] == results["last_instant"]
    assert results["at_switch"] == results["after"]
    assert results["before"][0] == results["after"][0] == "spa"
    assert results["before"][2] == 1_200
    assert results["after"][2] == 1_400
    assert results["before"][1] != results["after"][1]


# ---------------------------------------------------------------- explain


def test_explain_lists_matches_exclusions_winner_and_arithmetic() -> None:
    rules = plugins_from_toml(SPA_CONFIG)
    ruleset = active_rules(rules.runtime)
    sub = order(
        CS,
        kind="subscription",
        amount=12_345,
        beneficiaries={"creator": "acct_c9"},
        attributes={"monthly_volume": 2_000_000},
    )
    explanation = explain(sub, sub.amount, ruleset)
    statuses = [(c.rule.id, c.status) for c in explanation.candidates]
    assert statuses == [
        ("creators-gbp-5m", "below_volume_tier"),
        ("creators-gbp-1m", "won"),
        ("default", "outranked"),
    ]
    assert explanation.winner.id == "creators-gbp-1m"
    assert [ref.id for ref in explanation.matched] == ["creators-gbp-1m", "default"]
    assert explanation.steps[0] == "12345 x 700 bps / 10000 = 864 (rounded half-up)"
    assert explanation.fee == Money(864, "gbp")
    data = explanation.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["winner"]["id"] == "creators-gbp-1m"
    assert "winner: creators-gbp-1m" in explanation.text()

    expired = explain(
        order(at=datetime(2025, 7, 1, tzinfo=UTC)),
        Money(100, "gbp"),
        (
            compile_rules(
                [
                    RuleSpec(id="default"),
                    RuleSpec(
                        id="old",
                        scope={"plugin": TSB},
                        effective_to=datetime(2025, 6, 1, tzinfo=UTC),
                    ),
                ]
            )
        ),
    )
    assert [(c.rule.id, c.status) for c in expired.candidates] == [
        ("old", "not_in_force"),
        ("default", "won"),
    ]


def test_explain_shows_caps_and_clamp() -> None:
    ruleset = compile_rules(
        [
            RuleSpec(
                id="default",
                rate_bps=100,
                fixed={"gbp": 20},
                minimum={"gbp": 50},
                maximum={"gbp": 60},
            )
        ]
    )
    explanation = explain(order(amount=40), Money(40, "gbp"), ruleset)
    assert explanation.steps == (
        "40 x 100 bps / 10000 = 0 (rounded half-up)",
        "+ fixed 20 = 20",
        "minimum 50: 20 -> 50",
        "maximum 60: ok",
        "clamped into [0, price 40]: 50 -> 40",
        "fee = 40",
    )


# ---------------------------------------------------------------- dry run


def test_dry_run_reports_per_account_would_be_versus_actual() -> None:
    proposed = compile_rules(
        [
            RuleSpec(id="default", rate_bps=1000),
            RuleSpec(id="spa", rate_bps=1300, scope={"plugin": TSB}),
        ]
    )
    june = datetime(2025, 6, 10, tzinfo=UTC)

    def txn(
        account: str, amount: int, fee: int, *, plugin: str = TSB, days: int = 0
    ) -> PastTransaction:
        return PastTransaction(
            account=account,
            price=Money(amount, "gbp"),
            actual_fee=Money(fee, "gbp"),
            occurred_at=june + timedelta(days=days),
            plugin=plugin,
            kind="booking",
            beneficiaries={"venue": account},
        )

    transactions = [
        txn("acct_v1", 10_000, 1_200),
        txn("acct_v1", 5_000, 600),
        txn("acct_v2", 10_000, 1_300),
        txn("acct_c1", 2_000, 200, plugin=CS),
        txn("acct_v2", 10_000, 1_200, days=30),  # outside the period
    ]
    report = dry_run(proposed, transactions, since=june, until=june + timedelta(days=20))
    rows = {(row.account, row.currency): row for row in report.accounts}
    assert list(rows) == [("acct_c1", "gbp"), ("acct_v1", "gbp"), ("acct_v2", "gbp")]
    v1 = rows[("acct_v1", "gbp")]
    assert (v1.transactions, v1.changed, v1.actual.amount, v1.proposed.amount) == (
        2,
        2,
        1_800,
        1_950,
    )
    assert v1.difference == Money(150, "gbp")
    assert rows[("acct_v2", "gbp")].changed == 0
    assert rows[("acct_c1", "gbp")].difference.amount == 0
    assert report.totals() == {"gbp": (3_300, 3_450)}
    assert sum(report.rules_used.values()) == 4
    assert json.loads(json.dumps(report.to_dict()))["totals"]["gbp"]["proposed_fee"] == 3_450
    assert "acct_v1" in report.text()


# ---------------------------------------------------------------- CLI


def cli_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marketplace")
    commands = parser.add_subparsers(dest="command")
    registered = cli.command()
    registered.configure(commands.add_parser(registered.name, help=registered.help))
    return parser


def test_cli_explain_prints_the_explanation(
    spa_plugins: Plugins, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_parser().parse_args(
        shlex.split(
            "commission explain --plugin three_sided_bookings --kind booking "
            "--account venue=acct_v1 --amount 1000 --currency gbp --service-type massage "
            "--at 2025-06-01T10:00"
        )
    )
    out = io.StringIO()
    assert cli.run(args, spa_plugins.settings, out) == 0
    text = out.getvalue()
    assert "winner: venue-v1-massage" in text
    assert "fee: 1.00 GBP (100 minor units)" in text

    args = cli_parser().parse_args(
        shlex.split(
            "commission explain --plugin creator_subscriptions --kind subscription "
            "--account acct_c1 --amount 1000 --currency gbp --json"
        )
    )
    out = io.StringIO()
    assert cli.run(args, spa_plugins.settings, out) == 0
    assert json.loads(out.getvalue())["winner"]["id"] == "creator-c1"

    args = cli_parser().parse_args(
        shlex.split("commission explain --plugin x --amount 1000 --currency zzz")
    )
    assert cli.run(args, spa_plugins.settings, io.StringIO()) == 2
    assert "unknown currency" in capsys.readouterr().err


def test_cli_dry_run_reads_rule_and_transaction_files(
    tmp_path: Path, spa_plugins: Plugins, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "proposal.toml"
    rules.write_text(
        '[[rules]]\nid = "default"\nrate_bps = 900\n\n'
        '[[rules]]\nid = "spa"\nrate_bps = 1100\nscope = { plugin = "three_sided_bookings" }\n'
    )
    transactions = tmp_path / "transactions.json"
    transactions.write_text(
        json.dumps(
            [
                {
                    "account": "acct_v1",
                    "plugin": TSB,
                    "kind": "booking",
                    "amount": 10_000,
                    "currency": "gbp",
                    "actual_fee": 1_200,
                    "occurred_at": "2025-06-02T10:00:00Z",
                    "beneficiaries": {"venue": "acct_v1"},
                },
                {
                    "account": "acct_c1",
                    "plugin": CS,
                    "kind": "subscription",
                    "amount": 500,
                    "currency": "gbp",
                    "actual_fee": 50,
                    "occurred_at": "2025-07-02T10:00:00Z",
                },
            ]
        )
    )
    parser = cli_parser()
    args = parser.parse_args(
        [
            "commission",
            "dry-run",
            "--rules",
            str(rules),
            "--transactions",
            str(transactions),
            "--from",
            "2025-06-01T00:00:00Z",
            "--to",
            "2025-07-01T00:00:00Z",
            "--json",
        ]
    )
    out = io.StringIO()
    assert cli.run(args, spa_plugins.settings, out) == 0
    report = json.loads(out.getvalue())
    assert report["accounts"] == [
        {
            "account": "acct_v1",
            "currency": "gbp",
            "transactions": 1,
            "changed": 1,
            "actual_fee": 1_200,
            "proposed_fee": 1_100,
            "difference": -100,
        }
    ]

    rules.write_text('[[rules]]\nid = "default"\nrate_bps = 900\nmaximum = { gbp = -1 }\n')
    assert cli.run(args, spa_plugins.settings, io.StringIO()) == 2
    assert f"{rules}:rules[0].maximum.gbp" in capsys.readouterr().err


def test_hooks_register_schema_and_cli(spa_plugins: Plugins) -> None:
    info = next(info for info in spa_plugins.infos if info.name == "commission_rules")
    assert {"register_cli_commands", "register_config_schema", "resolve_commission"} <= set(
        info.hooks
    )
    assert "commission" in [c.name for c in spa_plugins.cli_commands()]


def test_the_documented_example_config_is_valid_and_prices_as_described() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs" / "commission_rules.md"
    example = docs.read_text(encoding="utf-8").split("```toml\n", 1)[1].split("```", 1)[0]
    plugins = plugins_from_toml(example)
    massage = order(
        beneficiaries={"venue": "acct_1GrandHotel"}, attributes={"service_type": "massage"}
    )
    assert plugins.commission(massage, massage.amount).rule_id == "venue-grand-hotel-massage"
    elsewhere = order(attributes={"service_type": "massage"})
    commission = plugins.commission(elsewhere, elsewhere.amount)
    assert commission.amount.amount == 1_500
    # The one-line explanation the docs show is the real one (versions are stable hashes).
    assert f"rule spa-massage v{commission.rule_version} won" in docs.read_text(encoding="utf-8")
