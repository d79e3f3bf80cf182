"""Request and response bodies of the creator_subscriptions API (msgspec structs, no HTTP).

Amounts are integer minor units with a lowercase ISO 4217 currency beside them.
List responses carry ``next_cursor``: pass it back as ``cursor`` for the next page.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from engine.api.fields import AccountId, EmailText, Label, Line, Note, RequestBody, Text
from engine.core.authentication import CustomerAction

__all__ = [
    "Balance",
    "BalanceAmount",
    "ChangeTier",
    "CreatorView",
    "FanView",
    "InvoiceRefundView",
    "InvoiceView",
    "NewCreator",
    "NewFan",
    "NewOneTimePayment",
    "NewRefund",
    "NewSubscription",
    "NewTier",
    "OnboardingView",
    "OneTimePaymentView",
    "PayoutView",
    "PayoutsPage",
    "RefundView",
    "SubscriberView",
    "SubscribersPage",
    "SubscriptionView",
    "TierUpdate",
    "TierView",
    "TransactionView",
    "TransactionsPage",
]

Name = Annotated[Line, msgspec.Meta(min_length=1, max_length=100)]
Handle = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{1,62}$", examples=["ada"])]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z]{3}$", examples=["usd"])]
MinorUnits = Annotated[int, msgspec.Meta(ge=1, le=99_999_999, description="minor units")]
Interval = Literal["month", "year"]
Ref = Annotated[Line, msgspec.Meta(min_length=1, max_length=200)]
SerialId = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class _In(RequestBody, frozen=True):
    """Base of request bodies: unknown fields are refused."""


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """Base of response bodies."""


# ---------------------------------------------------------------- creators


class NewCreator(_In, frozen=True):
    """A creator to onboard: an Express connected account is created for them."""

    handle: Handle
    display_name: Annotated[Line, msgspec.Meta(min_length=1, max_length=200)]
    email: EmailText | None = None
    country: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")] = "US"
    default_currency: Currency | None = None


class CreatorView(_Out, frozen=True):
    """A creator and whether they can sell (``charges_enabled``)."""

    id: int
    account_id: str
    handle: str
    display_name: str
    default_currency: str
    status: str
    charges_enabled: bool
    payouts_enabled: bool
    payout_failure_code: str | None


class OnboardingView(_Out, frozen=True):
    """The creator and a single-use Stripe-hosted onboarding link."""

    creator: CreatorView
    onboarding_url: str
    expires_at: int


# ---------------------------------------------------------------- tiers


class NewTier(_In, frozen=True):
    """A membership tier: a recurring price in Stripe."""

    name: Name
    amount: Annotated[int, msgspec.Meta(ge=50, le=99_999_999)]
    currency: Currency | None = None
    interval: Interval = "month"
    description: Annotated[Text, msgspec.Meta(max_length=1000)] = ""


class TierUpdate(_In, frozen=True):
    """Rename, re-describe or re-price a tier; a new price applies to new subscribers only."""

    name: Name | None = None
    description: Annotated[Text, msgspec.Meta(max_length=1000)] | None = None
    amount: Annotated[int, msgspec.Meta(ge=50, le=99_999_999)] | None = None


class TierView(_Out, frozen=True):
    """A tier as fans see it."""

    id: int
    creator_account_id: str
    name: str
    description: str
    amount: int
    currency: str
    interval: str
    archived: bool
    stripe_product_id: str | None
    stripe_price_id: str | None


# ---------------------------------------------------------------- fans and subscriptions


class NewFan(_In, frozen=True):
    """A fan, by the integrating service's own reference, with a payment method.

    ``payment_method`` is a Stripe PaymentMethod id (``pm_...``) collected
    client-side; Stripe's test values (``pm_card_visa``) work in the sandbox.
    """

    external_ref: Ref
    email: EmailText = ""
    name: Label = ""
    payment_method: (
        Annotated[str, msgspec.Meta(pattern=r"^pm_[A-Za-z0-9_]+$", max_length=255)] | None
    ) = None
    test_clock: (
        Annotated[str, msgspec.Meta(pattern=r"^clock_[A-Za-z0-9]+$", max_length=255)] | None
    ) = None


class NewPaymentMethod(_In, frozen=True):
    """A new card for a fan: it becomes the default of the fan and of their subscriptions."""

    payment_method: Annotated[str, msgspec.Meta(pattern=r"^pm_[A-Za-z0-9_]+$", max_length=255)]


class FanView(_Out, frozen=True):
    """A fan and their Stripe customer."""

    id: int
    external_ref: str
    email: str
    name: str
    stripe_customer_id: str | None
    has_payment_method: bool
    customer_action: CustomerAction | None = None
    """Set while a card being saved waits for the fan's authentication (SetupIntent):
    confirm it with the client secret; the card becomes the default once it succeeds."""


class NewSubscription(_In, frozen=True):
    """Subscribe a fan to a creator's tier."""

    fan_id: SerialId
    tier_id: SerialId


class ChangeTier(_In, frozen=True):
    """Move a subscription to another tier of the same creator (prorated)."""

    tier_id: SerialId


