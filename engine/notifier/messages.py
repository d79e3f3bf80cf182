"""Plain-language wording of notifications: payout failure reasons and lifecycle notices.

Pure functions, no I/O, so any part of the engine (the dashboards, the API's
account view) can say what went wrong in the same words the notifier emails.
``payout_failure_reason(code)`` maps Stripe's payout ``failure_code`` values
(https://docs.stripe.com/api/payouts/failures) and the engine's transfer
failure codes to a reason and a next step for the operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.core.orders import LifecycleEvent, PayoutFailure

__all__ = [
    "Message",
    "lifecycle_message",
    "payout_failure_message",
    "payout_failure_reason",
]

_UPDATE_BANK = "Ask the account holder to update their bank details."

# code -> (what happened, what to do). Reasons are phrased to follow
# "failed: ..." in a sentence; next steps are addressed to the operator,
# who relays them to the account holder.
_PAYOUT_FAILURES: Mapping[str, tuple[str, str]] = {
    "no_account": (
        "the bank account does not exist",
        _UPDATE_BANK,
    ),
    "account_closed": (
        "the bank account has been closed",
        "Ask the account holder to add a new bank account.",
    ),
    "account_frozen": (
        "the bank account is frozen",
        "Ask the account holder to contact their bank, or to add another bank account.",
    ),
    "bank_account_restricted": (
        "the bank account does not accept this kind or number of payouts (often a savings account)",
        "Ask the account holder to add a checking account that accepts payouts.",
    ),
    "bank_ownership_changed": (
        "the bank branch changed owner and the account details are no longer valid",
        "Ask the account holder to get the new details from their bank and update them.",
    ),
    "could_not_process": (
        "the bank could not process the payout",
        "Ask the account holder to check their bank details; Stripe support can help if "
        "they are correct.",
    ),
    "debit_not_authorized": (
        "the bank account does not allow debits, which Stripe needs in order to pay out",
        "Ask the account holder to allow debits with their bank, or to add another account.",
    ),
    "declined": (
        "the bank declined the payout",
        "Ask the account holder to contact their bank before the payout is retried.",
    ),
    "insufficient_funds": (
        "the Stripe balance was too low to cover the payout",
        "Check the account's Stripe balance (refunds or disputes may have reduced it); "
        "the payout can be retried once funds are available.",
    ),
    "invalid_account_number": (
        "the account number is not valid for that bank",
        _UPDATE_BANK,
    ),
    "incorrect_account_holder_name": (
        "the bank says the account holder's name is wrong",
        "Ask the account holder to correct the name on their bank account details.",
    ),
    "incorrect_account_holder_address": (
        "the bank says the account holder's address is wrong",
        "Ask the account holder to correct the address on their bank account details.",
    ),
    "incorrect_account_holder_tax_id": (
        "the bank says the account holder's tax ID is wrong",
        "Ask the account holder to correct their tax ID.",
    ),
    "invalid_currency": (
        "the bank account cannot receive this currency",
        "Ask the account holder to add a bank account in this currency.",
    ),
    "unsupported_card": (
        "the bank no longer supports payouts to this card",
        "Ask the account holder to add a bank account or another debit card.",
    ),
    # Transfer failures the engine reports (the account cannot take money yet).
    "account_restricted": (
        "the connected account is restricted and cannot receive transfers",
        "Ask the account holder to finish the information Stripe asks for; the transfer "
        "is held and retried once the account can receive funds.",
    ),
    "payouts_disabled": (
        "payouts are disabled on the connected account",
        "Ask the account holder to complete onboarding; the money waits on their balance.",
    ),
    # A business model held a beneficiary's share (three_sided_bookings does).
    "held": (
        "the connected account cannot receive funds yet, so the share is held",
        "Ask the account holder to finish what Stripe asks for; the held money is sent "
        "automatically once the account can receive funds.",
    ),
}

_UNKNOWN = (
    "Stripe reported a failure without a known reason",
    "Look the payout up in the Stripe dashboard, and ask the account holder to check "
    "their bank details.",
)


def payout_failure_reason(code: str) -> tuple[str, str]:
    """The plain-language reason for a payout failure code and what to do about it.

    Args:
        code: Stripe's ``failure_code`` (``"no_account"``), or the engine's
            transfer failure code (``"account_restricted"``).

    Returns:
        ``(reason, what_to_do)``: a lower-case clause (``"the bank account does
        not exist"``) and a sentence addressed to the operator. Unknown codes get
        a generic pair rather than an error, so a new Stripe code never breaks
        a notification.
    """
    return _PAYOUT_FAILURES.get(code.strip().lower(), _UNKNOWN)


@dataclass(frozen=True, slots=True)
class Message:
    """A notification in words: an email subject line and a plain-text body."""

    subject: str
    text: str


def payout_failure_message(failure: PayoutFailure) -> Message:
    """Say what failed, why and what to do, e.g. for an email.

    Example: ``"Payout of 12.00 USD to acct_1 failed: the bank account does not
    exist (no_account). Ask the account holder to update their bank details."``
    """
    reason, what_to_do = payout_failure_reason(failure.failure_code)
    what = "Payout" if failure.kind == "payout" else "Transfer"
    headline = (
        f"{what} of {failure.amount.format()} to {failure.account_id} failed: "
        f"{reason} ({failure.failure_code})."
    )
    lines = [f"{headline} {what_to_do}", ""]
    lines.append(f"{what}: {failure.stripe_object_id}")
    if failure.reference:
        lines.append(f"Reference: {failure.reference}")
    if failure.message:
        # Stripe's failure_message for payouts, the business model's reason
        # for a held transfer.
        lines.append(f"Details: {failure.message}")
    subject = f"{what} to {failure.account_id} failed: {reason}"
    return Message(subject=subject, text="\n".join(lines) + "\n")


def _humanise(name: str) -> str:
    """``"creator_subscriptions.subscription.renewed"`` -> ``"Subscription renewed"``."""
    parts = [part for part in name.split(".") if part]
    tail = parts[-2:] if len(parts) >= 2 else parts
    words = " ".join(part.replace("_", " ") for part in tail).strip()
    return words[:1].upper() + words[1:] if words else "Something changed"


def _detail_lines(data: Mapping[str, Any]) -> list[str]:
    return [f"{key.replace('_', ' ')}: {value}" for key, value in sorted(data.items())]


def lifecycle_message(event: LifecycleEvent) -> Message:
    """Say which state change happened, to what, e.g. ``"Account updated: acct_1"``."""
    what = _humanise(event.name)
    account = f" (account {event.account_id})" if event.account_id else ""
    subject = f"{what}: {event.subject_id}{account}"
    lines = [f"{subject}.", "", f"Event: {event.name}"]
    lines.append(f"When: {event.occurred_at.isoformat()}")
    lines += _detail_lines(event.data)
    return Message(subject=subject, text="\n".join(lines) + "\n")
