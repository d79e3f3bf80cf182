"""The engine's own PostgreSQL tables (Piccolo), prefixed ``marketplace_``.

Amounts are ``BigInt`` minor units with a ``currency`` column beside them. Stripe
ids are stored as given (``acct_``, ``pi_``, ``tr_`` ...), unique where Stripe's
are. Plugins own their tables in their own Piccolo apps.
"""

from __future__ import annotations

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
from piccolo.table import Table

__all__ = [
    "CORE_TABLES",
    "ApiKey",
    "AuditLog",
    "ConnectedAccount",
    "Customer",
    "IdempotencyRecord",
    "LedgerEntry",
    "LedgerTransaction",
    "Payment",
    "Payout",
    "Refund",
    "Transfer",
    "WebhookAccount",
    "WebhookEvent",
]


class ConnectedAccount(Table, tablename="marketplace_accounts"):
    """A Stripe connected account of a creator, provider or venue."""

    id = Serial(primary_key=True)
    stripe_account_id = Varchar(length=64, unique=True)
    role = Varchar(length=32, index=True)
    display_name = Varchar(length=200)
    email = Varchar(length=254, default="")
    country = Varchar(length=2, default="US")
    default_currency = Varchar(length=3, default="usd")
    status = Varchar(length=32, default="onboarding", index=True)
    charges_enabled = Boolean(default=False)
    payouts_enabled = Boolean(default=False)
    details_submitted = Boolean(default=False)
    requirements_due = JSONB(default=[])
    payout_failure_code = Varchar(length=64, null=True, default=None)
    suspended = Boolean(default=False)
    stripe_updated_at = BigInt(default=0)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=Timestamptz.value_type.now)


class Customer(Table, tablename="marketplace_customers"):
    """A paying customer (fan, spa guest) with their Stripe customer id."""

    id = Serial(primary_key=True)
    stripe_customer_id = Varchar(length=64, unique=True)
    email = Varchar(length=254, default="")
    name = Varchar(length=200, default="")
    created_at = Timestamptz()


class Payment(Table, tablename="marketplace_payments"):
    """One charge attempt (PaymentIntent) with the fee and split that priced it."""

    id = BigSerial(primary_key=True)
    reference = Varchar(length=200, index=True)
    plugin = Varchar(length=64)
    kind = Varchar(length=64)
    account_id = Varchar(length=64, null=True, default=None, index=True)
    customer_id = Varchar(length=64, null=True, default=None)
    stripe_payment_intent_id = Varchar(length=64, null=True, default=None, unique=True)
    stripe_charge_id = Varchar(length=64, null=True, default=None, index=True)
    amount = BigInt()
    currency = Varchar(length=3)
    fee_amount = BigInt(default=0)
    rule_id = Varchar(length=200, default="")
    rule_version = Integer(default=1)
    split = JSONB(default={})
    # The order's scope values (beneficiaries are in the split), so history can be re-priced.
    attributes = JSONB(default={})
    status = Varchar(length=32, default="pending")
    amount_refunded = BigInt(default=0)
    created_at = Timestamptz()


class Transfer(Table, tablename="marketplace_transfers"):
    """A transfer to a connected account (separate charges and transfers)."""

    id = BigSerial(primary_key=True)
    payment = ForeignKey(references=Payment, null=True)
    stripe_transfer_id = Varchar(length=64, null=True, default=None, unique=True)
    destination = Varchar(length=64, index=True)
    role = Varchar(length=32, default="")
    amount = BigInt()
    currency = Varchar(length=3)
    amount_reversed = BigInt(default=0)
    status = Varchar(length=32, default="pending")
    idempotency_key = Varchar(length=255, unique=True)
    failure_reason = Text(default="")
    created_at = Timestamptz()


class Refund(Table, tablename="marketplace_refunds"):
    """A refund of (part of) a payment."""

    id = BigSerial(primary_key=True)
    payment = ForeignKey(references=Payment)
    stripe_refund_id = Varchar(length=64, null=True, default=None, unique=True)
    amount = BigInt()
    currency = Varchar(length=3)
    reason = Varchar(length=64, default="")
    status = Varchar(length=32, default="pending")
    created_at = Timestamptz()


class Payout(Table, tablename="marketplace_payouts"):
    """A payout from a connected account's balance to its bank."""

    id = BigSerial(primary_key=True)
    stripe_payout_id = Varchar(length=64, unique=True)
    account_id = Varchar(length=64, index=True)
    amount = BigInt()
    currency = Varchar(length=3)
    status = Varchar(length=32)
    failure_code = Varchar(length=64, null=True, default=None)
    failure_message = Text(default="")
    arrival_date = BigInt(default=0)
    created_at = Timestamptz()
    updated_at = Timestamptz(auto_update=Timestamptz.value_type.now)


