"""Reconciliation view of one booking: every Stripe object linked to it, and its ledger.

Lists the booking's customer, PaymentIntents, charges, Stripe fees, transfers
(paid and held), reversals, refunds and disputes as recorded, with the ledger
entries posted for them (``reference = booking:<id>``). Problems reported:

- a recorded movement whose ledger posting is missing or has another amount;
- with ``check_stripe``: an object whose amount or status Stripe reports
  differently, a Stripe fee that differs from the charge's balance
  transaction, and a transfer in the booking's ``transfer_group`` that the
  booking does not know (a settlement that died after Stripe answered).
"""

from __future__ import annotations

from typing import Any

from engine.core.errors import MarketplaceError
from engine.core.statements import reference_lines
from engine.services import Services
from plugins.three_sided_bookings.schemas import (
    LedgerLineView,
    Reconciliation,
    StripeObjectView,
)
from plugins.three_sided_bookings.store import load_booking

__all__ = ["reconcile"]


async def _ledger_lines(services: Services, reference: str) -> list[LedgerLineView]:
    return [
        LedgerLineView(
            key=line.key,
            kind=line.kind,
            account=line.account,
            amount=line.amount.amount,
            currency=line.amount.currency,
            stripe_object_id=line.stripe_object_id,
        )
        for line in await reference_lines(services.db.pool, reference)
    ]


async def _recorded(services: Services, booking_id: int) -> list[StripeObjectView]:
    pool = services.db.pool
    booking = await load_booking(pool, booking_id)
    currency = booking.currency
    objects: list[StripeObjectView] = []
    if booking.stripe_customer_id:
        objects.append(
            StripeObjectView(
                type="customer",
                id=booking.stripe_customer_id,
                amount=0,
                currency=currency,
                status="active",
            )
        )
    for row in await pool.fetch(
        "SELECT * FROM three_sided_bookings_charges WHERE booking = $1 ORDER BY id", booking_id
    ):
        objects.append(
            StripeObjectView(
                type="payment_intent",
                id=row["stripe_payment_intent_id"],
                amount=row["amount"],
                currency=currency,
                status=row["status"],
                role=row["kind"],
                idempotency_key=row["idempotency_key"],
            )
        )
        if row["stripe_charge_id"]:
            objects.append(
                StripeObjectView(
                    type="charge",
                    id=row["stripe_charge_id"],
                    amount=row["captured"],
                    currency=currency,
                    status="refunded" if row["refunded"] else row["status"],
                    role=row["kind"],
                    fee=row["stripe_fee"],
                )
            )
        if row["balance_transaction"]:
            objects.append(
                StripeObjectView(
                    type="stripe_fee",
                    id=row["balance_transaction"],
                    amount=row["stripe_fee"],
                    currency=currency,
                    status="charged",
                    role=row["kind"],
                )
            )
    for row in await pool.fetch(
        "SELECT * FROM three_sided_bookings_transfers WHERE booking = $1 ORDER BY id", booking_id
    ):
        objects.append(
            StripeObjectView(
                type="transfer" if row["stripe_transfer_id"] else "held_transfer",
                id=row["stripe_transfer_id"] or row["idempotency_key"],
                amount=row["amount"],
                currency=currency,
                status=row["status"],
                role=row["role"],
                idempotency_key=row["idempotency_key"],
            )
        )
    for row in await pool.fetch(
        "SELECT r.*, t.role FROM three_sided_bookings_reversals r "
        "JOIN three_sided_bookings_transfers t ON t.id = r.transfer "
        "WHERE r.booking = $1 ORDER BY r.id",
        booking_id,
    ):
        objects.append(
            StripeObjectView(
                type="transfer_reversal",
                id=row["stripe_reversal_id"],
                amount=row["amount"],
                currency=currency,
                status=row["reason"],
                role=row["role"],
                idempotency_key=row["idempotency_key"],
            )
        )
    for row in await pool.fetch(
        "SELECT * FROM three_sided_bookings_refunds WHERE booking = $1 ORDER BY id", booking_id
    ):
        objects.append(
            StripeObjectView(
                type="refund",
                id=row["stripe_refund_id"],
                amount=row["amount"],
                currency=currency,
                status=row["status"],
                idempotency_key=row["idempotency_key"],
            )
        )
    for row in await pool.fetch(
        "SELECT * FROM three_sided_bookings_disputes WHERE booking = $1 ORDER BY id", booking_id
    ):
        objects.append(
            StripeObjectView(
                type="dispute",
                id=row["stripe_dispute_id"],
                amount=row["amount"],
                currency=row["currency"],
                status=row["status"],
            )
        )
    return objects


