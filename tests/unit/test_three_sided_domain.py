"""three_sided_bookings domain: splits through the hooks, refunds, policy, the process as data."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import ConfigError, IllegalTransition, InvalidAmount
from engine.core.money import Money
from engine.core.orders import PLATFORM
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import settings_from_mapping
from engine.payments.movements import refund_share, split_plus
from plugins.three_sided_bookings import disputes
from plugins.three_sided_bookings import webhooks as booking_webhooks
from plugins.three_sided_bookings.actions import ACTION_FIELDS, ACTION_IMPLEMENTATIONS
from plugins.three_sided_bookings.config import ThreeSidedBookingsConfig
from plugins.three_sided_bookings.policy import (
    ChargeState,
    cancellation_fee,
    plan_collection,
)
from plugins.three_sided_bookings.process import DEFAULT_PROCESS, Facts, ProcessSpec
from plugins.three_sided_bookings.split import (
    ShareTerms,
    SplitCalculationService,
    deposit_and_balance,
    plan_from_json,
    split_booking,
)

TSB = "three_sided_bookings"
START = datetime(2025, 6, 20, 10, tzinfo=UTC)


def make_plugins(rate_bps: int = 1200, **section: Any) -> Plugins:
    return build_plugins(
        settings_from_mapping(
            {
                "plugins": {
                    "enabled": ["commission_rules", TSB],
                    "commission_rules": {
                        "rules": [
                            {"id": "default", "rate_bps": 1000},
                            {"id": "spa", "rate_bps": rate_bps, "scope": {"plugin": TSB}},
                        ]
                    },
                    TSB: section,
                }
            }
        )
    )


PLUGINS = {rate: make_plugins(rate) for rate in (1000, 1250, 1500)}


def quote(
    value: int, currency: str = "gbp", rate: int = 1250, terms: ShareTerms | None = None
) -> Any:
    service = SplitCalculationService(PLUGINS[rate])
    return service.quote(
        reference="booking:1",
        value=Money(value, currency),
        service_type="massage",
        provider_account="acct_p",
        venue_account="acct_v",
        terms=terms or ShareTerms(provider_bps=6000),
        occurred_at=START,
    )


# ---------------------------------------------------------------- splits


def test_split_goes_through_commission_and_split_hooks() -> None:
    booking = quote(10_000, rate=1250)
    legs = {leg.role: (leg.amount.amount, leg.account_id) for leg in booking.split.legs}
    assert legs == {
        PLATFORM: (1250, None),
        "provider": (5250, "acct_p"),
        "venue": (3500, "acct_v"),
    }
    stored = booking.split_json()
    assert (stored["rule_id"], stored["total"], stored["currency"]) == ("spa", 10_000, "gbp")
    assert plan_from_json(stored) == booking.split


def test_venue_fixed_fee_and_venue_rate() -> None:
    fixed = quote(10_000, rate=1000, terms=ShareTerms(provider_bps=7000, venue_fixed=1500))
    assert [leg.amount.amount for leg in fixed.split.legs] == [1000, 7500, 1500]
    capped = quote(1_000, rate=1000, terms=ShareTerms(provider_bps=7000, venue_fixed=5000))
    assert [leg.amount.amount for leg in capped.split.legs] == [100, 0, 900]
    rated = quote(10_000, rate=1000, terms=ShareTerms(provider_bps=7000, venue_bps=3000))
    assert [leg.amount.amount for leg in rated.split.legs] == [1000, 6300, 2700]


def test_zero_decimal_currency() -> None:
    booking = quote(12_345, currency="jpy", rate=1500)
    assert [leg.amount.amount for leg in booking.split.legs] == [1852, 6296, 4197]
    assert sum(leg.amount.amount for leg in booking.split.legs) == 12_345


def test_other_plugins_orders_are_not_split_here() -> None:
    from engine.core.orders import Commission, Order
    from plugins.three_sided_bookings import hooks

    order = Order(
        plugin="creator_subscriptions", kind="tip", amount=Money(100, "gbp"), reference="x"
    )
    commission = Commission(Money(10, "gbp"), rule_id="r")
    runtime = PLUGINS[1000].runtime
    assert hooks.resolve_split(order, order.amount, commission, runtime) is None


def test_both_rates_zero_is_refused() -> None:
    with pytest.raises(InvalidAmount, match="both zero"):
        split_booking(
            Money(100, "gbp"), Money(10, "gbp"), ShareTerms(provider_bps=0, venue_bps=0), "a", "b"
        )


terms_strategy = st.one_of(
    st.builds(ShareTerms, provider_bps=st.integers(0, 10_000)),
    st.builds(
        ShareTerms,
        provider_bps=st.integers(1, 10_000),
        venue_bps=st.integers(0, 10_000),
    ),
    st.builds(ShareTerms, provider_bps=st.integers(0, 10_000), venue_fixed=st.integers(0, 10**6)),
)


@settings(max_examples=300, deadline=None)
@given(
    value=st.integers(50, 10**8),
    currency=st.sampled_from(["gbp", "eur", "jpy"]),
    rate=st.sampled_from([1000, 1250, 1500]),
    terms=terms_strategy,
    deposit_bps=st.integers(0, 10_000),
    refunds=st.lists(st.integers(1, 10**8), max_size=6),
)
def test_shares_and_every_proportional_refund_sum_exactly(
    *,
    value: int,
    currency: str,
    rate: int,
    terms: ShareTerms,
    deposit_bps: int,
    refunds: list[int],
) -> None:
    booking = quote(value, currency, rate, terms)
    split = booking.split
    amounts = [leg.amount.amount for leg in split.legs]
    assert sum(amounts) == value
    assert all(amount >= 0 for amount in amounts)
    assert split.platform_amount == booking.priced.commission.amount

    # Deposit + balance: each charge's legs, added up, are the booking's legs.
    deposit, balance = deposit_and_balance(split, Money(value * deposit_bps // 10_000, currency))
    for whole, first, second in zip(split.legs, deposit.legs, balance.legs, strict=True):
        assert first.amount.amount + second.amount.amount == whole.amount.amount
        assert first.amount.amount >= 0
        assert second.amount.amount >= 0

    # Partial refunds, then the rest: each sums exactly, no leg goes below zero.
    refunded = None
    for wanted in refunds:
        left = split.total.amount - (0 if refunded is None else refunded.total.amount)
        amount = Money(min(wanted, left), currency)
        part = refund_share(split, refunded, amount)
        assert sum(leg.amount.amount for leg in part.legs) == amount.amount
        refunded = part if refunded is None else split_plus(refunded, part)
        for leg, back in zip(split.legs, refunded.legs, strict=True):
            assert 0 <= back.amount.amount <= leg.amount.amount
    left = split.total.amount - (0 if refunded is None else refunded.total.amount)
    rest = refund_share(split, refunded, Money(left, currency))
    everything = rest if refunded is None else split_plus(refunded, rest)
    assert [leg.amount for leg in everything.legs] == [leg.amount for leg in split.legs]


def test_refund_beyond_what_is_left_is_refused() -> None:
    split = quote(1_000).split
    with pytest.raises(InvalidAmount, match="left to refund"):
        refund_share(split, split.proportional(Money(900, "gbp")), Money(101, "gbp"))


# ---------------------------------------------------------------- policy


def test_cancellation_windows() -> None:
    windows = [(48, 0), (0, 2000)]

    def fee(hours_ahead: float) -> int:
        now = START - timedelta(hours=hours_ahead)
        return cancellation_fee(
            10_000, windows, starts_at=START, now=now, no_show_fee_bps=10_000
        ).amount

    assert fee(72) == 0
    assert fee(48) == 0
    assert fee(47.9) == 2_000
    assert fee(0) == 2_000
    assert fee(-1) == 10_000


def test_collection_plans() -> None:
    paid = [ChargeState("deposit", 2_000), ChargeState("balance", 8_000, 1_000)]
    assert plan_collection(10_000, [ChargeState("deposit", 2_000)]).charge == 8_000
    refund = plan_collection(1_500, paid)
    assert refund.refunds == [("balance", 7_000), ("deposit", 500)]
    auth = plan_collection(2_000, [], authorized=10_000)
    assert (auth.capture, auth.release, auth.charge) == (2_000, False, 0)
    release = plan_collection(0, [], authorized=10_000)
    assert (release.capture, release.release, release.refunds) == (0, True, [])
    assert plan_collection(2_000, [ChargeState("deposit", 2_000)]).is_empty
    with pytest.raises(InvalidAmount):
        plan_collection(-1, [])


@given(
    target=st.integers(0, 10**6),
    charges=st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 10**6)), max_size=3).map(
        lambda raw: [ChargeState(f"c{i}", c, min(r, c)) for i, (c, r) in enumerate(raw)]
    ),
    authorized=st.integers(0, 10**6),
)
def test_a_collection_plan_reaches_its_target(
    target: int, charges: list[ChargeState], authorized: int
) -> None:
    collected = sum(charge.refundable for charge in charges)
    if target < collected:
        authorized = 0  # refunds only happen once everything was captured
    plan = plan_collection(target, charges, authorized=authorized)
    refunded = sum(amount for _, amount in plan.refunds)
    assert collected + plan.capture + plan.charge - refunded == target
    assert plan.capture <= authorized
    by_key = {charge.key: charge for charge in charges}
    assert all(0 < amount <= by_key[key].refundable for key, amount in plan.refunds)


# ---------------------------------------------------------------- the process


def facts(**overrides: Any) -> Facts:
    values: dict[str, Any] = {
        "now": START - timedelta(days=1),
        "starts_at": START,
        "ends_at": START + timedelta(hours=1),
        "payment_model": "full",
        "collected": 10_000,
        "grace": timedelta(minutes=15),
    }
    values.update(overrides)
    return Facts(**values)


def test_pay_depends_on_the_payment_model() -> None:
    process = DEFAULT_PROCESS
    for model, state in (("full", "paid"), ("deposit", "deposit_paid"), ("arrival", "authorized")):
        transition = process.resolve(
            "pay", "pending_payment", "customer", facts(payment_model=model)
        )
        assert transition.to == state
    far = facts(payment_model="arrival", now=START - timedelta(days=9))
    assert process.resolve("pay", "pending_payment", "customer", far).to == "card_saved"


def test_illegal_transition_names_state_and_allowed_actions() -> None:
    with pytest.raises(IllegalTransition) as info:
        DEFAULT_PROCESS.resolve("complete", "pending_payment", "provider", facts())
    assert info.value.extra == {"state": "pending_payment", "allowed": ["cancel"]}
    assert info.value.status == 409
    with pytest.raises(IllegalTransition) as info:
        DEFAULT_PROCESS.resolve("confirm", "paid", "customer", facts())
    assert info.value.extra["allowed"] == ["cancel"]


def test_guards_refuse_with_their_names() -> None:
    with pytest.raises(IllegalTransition, match="service_started does not hold") as info:
        DEFAULT_PROCESS.resolve("complete", "confirmed", "provider", facts())
    assert info.value.extra["allowed"] == ["cancel", "complete", "no_show"]
    started = facts(now=START - timedelta(minutes=10))
    assert DEFAULT_PROCESS.resolve("complete", "confirmed", "provider", started).to == "completed"
    # Operators may complete early (a transition of their own, without the guard).
    assert DEFAULT_PROCESS.resolve("complete", "confirmed", "admin", facts()).to == "completed"


def test_refund_partial_or_full_by_guard() -> None:
    partial = DEFAULT_PROCESS.resolve("refund", "settled", "admin", facts(requested_amount=2_500))
    assert partial.to == "partially_refunded"
    full = DEFAULT_PROCESS.resolve("refund", "settled", "venue", facts(requested_amount=None))
    assert full.to == "refunded"
    with pytest.raises(IllegalTransition, match="partial_refund, full_refund"):
        DEFAULT_PROCESS.resolve("refund", "settled", "admin", facts(requested_amount=20_000))


def test_terminal_states_and_timers() -> None:
    process = DEFAULT_PROCESS
    assert process.allowed("cancelled", "admin") == []
    assert process.allowed("refunded", "admin") == []
    # Disputes reach every state, terminal ones included where listed.
    for state in ("paid", "settled", "refunded", "cancelled"):
        assert process.resolve("dispute_opened", state, "system", facts()).to == "disputed"
    with pytest.raises(IllegalTransition):
        process.resolve("dispute_opened", "dispute_lost", "system", facts())
    [settle] = process.timed("completed")
    assert settle.name == "settle"
    assert settle.timer is not None
    due = settle.timer.due(entered=START, created=START, starts=START, ends=START)
    assert due == START
    [auto] = process.timed("confirmed")
    assert auto.timer is not None
    ends = START + timedelta(hours=1)
    assert auto.timer.due(
        entered=START, created=START, starts=START, ends=ends
    ) == ends + timedelta(days=1)


def test_default_config_is_valid_and_round_trips() -> None:
    config = msgspec.convert({}, ThreeSidedBookingsConfig)
    assert config.process == DEFAULT_PROCESS
    raw = msgspec.to_builtins(DEFAULT_PROCESS)
    assert "from" in raw["transitions"][0]
    assert msgspec.convert(raw, ProcessSpec) == DEFAULT_PROCESS


def test_an_operator_process_from_config() -> None:
    """A smaller process: bookings are confirmed at payment, no provider confirmation."""
    process = {
        "name": "instant",
        "initial": "pending_payment",
        "states": [
            {"name": "pending_payment"},
            {"name": "confirmed"},
            {"name": "completed"},
            {"name": "settled", "terminal": True},
        ],
        "transitions": [
            {
                "name": "pay",
                "from": ["pending_payment"],
                "to": "confirmed",
                "actors": ["customer"],
                "actions": ["charge_in_full"],
            },
            {
                "name": "complete",
                "from": ["confirmed"],
                "to": "completed",
                "actors": ["provider", "admin"],
                "actions": ["collect_payment"],
            },
            {
                "name": "settle",
                "from": ["completed"],
                "to": "settled",
                "actors": ["system"],
                "actions": ["settle"],
                "timer": {"anchor": "entered", "offset_minutes": 0},
            },
        ],
    }
    plugins = make_plugins(1000, process=process)
    config: ThreeSidedBookingsConfig = plugins.runtime.config(TSB)
    assert config.process.name == "instant"
    assert config.process.resolve("pay", "pending_payment", "customer", facts()).to == "confirmed"
    with pytest.raises(IllegalTransition) as info:
        config.process.resolve("confirm", "confirmed", "provider", facts())
    assert info.value.extra["allowed"] == ["complete"]


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        ({"initial": "nowhere"}, "process.initial", "unknown state"),
        ({"transitions[0].to": "limbo"}, "process.transitions[0].to", "unknown state"),
        ({"transitions[0].actions": ["teleport"]}, "process.transitions[0].actions", "teleport"),
        ({"transitions[0].guards": ["lucky"]}, "process.transitions[0].guards", "lucky"),
        ({"transitions[0].guards": ["payment_model"]}, "process.transitions[0].guards", "unknown"),
        ({"transitions[0].actors": ["robot"]}, "process.transitions[0].actors", "robot"),
        ({"transitions[5].actors": ["admin"]}, "process.transitions[5].actors", "system only"),
    ],
)
def test_a_bad_process_stops_start_up_naming_the_key(
    change: dict[str, Any], key: str, problem: str
) -> None:
    raw: dict[str, Any] = msgspec.to_builtins(DEFAULT_PROCESS)
    for path, value in change.items():
        if path.startswith("transitions["):
            index = int(path[len("transitions[") : path.index("]")])
            raw["transitions"][index][path.split(".", 1)[1]] = value
        else:
            raw[path] = value
    with pytest.raises(ConfigError) as info:
        make_plugins(1000, process=raw)
    assert info.value.key == f"plugins.{TSB}.{key}"
    assert problem in info.value.problem


def test_bad_currency_and_windows_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        make_plugins(1000, currencies=["gbp", "xyz"])
    assert info.value.key == f"plugins.{TSB}.currencies[1]"
    with pytest.raises(ConfigError) as info:
        make_plugins(
            1000,
            cancellation=[{"hours_before": 24, "fee_bps": 0}, {"hours_before": 24, "fee_bps": 5}],
        )
    assert info.value.key == f"plugins.{TSB}.cancellation"


@pytest.mark.parametrize(
    ("event", "key"),
    [
        (
            {"type": "charge.succeeded", "data": {"object": {"transfer_group": "booking:42"}}},
            "three_sided_bookings:booking:42",
        ),
        (
            {"type": "transfer.created", "data": {"object": {"transfer_group": "booking:7"}}},
            "three_sided_bookings:booking:7",
        ),
        (
            {
                "type": "refund.created",
                "data": {"object": {"object": "refund", "metadata": {"booking_id": "9"}}},
            },
            "three_sided_bookings:booking:9",
        ),
        (
            # A card saved for a booking's off-session charge: no transfer_group, the
            # booking in the metadata the plugin sets (its handler moves the booking on).
            {
                "type": "setup_intent.succeeded",
                "data": {"object": {"object": "setup_intent", "metadata": {"booking_id": "5"}}},
            },
            "three_sided_bookings:booking:5",
        ),
        (
            {
                "type": "setup_intent.setup_failed",
                "data": {"object": {"object": "setup_intent", "metadata": {"booking_id": "5"}}},
            },
            "three_sided_bookings:booking:5",
        ),
        (
            {
                "type": "setup_intent.succeeded",
                "data": {"object": {"object": "setup_intent", "metadata": {}}},
            },
            None,
        ),
        ({"type": "charge.succeeded", "data": {"object": {"transfer_group": "order:1"}}}, None),
        (
            {
                "type": "charge.succeeded",
                "account": "acct_1",
                "data": {"object": {"transfer_group": "booking:1"}},
            },
            None,
        ),
        ({"type": "charge.dispute.created", "data": {"object": {"charge": "ch_1"}}}, None),
    ],
)
def test_a_bookings_platform_events_go_to_the_bookings_own_mailbox(
    event: dict[str, Any], key: str | None
) -> None:
    assert booking_webhooks.mailbox_key(event) == key


# What reads a request field, read from each action's source (its helpers included).
_FIELD_READERS = {
    "payment_method": ("_payment_method(ctx)", "ctx.params.payment_method"),
    "amount": ("ctx.params.amount",),
    "statement": ("ctx.params.statement",),
}


def _reads(source: str) -> set[str]:
    return {field for field, marks in _FIELD_READERS.items() if any(m in source for m in marks)}


def test_each_action_declares_the_request_fields_it_reads() -> None:
    # A field an action reads but ACTION_FIELDS does not list would be refused (422);
    # one it lists but does not read would be silently ignored.
    helpers = {"submit_dispute_evidence": inspect.getsource(disputes.submit_evidence)}
    for name, action in ACTION_IMPLEMENTATIONS.items():
        source = inspect.getsource(action) + helpers.get(name, "")
        assert _reads(source) == set(ACTION_FIELDS.get(name, frozenset())), name
    assert set(ACTION_FIELDS) <= set(ACTION_IMPLEMENTATIONS)
