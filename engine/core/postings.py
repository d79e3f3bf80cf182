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
``refund:<re>``                account -A, ``customers`` +A     ``refund`` -A
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
=============================  ===============================  ==============================

Pure: facts in, ``Posting`` out.
"""

from __future__ import annotations

from datetime import datetime

from engine.core.ledger import CUSTOMERS, DISPUTES, PLATFORM, PLATFORM_STRIPE_FEES, Entry, Posting
from engine.core.money import Money

__all__ = [
    "dispute_lost_posting",
    "dispute_txn_posting",
    "fee_refund_posting",
    "refund_posting",
    "reversal_posting",
    "stripe_fees_of",
]


def stripe_fees_of(account: str) -> str:
    """Where Stripe's fees charged to ``account``'s balance go (``platform:stripe_fees``)."""
    return PLATFORM_STRIPE_FEES if account == PLATFORM else f"{account}:stripe_fees"


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
    fees: tuple[Entry, ...] = ()
    if not fee.is_zero():
        fees = (Entry(account, -fee), Entry(stripe_fees_of(account), fee))
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
