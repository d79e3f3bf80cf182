"""Ledger postings for creator money, mirroring Stripe's balance transactions one-to-one.

A destination charge of ``A`` with application fee ``F`` and Stripe fee ``S``
makes four balance transactions in Stripe; the posting carries one entry per
amount on each of them, on the same ledger account, so reconciliation can
match them line by line:

====================  =====================  =================================
Stripe (account)      balance transaction    ledger entries
====================  =====================  =================================
platform              ``charge`` +A, fee S   ``platform`` +A, ``platform`` -S
                                             (``platform:stripe_fees`` +S,
                                             ``customers`` -A)
platform              ``transfer`` -A        ``platform`` -A
connected account     ``payment`` +A, fee F  ``acct_...`` +A, ``acct_...`` -F
platform              ``application_fee`` +F ``platform`` +F
====================  =====================  =================================

So the platform's balance moves by ``F - S`` and the creator's by ``A - F``,
exactly as on Stripe. One charge is one ledger transaction (one per paid
invoice, one per tip). A refund with ``reverse_transfer`` and
``refund_application_fee`` is the engine's postings (``refund:<re>``,
``reversal:<trr>``, ``application_fee_refund:<fr>``), which its webhook handlers
also post for refunds made in Stripe's dashboard.

Everything here is pure: facts in, ``Posting`` out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.core.errors import InvalidAmount
from engine.core.ledger import (
    CUSTOMERS,
    PLATFORM,
    PLATFORM_STRIPE_FEES,
    Entry,
    Posting,
    stripe_time,
)
from engine.core.money import Money
from engine.core.postings import fee_refund_posting, refund_posting, reversal_posting
from plugins.creator_subscriptions.config import PLUGIN

__all__ = [
    "DestinationCharge",
    "DestinationRefund",
    "charge_posting",
    "destination_charge_from",
    "invoice_ledger_key",
    "payment_ledger_key",
    "refund_postings",
]


def invoice_ledger_key(invoice_id: str) -> str:
    """The one ledger transaction of a paid invoice."""
    return f"{PLUGIN}:invoice:{invoice_id}"


def payment_ledger_key(payment_intent_id: str) -> str:
    """The one ledger transaction of a tip or pay-per-view payment."""
    return f"{PLUGIN}:payment:{payment_intent_id}"


@dataclass(frozen=True, slots=True)
class DestinationCharge:
    """What one captured destination charge moved, in Stripe's own numbers.

    Attributes:
        charge_id: the platform's ``ch_``.
        amount: the captured amount (the platform's ``charge`` transaction).
        stripe_fee: Stripe's processing fee on that transaction.
        destination: the creator's connected account.
        transfer_id: the ``tr_`` to the destination.
        transfer_amount: what the transfer carried (the whole amount unless
            ``transfer_data[amount]`` said otherwise).
        application_fee: the platform's fee taken from the transfer.
        captured_at: Stripe's time of the capture (the charge's balance transaction).
        application_fee_id: the ``fee_`` object.
    """

    charge_id: str
    amount: Money
    stripe_fee: Money
    destination: str
    transfer_id: str
    transfer_amount: Money
    application_fee: Money
    captured_at: datetime
    application_fee_id: str = ""

    def __post_init__(self) -> None:
        if not (0 <= self.application_fee.amount <= self.transfer_amount.amount):
            raise InvalidAmount(
                f"application fee {self.application_fee} outside transfer {self.transfer_amount}"
            )
        if self.transfer_amount.amount > self.amount.amount:
            raise InvalidAmount("a destination transfer cannot exceed its charge")

    @property
    def creator_earnings(self) -> Money:
        """What reaches the creator's balance: the transfer less the application fee."""
        return self.transfer_amount - self.application_fee

    @property
    def platform_fee(self) -> Money:
        """The platform's commission on this charge (the application fee).

        When ``transfer_data[amount]`` kept part of the charge on the platform,
        that part is commission too.
        """
        return self.application_fee + (self.amount - self.transfer_amount)


@dataclass(frozen=True, slots=True)
class DestinationRefund:
    """A refund of a destination charge and what it reversed.

    Attributes:
        refund_id: the ``re_``.
        amount: refunded to the fan (the platform's ``refund`` transaction).
        transfer_reversed: pulled back from the creator (``transfer_refund``).
        fee_refunded: application fee returned to the creator by this refund.
        destination: the creator's connected account.
        refunded_at: Stripe's time of the refund (its ``created``).
        reversal_id: the ``trr_`` of ``transfer_reversed`` (its time is the refund's).
        fee_refunds: every refund of the charge's application fee so far, as
            ``(fr_, amount, Stripe's time)``: each is posted once, whichever
            refund (or Stripe's dashboard) made it.
    """

    refund_id: str
    amount: Money
    transfer_reversed: Money
    fee_refunded: Money
    destination: str
    refunded_at: datetime
    reversal_id: str = ""
    fee_refunds: tuple[tuple[str, Money, datetime], ...] = ()


