"""The engine's postings for Stripe movements any business model makes: one builder each.

Each builder mirrors Stripe balance transactions one to one and is keyed by the
Stripe object of the movement, with no plugin prefix, so the engine's webhook
handlers and a plugin's API path (which posts at once, before the webhook
arrives) build the *same* posting: whichever comes second is a no-op, and a
movement made outside the engine (a refund in Stripe's dashboard) is posted
all the same. ``account`` is the Stripe balance the movement is on:
``platform`` for destination charges and separate charges and transfers.

=============================  ===============================  ==============================
key                            entries                          Stripe balance transactions
=============================  ===============================  ==============================
``charge:<ch>`` (a platform    ``customers`` -A, ``platform``   ``charge`` A, fee S (platform)
charge)                        +A; ``platform`` -S, stripe
                               fees +S
``charge:<ch>`` (a             the platform charge's four       platform ``charge`` A fee S,
destination charge)            entries; ``platform`` -T, dest   ``transfer`` -T,
                               +T; dest -F, ``platform`` +F     ``application_fee`` +F; dest
                                                                ``payment`` T, fee F
``charge:<ch>`` (a direct      ``customers`` -A, acct +A;       acct ``charge`` A, fee S + F;
charge on a connected          acct -(S+F), acct stripe fees    platform ``application_fee``
account ``acct``)              +S, ``platform`` +F              +F
``transfer:<tr>``              ``platform`` -T, dest +T         ``transfer`` -T (platform),
                                                                ``payment`` +T (destination)
``refund:<re>``                account -A, ``customers`` +A     ``refund`` -A
``refund_failure:<re>``        ``customers`` -A, account +A     ``refund_failure`` +A (the
                                                                refund failed: money back)
``reversal:<trr>``             destination -R, ``platform`` +R  ``transfer_refund`` +R
                                                                (platform), ``payment_refund``
                                                                -R (destination)
``application_fee_refund:``    ``platform`` -F, payer +F        ``application_fee_refund`` -F
``<fr>``                                                        (platform) and +F (payer)
``dispute_txn:<txn>``          account +X, ``disputes`` -X,     ``adjustment`` X (withdrawn
                               account -fee, stripe fees +fee   < 0, reinstated > 0), fee =
                                                                the dispute fee
``dispute:<dp>:lost``          ``disputes`` -D,                 none (the withdrawal is final)
                               ``customers`` +D
``adjustment:<txn>`` (Stripe's account +X,                      ``adjustment`` X, fee F (no
own correction, no dispute)    ``stripe_adjustments`` -X,       event announces it; posted
                               account -F, stripe fees +F       by reconciliation)
``payout:<po>``                account -P, its bank +P          ``payout`` -P
``payout_failure:<po>`` or     its bank -P, account +P          ``payout_failure`` or
``payout_cancel:<po>``                                          ``payout_cancel`` +P
=============================  ===============================  ==============================

Plugins never build postings of their own (``tests/contract/test_plugin_boundaries.py``):
the engine's money calls (``engine.payments.movements``) and webhook handlers
post these; a plugin names the business object (``reference``) and, for a
charge, the ``kind`` its statements filter on.

Pure: facts in, ``Posting`` out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.core.errors import InvalidAmount
from engine.core.ledger import (
    ADJUSTMENTS,
    CUSTOMERS,
    DISPUTES,
    PLATFORM,
    PLATFORM_STRIPE_FEES,
    Entry,
    Posting,
    bank_of,
    stripe_time,
)
from engine.core.money import Money

__all__ = [
    "DestinationCharge",
    "DestinationRefund",
    "adjustment_posting",
    "charge_posting",
    "destination_charge_from",
    "destination_charge_posting",
    "destination_refund_postings",
    "direct_charge_posting",
    "dispute_lost_posting",
    "dispute_txn_posting",
    "fee_refund_posting",
    "payout_posting",
    "payout_return_posting",
    "refund_failure_posting",
    "refund_posting",
    "reversal_posting",
    "stripe_fees_of",
    "transfer_posting",
]


def stripe_fees_of(account: str) -> str:
    """Where Stripe's fees charged to ``account``'s balance go (``platform:stripe_fees``)."""
    return PLATFORM_STRIPE_FEES if account == PLATFORM else f"{account}:stripe_fees"


def _entries(pairs: Iterable[tuple[str, Money]]) -> tuple[Entry, ...]:
    # Zero lines say nothing and would only clutter reconciliation.
    return tuple(Entry(account, amount) for account, amount in pairs if amount.amount)


def charge_posting(
    charge_id: str,
    amount: Money,
    stripe_fee: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
    kind: str = "charge",
    description: str = "",
) -> Posting:
    """A captured charge on the platform's balance and Stripe's processing fee on it.

    ``occurred_at`` is the charge's balance transaction's time (the capture);
    ``kind`` what the business model's statements filter on (``charge`` unless said).
    """
    return Posting(
        key=f"charge:{charge_id}",
        kind=kind,
        entries=_entries(
            (
                (CUSTOMERS, -amount),
                (PLATFORM, amount),
                (PLATFORM, -stripe_fee),
                (PLATFORM_STRIPE_FEES, stripe_fee),
            )
        ),
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=charge_id,
        plugin=plugin,
        description=description or f"charge {amount} (Stripe fee {stripe_fee})",
    )


def direct_charge_posting(
    account: str,
    charge_id: str,
    amount: Money,
    stripe_fee: Money,
    application_fee: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
    kind: str = "charge",
    description: str = "",
) -> Posting:
    """A captured charge on a connected account's own balance (a direct charge).

    Stripe's one ``charge`` transaction on ``account`` carries the amount, Stripe's
    processing fee and the platform's application fee (its one ``fee``, one entry
    here, split to Stripe's fees and the platform); the application fee lands on
    the platform as an ``application_fee`` transaction. ``occurred_at`` is the
    charge's balance transaction's time.
    """
    if not (0 <= application_fee.amount <= amount.amount):
        raise InvalidAmount(f"application fee {application_fee} outside charge {amount}")
    return Posting(
        key=f"charge:{charge_id}",
        kind=kind,
        entries=_entries(
            (
                (CUSTOMERS, -amount),
                (account, amount),
                (account, -(stripe_fee + application_fee)),
                (stripe_fees_of(account), stripe_fee),
                (PLATFORM, application_fee),
            )
        ),
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=charge_id,
        plugin=plugin,
        description=description
        or f"direct charge {amount} on {account} (Stripe fee {stripe_fee}, "
        f"application fee {application_fee})",
    )


def transfer_posting(
    destination: str,
    transfer_id: str,
    amount: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
    description: str = "",
) -> Posting:
    """A transfer from the platform's balance to a connected account's."""
    return Posting.transfer(
        f"transfer:{transfer_id}",
        "transfer",
        PLATFORM,
        destination,
        amount,
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=transfer_id,
        plugin=plugin,
        description=description or f"transfer to {destination}",
    )


@dataclass(frozen=True, slots=True)
class DestinationCharge:
    """What one captured destination charge moved, in Stripe's own numbers.

    Attributes:
        charge_id: the platform's ``ch_``.
        amount: the captured amount (the platform's ``charge`` transaction).
        stripe_fee: Stripe's processing fee on that transaction.
        destination: the connected account (``transfer_data[destination]``).
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
    def account_share(self) -> Money:
        """What reaches the connected account's balance: the transfer less the application fee."""
        return self.transfer_amount - self.application_fee

    @property
    def platform_fee(self) -> Money:
        """The platform's commission on this charge (the application fee).

        When ``transfer_data[amount]`` kept part of the charge on the platform,
        that part is commission too.
        """
        return self.application_fee + (self.amount - self.transfer_amount)


def destination_charge_posting(
    charge: DestinationCharge,
    *,
    reference: str = "",
    plugin: str = "",
    kind: str = "charge",
    description: str = "",
) -> Posting:
    """The one posting of a captured destination charge (``charge:<ch>``, see the table).

    One entry per amount of Stripe's four balance transactions, on the account
    that holds it, so the platform moves by ``F - S`` and the destination by
    ``T - F``, as on Stripe.
    """
    account = charge.destination
    return Posting(
        key=f"charge:{charge.charge_id}",
        kind=kind,
        entries=_entries(
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
        ),
        occurred_at=charge.captured_at,
        reference=reference,
        stripe_object_id=charge.charge_id,
        plugin=plugin,
        description=description or f"destination charge {charge.amount} to {account}",
    )


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


@dataclass(frozen=True, slots=True)
class DestinationRefund:
    """A refund of a destination charge and what Stripe reversed with it.

    Attributes:
        refund_id: the ``re_``.
        amount: refunded to the customer (the platform's ``refund`` transaction).
        transfer_reversed: pulled back from the destination (``transfer_refund``).
        fee_refunded: application fee returned to the destination by this refund.
        destination: the connected account.
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


def destination_refund_postings(
    refund: DestinationRefund, *, reference: str = "", plugin: str = ""
) -> tuple[Posting, ...]:
    """A destination charge's refund with ``reverse_transfer`` and ``refund_application_fee``.

    ``refund:<re>``, ``reversal:<trr>`` and one ``application_fee_refund:<fr>``
    per fee refund: the same postings the engine's webhook handlers make of
    the refund's events, so neither path counts one twice.
    """
    found = [
        refund_posting(
            PLATFORM,
            refund.refund_id,
            refund.amount,
            occurred_at=refund.refunded_at,
            reference=reference,
            plugin=plugin,
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
                plugin=plugin,
            )
        )
    found += [
        fee_refund_posting(
            refund.destination,
            fee_refund_id,
            amount,
            occurred_at=refunded_at,
            reference=reference,
            plugin=plugin,
        )
        for fee_refund_id, amount, refunded_at in refund.fee_refunds
        if amount.amount
    ]
    return tuple(found)


def refund_posting(
    account: str,
    refund_id: str,
    amount: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
) -> Posting:
    """A refund to the customer out of ``account``'s balance (the charge's owner)."""
    return Posting.transfer(
        f"refund:{refund_id}",
        "refund",
        account,
        CUSTOMERS,
        amount,
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=refund_id,
        plugin=plugin,
        description="refund to the customer",
    )


def refund_failure_posting(
    account: str,
    refund_id: str,
    amount: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
) -> Posting:
    """A refund that failed after it left ``account``'s balance: Stripe returns ``amount``.

    ``occurred_at`` is Stripe's time of the return (the ``refund_failure`` balance
    transaction's ``created``); ``refund:<re>`` stays, this undoes it.
    """
    return Posting.transfer(
        f"refund_failure:{refund_id}",
        "refund_failure",
        CUSTOMERS,
        account,
        amount,
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=refund_id,
        plugin=plugin,
        description="refund failed: returned to the balance",
    )


def reversal_posting(
    destination: str,
    reversal_id: str,
    amount: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
) -> Posting:
    """A transfer reversal: ``amount`` of a transfer back from ``destination`` to the platform."""
    return Posting.transfer(
        f"reversal:{reversal_id}",
        "reversal",
        destination,
        PLATFORM,
        amount,
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=reversal_id,
        plugin=plugin,
        description=f"transfer reversal from {destination}",
    )


def fee_refund_posting(
    payer: str,
    fee_refund_id: str,
    amount: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
) -> Posting:
    """An application fee refund: ``amount`` of the platform's fee back to the ``payer``."""
    return Posting.transfer(
        f"application_fee_refund:{fee_refund_id}",
        "application_fee_refund",
        PLATFORM,
        payer,
        amount,
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=fee_refund_id,
        plugin=plugin,
        description=f"application fee refunded to {payer}",
    )


