"""Keep payment rows in step with Stripe after they are recorded; statuses only move forward.

``record_payment`` stores a payment when it is priced; the charge id, the
final status and refunds arrive later (from the API call's answer or from
webhooks, in any order). ``update_payment`` applies them without ever moving
backwards: refunded amounts only grow, a charge id once known stays, and the
status only moves forward in ``PAYMENT_STATUS_ORDER`` (compared in the
``UPDATE`` itself, so two writers racing cannot move it back either).

The order follows a charge's life at Stripe:

====  ==========================================================  =============================
rank  statuses                                                    reached by
====  ==========================================================  =============================
0     ``pending``, ``requires_payment_method``,                   the PaymentIntent before it
      ``requires_confirmation``, ``requires_action``,             succeeds (these may follow
      ``processing``                                              each other in any order: a
                                                                  failed authentication goes
                                                                  back to a payment method)
1     ``requires_capture``                                        authorised, not captured
2     ``succeeded``, ``captured``, ``canceled``                   captured, or released
3     ``partially_refunded``                                      a refund of part
4     ``refunded``                                                refunds reached the amount
5     ``disputed``                                                ``charge.dispute.created``
                                                                  (also funds withdrawn)
6     ``dispute_won``, ``dispute_lost``                           ``charge.dispute.closed``
                                                                  (``won``/``warning_closed``:
                                                                  funds reinstated; ``lost``)
====  ==========================================================  =============================

A status of a higher rank replaces a lower one; one of the same or a lower
rank is ignored (except among the rank-0 statuses). So a late
``payment_intent.succeeded`` or ``charge.refunded`` never turns a disputed
payment back, and a closed dispute is final. Refunds arriving after a dispute
still raise ``amount_refunded``; the status stays the dispute's.

One movement goes back: a refund that fails later (``return_failed_refund``; its money
is back with the seller) takes its amount off ``amount_refunded`` and a refund
status back to ``partially_refunded`` or ``succeeded``, once per refund.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import asyncpg

from engine.core.errors import InvalidInput, RecordConflict
from engine.core.money import Money
from engine.core.tables import Payment

__all__ = [
    "MEANING_METADATA",
    "PAYMENT_STATUS_ORDER",
    "RecordedPayment",
    "advance_status_sql",
    "dispute_payment_status",
    "invoice_owner",
    "link_payment_intent",
    "lock_charge_movements",
    "meaning_metadata",
    "payment_status_rank",
    "payment_totals",
    "payments_created_between",
    "record_transfer",
    "refund_status",
    "return_failed_refund",
    "update_payment",
]

MEANING_METADATA: Final = ("marketplace_plugin", "marketplace_reference")
"""The Stripe metadata keys under which the engine writes, on every PaymentIntent it
creates, the plugin and business object the payment is for: an event about the
charge handled before the payment's record committed still knows its meaning. A
plugin writes them on the Stripe Billing subscriptions it makes (``meaning_metadata``)
to own their invoices (``invoice_owner``)."""


def meaning_metadata(plugin: str, reference: str) -> dict[str, str]:
    """Stripe metadata naming ``plugin`` and its business object ``reference``
    (``MEANING_METADATA``): what the engine writes on its PaymentIntents, and what a
    plugin writes on a Billing subscription it makes so the subscription's invoices
    are its own to post (``invoice_owner``)."""
    return dict(zip(MEANING_METADATA, (plugin, reference), strict=True))


def invoice_owner(invoice: Mapping[str, Any]) -> str:
    """The plugin that owns a Stripe Billing invoice (and so records and posts the
    charge that pays it), ``""`` for none: the ``marketplace_plugin`` of the invoice's
    own metadata, else of its subscription's as the invoice carries it
    (``parent.subscription_details.metadata``, Stripe's snapshot of the
    subscription's metadata, fixed when the invoice is finalised)."""
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
    for metadata in (
        invoice.get("metadata"),
        details.get("metadata") if isinstance(details, Mapping) else None,
    ):
        if isinstance(metadata, Mapping) and metadata.get(MEANING_METADATA[0]):
            return str(metadata[MEANING_METADATA[0]])
    return ""


PAYMENT_STATUS_ORDER: Final[Mapping[str, int]] = MappingProxyType(
    {
        "pending": 0,
        "requires_payment_method": 0,
        "requires_confirmation": 0,
        "requires_action": 0,
        "processing": 0,
        "requires_capture": 1,
        "succeeded": 2,
        "captured": 2,
        "canceled": 2,
        "partially_refunded": 3,
        "refunded": 4,
        "disputed": 5,
        "dispute_won": 6,
        "dispute_lost": 6,
    }
)
"""Each payment status's rank: a status only ever moves to a higher rank."""


def payment_status_rank(status: str) -> int:
    """The rank of ``status`` in ``PAYMENT_STATUS_ORDER``.

    Raises:
        InvalidInput: a status the order does not know (``field="status"``).
    """
    try:
        return PAYMENT_STATUS_ORDER[status]
    except KeyError:
        raise InvalidInput(
            f"unknown payment status {status!r}; known: {sorted(PAYMENT_STATUS_ORDER)}",
            field="status",
        ) from None


_CLOSED_DISPUTE_STATUS: Final = {
    "won": "dispute_won",
    "warning_closed": "dispute_won",
    "lost": "dispute_lost",
}


def dispute_payment_status(event_type: str, dispute: Mapping[str, Any]) -> str:
    """The payment status a ``charge.dispute.*`` event reports (``PAYMENT_STATUS_ORDER``).

    Open, or funds withdrawn: ``disputed``. Closed: ``dispute_won`` (won, or an
    inquiry closed without a chargeback; also funds reinstated) or ``dispute_lost``.
    """
    if event_type == "charge.dispute.funds_reinstated":
        return "dispute_won"
    return _CLOSED_DISPUTE_STATUS.get(str(dispute.get("status") or ""), "disputed")


def refund_status(charge: Mapping[str, Any]) -> str | None:
    """The payment status a Stripe charge's refunds report, None when they report none.

    ``refunded`` once refunds reach the amount *captured*, ``partially_refunded``
    before; None for a charge with no refund or never captured. Releasing an
    authorisation (the uncaptured rest of a partial capture, a cancel, an
    expiry) is no refund: since 2025-03-31.basil Stripe leaves ``amount_refunded``
    alone, and a charge never captured has nothing to refund.
    """
    captured = int(charge.get("amount_captured") or 0)
    refunded = int(charge.get("amount_refunded") or 0)
    if not charge.get("captured") or captured <= 0 or refunded <= 0:
        return None
    return "refunded" if refunded >= captured else "partially_refunded"


async def lock_charge_movements(conn: asyncpg.Connection, charge_id: str) -> None:
    """Hold the charge's money movements (refunds, reversals, fee refunds, disputes) until
    the caller's transaction ends.

    The engine's webhook handlers take this lock before posting a charge's
    movements. An API path that asks Stripe to move a charge's money and posts
    the same movements in its own transaction takes it *before* calling Stripe
    (and after its own row locks): Stripe's webhooks may be handled while that
    transaction is still open, and without the lock the two would insert the
    same ledger keys in different orders and deadlock.
    """
    if charge_id:
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"charge:{charge_id}"
        )


