"""The engine's postings (engine.core.postings): each mirrors Stripe's balance transactions.

Every business model's charges, transfers, refunds, reversals and disputes are
posted with these builders, keyed by the Stripe object; a plugin builds none.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.errors import InvalidAmount
from engine.core.ledger import CUSTOMERS, DISPUTES, PLATFORM, PLATFORM_STRIPE_FEES, stripe_time
from engine.core.money import Money
from engine.core.postings import (
    DestinationCharge,
    DestinationRefund,
    charge_posting,
    destination_charge_from,
    destination_charge_posting,
    destination_refund_postings,
    direct_charge_posting,
    dispute_lost_posting,
    dispute_txn_posting,
    refund_posting,
    reversal_posting,
    transfer_posting,
)

AT = stripe_time(1_767_225_600)
ACCT = "acct_creator"


def by_account(posting: object) -> dict[str, int]:
    totals: dict[str, int] = {}
    for entry in posting.entries:  # type: ignore[attr-defined]
        totals[entry.account] = totals.get(entry.account, 0) + entry.amount.amount
    return totals


def per_account(posting_entries: tuple[object, ...]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for entry in posting_entries:
        account = entry.account  # type: ignore[attr-defined]
        totals[account] = totals.get(account, 0) + entry.amount.amount  # type: ignore[attr-defined]
    return totals


@given(amount=st.integers(1, 10**8), fee=st.integers(0, 10**6))
def test_a_charge_mirrors_its_balance_transaction(amount: int, fee: int) -> None:
    posting = charge_posting(
        "ch_1", Money(amount, "gbp"), Money(fee, "gbp"), occurred_at=AT, reference="booking:1"
    )
    assert posting.key == "charge:ch_1"
    assert posting.stripe_object_id == "ch_1"
    assert posting.reference == "booking:1"
    # The platform nets what Stripe's balance transaction nets: amount - fee.
    totals = by_account(posting)
    assert totals[PLATFORM] == amount - fee
    assert totals[CUSTOMERS] == -amount
    assert totals.get(PLATFORM_STRIPE_FEES, 0) == fee


def test_movements_between_platform_and_accounts() -> None:
    gbp = Money(500, "gbp")
    assert by_account(transfer_posting("acct_v", "tr_1", gbp, occurred_at=AT)) == {
        PLATFORM: -500,
        "acct_v": 500,
    }
    assert by_account(reversal_posting("acct_v", "trr_1", gbp, occurred_at=AT)) == {
        PLATFORM: 500,
        "acct_v": -500,
    }
    assert by_account(refund_posting(PLATFORM, "re_1", gbp, occurred_at=AT)) == {
        PLATFORM: -500,
        CUSTOMERS: 500,
    }
    keys = [
        transfer_posting("a", "tr_1", gbp, occurred_at=AT).key,
        reversal_posting("a", "trr_1", gbp, occurred_at=AT).key,
        refund_posting(PLATFORM, "re_1", gbp, occurred_at=AT).key,
    ]
    assert keys == ["transfer:tr_1", "reversal:trr_1", "refund:re_1"]


def test_a_dispute_withdrawn_then_reinstated_or_lost() -> None:
    withdrawn = dispute_txn_posting(
        PLATFORM, "dp_1", "txn_1", Money(-10_000, "gbp"), Money(1_500, "gbp"), occurred_at=AT
    )
    assert by_account(withdrawn) == {
        PLATFORM: -11_500,
        DISPUTES: 10_000,
        PLATFORM_STRIPE_FEES: 1_500,
    }
    reinstated = dispute_txn_posting(
        PLATFORM, "dp_1", "txn_2", Money(10_000, "gbp"), Money(-1_500, "gbp"), occurred_at=AT
    )
    assert by_account(reinstated) == {
        PLATFORM: 11_500,
        DISPUTES: -10_000,
        PLATFORM_STRIPE_FEES: -1_500,
    }
    assert withdrawn.key != reinstated.key  # one posting per balance transaction
    lost = dispute_lost_posting("dp_1", Money(10_000, "gbp"), occurred_at=AT)
    assert by_account(lost) == {DISPUTES: -10_000, CUSTOMERS: 10_000}


@given(
    amount=st.integers(min_value=50, max_value=99_999_999),
    fee_share=st.integers(min_value=0, max_value=10_000),
    stripe_fee=st.integers(min_value=0, max_value=100_000),
)
def test_destination_charge_posting_balances_and_moves_what_stripe_moves(
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
    posting = destination_charge_posting(charge, kind="invoice", reference="r")
    totals = per_account(posting.entries)
    assert sum(totals.values()) == 0
    assert totals.get(ACCT, 0) == amount - fee == charge.account_share.amount
    assert totals.get(PLATFORM, 0) == fee - stripe_fee
    assert totals.get(CUSTOMERS, 0) == -amount
    assert totals.get(PLATFORM_STRIPE_FEES, 0) == stripe_fee
    assert charge.account_share.amount + charge.platform_fee.amount == amount
    assert (posting.key, posting.kind, posting.stripe_object_id) == (
        "charge:ch_1",
        "invoice",
        "ch_1",
    )
    assert all(entry.amount.amount for entry in posting.entries)  # no zero lines


def test_destination_charge_posting_lines_are_the_balance_transactions() -> None:
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
        for e in destination_charge_posting(charge, kind="x", reference="r").entries
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


def test_destination_refund_postings_reverse_in_stripes_amounts_under_the_engines_keys() -> None:
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
    postings = destination_refund_postings(refund, reference="r")
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


def test_a_charge_without_a_stripe_fee_has_no_fee_lines_and_keeps_its_kind() -> None:
    posting = charge_posting(
        "ch_2",
        Money(700, "eur"),
        Money(0, "eur"),
        occurred_at=AT,
        reference="course_sales:enrollment:1",
        plugin="course_sales",
        kind="course_sale",
        description="course sale",
    )
    assert [(e.account, e.amount.amount) for e in posting.entries] == [
        (CUSTOMERS, -700),
        (PLATFORM, 700),
    ]
    assert (posting.key, posting.kind, posting.plugin, posting.description) == (
        "charge:ch_2",
        "course_sale",
        "course_sales",
        "course sale",
    )


@given(
    amount=st.integers(1, 10**8),
    fee=st.integers(0, 10**6),
    application_fee=st.integers(0, 10**8),
)
def test_a_direct_charge_mirrors_the_accounts_charge_and_the_platforms_application_fee(
    amount: int, fee: int, application_fee: int
) -> None:
    """A charge on a connected account's own balance: Stripe's one ``charge``
    transaction there (amount, one ``fee`` of Stripe's fee plus the application fee)
    is one entry each, and the platform gets the application fee."""
    if application_fee > amount:
        with pytest.raises(InvalidAmount):
            direct_charge_posting(
                ACCT,
                "ch_1",
                Money(amount, "usd"),
                Money(fee, "usd"),
                Money(application_fee, "usd"),
                occurred_at=AT,
            )
        return
    posting = direct_charge_posting(
        ACCT,
        "ch_1",
        Money(amount, "usd"),
        Money(fee, "usd"),
        Money(application_fee, "usd"),
        occurred_at=AT,
    )
    assert posting.key == "charge:ch_1"
    assert posting.stripe_object_id == "ch_1"
    lines = [entry.amount.amount for entry in posting.entries if entry.account == ACCT]
    assert lines[0] == amount
    if fee + application_fee:
        assert lines[1:] == [-(fee + application_fee)]
    totals = by_account(posting)
    assert sum(totals.values()) == 0
    assert totals[ACCT] == amount - fee - application_fee
    assert totals.get(f"{ACCT}:stripe_fees", 0) == fee
    assert totals.get(PLATFORM, 0) == application_fee
