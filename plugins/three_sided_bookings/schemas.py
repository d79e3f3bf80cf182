"""Request and response bodies of the plugin (msgspec structs), shared by services and API.

Amounts are integers of the currency's minor unit (pence, cents, yen) beside a
lowercase ``currency``; times are ISO 8601 with an offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from engine.api.fields import EmailText, Label, Line, LongText, Note, RequestBody, Text
from engine.core.authentication import CustomerAction

__all__ = [
    "AccountRef",
    "AgreementInput",
    "AgreementView",
    "BookingAction",
    "BookingList",
    "BookingView",
    "CustomerInput",
    "LedgerLineView",
    "MessageInput",
    "NewBooking",
    "NewProvider",
    "NewService",
    "NewVenue",
    "PaymentModel",
    "PayoutScheduleInput",
    "PayoutScheduleView",
    "ProviderView",
    "Reconciliation",
    "ServiceUpdate",
    "ServiceView",
    "SplitLegView",
    "SplitView",
    "StripeObjectView",
    "TransitionView",
    "VenueTermsInput",
    "VenueTermsView",
    "VenueView",
]

PaymentModel = Literal["full", "deposit", "arrival"]
Bps = Annotated[int, msgspec.Meta(ge=0, le=10_000, description="basis points: 1250 = 12.5 %")]
MinorUnits = Annotated[
    int, msgspec.Meta(ge=0, le=99_999_999, description="minor units of the currency")
]
Price = Annotated[
    int,
    msgspec.Meta(ge=50, le=99_999_999, description="minor units; Stripe takes 50 to 99,999,999"),
]
RowRef = Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{3}$", examples=["gbp"])]
AccountRef = Annotated[
    str, msgspec.Meta(pattern=r"^acct_[A-Za-z0-9]{1,60}$", description="a connected account id")
]
Name = Annotated[Line, msgspec.Meta(min_length=1, max_length=200)]
ServiceType = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_*-]{1,64}$", examples=["massage"])]


class _Input(RequestBody, frozen=True):
    """Base of request bodies: immutable, unknown fields refused."""


class _View(msgspec.Struct, frozen=True, kw_only=True):
    """Base of response bodies."""


# ---------------------------------------------------------------- catalogue


class NewService(_Input, frozen=True):
    """A bookable service."""

    name: Name
    service_type: ServiceType
    duration_minutes: Annotated[int, msgspec.Meta(gt=0, le=24 * 60)]
    price: Price
    currency: Currency | None = None


class ServiceUpdate(_Input, frozen=True):
    """Change a service's price or take it off sale (existing bookings keep their price)."""

    price: Price | None = None
    active: bool | None = None
    name: Name | None = None


class ServiceView(_View, frozen=True):
    """A service as stored."""

    id: int
    name: str
    service_type: str
    duration_minutes: int
    price: int
    currency: str
    active: bool


class NewProvider(_Input, frozen=True):
    """A provider, paid through an onboarded connected account (role ``provider``)."""

    account_id: AccountRef
    display_name: Name
    email: EmailText = ""


class ProviderView(_View, frozen=True):
    """A provider."""

    id: int
    account_id: str
    display_name: str
    email: str


class NewVenue(_Input, frozen=True):
    """A venue, paid through an onboarded connected account (role ``venue``)."""

    account_id: AccountRef
    display_name: Name
    address: Note = ""


class VenueView(_View, frozen=True):
    """A venue."""

    id: int
    account_id: str
    display_name: str
    address: str


class AgreementInput(_Input, frozen=True):
    """A provider's share of the net (value minus the platform's fee) for a service type."""

    rate_bps: Bps
    service_type: ServiceType = "*"


class AgreementView(_View, frozen=True):
    """A provider agreement; ``version`` grows with each change."""

    provider_id: int
    service_type: str
    rate_bps: int
    version: int
    updated_at: datetime


class VenueTermsInput(_Input, frozen=True):
    """How the venue is paid: a share of the net, or a fixed fee per booking and currency."""

    kind: Literal["rate", "fixed"]
    rate_bps: Bps | None = None
    fixed: Annotated[dict[Currency, MinorUnits], msgspec.Meta(max_length=200)] = msgspec.field(
        default_factory=dict
    )


class VenueTermsView(_View, frozen=True):
    """A venue's terms; ``version`` grows with each change."""

    venue_id: int
    kind: str
    rate_bps: int | None
    fixed: dict[str, int]
    version: int
    updated_at: datetime


class PayoutScheduleInput(_Input, frozen=True):
    """Stripe's ``settings[payouts][schedule]`` for a provider's or venue's account."""

    interval: Literal["manual", "daily", "weekly", "monthly"]
    delay_days: Annotated[int, msgspec.Meta(ge=0, le=365)] | None = None
    weekly_anchor: (
        Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] | None
    ) = None
    monthly_anchor: Annotated[int, msgspec.Meta(ge=1, le=31)] | None = None


class PayoutScheduleView(_View, frozen=True):
    """The schedule as last set on Stripe."""

    account_id: str
    interval: str
    delay_days: int | None
    weekly_anchor: str | None
    monthly_anchor: int | None
    version: int
    updated_by: str
    updated_at: datetime


# ---------------------------------------------------------------- bookings


TestClockId = Annotated[str, msgspec.Meta(pattern=r"^clock_[A-Za-z0-9]+$", max_length=64)]
"""A Stripe test clock's id."""