def _rank_sql(expression: str) -> str:
    whens = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in PAYMENT_STATUS_ORDER.items())
    return f"(CASE {expression} {whens} END)"


def advance_status_sql(current: str, proposed: str) -> str:
    """SQL choosing ``proposed`` over ``current`` only when it moves forward.

    Both arguments are SQL expressions (a column, a parameter). A NULL or
    unknown ``proposed`` keeps ``current``.
    """
    new, old = _rank_sql(proposed), _rank_sql(current)
    return (
        f"CASE WHEN {new} > {old} OR ({new} = 0 AND {old} = 0) THEN {proposed} ELSE {current} END"
    )


def _refund_status_sql(refunded: str, amount: str) -> str:
    return (
        f"CASE WHEN COALESCE({refunded}, 0) <= 0 THEN NULL "
        f"WHEN {refunded} >= {amount} THEN 'refunded' ELSE 'partially_refunded' END"
    )


_REFUND_STATUS = _refund_status_sql("$7::bigint", "COALESCE($6::bigint, amount)")

_UPDATE = f"""
UPDATE marketplace_payments AS p
SET stripe_charge_id = COALESCE(p.stripe_charge_id, $4::text),
    amount = COALESCE($6::bigint, p.amount),
    fee_amount = COALESCE($8::bigint, p.fee_amount),
    split = COALESCE($9::jsonb, p.split),
    amount_refunded = GREATEST(p.amount_refunded, COALESCE($7::bigint, 0)),
    status = {advance_status_sql("p.status", "n.status")}
FROM (
    SELECT id, COALESCE($5::text, {_REFUND_STATUS}) AS status
    FROM marketplace_payments
    WHERE id = $1::bigint OR stripe_payment_intent_id = $2::text OR stripe_charge_id = $3::text
    FOR UPDATE
) AS n
WHERE p.id = n.id
RETURNING p.id
"""  # noqa: S608 - built from this module's constant status names only


