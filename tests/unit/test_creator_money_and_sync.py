"""creator_subscriptions, pure parts: postings mirror Stripe's balance transactions and
balance; subscription mirroring converges whatever the event order; the fee percentage."""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.errors import InvalidAmount
from engine.core.ledger import CUSTOMERS, PLATFORM, PLATFORM_STRIPE_FEES, stripe_time
from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitLeg, SplitPlan
from engine.payments.pricing import PricedOrder
from plugins.creator_subscriptions.postings import (
    DestinationCharge,
    DestinationRefund,
    charge_posting,
    destination_charge_from,
    refund_postings,
)
from plugins.creator_subscriptions.pricing import fee_percent
from plugins.creator_subscriptions.sync import (
    STATUS_RANK,
    Snapshot,
    SubscriptionState,
    merge,
    snapshot_of,
)

ACCT = "acct_creator"

AT = stripe_time(1_767_225_600)


def per_account(posting_entries: tuple[object, ...]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for entry in posting_entries:
        account = entry.account  # type: ignore[attr-defined]
        totals[account] = totals.get(account, 0) + entry.amount.amount  # type: ignore[attr-defined]
    return totals


@given(
    amount=st.integers(min_value=50, max_value=99_999_999),
    fee_share=st.integers(min_value=0, max_value=10_000),
    stripe_fee=st.integers(min_value=0, max_value=100_000),
)
def test_charge_posting_balances_and_moves_what_stripe_moves(
    amount: int, fee_share: int, stripe_fee: int
) -> None:
    fee = amount * fee_share // 10_000
    charge = DestinationCharge(
        charge_id="ch_1",
        amount=Money(amount, "usd"),
        stripe_fee=Money(stripe_fee, "usd"),
        destination=ACCT,
        transfer_id="tr_1",
        transfer_amount=Money(amount, "usd"),
        application_fee=Money(fee, "usd"),
        captured_at=AT,
    )
    posting = charge_posting(charge, key="k", kind="invoice", reference="r")
    totals = per_account(posting.entries)
    assert sum(totals.values()) == 0
    assert totals.get(ACCT, 0) == amount - fee == charge.creator_earnings.amount
    assert totals.get(PLATFORM, 0) == fee - stripe_fee
    assert totals.get(CUSTOMERS, 0) == -amount
    assert totals.get(PLATFORM_STRIPE_FEES, 0) == stripe_fee
    assert charge.creator_earnings.amount + charge.platform_fee.amount == amount
    assert posting.stripe_object_id == "ch_1"
    assert all(entry.amount.amount for entry in posting.entries)  # no zero lines


def test_charge_posting_lines_are_the_balance_transactions() -> None:
    charge = DestinationCharge(
        charge_id="ch_1",
        amount=Money(1000, "usd"),
        stripe_fee=Money(59, "usd"),
        destination=ACCT,
        transfer_id="tr_1",
        transfer_amount=Money(1000, "usd"),
        application_fee=Money(100, "usd"),
        captured_at=AT,
    )
    lines = [
        (e.account, e.amount.amount)
        for e in charge_posting(charge, key="k", kind="x", reference="r").entries
    ]
    assert lines == [
        (CUSTOMERS, -1000),
        (PLATFORM, 1000),  # platform charge txn: amount
        (PLATFORM, -59),  # ... and its fee
        (PLATFORM_STRIPE_FEES, 59),
        (PLATFORM, -1000),  # platform transfer txn
        (ACCT, 1000),  # connected payment txn: amount
        (ACCT, -100),  # ... and its fee (the application fee)
        (PLATFORM, 100),  # platform application_fee txn
    ]


def test_refund_postings_reverse_in_stripes_amounts_under_the_engines_keys() -> None:
    refund = DestinationRefund(
        refund_id="re_1",
        amount=Money(400, "usd"),
        transfer_reversed=Money(400, "usd"),
        fee_refunded=Money(40, "usd"),
        destination=ACCT,
        refunded_at=AT,
        reversal_id="trr_1",
        fee_refunds=(("fr_1", Money(40, "usd"), AT), ("fr_0", Money(0, "usd"), AT)),
    )
    postings = refund_postings(refund, reference="r")
    totals: dict[str, int] = {}
    for posting in postings:
        for account, amount in per_account(posting.entries).items():
            totals[account] = totals.get(account, 0) + amount
    assert {account: amount for account, amount in totals.items() if amount} == {
        PLATFORM: -40,
        CUSTOMERS: 400,
        ACCT: -360,
    }
    # The engine's keys: its webhook handlers post the same, so nothing counts twice.
    assert [posting.key for posting in postings] == [
        "refund:re_1",
        "reversal:trr_1",
        "application_fee_refund:fr_1",
    ]


def test_destination_charge_is_read_from_stripes_charge() -> None:
    charge = {
        "id": "ch_9",
        "amount": 1500,
        "amount_captured": 1500,
        "currency": "usd",
        "application_fee_amount": 150,
        "application_fee": "fee_9",
        "transfer": {"id": "tr_9", "amount": 1500},
        "transfer_data": {"destination": ACCT, "amount": None},
        "balance_transaction": {"id": "txn_9", "fee": 74, "created": 1_767_225_600},
    }
    facts = destination_charge_from(charge)
    assert (facts.amount.amount, facts.stripe_fee.amount, facts.application_fee.amount) == (
        1500,
        74,
        150,
    )
    assert (facts.transfer_id, facts.application_fee_id, facts.destination) == (
        "tr_9",
        "fee_9",
        ACCT,
    )
    with pytest.raises(InvalidAmount, match="expand"):
        destination_charge_from({**charge, "balance_transaction": "txn_9"})
    with pytest.raises(InvalidAmount, match="destination"):
        destination_charge_from({**charge, "transfer_data": None})


def test_an_application_fee_above_the_transfer_is_refused() -> None:
    with pytest.raises(InvalidAmount):
        DestinationCharge(
            charge_id="ch",
            amount=Money(100, "usd"),
            stripe_fee=Money(0, "usd"),
            destination=ACCT,
            transfer_id="tr",
            transfer_amount=Money(100, "usd"),
            application_fee=Money(101, "usd"),
            captured_at=AT,
        )


# ---------------------------------------------------------------- fee percent


def priced(price: int, fee: int, rate_bps: Decimal | None) -> PricedOrder:
    money = Money(price, "usd")
    order = Order(plugin="creator_subscriptions", kind="subscription", amount=money, reference="r")
    commission = Commission(Money(fee, "usd"), rule_id="r", rate_bps=rate_bps)
    split = SplitPlan(
        money, (SplitLeg("platform", Money(fee, "usd")), SplitLeg("c", money - Money(fee, "usd")))
    )
    return PricedOrder(order=order, price=money, commission=commission, split=split)


def test_fee_percent_from_the_rule_or_the_effective_rate() -> None:
    assert fee_percent(priced(1000, 100, Decimal(1000))) == Decimal("10.00")
    assert fee_percent(priced(1000, 125, Decimal("1250.5"))) == Decimal("12.51")
    # A fixed part (10 % + 30) cannot ride on every invoice: effective rate instead.
    assert fee_percent(priced(1000, 130, Decimal(1000))) == Decimal("13.00")
    assert fee_percent(priced(999, 100, None)) == Decimal("10.01")
    assert fee_percent(priced(1000, 0, None)) == Decimal("0.00")


# ---------------------------------------------------------------- subscription mirroring

STATUSES = ["incomplete", "active", "past_due", "active", "unpaid", "canceled"]


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[int, Snapshot]]:
    """A subscription's life as Stripe sees it: (event created, snapshot), in true order."""
    steps = draw(st.integers(min_value=1, max_value=12))
    created = 1_700_000_000
    period_end = created + 30 * 86_400
    status_index = 0
    history: list[tuple[int, Snapshot]] = []
    snap = Snapshot(
        status="incomplete",
        stripe_price_id="price_a",
        current_period_start=created,
        current_period_end=period_end,
        cancel_at_period_end=False,
        cancel_at=None,
        canceled_at=None,
        paused=False,
        pause_behavior="",
    )
    for _ in range(steps):
        created += draw(st.sampled_from([0, 0, 1, 60, 86_400]))  # same-second events happen
        change = draw(st.sampled_from(["status", "price", "cancel", "pause", "renew"]))
        if snap.status == "canceled":
            change = "none"
        if change == "status":
            status_index = min(status_index + draw(st.integers(1, 2)), len(STATUSES) - 1)
            snap = replace(snap, status=STATUSES[status_index])
            if snap.status == "canceled":
                snap = replace(snap, canceled_at=created)
        elif change == "price":
            snap = replace(
                snap, stripe_price_id=draw(st.sampled_from(["price_a", "price_b", "price_c"]))
            )
        elif change == "cancel":
            flag = not snap.cancel_at_period_end
            snap = replace(snap, cancel_at_period_end=flag, cancel_at=period_end if flag else None)
        elif change == "pause":
            paused = not snap.paused
            snap = replace(snap, paused=paused, pause_behavior="void" if paused else "")
        elif change == "renew":
            snap = replace(
                snap,
                current_period_start=period_end,
                current_period_end=period_end + 30 * 86_400,
            )
            period_end += 30 * 86_400
        history.append((created, snap))
    return history


