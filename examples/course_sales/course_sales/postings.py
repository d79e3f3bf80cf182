"""Ledger postings of a course sale, mirroring Stripe's balance transactions (pure).

Separate charges and transfers: the student pays the platform (``charge`` +A,
Stripe's fee S), then the platform transfers each beneficiary's leg
(``transfer`` -T on the platform, ``payment`` +T on the connected account).
What stays on the platform is the commission less Stripe's fee, as on Stripe.
"""

from __future__ import annotations

from datetime import datetime

from engine.core.ledger import CUSTOMERS, PLATFORM, PLATFORM_STRIPE_FEES, Entry, Posting
from engine.core.money import Money

from course_sales.config import PLUGIN

__all__ = ["charge_posting", "transfer_posting"]


def charge_posting(
    charge_id: str, amount: Money, stripe_fee: Money, reference: str, *, at: datetime
) -> Posting:
    """The student's payment to the platform, less Stripe's processing fee."""
    entries = [Entry(CUSTOMERS, -amount), Entry(PLATFORM, amount)]
    if stripe_fee.amount:
        entries += [Entry(PLATFORM, -stripe_fee), Entry(PLATFORM_STRIPE_FEES, stripe_fee)]
    return Posting(
        key=f"{PLUGIN}:charge:{charge_id}",
        kind="charge",
        entries=tuple(entries),
        reference=reference,
        occurred_at=at,
        stripe_object_id=charge_id,
        plugin=PLUGIN,
        description="course sale",
    )


def transfer_posting(
    transfer_id: str, destination: str, amount: Money, reference: str, *, at: datetime
) -> Posting:
    """The platform paying one beneficiary's share."""
    return Posting.transfer(
        f"{PLUGIN}:transfer:{transfer_id}",
        "transfer",
        PLATFORM,
        destination,
        amount,
        reference=reference,
        occurred_at=at,
        stripe_object_id=transfer_id,
        plugin=PLUGIN,
        description="course revenue share",
    )