class LedgerTransaction(Table, tablename="marketplace_ledger_transactions"):
    """A balanced set of ledger entries for one business operation (idempotent by key)."""

    id = BigSerial(primary_key=True)
    idempotency_key = Varchar(length=255, unique=True)
    kind = Varchar(length=64, index=True)
    description = Text(default="")
    reference = Varchar(length=200, default="", index=True)
    stripe_object_id = Varchar(length=64, default="", index=True)
    plugin = Varchar(length=64, default="")
    occurred_at = Timestamptz(index=True)
    created_at = Timestamptz()


class LedgerEntry(Table, tablename="marketplace_ledger_entries"):
    """One signed amount on one ledger account; a transaction's entries sum to zero."""

    id = BigSerial(primary_key=True)
    ledger_transaction = ForeignKey(references=LedgerTransaction, index=True)
    account = Varchar(length=200, index=True)
    amount = BigInt()
    currency = Varchar(length=3)


class WebhookEvent(Table, tablename="marketplace_webhook_events"):
    """The webhook inbox: one row per verified Stripe event (unique on its id).

    ``account`` is the event's mailbox key (a connected account, ``platform``,
    or a key a plugin chose, such as ``three_sided_bookings:booking:42``).
    ``seq`` is the mailbox's ``version`` when the event was accepted: assigned
    under the mailbox row's lock, it is the order the accepts committed in,
    which is the order the events are applied in (rows from before it existed
    have none and come first, by ``id``).
    """

    id = BigSerial(primary_key=True)
    event_id = Varchar(length=255, unique=True)
    # Read through partial indexes (pending, dead: engine.core.db), not indexed whole.
    account = Varchar(length=64)
    seq = BigInt(null=True, default=None)
    type = Varchar(length=128)
    livemode = Boolean(default=False)
    created = BigInt(default=0)
    payload = JSONB()
    # pending -> handled, or dead (parked after max attempts; replayable).
    status = Varchar(length=16, default="pending")
    attempts = Integer(default=0)
    last_error = Text(default="")
    received_at = Timestamptz()
    handled_at = Timestamptz(null=True, default=None)


class WebhookAccount(Table, tablename="marketplace_webhook_accounts"):
    """Per-account mailbox state: scheduling token, lease, backoff, dead letter.

    ``version`` grows with every event accepted for the account; a worker clears
    ``scheduled`` only if the version is still the one it drained up to, so an
    event that arrives while the flag is being cleared is never stranded.
    ``lease_epoch`` is the fencing token: every lease taken bumps it, and every
    write a drain makes checks it, so a drain whose lease was taken over
    commits nothing.
    """

    account = Varchar(length=64, primary_key=True)
    version = BigInt(default=0)
    scheduled = Boolean(default=False)
    scheduled_at = Timestamptz(null=True, default=None)
    lease_owner = Varchar(length=64, default="")
    lease_until = Timestamptz(null=True, default=None)
    lease_epoch = BigInt(default=0)
    backoff_until = Timestamptz(null=True, default=None)
    parked = Boolean(default=False, index=True)
    attempts = Integer(default=0)
    last_error = Text(default="")
    handled = BigInt(default=0)
    updated_at = Timestamptz()


class ApiKey(Table, tablename="marketplace_api_keys"):
    """An API key, stored as a SHA-256 hash; the secret is shown once at creation."""

    id = Serial(primary_key=True)
    key_id = Varchar(length=32, unique=True)
    secret_hash = Varchar(length=64)
    scope = Varchar(length=16)
    account_id = Varchar(length=64, null=True, default=None)
    label = Varchar(length=200, default="")
    created_at = Timestamptz()
    revoked_at = Timestamptz(null=True, default=None)


class IdempotencyRecord(Table, tablename="marketplace_idempotency"):
    """A stored response for an ``Idempotency-Key`` (per API key), kept >= 24 h."""

    id = BigSerial(primary_key=True)
    scope_key = Varchar(length=400, unique=True)
    request_hash = Varchar(length=64)
    status_code = Integer(default=0)
    response_body = Text(default="")
    content_type = Varchar(length=100, default="application/json")
    created_at = Timestamptz(index=True)


class AuditLog(Table, tablename="marketplace_audit_log"):
    """Who did what to which object, for operators and disputes."""

    id = BigSerial(primary_key=True)
    actor = Varchar(length=200)
    action = Varchar(length=100)
    subject = Varchar(length=200, index=True)
    data = JSONB(default={})
    created_at = Timestamptz()


CORE_TABLES: tuple[type[Table], ...] = (
    ConnectedAccount,
    Customer,
    Payment,
    Transfer,
    Refund,
    Payout,
    LedgerTransaction,
    LedgerEntry,
    WebhookEvent,
    WebhookAccount,
    ApiKey,
    IdempotencyRecord,
    AuditLog,
)
"""In creation order (referenced tables first)."""