def apply_all(events: list[tuple[int, Snapshot]], truth: Snapshot) -> SubscriptionState:
    """What the handler does: merge each event; on ambiguity re-read Stripe (the truth)."""
    state = SubscriptionState()
    for created, snap in events:
        result = merge(state, snap, created)
        state = result.state
        if result.ambiguous:
            state = merge(state, truth, created, force=True).state
    return state


def mirrored(state: SubscriptionState) -> tuple[object, ...]:
    return (
        state.status,
        state.stripe_price_id,
        state.current_period_start,
        state.current_period_end,
        state.cancel_at_period_end,
        state.cancel_at,
        state.canceled_at,
        state.paused,
        state.pause_behavior,
    )


def truth_of(snap: Snapshot) -> tuple[object, ...]:
    return (
        snap.status,
        snap.stripe_price_id,
        snap.current_period_start,
        snap.current_period_end,
        snap.cancel_at_period_end,
        snap.cancel_at,
        snap.canceled_at,
        snap.paused,
        snap.pause_behavior,
    )


@settings(max_examples=400, deadline=None)
@given(history=histories(), seed=st.integers(0, 2**32 - 1))
def test_shuffled_and_repeated_events_converge_to_stripes_state(
    history: list[tuple[int, Snapshot]], seed: int
) -> None:
    truth = history[-1][1]
    in_order = apply_all(history, truth)
    assert mirrored(in_order) == truth_of(truth)
    rng = random.Random(seed)
    shuffled = history + rng.sample(history, k=min(len(history), 3))  # duplicates
    rng.shuffle(shuffled)
    assert mirrored(apply_all(shuffled, truth)) == truth_of(truth)


