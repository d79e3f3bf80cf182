"""The creator_subscriptions Piccolo app: creators, tiers, fans, subscriptions, invoices, payments.

Every table is prefixed ``creator_subscriptions_``. Amounts are ``BigInt``
minor units beside a ``currency``; Stripe ids are stored as given and unique
where Stripe's are. Handlers write these tables with raw SQL on the webhook's
transaction (``ctx.conn``), so the Piccolo classes here define the schema and
serve simple reads.

Stripe idempotency keys name rows by ``uid`` (a random UUID), not by serial
id, so a restored or re-created database can never replay another row's
Stripe operation. ``operation`` holds the client's request identity
(API key + ``Idempotency-Key``), so a request retried after a failure of ours
finds its row again and repeats the same Stripe operation.

Order-insensitivity: a subscription keeps, per group of fields Stripe can
change, the ``created`` time of the event that last set them (``*_at_event``).
An event older than that stamp leaves the group alone, so a late or repeated
``customer.subscription.updated`` can never move a subscription backwards.
"""

from __future__ import annotations

from pathlib import Path

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    BigSerial,
    Boolean,
    ForeignKey,
    Integer,
    Numeric,
    Serial,
    Text,
    Timestamptz,
    Varchar,
)
from piccolo.conf.apps import AppConfig
from piccolo.table import Table

__all__ = [
    "APP_CONFIG",
    "Creator",
    "Fan",
    "Invoice",
    "OneTimePayment",
    "OneTimeRefund",
    "Subscription",
    "Tier",
]


class Creator(Table, tablename="creator_subscriptions_creators"):
    """A creator: one Express connected account (``marketplace_accounts``) that sells tiers.

    ``selling_since`` is set the first time Stripe enabled charges, so a creator
    whose charges are disabled later is told apart (restricted) from one still
    onboarding (not ready).
    """

    id = Serial(primary_key=True)
    account_id = Varchar(length=64, unique=True)
    handle = Varchar(length=64, unique=True)
    display_name = Varchar(length=200)
    default_currency = Varchar(length=3, default="usd")
    selling_since = Timestamptz(null=True, default=None)
    created_at = Timestamptz()