_POSTING_KEY = {
    "charge": "charge:{}",
    "transfer": "transfer:{}",
    "refund": "refund:{}",
    "transfer_reversal": "reversal:{}",
}


def _ledger_problems(objects: list[StripeObjectView], ledger: list[LedgerLineView]) -> list[str]:
    """Recorded movements without their posting, or posted with another amount."""
    moved: dict[str, int] = {}
    for line in ledger:
        if line.amount > 0 and line.account not in {"platform:stripe_fees"}:
            moved.setdefault(line.key, line.amount)
    problems: list[str] = []
    for obj in objects:
        template = _POSTING_KEY.get(obj.type)
        if template is None or (obj.type == "charge" and obj.amount == 0):
            continue
        key = template.format(obj.id)
        if key not in moved:
            problems.append(f"{obj.type} {obj.id}: no ledger posting {key}")
        elif moved[key] != obj.amount:
            problems.append(f"{obj.type} {obj.id}: ledger says {moved[key]}, recorded {obj.amount}")
    return problems


async def _stripe_amount(services: Services, obj: StripeObjectView) -> tuple[int | None, str]:
    gateway = services.gateway
    if obj.type == "payment_intent":
        found = await gateway.call("payment_intents", "retrieve", obj.id)
        return int(found["amount"]), str(found["status"])
    if obj.type == "charge":
        found = await gateway.call(
            "charges", "retrieve", obj.id, params={"expand": ["balance_transaction"]}
        )
        return int(found["amount_captured"]), str(found["status"])
    if obj.type == "transfer":
        found = await gateway.call("transfers", "retrieve", obj.id)
        return int(found["amount"]), "reversed" if found.get("reversed") else "paid"
    if obj.type == "refund":
        found = await gateway.call("refunds", "retrieve", obj.id)
        return int(found["amount"]), str(found["status"])
    if obj.type == "dispute":
        found = await gateway.call("disputes", "retrieve", obj.id)
        return int(found["amount"]), str(found["status"])
    if obj.type == "stripe_fee":
        found = await gateway.call("balance_transactions", "retrieve", obj.id)
        return int(found["fee"]), "charged"
    return None, ""


async def _stripe_problems(
    services: Services, group: str, objects: list[StripeObjectView]
) -> tuple[list[StripeObjectView], list[str]]:
    checked: list[StripeObjectView] = []
    problems: list[str] = []
    for obj in objects:
        try:
            amount, status = await _stripe_amount(services, obj)
        except MarketplaceError as error:
            problems.append(f"{obj.type} {obj.id}: Stripe says {error.detail}")
            checked.append(obj)
            continue
        if amount is not None and amount != obj.amount and obj.type != "payment_intent":
            problems.append(f"{obj.type} {obj.id}: Stripe has {amount}, recorded {obj.amount}")
        if obj.type == "dispute" and status != obj.status:
            problems.append(f"dispute {obj.id}: Stripe says {status}, recorded {obj.status}")
        checked.append(
            StripeObjectView(
                type=obj.type,
                id=obj.id,
                amount=obj.amount,
                currency=obj.currency,
                status=obj.status,
                role=obj.role,
                fee=obj.fee,
                idempotency_key=obj.idempotency_key,
                stripe_amount=amount,
            )
        )
    known = {obj.id for obj in objects if obj.type == "transfer"}
    in_group: list[dict[str, Any]] = await services.gateway.list_all(
        "transfers", params={"transfer_group": group}
    )
    for transfer in in_group:
        if transfer["id"] not in known:
            problems.append(
                f"transfer {transfer['id']} ({transfer['amount']}) is in {group} but not recorded"
            )
    return checked, problems


async def reconcile(services: Services, booking_id: int, *, check_stripe: bool) -> Reconciliation:
    """The booking's Stripe objects and ledger, and every mismatch found."""
    booking = await load_booking(services.db.pool, booking_id)
    objects = await _recorded(services, booking_id)
    ledger = await _ledger_lines(services, booking.reference)
    problems = _ledger_problems(objects, ledger)
    if check_stripe:
        objects, found = await _stripe_problems(services, booking.transfer_group, objects)
        problems += found
    return Reconciliation(
        booking_id=booking.id,
        transfer_group=booking.transfer_group,
        objects=objects,
        ledger=ledger,
        checked_with_stripe=check_stripe,
        problems=problems,
    )