def test_an_older_event_never_moves_the_subscription_back() -> None:
    base = Snapshot("active", "price_b", 100, 200, False, None, None, False, "")
    state = merge(SubscriptionState(), base, 50).state
    older = replace(base, status="past_due", stripe_price_id="price_a", current_period_end=150)
    result = merge(state, older, 40)
    assert result.state == state
    assert not result.changed


def test_cancelled_is_final_and_same_second_ties_are_ambiguous() -> None:
    base = Snapshot("active", "price_a", 100, 200, False, None, None, False, "")
    state = merge(SubscriptionState(), base, 50).state
    cancelled = merge(state, replace(base, status="canceled", canceled_at=60), 60).state
    late = merge(cancelled, base, 70)
    assert late.state.status == "canceled"
    tie = merge(state, replace(base, stripe_price_id="price_b"), 50)
    assert tie.ambiguous
    assert tie.state.stripe_price_id == "price_a"
    forced = merge(state, replace(base, stripe_price_id="price_b"), 50, force=True)
    assert (forced.ambiguous, forced.state.stripe_price_id) == (False, "price_b")
    assert STATUS_RANK["canceled"] > STATUS_RANK["active"]


def test_snapshot_reads_the_period_from_the_items() -> None:
    subscription = {
        "status": "active",
        "items": {
            "data": [
                {"price": {"id": "price_x"}, "current_period_start": 10, "current_period_end": 20}
            ]
        },
        "pause_collection": {"behavior": "void", "resumes_at": None},
        "cancel_at_period_end": True,
        "cancel_at": 20,
    }
    snap = snapshot_of(subscription)
    assert (snap.stripe_price_id, snap.current_period_start, snap.current_period_end) == (
        "price_x",
        10,
        20,
    )
    assert (snap.paused, snap.pause_behavior) == (True, "void")
    # A field the API version removed is not read, even if something still sends it.
    stale = {**subscription, "current_period_start": 30, "current_period_end": 40}
    stale["pause_collection"] = None
    snap = snapshot_of(stale)
    assert (snap.current_period_end, snap.paused) == (20, False)
