"""The three_sided_bookings Piccolo app: catalogue, bookings and every money movement.

Tables are prefixed ``three_sided_bookings_``. Amounts are ``BigInt`` minor
units beside a ``currency``; Stripe ids are stored as given and unique where
Stripe's are. Every Stripe write has its idempotency key stored (unique) on the
row that records it, so the row and the Stripe object are one-to-one.

- catalogue: services, providers and venues (linked to connected accounts),
  provider agreements (rate per service type), venue terms (rate or fixed
  fee), payout schedules;
- bookings: the booking (state, payment model, amounts, split JSON,
  ``transfer_group``, Stripe customer and saved card), its transitions (the
  audit trail), charges (one per PaymentIntent), transfers (one per
  beneficiary and charge), held transfers, refunds, transfer reversals and
  disputes.

The schema is created by the engine's ``migrate`` from these classes; later
changes go in ``migrations/`` as Piccolo migration modules.
"""

from __future__ import annotations

from pathlib import Path

from piccolo.columns import (
    JSONB,
    BigInt,
    BigSerial,
    Boolean,
    ForeignKey,
    Integer,
    Serial,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.conf.apps import AppConfig
from piccolo.table import Table

__all__ = [
    "APP_CONFIG",
    "Booking",
    "BookingCharge",
    "BookingDispute",
    "BookingRefund",
    "BookingTransfer",
    "BookingTransition",
    "HeldTransfer",
    "PayoutSchedule",
    "Provider",
    "ProviderAgreement",
    "Service",
    "TransferReversal",
    "Venue",
    "VenueTerms",
]


class Service(Table, tablename="three_sided_bookings_services"):
    """Something a customer can book: a type (commission rules and agreements match it)."""

    id = Serial(primary_key=True)
    name = Varchar(length=200)
    service_type = Varchar(length=64, index=True)
    duration_minutes = Integer()
    price = BigInt()
    currency = Varchar(length=3)
    active = Boolean(default=True)
    created_at = Timestamptz()
    updated_at = Timestamptz()


class Provider(Table, tablename="three_sided_bookings_providers"):
    """A therapist or practitioner, paid through their connected account."""

    id = Serial(primary_key=True)
    account_id = Varchar(length=64, unique=True)
    display_name = Varchar(length=200)
    email = Varchar(length=254, default="")
    created_at = Timestamptz()


class Venue(Table, tablename="three_sided_bookings_venues"):
    """A spa, hotel or wellness centre, paid through its connected account."""

    id = Serial(primary_key=True)
    account_id = Varchar(length=64, unique=True)
    display_name = Varchar(length=200)
    address = Text(default="")
    created_at = Timestamptz()


class ProviderAgreement(Table, tablename="three_sided_bookings_provider_agreements"):
    """A provider's share of the net per service type (``*``: every other type).

    ``key`` is ``"<provider id>:<service type>"`` (unique); ``version`` grows
    with every change so a booking records which version priced it.
    """

    id = Serial(primary_key=True)
    key = Varchar(length=100, unique=True)
    provider = ForeignKey(references=Provider, index=True)
    service_type = Varchar(length=64)
    rate_bps = Integer()
    version = Integer(default=1)
    updated_at = Timestamptz()


class VenueTerms(Table, tablename="three_sided_bookings_venue_terms"):
    """How a venue is paid: ``rate`` (bps of the net) or ``fixed`` (per currency)."""

    id = Serial(primary_key=True)
    venue = ForeignKey(references=Venue, unique=True)
    kind = Varchar(length=8)
    rate_bps = Integer(null=True, default=None)
    fixed = JSONB(default={})
    version = Integer(default=1)
    updated_at = Timestamptz()


class PayoutSchedule(Table, tablename="three_sided_bookings_payout_schedules"):
    """A provider's or venue's payout schedule as last set on Stripe."""

    id = Serial(primary_key=True)
    account_id = Varchar(length=64, unique=True)
    interval = Varchar(length=16)
    delay_days = Integer(null=True, default=None)
    weekly_anchor = Varchar(length=16, null=True, default=None)
    monthly_anchor = Integer(null=True, default=None)
    version = Integer(default=1)
    updated_by = Varchar(length=200, default="")
    updated_at = Timestamptz()


class Booking(Table, tablename="three_sided_bookings_bookings"):
    """A booking: who, what, when, how it is paid, its state and its stored split.

    ``split`` is the whole value's split (platform, provider, venue) as priced
    at creation, with the commission rule and terms that produced it; it is
    never recomputed. ``timer_at``/``timer_name`` is the next timed transition.
    """

    id = BigSerial(primary_key=True)
    service = ForeignKey(references=Service)
    provider = ForeignKey(references=Provider, index=True)
    venue = ForeignKey(references=Venue, index=True)
    service_type = Varchar(length=64)
    service_name = Varchar(length=200)
    provider_account = Varchar(length=64, index=True)
    venue_account = Varchar(length=64, index=True)
    customer_name = Varchar(length=200, default="")
    customer_email = Varchar(length=254, default="")
    customer_reference = Varchar(length=200, default="")
    stripe_customer_id = Varchar(length=64, null=True, default=None)
    saved_payment_method = Varchar(length=64, null=True, default=None)
    payment_model = Varchar(length=16)
    state = Varchar(length=32, index=True)
    previous_state = Varchar(length=32, default="")
    state_entered_at = Timestamptz()
    process_name = Varchar(length=100)
    process_version = Integer(default=1)
    starts_at = Timestamptz(index=True)
    ends_at = Timestamptz()
    amount = BigInt()
    currency = Varchar(length=3)
    deposit_amount = BigInt(default=0)
    split = JSONB()
    policy = JSONB()
    transfer_group = Varchar(length=64, unique=True)
    timer_at = Timestamptz(null=True, default=None, index=True)
    timer_name = Varchar(length=64, default="")
    communication = JSONB(default=[])
    customer_action = JSONB(null=True, default=None)
    """A payment (or a card's set-up) waiting for the customer to authenticate it."""
    action_transition = Varchar(length=64, default="")
    """The transition the authenticated intent completes (``pay``); empty when the
    action is an off-session charge recorded as ``requires_action``."""
    test_clock = Varchar(length=64, null=True, default=None, index=True)
    """The Stripe test clock of the booking's customer (test mode): the booking's
    timers run on its time, as Stripe's payments of the booking do."""
    created_by = Varchar(length=200, default="")
    created_at = Timestamptz()
    updated_at = Timestamptz()


class BookingTransition(Table, tablename="three_sided_bookings_transitions"):
    """The audit trail: every transition taken, by whom, when, from/to, with its data."""

    id = BigSerial(primary_key=True)
    booking = ForeignKey(references=Booking, index=True)
    transition = Varchar(length=64)
    from_state = Varchar(length=32)
    to_state = Varchar(length=32)
    actor = Varchar(length=16)
    actor_id = Varchar(length=200, default="")
    data = JSONB(default={})
    created_at = Timestamptz()


class BookingCharge(Table, tablename="three_sided_bookings_charges"):
    """One PaymentIntent of a booking (``kind``: full, deposit, balance, authorization,
    arrival or fee) and its charge; ``split`` covers the captured amount."""

    id = BigSerial(primary_key=True)
    booking = ForeignKey(references=Booking, index=True)
    kind = Varchar(length=16)
    idempotency_key = Varchar(length=255, unique=True)
    stripe_payment_intent_id = Varchar(length=64, unique=True)
    stripe_charge_id = Varchar(length=64, null=True, default=None, index=True)
    balance_transaction = Varchar(length=64, default="")
    capture_method = Varchar(length=16, default="automatic")
    status = Varchar(length=32)
    amount = BigInt()
    captured = BigInt(default=0)
    refunded = BigInt(default=0)
    currency = Varchar(length=3)
    stripe_fee = BigInt(default=0)
    split = JSONB(null=True, default=None)
    refunded_split = JSONB(null=True, default=None)
    payment_id = BigInt(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz()


class BookingTransfer(Table, tablename="three_sided_bookings_transfers"):
    """A beneficiary's share of one charge: ``paid`` (transferred), ``held`` or ``cancelled``."""

    id = BigSerial(primary_key=True)
    booking = ForeignKey(references=Booking, index=True)
    charge = ForeignKey(references=BookingCharge)
    role = Varchar(length=16)
    account_id = Varchar(length=64, index=True)
    amount = BigInt()
    currency = Varchar(length=3)
    idempotency_key = Varchar(length=255, unique=True)
    stripe_transfer_id = Varchar(length=64, null=True, default=None, unique=True)
    amount_reversed = BigInt(default=0)
    status = Varchar(length=16)
    created_at = Timestamptz()
    updated_at = Timestamptz()


class HeldTransfer(Table, tablename="three_sided_bookings_held_transfers"):
    """No longer written: held shares are the engine's (``movements.hold_share``,
    ``marketplace_held_shares``). A database made before keeps its rows; at startup
    each share still ``held`` here is handed to the engine and marked ``moved``
    (``legacy.adopt_legacy_holds``)."""

    id = BigSerial(primary_key=True)
    transfer = ForeignKey(references=BookingTransfer, unique=True)
    account_id = Varchar(length=64, index=True)
    reason = Text(default="")
    attempts = Integer(default=0)
    status = Varchar(length=16, index=True)
    held_at = Timestamptz()
    released_at = Timestamptz(null=True, default=None)


class BookingRefund(Table, tablename="three_sided_bookings_refunds"):
    """A refund of (part of) a charge and its share of each leg (made by the plugin, or
    in Stripe: ``reason`` ``stripe``, ``idempotency_key`` ``stripe:<re>``, or the
    plugin's own key when its transaction was lost)."""

    id = BigSerial(primary_key=True)
    booking = ForeignKey(references=Booking, index=True)
    charge = ForeignKey(references=BookingCharge)
    idempotency_key = Varchar(length=255, unique=True)
    stripe_refund_id = Varchar(length=64, unique=True)
    amount = BigInt()
    currency = Varchar(length=3)
    split = JSONB()
    reason = Varchar(length=64, default="")
    status = Varchar(length=16, default="succeeded")
    """``succeeded``; ``failed`` once Stripe says so (no longer in the charge's ``refunded``)."""
    created_at = Timestamptz()


class TransferReversal(Table, tablename="three_sided_bookings_reversals"):
    """A reversal of (part of) a transfer: after a refund or a lost dispute."""

    id = BigSerial(primary_key=True)
    booking = ForeignKey(references=Booking, index=True)
    transfer = ForeignKey(references=BookingTransfer)
    idempotency_key = Varchar(length=255, unique=True)
    stripe_reversal_id = Varchar(length=64, unique=True)
    amount = BigInt()
    currency = Varchar(length=3)
    reason = Varchar(length=32)
    created_at = Timestamptz()


class BookingDispute(Table, tablename="three_sided_bookings_disputes"):
    """A dispute on one of the booking's charges, its evidence and its outcome."""

    id = BigSerial(primary_key=True)
    booking = ForeignKey(references=Booking, index=True)
    charge = ForeignKey(references=BookingCharge)
    stripe_dispute_id = Varchar(length=64, unique=True)
    amount = BigInt()
    currency = Varchar(length=3)
    reason = Varchar(length=64, default="")
    status = Varchar(length=32)
    evidence = JSONB(default={})
    evidence_submitted_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz()


APP_CONFIG = AppConfig(
    app_name="three_sided_bookings",
    migrations_folder_path=str(Path(__file__).parent / "migrations"),
    table_classes=[
        Service,
        Provider,
        Venue,
        ProviderAgreement,
        VenueTerms,
        PayoutSchedule,
        Booking,
        BookingTransition,
        BookingCharge,
        BookingTransfer,
        HeldTransfer,
        BookingRefund,
        TransferReversal,
        BookingDispute,
    ],
)