class InvoiceIds(_Out, frozen=True):
    """One invoice of a subscription and Stripe's ids of the money it moved."""

    invoice: str
    status: str
    amount_paid: int
    application_fee: int
    creator_earnings: int
    payment_intent: str | None
    charge: str | None
    transfer: str | None
    period_start: int
    period_end: int


class SubscriptionView(_Out, frozen=True):
    """A subscription as we mirror it from Stripe."""

    id: int
    stripe_subscription_id: str | None
    fan_id: int
    creator_account_id: str
    tier_id: int
    status: str
    currency: str
    current_period_start: int
    current_period_end: int
    cancel_at_period_end: bool
    canceled_at: int | None
    paused: bool
    application_fee_percent: str
    rule_id: str
    rule_version: int
    action_required: bool = False
    """An invoice of the subscription waits for the fan to authenticate its payment."""
    invoices: list[InvoiceIds] = []
    """The subscription's invoices, newest first, with Stripe's ids of their payment,
    charge and transfer to the creator (filled by ``GET /subscriptions/{id}``)."""
    customer_action: CustomerAction | None = None
    """What the fan must do (client secret and next action, and the hosted invoice page)."""


class SubscriberView(_Out, frozen=True):
    """One of a creator's subscribers."""

    subscription_id: int
    fan_id: int
    fan_name: str
    tier_id: int
    tier_name: str
    status: str
    paused: bool
    cancel_at_period_end: bool
    current_period_end: int
    since: int


class SubscribersPage(_Out, frozen=True):
    """A page of subscribers, oldest first."""

    data: list[SubscriberView]
    next_cursor: str | None


class InvoiceView(_Out, frozen=True):
    """A subscription invoice and how its money divided."""

    stripe_invoice_id: str
    status: str
    billing_reason: str
    currency: str
    amount_paid: int
    application_fee: int
    creator_earnings: int
    stripe_fee: int
    period_start: int
    period_end: int


# ---------------------------------------------------------------- one-time payments


class NewOneTimePayment(_In, frozen=True):
    """A tip or a pay-per-view purchase from a fan to a creator."""

    fan_id: SerialId
    creator_account_id: AccountId
    amount: MinorUnits
    currency: Currency | None = None
    item_ref: Label = ""
    note: Note = ""


class NewRefund(_In, frozen=True):
    """Refund (part of) a one-time payment; the creator's share and fee reverse in proportion."""

    amount: MinorUnits | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None


class RefundView(_Out, frozen=True):
    """One refund and what it pulled back from the creator and the platform."""

    id: int
    stripe_refund_id: str | None
    amount: int
    currency: str
    transfer_reversed: int
    fee_refunded: int
    status: str


class InvoiceRefundView(_Out, frozen=True):
    """One refund of a subscription invoice and what it pulled back from creator and platform."""

    id: int
    stripe_invoice_id: str
    stripe_refund_id: str | None
    amount: int
    currency: str
    transfer_reversed: int
    fee_refunded: int
    status: str


class OneTimePaymentView(_Out, frozen=True):
    """A tip or pay-per-view payment and its split."""

    id: int
    kind: str
    fan_id: int
    creator_account_id: str
    item_ref: str
    amount: int
    currency: str
    application_fee: int
    creator_earnings: int
    status: str
    amount_refunded: int
    payment_intent_id: str | None
    rule_id: str
    rule_version: int
    customer_action: CustomerAction | None = None
    """Set while ``status`` is ``requires_action``: the fan authenticates the payment."""
    charge_id: str | None = None
    """Stripe's charge (``ch_...``) once paid."""
    transfer_id: str | None = None
    """The destination charge's transfer to the creator (``tr_...``)."""
    application_fee_id: str | None = None
    """The platform's application fee (``fee_...``)."""


# ---------------------------------------------------------------- earnings


class BalanceAmount(_Out, frozen=True):
    """An amount in one currency."""

    amount: int
    currency: str


class Balance(_Out, frozen=True):
    """A creator's balance: Stripe's view (available/pending) and the ledger's."""

    account_id: str
    available: list[BalanceAmount]
    pending: list[BalanceAmount]
    ledger: list[BalanceAmount]
    paid_out: list[BalanceAmount]
    disputed: list[BalanceAmount] = msgspec.field(default_factory=list)
    """The creator's charges (tips, invoices) under dispute or lost to one. With
    destination charges Stripe takes a dispute from the platform's balance, so
    this is not part of ``ledger``: it says which sales a chargeback hit."""


class TransactionView(_Out, frozen=True):
    """One ledger line on the creator's account."""

    id: int
    kind: str
    amount: int
    currency: str
    reference: str
    stripe_object_id: str
    description: str
    occurred_at: str


class TransactionsPage(_Out, frozen=True):
    """A page of ledger lines, newest first."""

    data: list[TransactionView]
    next_cursor: str | None


class PayoutView(_Out, frozen=True):
    """A payout to the creator's bank and, if it failed, why."""

    stripe_payout_id: str
    amount: int
    currency: str
    status: str
    failure_code: str | None
    failure_message: str
    arrival_date: int


class PayoutsPage(_Out, frozen=True):
    """The creator's payouts, newest first, and the account's payout flag."""

    data: list[PayoutView]
    payout_failure_code: str | None
    payouts_enabled: bool
    next_cursor: str | None
