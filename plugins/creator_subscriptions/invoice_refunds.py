"""Refunds of paid subscription invoices through the API.

An invoice's charge is a destination charge like a tip's, so it is refunded the
same way, by the engine's ``movements.refund_destination_charge``:
``reverse_transfer`` and ``refund_application_fee`` pull the creator's share and
the platform's fee back in proportion, and the engine posts what Stripe reversed. The
invoice row is locked for the whole operation, so concurrent refunds of one
invoice apply one after the other; the refundable amount is what was paid less
what this API refunded before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from engine.core.errors import Conflict, InvalidInput, NotFound
from engine.core.money import Money
from engine.core.orders import LifecycleEvent
from engine.payments import movements
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import Env, money_scope
from plugins.creator_subscriptions.schemas import InvoiceRefundView, NewRefund

__all__ = ["INVOICE_METADATA", "refund_invoice"]

INVOICE_METADATA = "invoice"
"""Refund metadata key naming the refunded invoice (``in_...``)."""


def _id(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


def _view(row: asyncpg.Record, invoice_id: str) -> InvoiceRefundView:
    return InvoiceRefundView(
        id=int(row["id"]),
        stripe_invoice_id=invoice_id,
        stripe_refund_id=row["stripe_refund_id"],
        amount=int(row["amount"]),
        currency=str(row["currency"]),
        transfer_reversed=int(row["transfer_reversed"]),
        fee_refunded=int(row["fee_refunded"]),
        status=str(row["status"]),
    )


async def refund_invoice(
    env: Env, invoice_id: str, new: NewRefund, *, operation: str | None = None
) -> InvoiceRefundView:
    """Refund (part of) a paid invoice; the creator's share and the fee reverse in proportion.

    ``operation`` is the request's identity (API key + ``Idempotency-Key``): the
    refund's key is ``<reference>:refund:invoice:<in>:request:<operation>`` and
    the request retried is answered with its refund; without it the key is
    ``<reference>:refund:invoice:<in>:<n>`` (the invoice's n-th refund).

    Raises:
        NotFound: no such invoice (404).
        Conflict: the invoice is not paid, or nothing was charged, or ``operation``
            refunded another invoice (409).
        InvalidInput: ``amount`` exceeds what is left to refund (``field="amount"``).
    """
    async with env.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM creator_subscriptions_invoices WHERE stripe_invoice_id = $1 FOR UPDATE",
            invoice_id,
        )
        if row is None:
            raise NotFound(f"no invoice {invoice_id}")
        if operation is not None:
            earlier = await conn.fetchrow(
                "SELECT * FROM creator_subscriptions_invoice_refunds WHERE operation = $1",
                operation,
            )
            if earlier is not None:
                if int(earlier["invoice"]) != int(row["id"]):
                    raise Conflict("this operation refunded another invoice", field="operation")
                return _view(earlier, invoice_id)
        if row["status"] != "paid" or not row["charge_id"]:
            raise Conflict(
                f"invoice {invoice_id} has no paid charge to refund", status=row["status"]
            )
        done = await conn.fetchrow(
            "SELECT count(*) AS n, COALESCE(sum(amount), 0)::bigint AS amount, "
            "COALESCE(sum(fee_refunded), 0)::bigint AS fee "
            "FROM creator_subscriptions_invoice_refunds WHERE invoice = $1",
            row["id"],
        )
        remaining = int(row["amount_paid"]) - int(done["amount"])
        amount = remaining if new.amount is None else new.amount
        if not 0 < amount <= remaining:
            raise InvalidInput(
                f"refund amount {amount} exceeds the refundable {remaining}", field="amount"
            )
        charge = await env.gateway.call("charges", "retrieve", str(row["charge_id"]))
        currency = str(row["currency"])
        facts, refund = await movements.refund_destination_charge(
            money_scope(env, conn, f"{PLUGIN}:subscription:{row['subscription']}"),
            charge_id=str(row["charge_id"]),
            amount=Money(amount, currency),
            destination=str(row["account_id"]),
            application_fee_id=_id(charge.get("application_fee")),
            operation=("invoice", invoice_id, int(done["n"]) + 1)
            if operation is None
            else ("invoice", invoice_id, "request", operation),
            refunded_before=Money(int(done["amount"]), currency),
            fee_refunded_before=Money(int(done["fee"]), currency),
            reason=new.reason,
            metadata={"plugin": PLUGIN, INVOICE_METADATA: invoice_id},
        )
        refund_row = await conn.fetchrow(
            """
            INSERT INTO creator_subscriptions_invoice_refunds
                (invoice, stripe_refund_id, amount, currency, transfer_reversed, fee_refunded,
                 reason, status, operation, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
            ON CONFLICT (stripe_refund_id) DO UPDATE SET status = EXCLUDED.status
            RETURNING *
            """,
            row["id"],
            facts.refund_id,
            facts.amount.amount,
            facts.amount.currency,
            facts.transfer_reversed.amount,
            facts.fee_refunded.amount,
            new.reason or "",
            str(refund.get("status") or "succeeded"),
            operation,
        )
    env.plugins.notify_lifecycle(
        LifecycleEvent(
            f"{PLUGIN}.invoice.refunded",
            subject_id=f"{PLUGIN}:subscription:{row['subscription']}",
            account_id=str(row["account_id"]),
            data={
                "invoice": invoice_id,
                "amount": facts.amount.amount,
                "currency": facts.amount.currency,
                "transfer_reversed": facts.transfer_reversed.amount,
                "fee_refunded": facts.fee_refunded.amount,
            },
        )
    )
    return _view(refund_row, invoice_id)