async def update_payment(
    conn: asyncpg.Connection,
    payment_intent_id: str | None = None,
    *,
    payment_id: int | None = None,
    by_charge: str | None = None,
    charge_id: str | None = None,
    status: str | None = None,
    amount: int | None = None,
    amount_refunded: int | None = None,
    fee_amount: int | None = None,
    split: Mapping[str, Any] | None = None,
) -> bool:
    """Update a payment (found by intent, id or charge); return whether one exists.

    Args:
        conn: a connection (inside the caller's transaction, if any).
        payment_intent_id: Stripe's ``pi_...`` the payment was recorded with.
        payment_id: or the payment's id (``record_payment``'s answer).
        by_charge: or the ``ch_...`` it was recorded with.
        charge_id: the ``ch_...`` once known (lets refund and dispute handlers find it).
        status: the status Stripe reports; applied only if it moves forward
            (``PAYMENT_STATUS_ORDER``). Without it, a refunded amount sets
            ``partially_refunded``/``refunded`` (forward only as well).
        amount: the amount actually charged (a partial capture), minor units.
        amount_refunded: Stripe's cumulative refunded amount (kept if smaller).
        fee_amount: the platform's fee, when a capture changed it.
        split: the split as stored (``PricedOrder.split_json()``), when it changed.

    Raises:
        InvalidInput: ``status`` is not in ``PAYMENT_STATUS_ORDER``, or no way
            to find the payment was given.
    """
    if payment_intent_id is None and payment_id is None and by_charge is None:
        raise InvalidInput("a payment is found by intent, id or charge", field="payment")
    if status is not None:
        payment_status_rank(status)
    found = await conn.fetch(
        _UPDATE,
        payment_id,
        payment_intent_id,
        by_charge,
        charge_id,
        status,
        amount,
        amount_refunded,
        fee_amount,
        None if split is None else json.dumps(dict(split)),
    )
    return bool(found)


_RETURN_FAILED_REFUND = """
UPDATE marketplace_payments AS p
SET amount_refunded = GREATEST(p.amount_refunded - $3::bigint, 0),
    status = CASE
        WHEN p.status NOT IN ('partially_refunded', 'refunded') THEN p.status
        WHEN p.amount_refunded - $3::bigint > 0 THEN 'partially_refunded'
        ELSE 'succeeded' END
FROM (
    SELECT id FROM marketplace_payments
    WHERE stripe_charge_id = $1::text OR stripe_payment_intent_id = $2::text
    ORDER BY (stripe_charge_id = $1::text) DESC NULLS LAST, id
    LIMIT 1
    FOR UPDATE
) AS n
WHERE p.id = n.id
RETURNING p.id
"""


async def return_failed_refund(
    conn: asyncpg.Connection,
    charge_id: str,
    amount: Money,
    *,
    payment_intent_id: str | None = None,
) -> bool:
    """A refund of ``charge_id`` failed: take it off its payment (found by the charge,
    else ``payment_intent_id``); return whether a payment was found.

    The one way back in ``PAYMENT_STATUS_ORDER``: a failed refund's money is back
    with the seller (Stripe's ``refund_failure`` balance transaction, and the
    charge's ``amount_refunded`` drops by it), so the payment's ``amount_refunded``
    drops by ``amount`` and a ``partially_refunded`` or ``refunded`` status becomes
    ``partially_refunded`` (other refunds remain) or ``succeeded``. Any other
    status (a dispute's) stays. Not idempotent by itself: call it once per
    refund (the engine does when its ``refund_failure:<re>`` posting is new).
    """
    found = await conn.fetch(
        _RETURN_FAILED_REFUND, charge_id or None, payment_intent_id or None, amount.amount
    )
    return bool(found)


async def link_payment_intent(
    conn: asyncpg.Connection, *, plugin: str, reference: str, payment_intent_id: str
) -> bool:
    """Attach Stripe's ``pi_...`` to the payment ``plugin`` recorded under ``reference``.

    For a payment recorded before its PaymentIntent existed (priced first,
    charged next). One payment gets the intent: the one that has it already (a
    retry), else the newest of the reference's payments without one (the latest
    pricing). An intent once attached stays. Returns whether the intent is now
    attached, so ``update_payment(conn, payment_intent_id, ...)`` finds it.
    """
    found = await conn.fetchval(
        """
        WITH chosen AS (
            SELECT id FROM marketplace_payments
            WHERE reference = $1 AND plugin = $2
              AND (stripe_payment_intent_id = $3 OR stripe_payment_intent_id IS NULL)
            ORDER BY stripe_payment_intent_id IS NULL, id DESC
            LIMIT 1
            FOR UPDATE
        )
        UPDATE marketplace_payments AS p
        SET stripe_payment_intent_id = $3
        FROM chosen WHERE p.id = chosen.id
        RETURNING p.id
        """,
        reference,
        plugin,
        payment_intent_id,
    )
    return found is not None