def _entries(pairs: Iterable[tuple[str, Money]]) -> tuple[Entry, ...]:
    # Zero lines say nothing and would only clutter reconciliation.
    return tuple(Entry(account, amount) for account, amount in pairs if amount.amount)


def charge_posting(
    charge: DestinationCharge, *, key: str, kind: str, reference: str, description: str = ""
) -> Posting:
    """The one balanced posting for a captured destination charge (see the module table)."""
    account = charge.destination
    entries = _entries(
        (
            (CUSTOMERS, -charge.amount),
            (PLATFORM, charge.amount),
            (PLATFORM, -charge.stripe_fee),
            (PLATFORM_STRIPE_FEES, charge.stripe_fee),
            (PLATFORM, -charge.transfer_amount),
            (account, charge.transfer_amount),
            (account, -charge.application_fee),
            (PLATFORM, charge.application_fee),
        )
    )
    return Posting(
        key=key,
        kind=kind,
        entries=entries,
        reference=reference,
        occurred_at=charge.captured_at,
        stripe_object_id=charge.charge_id,
        plugin=PLUGIN,
        description=description,
    )


def refund_postings(refund: DestinationRefund, *, reference: str) -> tuple[Posting, ...]:
    """The engine's postings for a refund with ``reverse_transfer`` and ``refund_application_fee``.

    ``refund:<re>``, ``reversal:<trr>`` and one ``application_fee_refund:<fr>``
    per fee refund (``engine.core.postings``): the same the engine's webhook
    handlers post, so this API path and the webhooks never count one twice.
    """
    found = [
        refund_posting(
            PLATFORM,
            refund.refund_id,
            refund.amount,
            occurred_at=refund.refunded_at,
            reference=reference,
            plugin=PLUGIN,
        )
    ]
    if refund.reversal_id and refund.transfer_reversed.amount:
        found.append(
            reversal_posting(
                refund.destination,
                refund.reversal_id,
                refund.transfer_reversed,
                occurred_at=refund.refunded_at,
                reference=reference,
                plugin=PLUGIN,
            )
        )
    found += [
        fee_refund_posting(
            refund.destination,
            fee_refund_id,
            amount,
            occurred_at=refunded_at,
            reference=reference,
            plugin=PLUGIN,
        )
        for fee_refund_id, amount, refunded_at in refund.fee_refunds
        if amount.amount
    ]
    return tuple(found)


def _id_of(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


def destination_charge_from(charge: Mapping[str, Any]) -> DestinationCharge:
    """Read a destination charge from Stripe's ``charge`` expanded with ``balance_transaction``.

    Raises:
        InvalidAmount: the charge is not a captured destination charge, or its
            balance transaction was not expanded.
    """
    currency = str(charge.get("currency") or "")
    transfer_data = charge.get("transfer_data") or {}
    destination = _id_of(transfer_data.get("destination")) or _id_of(charge.get("destination"))
    if not destination:
        raise InvalidAmount(f"charge {charge.get('id')} is not a destination charge")
    balance_transaction = charge.get("balance_transaction")
    if not isinstance(balance_transaction, Mapping):
        raise InvalidAmount(f"charge {charge.get('id')} needs expand[]=balance_transaction")
    captured = int(charge.get("amount_captured") or charge.get("amount") or 0)
    transfer_amount = transfer_data.get("amount")
    transfer = charge.get("transfer")
    if isinstance(transfer, Mapping) and transfer.get("amount") is not None:
        transfer_amount = transfer["amount"]
    return DestinationCharge(
        charge_id=str(charge["id"]),
        amount=Money(captured, currency),
        stripe_fee=Money(int(balance_transaction.get("fee") or 0), currency),
        destination=destination,
        transfer_id=_id_of(transfer),
        transfer_amount=Money(
            captured if transfer_amount is None else int(transfer_amount), currency
        ),
        application_fee=Money(int(charge.get("application_fee_amount") or 0), currency),
        captured_at=stripe_time(balance_transaction.get("created")),
        application_fee_id=_id_of(charge.get("application_fee")),
    )
