"""Ledger postings for a booking's money movements, one per Stripe balance transaction.

Pure. Each posting mirrors one Stripe balance transaction on the ``platform``
and ``acct_...`` ledger accounts with the same amount, Stripe's fee on its own
entries (``platform`` -> ``platform:stripe_fees``), and ``stripe_object_id``
set, so a reconciliation can match ledger and Stripe one to one. Refunds,
reversals and disputes are the engine's own postings (``engine.core.postings``),
which its webhook handlers post for any business model. Keys are
derived from the Stripe object id (``charge:ch_1``, ``transfer:tr_1``,
``refund:re_1``, ``reversal:trr_1``, ``dispute_txn:txn_1``), so the API path
and the webhook path can both post and nothing is ever counted twice.

=============  ========================================  ===========================
movement       entries                                   Stripe balance transaction
=============  ========================================  ===========================
charge         customers -A, platform +A;                platform ``charge`` A, fee F
               platform -F, platform:stripe_fees +F
transfer       platform -T, acct +T                      platform ``transfer`` -T,
                                                         acct ``payment`` +T
refund         platform -R, customers +R                 platform ``refund`` -R
reversal       acct -V, platform +V                      platform ``transfer_refund`` +V,
                                                         acct ``payment_refund`` -V
dispute txn    platform +a, disputes -a;                 platform ``adjustment`` a, fee f
               platform -f, platform:stripe_fees +f      (withdrawal a<0, reinstated a>0)
dispute lost   disputes -A, customers +A                 (none: the money stays gone)
=============  ========================================  ===========================
"""

from __future__ import annotations

from datetime import datetime

from engine.core import postings as engine_postings
from engine.core.ledger import (
    CUSTOMERS,
    PLATFORM,
    PLATFORM_STRIPE_FEES,
    Entry,
    Posting,
)
from engine.core.money import Money

__all__ = [
    "PLUGIN",
    "charge_posting",
    "dispute_lost_posting",
    "dispute_txn_posting",
    "refund_posting",
    "reversal_posting",
    "transfer_posting",
]

PLUGIN = "three_sided_bookings"


def _fee_entries(fee: Money) -> tuple[Entry, ...]:
    if fee.is_zero():
        return ()
    return (Entry(PLATFORM, -fee), Entry(PLATFORM_STRIPE_FEES, fee))


def charge_posting(
    reference: str, charge_id: str, amount: Money, fee: Money, *, occurred_at: datetime
) -> Posting:
    """A captured charge on the platform and Stripe's processing fee on it."""
    return Posting(
        key=f"charge:{charge_id}",
        kind="charge",
        entries=(Entry(CUSTOMERS, -amount), Entry(PLATFORM, amount), *_fee_entries(fee)),
        reference=reference,
        occurred_at=occurred_at,
        stripe_object_id=charge_id,
        plugin=PLUGIN,
        description=f"charge {amount} (Stripe fee {fee})",
    )


def transfer_posting(
    reference: str, transfer_id: str, account: str, amount: Money, *, occurred_at: datetime
) -> Posting:
    """A transfer of a beneficiary's share to its connected account."""
    return Posting.transfer(
        f"transfer:{transfer_id}",
        "transfer",
        PLATFORM,
        account,
        amount,
        reference=reference,
        occurred_at=occurred_at,
        stripe_object_id=transfer_id,
        plugin=PLUGIN,
        description=f"transfer to {account}",
    )


def refund_posting(
    reference: str, refund_id: str, amount: Money, *, occurred_at: datetime
) -> Posting:
    """A refund to the customer from the platform's balance (the engine's posting)."""
    return engine_postings.refund_posting(
        PLATFORM, refund_id, amount, occurred_at=occurred_at, reference=reference, plugin=PLUGIN
    )


def reversal_posting(
    reference: str, reversal_id: str, account: str, amount: Money, *, occurred_at: datetime
) -> Posting:
    """A transfer reversal: part of a beneficiary's share back to the platform."""
    return engine_postings.reversal_posting(
        account, reversal_id, amount, occurred_at=occurred_at, reference=reference, plugin=PLUGIN
    )


def dispute_txn_posting(
    reference: str,
    dispute_id: str,
    txn_id: str,
    amount: Money,
    fee: Money,
    *,
    occurred_at: datetime,
) -> Posting:
    """One dispute balance transaction: funds withdrawn (amount < 0) or reinstated (> 0).

    The engine's posting (its dispute handler posts the same one for any charge).
    """
    return engine_postings.dispute_txn_posting(
        PLATFORM,
        dispute_id,
        txn_id,
        amount,
        fee,
        occurred_at=occurred_at,
        reference=reference,
        plugin=PLUGIN,
    )


def dispute_lost_posting(
    reference: str, dispute_id: str, amount: Money, *, occurred_at: datetime
) -> Posting:
    """A lost dispute: the withdrawn money went back to the customer for good."""
    return engine_postings.dispute_lost_posting(
        dispute_id, amount, occurred_at=occurred_at, reference=reference, plugin=PLUGIN
    )
