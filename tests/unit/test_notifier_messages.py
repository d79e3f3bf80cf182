"""The notifier's plain-language wording: payout failure reasons and lifecycle notices."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.core.money import Money
from engine.core.orders import LifecycleEvent, PayoutFailure
from engine.notifier.messages import (
    lifecycle_message,
    payout_failure_message,
    payout_failure_reason,
)

# Every code Stripe documents for payout failures, plus the transfer codes.
KNOWN_CODES = [
    "account_closed",
    "account_frozen",
    "bank_account_restricted",
    "bank_ownership_changed",
    "could_not_process",
    "debit_not_authorized",
    "declined",
    "insufficient_funds",
    "invalid_account_number",
    "incorrect_account_holder_name",
    "incorrect_account_holder_address",
    "incorrect_account_holder_tax_id",
    "invalid_currency",
    "no_account",
    "unsupported_card",
    "account_restricted",
    "payouts_disabled",
    "held",
]


def failure(code: str, amount: Money | None = None, kind: str = "payout") -> PayoutFailure:
    return PayoutFailure(
        account_id="acct_1Abc",
        kind=kind,
        failure_code=code,
        amount=amount or Money(1200, "usd"),
        stripe_object_id="po_123",
    )


def test_the_example_sentence_reads_exactly_as_promised() -> None:
    message = payout_failure_message(failure("no_account"))
    assert message.text.splitlines()[0] == (
        "Payout of 12.00 USD to acct_1Abc failed: the bank account does not exist "
        "(no_account). Ask the account holder to update their bank details."
    )
    assert message.subject == "Payout to acct_1Abc failed: the bank account does not exist"
    assert "Payout: po_123" in message.text


@pytest.mark.parametrize(
    ("code", "reason_words", "step_words"),
    [
        ("no_account", "does not exist", "update their bank details"),
        ("account_closed", "closed", "add a new bank account"),
        ("insufficient_funds", "balance was too low", "retried once funds are available"),
        ("debit_not_authorized", "does not allow debits", "allow debits"),
        ("invalid_currency", "cannot receive this currency", "in this currency"),
        ("could_not_process", "could not process", "check their bank details"),
    ],
)
def test_sandbox_failure_codes_get_specific_reasons_and_next_steps(
    code: str, reason_words: str, step_words: str
) -> None:
    reason, what_to_do = payout_failure_reason(code)
    assert reason_words in reason
    assert step_words in what_to_do


@pytest.mark.parametrize("code", KNOWN_CODES)
def test_every_known_code_reads_as_a_clause_and_a_sentence(code: str) -> None:
    reason, what_to_do = payout_failure_reason(code)
    generic, _ = payout_failure_reason("something_new")
    assert reason != generic, f"{code} has its own reason"
    assert reason[0].islower(), "a clause that follows 'failed: '"
    assert not reason.endswith(".")
    assert what_to_do[0].isupper()
    assert what_to_do.endswith(".")
    assert "_" not in reason, "no codes inside the words"


def test_unknown_codes_get_a_generic_answer_not_an_error() -> None:
    reason, what_to_do = payout_failure_reason("brand_new_code")
    assert "without a known reason" in reason
    assert "Stripe dashboard" in what_to_do
    message = payout_failure_message(failure("brand_new_code"))
    assert "(brand_new_code)" in message.text


def test_codes_are_matched_case_and_space_insensitively() -> None:
    assert payout_failure_reason(" No_Account ") == payout_failure_reason("no_account")


def test_zero_decimal_currencies_and_transfers_are_worded_right() -> None:
    message = payout_failure_message(failure("account_restricted", Money(1200, "jpy"), "transfer"))
    assert message.text.startswith(
        "Transfer of 1200 JPY to acct_1Abc failed: the connected account is restricted"
    )
    assert "Transfer: po_123" in message.text


def test_reference_and_stripe_message_are_included_when_known() -> None:
    detailed = PayoutFailure(
        account_id="acct_1",
        kind="payout",
        failure_code="declined",
        amount=Money(5, "eur"),
        stripe_object_id="po_9",
        reference="booking:42",
        message="The bank has declined this transfer.",
    )
    text = payout_failure_message(detailed).text
    assert "Payout of 0.05 EUR" in text
    assert "Reference: booking:42" in text
    assert "Details: The bank has declined this transfer." in text


def test_a_held_booking_share_is_explained() -> None:
    held = PayoutFailure(
        account_id="acct_venue",
        kind="transfer",
        failure_code="held",
        amount=Money(4500, "gbp"),
        stripe_object_id="booking:7:transfer:venue",
        reference="booking:7",
        message="account cannot receive transfers",
    )
    text = payout_failure_message(held).text
    assert text.startswith(
        "Transfer of 45.00 GBP to acct_venue failed: the connected account cannot receive "
        "funds yet, so the share is held (held)."
    )
    assert "sent automatically once the account can receive funds" in text
    assert "Reference: booking:7" in text


def test_lifecycle_message_names_the_change_the_object_and_the_account() -> None:
    event = LifecycleEvent(
        "creator_subscriptions.subscription.renewed",
        subject_id="sub_1",
        account_id="acct_1",
        data={"tier": "gold", "period_end": "2025-01-31"},
        occurred_at=datetime(2025, 1, 1, tzinfo=UTC),
    )
    message = lifecycle_message(event)
    assert message.subject == "Subscription renewed: sub_1 (account acct_1)"
    lines = message.text.splitlines()
    assert lines[0] == "Subscription renewed: sub_1 (account acct_1)."
    assert "Event: creator_subscriptions.subscription.renewed" in lines
    assert "When: 2025-01-01T00:00:00+00:00" in lines
    assert "tier: gold" in lines
    assert "period end: 2025-01-31" in lines


@pytest.mark.parametrize(
    ("name", "headline"),
    [
        ("engine.account.updated", "Account updated: x"),
        ("three_sided_bookings.booking.cancelled_refunded", "Booking cancelled refunded: x"),
        ("ping", "Ping: x"),
    ],
)
def test_lifecycle_names_are_humanised(name: str, headline: str) -> None:
    assert lifecycle_message(LifecycleEvent(name, subject_id="x")).subject == headline