def dispute_txn_posting(
    account: str,
    dispute_id: str,
    txn_id: str,
    amount: Money,
    fee: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
) -> Posting:
    """One dispute balance transaction: funds withdrawn (amount < 0) or reinstated (> 0).

    ``fee`` is Stripe's dispute fee on it (negative when a won dispute returns it).
    """
    fees = _entries(((account, -fee), (stripe_fees_of(account), fee)))
    return Posting(
        key=f"dispute_txn:{txn_id}",
        kind="dispute",
        entries=(Entry(account, amount), Entry(DISPUTES, -amount), *fees),
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=dispute_id,
        plugin=plugin,
        description="dispute funds withdrawn" if amount.amount < 0 else "dispute funds reinstated",
    )


def adjustment_posting(
    account: str, txn_id: str, amount: Money, fee: Money, *, occurred_at: datetime
) -> Posting:
    """An adjustment Stripe made on ``account``'s balance that is no dispute's (a
    correction): ``amount`` (either sign) against ``stripe_adjustments``, and its
    ``fee`` to Stripe's fees. Keyed and named by the balance transaction itself
    (``adjustment:<txn>``): no other Stripe object stands behind it."""
    fees = _entries(((account, -fee), (stripe_fees_of(account), fee)))
    return Posting(
        key=f"adjustment:{txn_id}",
        kind="adjustment",
        entries=(Entry(account, amount), Entry(ADJUSTMENTS, -amount), *fees),
        occurred_at=occurred_at,
        stripe_object_id=txn_id,
        description="adjustment by Stripe",
    )