async def record_transfer(
    conn: asyncpg.Connection,
    *,
    transfer_id: str,
    destination: str,
    role: str,
    amount: Money,
    idempotency_key: str,
    created_at: datetime,
) -> bool:
    """Record a transfer Stripe made (``paid``) to ``destination``; once per key.

    ``idempotency_key`` is the one the transfer was created with (the key in its
    metadata); ``created_at`` is Stripe's time of the transfer (its ``created``).
    Recording the same transfer again with the same facts changes nothing. Returns
    whether this call recorded it.

    Raises:
        RecordConflict: the transfer is recorded with another amount, currency or
            destination, or another transfer is recorded under the key.
    """
    inserted = await conn.fetchval(
        """
        INSERT INTO marketplace_transfers
            (stripe_transfer_id, destination, role, amount, currency, amount_reversed,
             status, idempotency_key, failure_reason, created_at)
        VALUES ($1, $2, $3, $4, $5, 0, 'paid', $6, '', $7)
        ON CONFLICT DO NOTHING
        RETURNING id
        """,
        transfer_id,
        destination,
        role,
        amount.amount,
        amount.currency,
        idempotency_key,
        created_at,
    )
    if inserted is not None:
        return True
    rows = await conn.fetch(
        "SELECT stripe_transfer_id, destination, amount, currency, idempotency_key "
        "FROM marketplace_transfers WHERE stripe_transfer_id = $1 OR idempotency_key = $2",
        transfer_id,
        idempotency_key,
    )
    wanted = (transfer_id, destination, amount.amount, amount.currency, idempotency_key)
    for row in rows:
        found = tuple(row[name] for name in row.keys())  # noqa: SIM118 - a Record's columns
        if found != wanted:
            raise RecordConflict(
                f"transfer {transfer_id} under {idempotency_key!r} is recorded as {found}, "
                f"not {wanted}",
                kind="transfer",
                key=idempotency_key,
                stripe_id=transfer_id,
                account=destination,
                currency=amount.currency,
            )
    return False


@dataclass(frozen=True, slots=True)
class RecordedPayment:
    """A payment as recorded by ``record_payment`` and kept up to date since.

    ``fee`` is the platform's commission; ``split`` the stored split plan
    (``PricedOrder.split_json()``); ``attributes`` the order's scope values as
    priced (empty for payments recorded before the engine kept them).
    """

    id: int
    reference: str
    plugin: str
    kind: str
    account_id: str | None
    amount: Money
    fee: Money
    rule_id: str
    rule_version: int
    split: Mapping[str, Any]
    attributes: Mapping[str, Any]
    status: str
    created_at: datetime


async def payments_created_between(
    since: datetime, until: datetime, *, statuses: Collection[str] | None = None
) -> list[RecordedPayment]:
    """Payments created in ``[since, until)``, oldest first; only ``statuses`` if given.

    One query through the engine's bound tables (``Database.bind``, done by
    ``Services.start``): the way an operator's tool re-reads history.
    """
    query = Payment.select().where((Payment.created_at >= since) & (Payment.created_at < until))
    if statuses is not None:
        query = query.where(Payment.status.is_in(list(statuses)))
    rows = await query.order_by(Payment.id).output(load_json=True)
    return [
        RecordedPayment(
            id=int(row["id"]),
            reference=str(row["reference"]),
            plugin=str(row["plugin"]),
            kind=str(row["kind"]),
            account_id=row["account_id"],
            amount=Money(int(row["amount"]), str(row["currency"])),
            fee=Money(int(row["fee_amount"]), str(row["currency"])),
            rule_id=str(row["rule_id"]),
            rule_version=int(row["rule_version"]),
            split=row["split"] if isinstance(row.get("split"), dict) else {},
            attributes=row["attributes"] if isinstance(row.get("attributes"), dict) else {},
            status=str(row["status"]),
            created_at=row["created_at"],
        )
        for row in rows
    ]


async def payment_totals(
    conn: asyncpg.Connection | asyncpg.Pool,
    account_id: str,
    *,
    statuses: Collection[str],
    plugin: str | None = None,
) -> list[Money]:
    """The amount of ``account_id``'s payments in ``statuses``, per currency (ordered by it).

    Only ``plugin``'s payments when given. Statuses move only forward
    (``PAYMENT_STATUS_ORDER``), so e.g. ``{"disputed", "dispute_lost"}`` is
    the money under or lost to a dispute, a won dispute no longer in it.

    Raises:
        InvalidInput: a status not in ``PAYMENT_STATUS_ORDER`` (``field="status"``).
    """
    for status in statuses:
        payment_status_rank(status)
    rows = await conn.fetch(
        """
        SELECT currency, sum(amount)::bigint AS amount FROM marketplace_payments
        WHERE account_id = $1 AND ($2::text IS NULL OR plugin = $2) AND status = ANY($3::text[])
        GROUP BY currency ORDER BY currency
        """,
        account_id,
        plugin,
        list(statuses),
    )
    return [Money(int(row["amount"]), str(row["currency"])) for row in rows]
