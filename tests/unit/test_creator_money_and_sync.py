"""creator_subscriptions, pure parts: subscription mirroring converges whatever the event
order; the fee percentage. (Its postings are the engine's: tests/unit/test_engine_postings.py.)"""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.ledger import stripe_time
from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitLeg, SplitPlan
from engine.payments.pricing import PricedOrder
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