def dispute_lost_posting(
    dispute_id: str,
    amount: Money,
    *,
    occurred_at: datetime,
    reference: str = "",
    plugin: str = "",
) -> Posting:
    """A lost dispute: the withdrawn money went back to the customer for good."""
    return Posting.transfer(
        f"dispute:{dispute_id}:lost",
        "dispute_lost",
        DISPUTES,
        CUSTOMERS,
        amount,
        occurred_at=occurred_at,
        reference=reference,
        stripe_object_id=dispute_id,
        plugin=plugin,
        description="dispute lost",
    )


def payout_posting(
    account: str, payout_id: str, amount: Money, *, occurred_at: datetime
) -> Posting:
    """A payout: ``amount`` from ``account``'s balance to its bank (``bank_of``), at the
    payout's ``created``. ``account`` is ``platform`` for the platform's own payouts."""
    return Posting.transfer(
        f"payout:{payout_id}",
        "payout",
        account,
        bank_of(account),
        amount,
        occurred_at=occurred_at,
        stripe_object_id=payout_id,
        description="payout to bank",
    )


def payout_return_posting(
    account: str,
    payout_id: str,
    amount: Money,
    *,
    status: str,
    occurred_at: datetime,
    failure_code: str = "",
) -> Posting:
    """A failed (``status="failed"``) or canceled payout's funds back from the bank to
    ``account``'s balance, at the time Stripe returned them (its ``payout_failure`` or
    ``payout_cancel`` balance transaction).

    Raises:
        InvalidAmount: ``status`` is neither ``failed`` nor ``canceled`` (no funds return).
    """
    if status not in {"failed", "canceled"}:
        raise InvalidAmount(f"a {status} payout returns no funds")
    kind = "payout_failure" if status == "failed" else "payout_cancel"
    return Posting.transfer(
        f"{kind}:{payout_id}",
        kind,
        bank_of(account),
        account,
        amount,
        occurred_at=occurred_at,
        stripe_object_id=payout_id,
        description=(
            f"payout failed: {failure_code or 'unknown'}"
            if status == "failed"
            else "payout canceled"
        ),
    )