class Tier(Table, tablename="creator_subscriptions_tiers"):
    """A creator's membership level: a Stripe product with one active recurring price.

    A price change makes a new Stripe price (prices are immutable) and
    deactivates the old one; subscribers on the old price keep it. Archiving
    deactivates the price and the product: nobody new can subscribe, existing
    subscribers keep renewing.
    """

    id = Serial(primary_key=True)
    uid = UUID(unique=True)
    creator = ForeignKey(references=Creator, index=True)
    account_id = Varchar(length=64, index=True)
    name = Varchar(length=100)
    description = Text(default="")
    amount = BigInt()
    currency = Varchar(length=3)
    interval = Varchar(length=8)
    stripe_product_id = Varchar(length=64, null=True, default=None, unique=True)
    stripe_price_id = Varchar(length=64, null=True, default=None, unique=True)
    price_version = Integer(default=1)
    revision = Integer(default=0)
    archived = Boolean(default=False, index=True)
    archived_at = Timestamptz(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz()


class Fan(Table, tablename="creator_subscriptions_fans"):
    """A paying fan: the platform's Stripe customer and their default payment method."""

    id = Serial(primary_key=True)
    uid = UUID(unique=True)
    external_ref = Varchar(length=200, unique=True)
    email = Varchar(length=254, default="")
    name = Varchar(length=200, default="")
    stripe_customer_id = Varchar(length=64, null=True, default=None, unique=True)
    default_payment_method = Varchar(length=64, null=True, default=None)
    test_clock = Varchar(length=64, null=True, default=None)
    customer_action = JSONB(null=True, default=None)
    """A card being saved that waits for the fan's authentication (a SetupIntent)."""
    created_at = Timestamptz()


class Subscription(Table, tablename="creator_subscriptions_subscriptions"):
    """A fan's subscription to one creator's tier, mirrored from Stripe order-insensitively.

    ``application_fee_percent`` is what Stripe takes on every invoice, set from
    the commission hook when the subscription (or its tier) was priced;
    ``rule_id``/``rule_version`` record the rule that priced it.
    ``failed_payments`` is the attempt count of its unpaid open invoice (0 when
    none), derived from the invoices so it does not depend on event order.
    """

    id = BigSerial(primary_key=True)
    uid = UUID(unique=True)
    stripe_subscription_id = Varchar(length=64, null=True, default=None, unique=True)
    fan = ForeignKey(references=Fan, index=True)
    creator = ForeignKey(references=Creator, index=True)
    tier = ForeignKey(references=Tier, index=True)
    account_id = Varchar(length=64, index=True)
    customer_id = Varchar(length=64, index=True)
    currency = Varchar(length=3)
    status = Varchar(length=32, default="pending", index=True)
    status_at_event = BigInt(default=0)
    stripe_price_id = Varchar(length=64, default="")
    price_at_event = BigInt(default=0)
    current_period_start = BigInt(default=0)
    current_period_end = BigInt(default=0)
    cancel_at_period_end = Boolean(default=False)
    cancel_at = BigInt(null=True, default=None)
    canceled_at = BigInt(null=True, default=None)
    cancel_at_event = BigInt(default=0)
    paused = Boolean(default=False)
    pause_behavior = Varchar(length=32, default="")
    pause_at_event = BigInt(default=0)
    application_fee_percent = Numeric(digits=(5, 2))
    rule_id = Varchar(length=200, default="")
    rule_version = Integer(default=1)
    failed_payments = Integer(default=0)
    revision = Integer(default=0)
    operation = Varchar(length=255, null=True, default=None, unique=True)
    customer_action = JSONB(null=True, default=None)
    """An invoice payment waiting for the fan (3D Secure): "action required"."""
    action_invoice = Varchar(length=64, null=True, default=None)
    meaning_marked = Boolean(default=False)
    """The Stripe subscription carries the engine's ``meaning_metadata``: the plugin
    inserts the rows it makes with it as true; false for one made before (``adoption``
    marks those)."""
    created_at = Timestamptz()
    updated_at = Timestamptz()


class Invoice(Table, tablename="creator_subscriptions_invoices"):
    """One Stripe invoice of a subscription and, once paid, how its money divided.

    For a paid invoice ``creator_earnings + application_fee == amount_paid``
    (checked by the database); ``ledger_key`` names its one ledger transaction.
    """

    id = BigSerial(primary_key=True)
    stripe_invoice_id = Varchar(length=64, unique=True)
    subscription = ForeignKey(references=Subscription, null=True, index=True)
    stripe_subscription_id = Varchar(length=64, default="", index=True)
    account_id = Varchar(length=64, index=True)
    customer_id = Varchar(length=64, default="")
    billing_reason = Varchar(length=64, default="")
    status = Varchar(length=32, default="draft")
    status_at_event = BigInt(default=0)
    currency = Varchar(length=3)
    amount_due = BigInt(default=0)
    amount_paid = BigInt(default=0)
    application_fee = BigInt(default=0)
    creator_earnings = BigInt(default=0)
    stripe_fee = BigInt(default=0)
    attempt_count = Integer(default=0)
    period_start = BigInt(default=0)
    period_end = BigInt(default=0)
    payment_intent_id = Varchar(length=64, default="")
    charge_id = Varchar(length=64, default="", index=True)
    transfer_id = Varchar(length=64, default="")
    ledger_key = Varchar(length=255, default="")
    stripe_created = BigInt(default=0)
    paid_at = BigInt(null=True, default=None)
    created_at = Timestamptz()
    updated_at = Timestamptz()


class OneTimePayment(Table, tablename="creator_subscriptions_payments"):
    """A tip or a pay-per-view purchase: one destination PaymentIntent to a creator."""

    id = BigSerial(primary_key=True)
    uid = UUID(unique=True)
    kind = Varchar(length=16, index=True)
    fan = ForeignKey(references=Fan, index=True)
    creator = ForeignKey(references=Creator, index=True)
    account_id = Varchar(length=64, index=True)
    item_ref = Varchar(length=200, default="")
    note = Text(default="")
    amount = BigInt()
    currency = Varchar(length=3)
    application_fee = BigInt(default=0)
    creator_earnings = BigInt(default=0)
    stripe_fee = BigInt(default=0)
    rule_id = Varchar(length=200, default="")
    rule_version = Integer(default=1)
    status = Varchar(length=32, default="pending", index=True)
    amount_refunded = BigInt(default=0)
    fee_refunded = BigInt(default=0)
    amount_reversed = BigInt(default=0)
    payment_intent_id = Varchar(length=64, null=True, default=None, unique=True)
    charge_id = Varchar(length=64, default="", index=True)
    transfer_id = Varchar(length=64, default="")
    application_fee_id = Varchar(length=64, default="")
    failure_code = Varchar(length=64, default="")
    operation = Varchar(length=255, null=True, default=None, unique=True)
    customer_action = JSONB(null=True, default=None)
    """The payment waits for the fan's authentication (3D Secure)."""
    created_at = Timestamptz()
    updated_at = Timestamptz()


class OneTimeRefund(Table, tablename="creator_subscriptions_refunds"):
    """A (partial) refund of a one-time payment, with the transfer and fee it reversed."""

    id = BigSerial(primary_key=True)
    payment = ForeignKey(references=OneTimePayment, index=True)
    stripe_refund_id = Varchar(length=64, null=True, default=None, unique=True)
    amount = BigInt()
    currency = Varchar(length=3)
    transfer_reversed = BigInt(default=0)
    fee_refunded = BigInt(default=0)
    reason = Varchar(length=64, default="")
    status = Varchar(length=32, default="pending")
    operation = Varchar(length=255, null=True, default=None, unique=True)
    created_at = Timestamptz()


class InvoiceRefund(Table, tablename="creator_subscriptions_invoice_refunds"):
    """A (partial) refund of a paid subscription invoice, with the transfer and fee it reversed."""

    id = BigSerial(primary_key=True)
    invoice = ForeignKey(references=Invoice, index=True)
    stripe_refund_id = Varchar(length=64, null=True, default=None, unique=True)
    amount = BigInt()
    currency = Varchar(length=3)
    transfer_reversed = BigInt(default=0)
    fee_refunded = BigInt(default=0)
    reason = Varchar(length=64, default="")
    status = Varchar(length=32, default="pending")
    operation = Varchar(length=255, null=True, default=None, unique=True)
    created_at = Timestamptz()


TABLES: tuple[type[Table], ...] = (
    Creator,
    Tier,
    Fan,
    Subscription,
    Invoice,
    OneTimePayment,
    OneTimeRefund,
    InvoiceRefund,
)
"""In creation order (referenced tables first)."""

APP_CONFIG = AppConfig(
    app_name="creator_subscriptions",
    migrations_folder_path=str(Path(__file__).parent / "migrations"),
    table_classes=list(TABLES),
)
