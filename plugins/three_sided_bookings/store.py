"""Rows of the plugin's tables as typed records, and the SQL that reads and writes them.

Everything takes an asyncpg connection so a caller's transaction (an API
request's, or a webhook event's ``ctx.conn``) covers the business change, the
Stripe object it recorded and its ledger posting together. Piccolo declares the
tables (``tables.py``); the queries are plain SQL because they must join the
caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

from engine.core.errors import NotFound
from engine.core.orders import SplitPlan
from plugins.three_sided_bookings.split import plan_from_json

__all__ = [
    "BOOKINGS",
    "BookingRecord",
    "ChargeRecord",
    "Connection",
    "TransferRecord",
    "jsonb",
    "load_booking",
    "load_charges",
    "load_transfers",
    "lock_booking",
]

BOOKINGS: Final = "three_sided_bookings_bookings"
CHARGES: Final = "three_sided_bookings_charges"
TRANSFERS: Final = "three_sided_bookings_transfers"


Connection: TypeAlias = Any
"""An asyncpg connection (or the pool, for single statements); asyncpg ships no types."""


def jsonb(value: Any) -> Any:
    """A JSONB column's value as Python (asyncpg hands JSONB over as text)."""
    return json.loads(value) if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class BookingRecord:
    """A ``three_sided_bookings_bookings`` row."""

    id: int
    service_id: int
    provider_id: int
    venue_id: int
    service_type: str
    service_name: str
    provider_account: str
    venue_account: str
    customer_name: str
    customer_email: str
    customer_reference: str
    stripe_customer_id: str | None
    saved_payment_method: str | None
    payment_model: str
    state: str
    previous_state: str
    state_entered_at: datetime
    process_name: str
    process_version: int
    starts_at: datetime
    ends_at: datetime
    amount: int
    currency: str
    deposit_amount: int
    split: dict[str, Any]
    policy: dict[str, Any]
    transfer_group: str
    timer_at: datetime | None
    timer_name: str
    communication: list[dict[str, Any]]
    created_by: str
    created_at: datetime
    updated_at: datetime
    customer_action: dict[str, Any] | None = None
    action_transition: str = ""
    test_clock: str | None = None

    @property
    def reference(self) -> str:
        """The business reference (``booking:<id>``) on payments and ledger postings."""
        return f"booking:{self.id}"

    @property
    def plan(self) -> SplitPlan:
        """The stored split of the whole value."""
        return plan_from_json(self.split)

    def account_of(self, role: str) -> str:
        """The connected account of ``provider`` or ``venue``."""
        return self.provider_account if role == "provider" else self.venue_account

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BookingRecord:
        """Build from a ``SELECT *`` row."""
        return cls(
            id=row["id"],
            service_id=row["service"],
            provider_id=row["provider"],
            venue_id=row["venue"],
            service_type=row["service_type"],
            service_name=row["service_name"],
            provider_account=row["provider_account"],
            venue_account=row["venue_account"],
            customer_name=row["customer_name"],
            customer_email=row["customer_email"],
            customer_reference=row["customer_reference"],
            stripe_customer_id=row["stripe_customer_id"],
            saved_payment_method=row["saved_payment_method"],
            payment_model=row["payment_model"],
            state=row["state"],
            previous_state=row["previous_state"],
            state_entered_at=row["state_entered_at"],
            process_name=row["process_name"],
            process_version=row["process_version"],
            starts_at=row["starts_at"],
            ends_at=row["ends_at"],
            amount=row["amount"],
            currency=row["currency"],
            deposit_amount=row["deposit_amount"],
            split=jsonb(row["split"]),
            policy=jsonb(row["policy"]),
            transfer_group=row["transfer_group"],
            timer_at=row["timer_at"],
            timer_name=row["timer_name"],
            communication=list(jsonb(row["communication"]) or []),
            created_by=row["created_by"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            customer_action=jsonb(row["customer_action"]),
            test_clock=row.get("test_clock"),
            action_transition=row["action_transition"],
        )


@dataclass(frozen=True, slots=True)
class ChargeRecord:
    """A ``three_sided_bookings_charges`` row: one PaymentIntent and its charge."""

    id: int
    booking_id: int
    kind: str
    idempotency_key: str
    payment_intent_id: str
    charge_id: str | None
    balance_transaction: str
    capture_method: str
    status: str
    amount: int
    captured: int
    refunded: int
    currency: str
    stripe_fee: int
    split: dict[str, Any] | None
    refunded_split: dict[str, Any] | None
    payment_id: int | None

    @property
    def plan(self) -> SplitPlan | None:
        """The split of the captured amount (``None`` until captured)."""
        return None if self.split is None else plan_from_json(self.split)

    @property
    def refunded_plan(self) -> SplitPlan | None:
        """Every leg's refunded share so far (``None``: nothing refunded)."""
        return None if self.refunded_split is None else plan_from_json(self.refunded_split)

    @property
    def is_captured(self) -> bool:
        """Whether money was captured (so it can be transferred or refunded)."""
        return self.captured > 0

    @property
    def is_open_authorisation(self) -> bool:
        """An uncaptured authorisation as last recorded."""
        return self.status == "requires_capture"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ChargeRecord:
        """Build from a ``SELECT *`` row."""
        return cls(
            id=row["id"],
            booking_id=row["booking"],
            kind=row["kind"],
            idempotency_key=row["idempotency_key"],
            payment_intent_id=row["stripe_payment_intent_id"],
            charge_id=row["stripe_charge_id"],
            balance_transaction=row["balance_transaction"],
            capture_method=row["capture_method"],
            status=row["status"],
            amount=row["amount"],
            captured=row["captured"],
            refunded=row["refunded"],
            currency=row["currency"],
            stripe_fee=row["stripe_fee"],
            split=jsonb(row["split"]),
            refunded_split=jsonb(row["refunded_split"]),
            payment_id=row["payment_id"],
        )


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """A ``three_sided_bookings_transfers`` row: one beneficiary's share of one charge."""

    id: int
    booking_id: int
    charge_id: int
    role: str
    account_id: str
    amount: int
    currency: str
    idempotency_key: str
    stripe_transfer_id: str | None
    amount_reversed: int
    status: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TransferRecord:
        """Build from a ``SELECT *`` row."""
        return cls(
            id=row["id"],
            booking_id=row["booking"],
            charge_id=row["charge"],
            role=row["role"],
            account_id=row["account_id"],
            amount=row["amount"],
            currency=row["currency"],
            idempotency_key=row["idempotency_key"],
            stripe_transfer_id=row["stripe_transfer_id"],
            amount_reversed=row["amount_reversed"],
            status=row["status"],
        )


async def load_booking(conn: Connection, booking_id: int) -> BookingRecord:
    """The booking, or ``NotFound``."""
    row = await conn.fetchrow(f"SELECT * FROM {BOOKINGS} WHERE id = $1", booking_id)  # noqa: S608
    if row is None:
        raise NotFound(f"no booking {booking_id}")
    return BookingRecord.from_row(row)


async def lock_booking(conn: Connection, booking_id: int) -> BookingRecord:
    """The booking, locked for the rest of the caller's transaction (``FOR UPDATE``)."""
    row = await conn.fetchrow(
        f"SELECT * FROM {BOOKINGS} WHERE id = $1 FOR UPDATE",  # noqa: S608
        booking_id,
    )
    if row is None:
        raise NotFound(f"no booking {booking_id}")
    return BookingRecord.from_row(row)


async def load_charges(conn: Connection, booking_id: int) -> list[ChargeRecord]:
    """The booking's charges, oldest first."""
    rows = await conn.fetch(
        f"SELECT * FROM {CHARGES} WHERE booking = $1 ORDER BY id",  # noqa: S608
        booking_id,
    )
    return [ChargeRecord.from_row(row) for row in rows]


async def load_transfers(conn: Connection, booking_id: int) -> list[TransferRecord]:
    """The booking's transfers (paid, held or cancelled), oldest first."""
    rows = await conn.fetch(
        f"SELECT * FROM {TRANSFERS} WHERE booking = $1 ORDER BY id",  # noqa: S608
        booking_id,
    )
    return [TransferRecord.from_row(row) for row in rows]


def captured_charges(charges: Sequence[ChargeRecord]) -> list[ChargeRecord]:
    """The charges that hold money (captured), oldest first."""
    return [charge for charge in charges if charge.is_captured]


__all__ += ["captured_charges"]