class CustomerInput(_Input, frozen=True):
    """Who is booking (kept for receipts and dispute evidence)."""

    name: Name
    email: EmailText = ""
    reference: Label = ""
    test_clock: (
        Annotated[str, msgspec.Meta(pattern=r"^clock_[A-Za-z0-9]+$", max_length=64)] | None
    ) = None
    """Test mode: a Stripe test clock; the booking's customer lives on it, and the
    booking's timers (expiry, completion) run on its time."""


class NewBooking(_Input, frozen=True):
    """Book a service by a provider at a venue.

    With ``payment_method`` the booking is paid (or the card authorised or
    saved) at once; without it, it waits in ``pending_payment`` for ``pay``.
    """

    service_id: RowRef
    provider_id: RowRef
    venue_id: RowRef
    starts_at: datetime
    payment_model: PaymentModel
    customer: CustomerInput
    payment_method: Annotated[Line, msgspec.Meta(min_length=1, max_length=255)] | None = None


class BookingAction(_Input, frozen=True):
    """Parameters of an action (each action reads the ones it needs)."""

    payment_method: Annotated[Line, msgspec.Meta(min_length=1, max_length=255)] | None = None
    amount: Annotated[int, msgspec.Meta(gt=0, le=99_999_999)] | None = None
    reason: Note = ""
    statement: LongText = ""


class MessageInput(_Input, frozen=True):
    """A message between the customer and the business (part of dispute evidence)."""

    text: Annotated[Text, msgspec.Meta(min_length=1, max_length=2000)]


class SplitLegView(_View, frozen=True):
    """One party's share."""

    role: str
    account_id: str | None
    amount: int


class SplitView(_View, frozen=True):
    """The stored split of the booking's value and the rules that produced it."""

    total: int
    currency: str
    rule_id: str
    rule_version: int
    provider_terms: str
    venue_terms: str
    legs: list[SplitLegView]


class ChargeIds(_View, frozen=True):
    """One PaymentIntent of the booking and its charge on Stripe."""

    kind: str
    payment_intent: str
    charge: str | None
    status: str
    amount: int
    captured: int
    refunded: int


class TransferIds(_View, frozen=True):
    """A beneficiary's share: its Stripe transfer once paid (``None`` while held)."""

    role: str
    account_id: str
    transfer: str | None
    amount: int
    amount_reversed: int
    status: str


class RefundIds(_View, frozen=True):
    """A refund of one of the booking's charges."""

    refund: str
    charge: str | None
    amount: int
    status: str = "succeeded"
    """``failed`` once Stripe says the refund failed (its money came back)."""


class ReversalIds(_View, frozen=True):
    """A reversal of (part of) a transfer, after a refund or a lost dispute."""

    reversal: str
    transfer: str | None
    amount: int
    reason: str


class BookingStripeIds(_View, frozen=True):
    """The booking's money on Stripe, to tie transfers and payouts to bookings."""

    charges: list[ChargeIds]
    transfers: list[TransferIds]
    refunds: list[RefundIds]
    reversals: list[ReversalIds]


class BookingView(_View, frozen=True):
    """A booking, its state, the actions the caller may take and its money."""

    id: int
    reference: str
    state: str
    allowed_actions: list[str]
    payment_model: str
    service_id: int
    service_name: str
    service_type: str
    provider_id: int
    provider_account: str
    venue_id: int
    venue_account: str
    customer_name: str
    customer_email: str
    customer_reference: str
    starts_at: datetime
    ends_at: datetime
    amount: int
    currency: str
    deposit_amount: int
    collected: int
    refunded: int
    held: int
    split: SplitView
    transfer_group: str
    test_clock: str | None
    """The Stripe test clock whose time the booking's timers follow (test mode)."""
    stripe: BookingStripeIds
    """Stripe's ids of the booking's charges, transfers, refunds and reversals."""
    created_at: datetime
    updated_at: datetime
    action_required: bool = False
    """A payment (or the card's set-up) waits for the customer to authenticate it."""
    customer_action: CustomerAction | None = None
    """What the customer must do: the intent's client secret and Stripe's next action."""


class BookingList(_View, frozen=True):
    """A page of bookings; pass ``next_cursor`` as ``cursor`` for the next one."""

    data: list[BookingView]
    next_cursor: str | None


class TransitionView(_View, frozen=True):
    """One entry of the audit trail."""

    transition: str
    from_state: str
    to_state: str
    actor: str
    actor_id: str
    data: dict[str, Any]
    created_at: datetime


class StripeObjectView(_View, frozen=True):
    """A Stripe object linked to the booking, as recorded (and, if checked, as Stripe has it)."""

    type: str
    id: str
    amount: int
    currency: str
    status: str
    role: str | None = None
    fee: int | None = None
    idempotency_key: str | None = None
    stripe_amount: int | None = None


class LedgerLineView(_View, frozen=True):
    """A ledger entry of the booking."""

    key: str
    kind: str
    account: str
    amount: int
    currency: str
    stripe_object_id: str


class Reconciliation(_View, frozen=True):
    """Every Stripe object of a booking, its ledger entries, and what does not match."""

    booking_id: int
    transfer_group: str
    objects: list[StripeObjectView]
    ledger: list[LedgerLineView]
    checked_with_stripe: bool
    problems: list[str]
