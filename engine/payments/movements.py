"""The engine's money calls: charge, capture, release, refund, transfer, reverse.

A business model decides the business (the price and split, priced with
``engine.payments.pricing``; who is paid; when); these calls move the money.
Each one, inside the caller's transaction (``MoneyScope.conn``):

1. derives its Stripe idempotency key from the business operation,
   ``idempotency_key(scope.reference, <operation>, *parts)`` (so a retried
   request, job or webhook gets Stripe's stored answer and never moves money
   twice);
2. calls Stripe through the engine's gateway;
3. records the payment or transfer (``engine.payments.pricing.record_payment``,
   ``engine.payments.records``), the status only moving forward;
4. posts the movement to the ledger with the engine's builders
   (``engine.core.postings``), keyed by the Stripe object, so the engine's
   webhook handlers posting the same movement change nothing.

The plugin keeps its own rows (which booking, which charge of it) from what the
call returns. A call that fails at Stripe raises the gateway's domain error
(``CardDeclined``, ``InsufficientBalance`` ...) and records and posts nothing;
the caller's transaction decides what stays.

========================  ===========================  ==============================
call                      Stripe                       ledger
========================  ===========================  ==============================
``charge``                ``POST /v1/payment_intents`` ``charge:<ch>`` once captured
``record_charge``         (an intent the customer      ``charge:<ch>`` once captured
                          authenticated)
``capture``               ``.../capture``              ``charge:<ch>``
``confirm``               ``.../confirm`` (on-session  ``charge:<ch>`` once captured
                          again)
``pay_invoice``           ``POST /v1/invoices/{id}/    (the ``invoice.paid``
                          pay``                        handler's)
``release``               ``.../cancel``               nothing moved
``refund``                ``POST /v1/refunds``, then   ``refund:<re>``,
                          ``reverse`` per paid share   ``reversal:<trr>`` each
``refund_destination_``   ``POST /v1/refunds`` with    ``refund:<re>``, ``reversal:
``charge``                ``reverse_transfer``,        <trr>``, ``application_fee_
                          ``refund_application_fee``   refund:<fr>``
``post_destination_``     (a destination charge        ``charge:<ch>`` (four balance
``charge``                captured)                    transactions)
``post_platform_charge``  (a charge captured)          ``charge:<ch>``
``transfer``              ``POST /v1/transfers``       ``transfer:<tr>``
``reverse``               ``.../reversals``            ``reversal:<trr>``
``hold_share``            (nothing: the share waits    nothing moved
                          on the platform's balance)
``release_share``         ``POST /v1/transfers`` once  ``transfer:<tr>``
``take_off_hold``,        (nothing)                    nothing moved
``cancel_share``
========================  ===========================  ==============================

A refund's reversals are the stored split's proportional part
(``refund_share``: what each leg still holds, divided by ``allocate()``), so
any sequence of partial refunds never takes a leg below zero and refunding the
rest returns exactly what is left of each leg. A share that cannot be paid yet
is held (``hold_share``, table ``marketplace_held_shares``, key
``<reference>:share:<charge>:<role>``); a refund of its charge takes the
share's part off the hold, and ``release_share`` transfers what is left, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from engine.core.authentication import customer_action
from engine.core.errors import (
    InsufficientBalance,
    InvalidAmount,
    MarketplaceError,
    NotFound,
    PaymentActionRequired,
    RecordConflict,
)
from engine.core.ledger import PLATFORM, Ledger, Posting, stripe_time
from engine.core.money import Money
from engine.core.orders import SplitLeg, SplitPlan
from engine.core.postings import (
    DestinationCharge,
    DestinationRefund,
    charge_posting,
    destination_charge_from,
    destination_charge_posting,
    destination_refund_postings,
    refund_posting,
    reversal_posting,
    transfer_posting,
)
from engine.gateway import StripeGateway, idempotency_key
from engine.payments.pricing import PricedOrder, record_payment
from engine.payments.records import (
    dispute_payment_status,
    link_payment_intent,
    lock_charge_movements,
    meaning_metadata,
    record_transfer,
    refund_status,
    update_payment,
)

__all__ = [
    "Charged",
    "HeldShare",
    "MoneyScope",
    "PaidShare",
    "Refunded",
    "Reversed",
    "Transferred",
    "cancel_share",
    "capture",
    "charge",
    "confirm",
    "held_shares",
    "hold_share",
    "pay_invoice",
    "post_destination_charge",
    "post_platform_charge",
    "record_charge",
    "record_transfer_made",
    "refund",
    "refund_destination_charge",
    "refund_share",
    "release",
    "release_share",
    "reverse",
    "split_minus",
    "split_plus",
    "take_off_hold",
    "transfer",
]

_EXPAND_CHARGE = ["latest_charge.balance_transaction"]


@dataclass(frozen=True, slots=True)
class MoneyScope:
    """Whose money moves and for what, inside the caller's transaction.

    Lock the business object's row before the first call: Stripe's webhooks
    about the movement may be handled while the transaction is still open, and
    a handler that locks the same row first then waits instead of deadlocking
    on the posting.

    Attributes:
        gateway: the engine's Stripe gateway (``services.gateway``).
        ledger: the engine's ledger (``services.ledger``).
        conn: a connection inside the caller's transaction: the plugin's own
            rows, the payment record and the posting commit together.
        plugin: the business model moving the money (recorded and posted with it).
        reference: the business object (``"booking:42"``): every idempotency
            key starts with it and every posting names it.
    """

    gateway: StripeGateway
    ledger: Ledger
    conn: asyncpg.Connection
    plugin: str
    reference: str

    def key(self, *operation: object) -> str:
        """The idempotency key of ``operation`` on this business object."""
        return idempotency_key(self.reference, *operation)

    async def post(self, posting: Posting) -> bool:
        """Post in the caller's transaction (a repeated key with the same entries posts nothing)."""
        return await self.ledger.post(posting, conn=self.conn)


# ---------------------------------------------------------------- charges


@dataclass(frozen=True, slots=True)
class Charged:
    """A PaymentIntent as recorded: its payment, its charge once there is one.

    Attributes:
        intent: Stripe's PaymentIntent (``latest_charge.balance_transaction`` expanded).
        key: the idempotency key it was created with.
        payment_id: the engine's payment record (None: found by the intent).
        status: the intent's status (``succeeded``, ``requires_capture``, ``canceled`` ...).
        charge_id: the ``ch_`` (None before the intent has a charge).
        captured: the amount captured (zero for an open authorisation).
        stripe_fee: Stripe's processing fee on the capture.
        balance_transaction: the capture's ``txn_`` ("" before there is one).
        captured_at: Stripe's time of the capture (its balance transaction's), else the
            charge's or intent's.
        priced: the price and split as recorded (a capture of part scales the split).
        kind: the ledger posting's kind (what statements filter on; ``charge`` unless said).
    """

    intent: Mapping[str, Any]
    key: str
    payment_id: int | None
    status: str
    charge_id: str | None
    captured: Money
    stripe_fee: Money
    balance_transaction: str
    captured_at: datetime
    priced: PricedOrder
    kind: str = "charge"

    @property
    def payment_intent_id(self) -> str:
        """The ``pi_``."""
        return str(self.intent["id"])

    @property
    def is_captured(self) -> bool:
        """Whether money was captured (it can be transferred and refunded)."""
        return self.charge_id is not None and self.captured.amount > 0


def _charge_facts(
    intent: Mapping[str, Any], currency: str
) -> tuple[str | None, Money, Money, str, datetime]:
    """``(charge_id, captured, stripe_fee, txn_id, captured_at)`` of an expanded intent."""
    latest = intent.get("latest_charge")
    captured = Money(int(intent.get("amount_received") or 0), currency)
    if not isinstance(latest, Mapping):
        charge_id = latest if isinstance(latest, str) else None
        return charge_id, Money(0, currency), Money(0, currency), "", _time(intent)
    txn = latest.get("balance_transaction")
    if isinstance(txn, Mapping):
        fee = Money(int(txn.get("fee") or 0), currency)
        return str(latest["id"]), captured, fee, str(txn.get("id")), stripe_time(txn["created"])
    return str(latest["id"]), captured, Money(0, currency), str(txn or ""), _time(latest)


def _charged(
    intent: Mapping[str, Any],
    *,
    key: str,
    payment_id: int | None,
    priced: PricedOrder,
    kind: str,
    captured_nothing: bool = False,
) -> Charged:
    """The ``Charged`` of an expanded intent, the split scaled to what was captured."""
    status = str(intent["status"])
    charge_id, captured, fee, txn_id, at = _charge_facts(intent, priced.price.currency)
    if captured_nothing:
        captured = Money(0, priced.price.currency)
    return Charged(
        intent=intent,
        key=key,
        payment_id=payment_id,
        status=status,
        charge_id=charge_id,
        captured=captured,
        stripe_fee=fee,
        balance_transaction=txn_id,
        captured_at=at,
        priced=_scaled(priced, captured) if captured.amount else priced,
        kind=kind,
    )


def _time(obj: Mapping[str, Any]) -> datetime:
    return stripe_time(obj.get("created"))


def _scaled(priced: PricedOrder, captured: Money) -> PricedOrder:
    """``priced`` for ``captured`` of it: the stored split's proportional part."""
    if captured == priced.price:
        return priced
    split = priced.split.proportional(captured)
    commission = replace(priced.commission, amount=split.platform_amount)
    return replace(priced, price=captured, commission=commission, split=split)


async def charge(
    scope: MoneyScope,
    priced: PricedOrder,
    *,
    operation: Sequence[object],
    payment_method: str,
    account_id: str | None,
    customer: str | None = None,
    capture_method: str = "automatic",
    off_session: bool = False,
    save_for_later: bool = False,
    transfer_group: str | None = None,
    destination: str | None = None,
    description: str = "",
    metadata: Mapping[str, str] | None = None,
    kind: str = "charge",
    recorded: bool = False,
) -> Charged:
    """Create and confirm a PaymentIntent of ``priced.price``; record and post it.

    Separate charges and transfers (no ``destination``): the charge is the
    platform's and names nobody (``transfer_group`` ties the later transfers to
    it); call ``require_payable`` first. A destination charge (``destination``):
    ``transfer_data[destination]`` and ``application_fee_amount`` = the priced
    commission, so Stripe moves the account's share at once (the gateway checks
    the account is payable); its capture is posted with the transfer and the
    application fee (``destination_charge_posting``). Key:
    ``<reference>:charge:<operation...>``.

    Args:
        scope: who charges for what, in which transaction.
        priced: the price and split (``price_order``; recorded with the payment).
        operation: what makes this charge one business operation (``("full", "pm_1")``).
        payment_method: the card (a saved ``pm_`` for off-session charges).
        account_id: the account the payment is recorded for (volume, statements).
        customer: the Stripe customer, if any (needed for saved cards).
        capture_method: ``automatic`` or ``manual`` (an authorisation to capture later).
        off_session: the customer is not present (a saved card).
        save_for_later: ``setup_future_usage=off_session``.
        transfer_group: ties the charge's transfers together (``"booking:42"``).
        destination: the connected account of a destination charge.
        description: Stripe's description of the charge.
        metadata: Stripe metadata (the business object's ids); the engine adds its own
            ``MEANING_METADATA`` (plugin and reference) to it.
        kind: the posting's kind (``tip``, ``subscription_invoice`` ...; ``charge``).
        recorded: the payment was recorded when it was priced (``record_payment``
            with no intent yet, under ``scope.reference``): the intent is attached
            to it instead of recording another.

    Raises:
        CardDeclined: the card was declined (nothing recorded; ``extra`` carries
            the ``payment_intent`` and ``decline_code``).
        PaymentActionRequired: an on-session payment waits for the customer
            (3D Secure); nothing recorded, ``record_charge`` records it when done.
    """
    params: dict[str, Any] = {
        "amount": priced.price.amount,
        "currency": priced.price.currency,
        "payment_method": payment_method,
        # Confirmed server-side with no return_url: cards only, never a redirect.
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "confirm": True,
        "capture_method": capture_method,
        "expand": _EXPAND_CHARGE,
        **({"transfer_group": transfer_group} if transfer_group else {}),
        **(
            {
                "transfer_data": {"destination": destination},
                "application_fee_amount": priced.commission.amount.amount,
            }
            if destination
            else {}
        ),
        **({"description": description} if description else {}),
        # The engine's own keys last: a caller's metadata cannot mislabel the payment.
        "metadata": {
            **(metadata or {}),
            **meaning_metadata(scope.plugin, scope.reference),
        },
        **({"customer": customer} if customer else {}),
        **({"setup_future_usage": "off_session"} if save_for_later else {}),
        **({"off_session": True} if off_session else {}),
    }
    key = scope.key("charge", *operation)
    intent = await scope.gateway.call(
        "payment_intents", "create", params=params, idempotency_key=key
    )
    if intent.get("status") == "requires_action" and not off_session:
        action = customer_action(intent)
        if action is not None:
            raise PaymentActionRequired("the payment needs the customer", action=action)
    return await record_charge(
        scope,
        priced,
        intent,
        operation=operation,
        account_id=account_id,
        customer=customer,
        kind=kind,
        recorded=recorded,
    )


async def record_charge(
    scope: MoneyScope,
    priced: PricedOrder,
    intent: Mapping[str, Any],
    *,
    operation: Sequence[object],
    account_id: str | None,
    customer: str | None = None,
    kind: str = "charge",
    recorded: bool = False,
) -> Charged:
    """Record a PaymentIntent ``charge`` created (or one the customer authenticated since).

    The payment is recorded with its price and split (once per intent; the
    status only forward; with ``recorded``, the one recorded when priced gets
    the intent) and, when money was captured, its charge is posted
    (``charge:<ch>``, with Stripe's fee; a destination charge with its transfer
    and application fee). ``intent`` needs ``latest_charge.balance_transaction``
    expanded for the fee.
    """
    status = str(intent["status"])
    payment_id: int | None = None
    if recorded:
        await link_payment_intent(
            scope.conn,
            plugin=scope.plugin,
            reference=scope.reference,
            payment_intent_id=str(intent["id"]),
        )
    else:
        payment_id = await record_payment(
            scope.conn,
            priced,
            account_id=account_id,
            customer_id=customer,
            payment_intent_id=str(intent["id"]),
            status=status,
        )
    charged = _charged(
        intent, key=scope.key("charge", *operation), payment_id=payment_id, priced=priced, kind=kind
    )
    await _sync_and_post(scope, charged)
    return charged


async def _sync_and_post(scope: MoneyScope, charged: Charged) -> None:
    """Bring the payment record in step with the intent; post the capture once there is one."""
    priced = charged.priced
    await update_payment(
        scope.conn,
        charged.payment_intent_id,
        payment_id=charged.payment_id,
        charge_id=charged.charge_id,
        status="succeeded" if charged.is_captured else charged.status,
        amount=priced.price.amount,
        fee_amount=priced.commission.amount.amount,
        split=priced.split_json(),
    )
    if not charged.is_captured or charged.charge_id is None:
        return
    latest = charged.intent.get("latest_charge")
    if isinstance(latest, Mapping) and (latest.get("transfer_data") or {}).get("destination"):
        await scope.post(
            destination_charge_posting(
                destination_charge_from(latest),
                reference=scope.reference,
                plugin=scope.plugin,
                kind=charged.kind,
            )
        )
    else:
        await scope.post(
            charge_posting(
                charged.charge_id,
                charged.captured,
                charged.stripe_fee,
                occurred_at=charged.captured_at,
                reference=scope.reference,
                plugin=scope.plugin,
                kind=charged.kind,
            )
        )


async def confirm(
    scope: MoneyScope,
    priced: PricedOrder,
    payment_intent_id: str,
    *,
    payment_method: str,
    operation: Sequence[object],
    account_id: str | None,
    customer: str | None = None,
    kind: str = "charge",
) -> Charged:
    """Confirm an existing PaymentIntent of ``priced`` again; record it, post it if captured.

    For an off-session charge Stripe refused with ``authentication_required``:
    confirmed again on-session (without ``off_session``), the intent waits in
    ``requires_action`` with the ``next_action`` the customer completes
    (``customer_action(charged.intent)``); a card that needs nothing more is
    charged at once. The payment is recorded as ``record_charge`` records it
    (``operation``: the charge's own, as given to ``charge``). Key:
    ``<reference>:confirm:<pi>:<payment_method>``.

    Raises:
        CardDeclined: the card was declined (nothing recorded).
    """
    intent = await scope.gateway.call(
        "payment_intents",
        "confirm",
        payment_intent_id,
        params={"payment_method": payment_method, "expand": _EXPAND_CHARGE},
        idempotency_key=scope.key("confirm", payment_intent_id, payment_method),
    )
    return await record_charge(
        scope,
        priced,
        intent,
        operation=operation,
        account_id=account_id,
        customer=customer,
        kind=kind,
    )


async def pay_invoice(
    scope: MoneyScope,
    invoice_id: str,
    *,
    operation: Sequence[object],
    payment_method: str | None = None,
    off_session: bool = True,
) -> dict[str, Any]:
    """Pay an open Stripe Billing invoice now (``POST /v1/invoices/{id}/pay``); Stripe's invoice.

    With ``payment_method`` the invoice is charged to that card (a new card
    retrying an invoice in dunning). Billing made the charge, so, as for every
    invoice it charges on its own, the plugin's ``invoice.paid`` handler
    records and posts it with its priced split (``post_destination_charge``).
    Key: ``<reference>:pay_invoice:<in>:<operation...>``.

    Raises:
        CardDeclined: the card was declined; the invoice stays open.
    """
    params: dict[str, Any] = {
        **({"payment_method": payment_method} if payment_method else {}),
        **({"off_session": True} if off_session else {}),
    }
    return await scope.gateway.call(
        "invoices",
        "pay",
        invoice_id,
        params=params,
        idempotency_key=scope.key("pay_invoice", invoice_id, *operation),
    )


async def _retrieve(scope: MoneyScope, payment_intent_id: str) -> dict[str, Any]:
    return await scope.gateway.call(
        "payment_intents", "retrieve", payment_intent_id, params={"expand": _EXPAND_CHARGE}
    )


async def capture(
    scope: MoneyScope,
    priced: PricedOrder,
    payment_intent_id: str,
    amount: Money,
    *,
    payment_id: int | None,
    kind: str = "charge",
) -> Charged:
    """Capture ``amount`` of an open authorisation of ``priced``; record and post the capture.

    The split recorded is the authorised split's proportional part of what
    was captured. An authorisation that lapsed (or was released) meanwhile is
    recorded with Stripe's status and returned uncaptured (``is_captured``
    False): nothing moved. Key: ``<reference>:capture:<pi>``.
    """
    intent = await _retrieve(scope, payment_intent_id)
    if intent["status"] == "requires_capture":
        intent = await scope.gateway.call(
            "payment_intents",
            "capture",
            payment_intent_id,
            params={"amount_to_capture": amount.amount, "expand": _EXPAND_CHARGE},
            idempotency_key=scope.key("capture", payment_intent_id),
        )
    status = str(intent["status"])
    if status != "succeeded":
        await update_payment(scope.conn, payment_intent_id, payment_id=payment_id, status=status)
    charged = _charged(
        intent,
        key=scope.key("capture", payment_intent_id),
        payment_id=payment_id,
        priced=priced,
        kind=kind,
        captured_nothing=status != "succeeded",
    )
    if status == "succeeded":
        await _sync_and_post(scope, charged)
    return charged


async def release(scope: MoneyScope, payment_intent_id: str, *, payment_id: int | None) -> str:
    """Cancel an open authorisation (nothing captured; the card's hold ends); Stripe's status.

    An intent no longer ``requires_capture`` is left as it is; its status is
    recorded all the same. Key: ``<reference>:release:<pi>``.
    """
    intent = await _retrieve(scope, payment_intent_id)
    if intent["status"] == "requires_capture":
        intent = await scope.gateway.call(
            "payment_intents",
            "cancel",
            payment_intent_id,
            params={"cancellation_reason": "requested_by_customer"},
            idempotency_key=scope.key("release", payment_intent_id),
        )
    status = str(intent["status"])
    await update_payment(scope.conn, payment_intent_id, payment_id=payment_id, status=status)
    return status


_EXPAND_SHARES = ["balance_transaction", "transfer", "application_fee"]
"""What a destination charge recorded late is read with: its transfer (with its
reversals) and application fee (with its refunds) tell its share movements, no call more."""


async def _expanded_charge(
    scope: MoneyScope, charge: str | Mapping[str, Any], *, expand: Sequence[str] = ()
) -> Mapping[str, Any]:
    """Stripe's charge with its balance transaction (read back unless already expanded),
    and ``expand`` too when it is read back."""
    if isinstance(charge, Mapping) and isinstance(charge.get("balance_transaction"), Mapping):
        return charge
    charge_id = str(charge["id"]) if isinstance(charge, Mapping) else charge
    return await scope.gateway.call(
        "charges",
        "retrieve",
        charge_id,
        params={"expand": list(dict.fromkeys(["balance_transaction", *expand]))},
    )


async def post_destination_charge(
    scope: MoneyScope,
    charge: str | Mapping[str, Any],
    *,
    kind: str = "charge",
    description: str = "",
    priced: PricedOrder | None = None,
    customer: str | None = None,
    invoice: str = "",
) -> DestinationCharge:
    """Post a captured destination charge once (``charge:<ch>``); what it moved.

    ``charge`` is the ``ch_`` or Stripe's charge; unless its balance transaction
    is expanded it is read back from Stripe, so the posting carries Stripe's
    fee, the transfer and the application fee as Stripe made them
    (``destination_charge_posting``). For a charge made elsewhere (Stripe
    Billing's invoice, or one the customer authenticated later), ``priced``
    records the payment too, ``succeeded``, for the destination account, under
    the charge's PaymentIntent (its ``ch_`` when it has none); a charge already
    refunded or disputed by then is recorded so (``_late_status``), since the
    engine's refund and dispute handlers may have found no payment to update, and
    a charge the engine already posted as made outside it, naming nothing, takes
    this posting's kind and meaning (``Ledger.name_transaction``), as do the charge's
    transfer reversals and application fee refunds posted before naming nothing
    (``_share_movements``: no Stripe call when ``charge`` is the id, or Stripe's charge
    with ``transfer`` and ``application_fee`` expanded). ``invoice``, the
    Stripe Billing invoice the charge paid (``in_``), is recorded with the payment: the
    engine's ``invoice.paid`` fallback then knows the invoice's charge is posted
    without asking Stripe for the invoice's payments.
    """
    found = await _expanded_charge(scope, charge, expand=_EXPAND_SHARES if priced else ())
    facts = destination_charge_from(found)
    if priced is not None:
        intent = found.get("payment_intent")
        intent_id = (
            str(intent.get("id") if isinstance(intent, Mapping) else intent or "")
            or facts.charge_id
        )
        await record_payment(
            scope.conn,
            priced,
            account_id=facts.destination,
            customer_id=customer or None,
            payment_intent_id=intent_id,
            status="succeeded",
            invoice_id=invoice or None,
        )
        status, earlier = await _late_status(scope, found)
        # The engine's refund and dispute handlers find payments by their charge.
        await update_payment(
            scope.conn,
            intent_id,
            charge_id=facts.charge_id,
            amount_refunded=int(found.get("amount_refunded") or 0),
            status=status,
        )
        earlier += await _share_movements(scope, found, facts)
        # Those handled before this record were posted naming no business.
        await scope.ledger.name_movements(
            earlier, plugin=scope.plugin, reference=scope.reference, conn=scope.conn
        )
    posting = destination_charge_posting(
        facts,
        kind=kind,
        reference=scope.reference,
        plugin=scope.plugin,
        description=description,
    )
    if not await scope.post(posting) and priced is not None:
        # Posted before as a movement made outside the engine (its invoice named no
        # owner): the same entries, now named as this business's.
        await scope.ledger.name_transaction(posting, conn=scope.conn)
    return facts


# Whether any transfer reversal or application fee refund on ``$1`` names nothing: asked
# only of a charge given without its transfer and fee expanded (``_share_movements``).
_UNNAMED_SHARE_MOVEMENTS = """
SELECT 1 FROM marketplace_ledger_transactions t
JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
WHERE t.kind IN ('reversal', 'application_fee_refund') AND e.account = $1
  AND coalesce(t.plugin, '') = '' AND coalesce(t.reference, '') = ''
LIMIT 1
"""


async def _share_movements(
    scope: MoneyScope, charge: Mapping[str, Any], facts: DestinationCharge
) -> list[str]:
    """The reversals of a destination charge's transfer and the refunds of its application
    fee (Stripe's ``trr_`` and ``fr_``), for naming with the charge (those posted before
    this record named nothing).

    Read from the charge's own transfer and fee, as ``charge`` carries them expanded
    (``_EXPAND_SHARES``): no Stripe call, and a charge with none has none, whatever
    other charges to its account had. A list Stripe cut short (``has_more``) is read
    whole. A charge given without them expanded is read back with them (one call)
    only when some reversal or fee refund on its destination names nothing yet; else
    none is unnamed and there is nothing to name.
    """
    transfer, fee = charge.get("transfer"), charge.get("application_fee")
    if (facts.transfer_id and not isinstance(transfer, Mapping)) or (
        facts.application_fee_id and not isinstance(fee, Mapping)
    ):
        if not await scope.conn.fetchval(_UNNAMED_SHARE_MOVEMENTS, facts.destination):
            return []
        charge = await _expanded_charge(scope, facts.charge_id, expand=_EXPAND_SHARES)
        transfer, fee = charge.get("transfer"), charge.get("application_fee")
    found: list[str] = []
    if isinstance(transfer, Mapping):
        found += await _listed(scope, transfer, "transfers", "reversals", "amount_reversed")
    if isinstance(fee, Mapping):
        found += await _listed(scope, fee, "application_fees", "refunds", "amount_refunded")
    return found


async def _listed(
    scope: MoneyScope, parent: Mapping[str, Any], resource: str, field: str, moved: str
) -> list[str]:
    """The ids of the list Stripe embeds in ``parent`` (a ``resource``) under ``field`` (a
    transfer's reversals, an application fee's refunds), read whole from Stripe when it
    was cut short (``has_more``), or left out while ``parent``'s ``moved`` amount says
    there are some."""
    embedded = parent.get(field)
    page: Mapping[str, Any] = embedded if isinstance(embedded, Mapping) else {}
    if page.get("has_more") or (not page and int(parent.get(moved) or 0) > 0):
        page = await scope.gateway.call(
            f"{resource}.{field}", "list", str(parent["id"]), params={"limit": 100}
        )
    return [str(item["id"]) for item in page.get("data") or [] if item.get("id")]


async def _late_status(scope: MoneyScope, charge: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The status of a payment recorded once its charge has a history (its latest
    dispute's, else its refunds', else ``succeeded``; applied forward only) and the
    Stripe objects of that history (its disputes and refunds, as Stripe lists them)."""
    charge_id = str(charge["id"])
    status = ""
    earlier: list[str] = []
    if charge.get("disputed"):
        disputes = await scope.gateway.call(
            "disputes", "list", params={"charge": charge_id, "limit": 100}
        )
        found = [dispute for dispute in disputes.get("data") or [] if dispute.get("id")]
        if found:
            status = dispute_payment_status("", found[0])
        earlier += [str(dispute["id"]) for dispute in found]
    if int(charge.get("amount_refunded") or 0) > 0:
        refunds = await scope.gateway.call(
            "refunds", "list", params={"charge": charge_id, "limit": 100}
        )
        earlier += [str(refund["id"]) for refund in refunds.get("data") or [] if refund.get("id")]
    return status or refund_status(charge) or "succeeded", earlier


async def post_platform_charge(
    scope: MoneyScope,
    charge: str | Mapping[str, Any],
    *,
    kind: str = "charge",
    description: str = "",
) -> Posting | None:
    """Post a captured charge on the platform's balance once (``charge:<ch>``, Stripe's fee).

    For a charge made outside ``charge`` (a Checkout or client-confirmed
    PaymentIntent), or announced by ``charge.succeeded`` before the API path
    posted it. ``charge`` is the ``ch_`` or Stripe's charge (read back unless its
    balance transaction is expanded). None for a charge not captured yet.
    """
    found = await _expanded_charge(scope, charge)
    txn = found.get("balance_transaction")
    if not found.get("captured") or not isinstance(txn, Mapping):
        return None
    currency = str(found["currency"])
    posting = charge_posting(
        str(found["id"]),
        Money(int(txn["amount"]), currency),
        Money(int(txn.get("fee") or 0), currency),
        occurred_at=stripe_time(txn["created"]),
        reference=scope.reference,
        plugin=scope.plugin,
        kind=kind,
        description=description,
    )
    await scope.post(posting)
    return posting


# ---------------------------------------------------------------- splits of refunds


def _legs(plan: SplitPlan, other: SplitPlan, sign: int) -> tuple[SplitLeg, ...]:
    legs = []
    for leg in plan.legs:
        try:
            delta = other.leg(leg.role).amount
        except KeyError:
            delta = Money.zero(leg.amount.currency)
        legs.append(
            SplitLeg(leg.role, leg.amount + (delta if sign > 0 else -delta), leg.account_id)
        )
    return tuple(legs)


def split_minus(plan: SplitPlan, taken: SplitPlan) -> SplitPlan:
    """``plan`` with ``taken`` removed leg by leg (by role; ``plan``'s legs and order)."""
    return SplitPlan(total=plan.total - taken.total, legs=_legs(plan, taken, -1))


def split_plus(plan: SplitPlan, added: SplitPlan) -> SplitPlan:
    """``plan`` and ``added`` summed leg by leg (by role; ``plan``'s legs and order)."""
    return SplitPlan(total=plan.total + added.total, legs=_legs(plan, added, 1))


def refund_share(split: SplitPlan, refunded: SplitPlan | None, amount: Money) -> SplitPlan:
    """Each leg's part of a refund of ``amount`` from a charge split as ``split``.

    Allocated (``allocate()``, via ``SplitPlan.proportional``) over what each leg
    still holds (``split - refunded``): partial refunds never take a leg below
    zero, and refunding the rest returns exactly what is left of each leg.

    Raises:
        InvalidAmount: ``amount`` exceeds what is left to refund.
    """
    remaining = split if refunded is None else split_minus(split, refunded)
    if amount.amount > remaining.total.amount:
        raise InvalidAmount(
            f"cannot refund {amount} of a charge with {remaining.total} left to refund"
        )
    return remaining.proportional(amount)


# ---------------------------------------------------------------- transfers and reversals


@dataclass(frozen=True, slots=True)
class Transferred:
    """A transfer Stripe made, as recorded and posted (``key``: the one it is recorded under)."""

    transfer_id: str
    destination: str
    amount: Money
    key: str
    created_at: datetime
    transfer: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PaidShare:
    """A beneficiary's paid transfer of a charge's share, which a refund may reverse.

    ``reversible`` is what of it is not reversed yet.
    """

    role: str
    transfer_id: str
    destination: str
    reversible: Money


@dataclass(frozen=True, slots=True)
class Reversed:
    """A transfer reversal, as posted; ``reversal_id`` is "" when it failed (``failure``)."""

    role: str
    transfer_id: str
    destination: str
    amount: Money
    key: str
    reversal_id: str = ""
    created_at: datetime | None = None
    failure: str = ""


async def record_transfer_made(
    scope: MoneyScope, made: Mapping[str, Any], *, role: str, key: str
) -> Transferred:
    """Record and post a transfer Stripe made (one ``transfer`` created, or one found again).

    For a transfer whose request died after Stripe made it, found by the key
    in its metadata, or announced by ``transfer.created``. It is recorded under
    the key in its metadata (``idempotency_key``: the first attempt's, which
    ``transfer`` puts there, as ``refund`` and ``reverse`` do on theirs), else
    ``key``, at Stripe's time, and posted, once: the API path and a webhook
    handler record the same row.

    Raises:
        RecordConflict: the transfer (or its key) is recorded with other facts
            (told to the ledger's conflict observers first: a metric, an alert).
    """
    amount = Money(int(made["amount"]), str(made["currency"]))
    destination = str(made["destination"])
    transferred = Transferred(
        transfer_id=str(made["id"]),
        destination=destination,
        amount=amount,
        key=str((made.get("metadata") or {}).get("idempotency_key") or key),
        created_at=_time(made),
        transfer=made,
    )
    try:
        await record_transfer(
            scope.conn,
            transfer_id=transferred.transfer_id,
            destination=destination,
            role=role,
            amount=amount,
            idempotency_key=transferred.key,
            created_at=transferred.created_at,
        )
    except RecordConflict as conflict:
        await scope.ledger.report_conflict(conflict)  # counted and alerted, as a posting's
        raise
    await scope.post(
        transfer_posting(
            destination,
            transferred.transfer_id,
            amount,
            occurred_at=transferred.created_at,
            reference=scope.reference,
            plugin=scope.plugin,
        )
    )
    return transferred


async def transfer(
    scope: MoneyScope,
    *,
    destination: str,
    amount: Money,
    source_transaction: str | None,
    role: str,
    operation: Sequence[object],
    transfer_group: str | None = None,
    description: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Transferred:
    """Transfer ``amount`` of a charge to ``destination``; record and post it.

    ``source_transaction`` (the ``ch_``) ties the transfer to its charge, so it
    waits for the charge's funds; None makes it from the platform's balance.
    Key: ``<reference>:transfer:<operation...>``, also put in the transfer's
    metadata (``idempotency_key``, unless ``metadata`` names another: the first
    attempt's) so a re-run after Stripe forgot the key can find the transfer
    again (``record_transfer_made``); the transfer is recorded under that
    metadata key, as the ``transfer.created`` handlers record it.

    Raises:
        AccountRestricted, InsufficientBalance, InvalidInput: Stripe refused it;
            nothing was recorded.
    """
    key = scope.key("transfer", *operation)
    params: dict[str, Any] = {
        "amount": amount.amount,
        "currency": amount.currency,
        "destination": destination,
        **({"source_transaction": source_transaction} if source_transaction else {}),
        **({"transfer_group": transfer_group} if transfer_group else {}),
        **({"description": description} if description else {}),
        "metadata": {"idempotency_key": key, **(metadata or {})},
    }
    made = await scope.gateway.call("transfers", "create", params=params, idempotency_key=key)
    return await record_transfer_made(scope, made, role=role, key=key)


async def reverse(
    scope: MoneyScope,
    share: PaidShare,
    amount: Money,
    *,
    charge_id: str,
    operation: Sequence[object],
    metadata: Mapping[str, str] | None = None,
) -> Reversed:
    """Reverse ``amount`` of a paid transfer; post the reversal.

    ``charge_id`` is the transfer's charge: its movements are locked first
    (``lock_charge_movements``), so the engine's webhook handlers wait for this
    transaction. Key: ``<reference>:reversal:<operation...>``, also in the reversal's
    ``metadata[idempotency_key]`` (so a record lost with its transaction is found by it).

    Raises:
        InsufficientBalance: the destination already paid the money out (Stripe
            reverses only from its balance); nothing was posted.
    """
    key = scope.key("reversal", *operation)
    await lock_charge_movements(scope.conn, charge_id)
    made = await scope.gateway.call(
        "transfers.reversals",
        "create",
        share.transfer_id,
        params={"amount": amount.amount, "metadata": {"idempotency_key": key, **(metadata or {})}},
        idempotency_key=key,
    )
    reversed_ = Reversed(
        role=share.role,
        transfer_id=share.transfer_id,
        destination=share.destination,
        amount=amount,
        key=key,
        reversal_id=str(made["id"]),
        created_at=_time(made),
    )
    await scope.post(
        reversal_posting(
            share.destination,
            reversed_.reversal_id,
            amount,
            occurred_at=reversed_.created_at or _time(made),
            reference=scope.reference,
            plugin=scope.plugin,
        )
    )
    return reversed_


# ---------------------------------------------------------------- refunds


@dataclass(frozen=True, slots=True)
class Refunded:
    """A refund, as recorded and posted, with its split and the reversals made for it.

    Attributes:
        refund_id: the ``re_``.
        amount: refunded to the customer.
        key: the idempotency key it was made with.
        share: each leg's part of it (``refund_share``).
        created_at: Stripe's time of the refund.
        reversals: one per paid share reversed (failed ones carry ``failure``).
        refund: Stripe's refund.
        held_reduced: the held shares of the charge its split took its part off
            (``take_off_hold``), as they are now.
    """

    refund_id: str
    amount: Money
    key: str
    share: SplitPlan
    created_at: datetime
    reversals: tuple[Reversed, ...]
    refund: Mapping[str, Any]
    held_reduced: tuple[HeldShare, ...] = ()


async def refund(
    scope: MoneyScope,
    *,
    charge_id: str,
    amount: Money,
    split: SplitPlan,
    refunded: SplitPlan | None,
    operation: Sequence[object],
    payment_id: int | None,
    refunded_before: Money,
    paid_shares: Sequence[PaidShare] = (),
    reason: str = "requested_by_customer",
    metadata: Mapping[str, str] | None = None,
) -> Refunded:
    """Refund ``amount`` of a platform charge; take each paid share's part back.

    The refund's split is ``refund_share(split, refunded, amount)``; each of
    ``paid_shares`` is reversed by its leg's part (at most what is left of it;
    key ``<reference>:reversal:<role>:<ch>:<re>``). A reversal the destination
    cannot cover (``InsufficientBalance``: it paid the money out) is returned
    with its ``failure`` and posts nothing; the platform carries it. A share of
    the charge held (``hold_share``) loses its leg's part (``take_off_hold``; in
    ``held_reduced``); shares not paid nor held yet are the caller's to reduce.
    Key: ``<reference>:refund:<operation...>``, also in the refund's
    ``metadata[idempotency_key]`` (so a record lost with its transaction is found by it).

    Args:
        charge_id: the ``ch_`` refunded.
        amount: what the customer gets back.
        split: the charge's split as recorded.
        refunded: the split of what was refunded of it before (None: nothing).
        payment_id: the payment record (its refunded amount grows); None: found by
            the charge.
        refunded_before: what was refunded of the charge before.
        paid_shares: the charge's paid transfers, by role.
        reason: Stripe's refund reason.
        metadata: Stripe metadata (the business object's ids, why).

    Raises:
        InvalidAmount: ``amount`` exceeds what is left to refund.
    """
    share = refund_share(split, refunded, amount)
    key = scope.key("refund", *operation)
    # Before Stripe announces the refund: the engine's handlers wait for this
    # transaction instead of posting the same movements in another order.
    await lock_charge_movements(scope.conn, charge_id)
    made = await scope.gateway.call(
        "refunds",
        "create",
        params={
            "charge": charge_id,
            "amount": amount.amount,
            "reason": reason,
            "metadata": {"idempotency_key": key, **(metadata or {})},
        },
        idempotency_key=key,
    )
    refund_id = str(made["id"])
    await update_payment(
        scope.conn,
        payment_id=payment_id,
        by_charge=charge_id,
        amount_refunded=(refunded_before + amount).amount,
    )
    await scope.post(
        refund_posting(
            PLATFORM,
            refund_id,
            amount,
            occurred_at=_time(made),
            reference=scope.reference,
            plugin=scope.plugin,
        )
    )
    held_reduced = []
    for leg in share.legs:
        if leg.amount.amount > 0:
            reduced = await take_off_hold(
                scope, charge_id=charge_id, role=leg.role, amount=leg.amount
            )
            if reduced is not None:
                held_reduced.append(reduced)
    reversals = []
    for paid in paid_shares:
        try:
            part = min(share.leg(paid.role).amount, paid.reversible)
        except KeyError:
            continue
        if part.amount <= 0:
            continue
        try:
            reversals.append(
                await reverse(
                    scope,
                    paid,
                    part,
                    charge_id=charge_id,
                    operation=(paid.role, charge_id, refund_id),
                    metadata={**(metadata or {}), "cause": refund_id},
                )
            )
        except InsufficientBalance as short:
            reversals.append(
                Reversed(
                    role=paid.role,
                    transfer_id=paid.transfer_id,
                    destination=paid.destination,
                    amount=part,
                    key=scope.key("reversal", paid.role, charge_id, refund_id),
                    failure=short.detail,
                )
            )
    return Refunded(
        refund_id=refund_id,
        amount=amount,
        key=key,
        share=share,
        created_at=_time(made),
        reversals=tuple(reversals),
        refund=made,
        held_reduced=tuple(held_reduced),
    )


async def refund_destination_charge(
    scope: MoneyScope,
    *,
    charge_id: str,
    amount: Money,
    destination: str,
    application_fee_id: str,
    operation: Sequence[object],
    refunded_before: Money,
    fee_refunded_before: Money,
    reason: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> tuple[DestinationRefund, Mapping[str, Any]]:
    """Refund ``amount`` of a destination charge; Stripe takes the shares back in proportion.

    ``reverse_transfer`` and ``refund_application_fee`` make Stripe pull the
    destination's share and the platform's fee back from the charge's own
    transfer and fee, in proportion to the refund (the split's proportional
    part, computed by Stripe); what it reversed is read back and posted as
    Stripe reports it (``destination_refund_postings``: ``refund:<re>``,
    ``reversal:<trr>``, ``application_fee_refund:<fr>``, which the engine's
    webhook handlers post too). The payment's refunded amount grows. Key:
    ``<reference>:refund:<operation...>``. Returns the facts and Stripe's refund.
    """
    currency = amount.currency
    # Before Stripe announces the refund: the engine's handlers wait for this
    # transaction instead of posting the same movements in another order.
    await lock_charge_movements(scope.conn, charge_id)
    made = await scope.gateway.call(
        "refunds",
        "create",
        params={
            "charge": charge_id,
            "amount": amount.amount,
            "reverse_transfer": True,
            "refund_application_fee": True,
            **({"reason": reason} if reason else {}),
            **({"metadata": dict(metadata)} if metadata else {}),
            "expand": ["transfer_reversal"],
        },
        idempotency_key=scope.key("refund", *operation),
    )
    reversal = made.get("transfer_reversal")
    reversed_amount = int(reversal.get("amount") or 0) if isinstance(reversal, Mapping) else 0
    fee_refunded = 0
    fee_refunds: list[tuple[str, Money, datetime]] = []
    if application_fee_id:
        fee = await scope.gateway.call("application_fees", "retrieve", application_fee_id)
        fee_refunded = int(fee.get("amount_refunded") or 0) - fee_refunded_before.amount
        fee_refunds = [
            (str(item["id"]), Money(int(item["amount"]), currency), _time(item))
            for item in (fee.get("refunds") or {}).get("data") or []
        ]
    facts = DestinationRefund(
        refund_id=str(made["id"]),
        amount=Money(int(made["amount"]), currency),
        transfer_reversed=Money(reversed_amount, currency),
        fee_refunded=Money(fee_refunded, currency),
        destination=destination,
        refunded_at=_time(made),
        reversal_id=str(reversal.get("id") or "") if isinstance(reversal, Mapping) else "",
        fee_refunds=tuple(fee_refunds),
    )
    await update_payment(
        scope.conn, by_charge=charge_id, amount_refunded=(refunded_before + facts.amount).amount
    )
    for posting in destination_refund_postings(
        facts, reference=scope.reference, plugin=scope.plugin
    ):
        await scope.post(posting)
    return facts, made


# ---------------------------------------------------------------- held shares


@dataclass(frozen=True, slots=True)
class HeldShare:
    """A beneficiary's share of a charge, held while its account cannot be paid.

    Attributes:
        key: ``<reference>:share:<charge>:<role>``: one hold per share.
        plugin: the business model that held it.
        reference: the business object (``"booking:42"``).
        charge_id: the ``ch_`` the share is of (the release's ``source_transaction``).
        role: the beneficiary's role in the split.
        destination: the connected account to pay.
        amount: what is still to transfer (refunds take their part off).
        reason: why it is held (the last refusal).
        attempts: releases Stripe refused so far.
        status: ``held``, ``released`` (transferred once) or ``cancelled`` (nothing left
            to pay: refunded, or a lost dispute).
        transfer_id: the release's ``tr_`` (None until released).
        transfer_group: the release's transfer group ("" for none).
    """

    key: str
    plugin: str
    reference: str
    charge_id: str
    role: str
    destination: str
    amount: Money
    reason: str
    attempts: int
    status: str
    transfer_id: str | None
    transfer_group: str


def _held(row: Mapping[str, Any]) -> HeldShare:
    return HeldShare(
        key=str(row["idempotency_key"]),
        plugin=str(row["plugin"]),
        reference=str(row["reference"]),
        charge_id=str(row["charge_id"]),
        role=str(row["role"]),
        destination=str(row["destination"]),
        amount=Money(int(row["amount"]), str(row["currency"])),
        reason=str(row["reason"]),
        attempts=int(row["attempts"]),
        status=str(row["status"]),
        transfer_id=row["stripe_transfer_id"],
        transfer_group=str(row["transfer_group"]),
    )


def _share_key(scope: MoneyScope, charge_id: str, role: str) -> str:
    return scope.key("share", charge_id, role)


async def hold_share(
    scope: MoneyScope,
    *,
    charge_id: str,
    role: str,
    destination: str,
    amount: Money,
    reason: str,
    transfer_group: str | None = None,
) -> HeldShare:
    """Hold ``role``'s share of ``charge_id`` (``amount`` for ``destination``), once.

    Nothing moves: the money stays on the platform's balance until
    ``release_share`` transfers it. Holding the same share again keeps the
    amount and the count of attempts and records the newer ``reason``; a share
    already released or cancelled stays so. Key: ``<reference>:share:<charge>:<role>``.
    """
    if amount.amount <= 0:
        raise InvalidAmount(f"cannot hold {amount}")
    row = await scope.conn.fetchrow(
        """
        INSERT INTO marketplace_held_shares AS h
            (idempotency_key, plugin, reference, charge_id, role, destination, amount,
             currency, transfer_group, reason)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        ON CONFLICT (idempotency_key) DO UPDATE
        SET reason = CASE WHEN h.status = 'held' THEN EXCLUDED.reason ELSE h.reason END,
            updated_at = now()
        RETURNING *
        """,
        _share_key(scope, charge_id, role),
        scope.plugin,
        scope.reference,
        charge_id,
        role,
        destination,
        amount.amount,
        amount.currency,
        transfer_group or "",
        reason[:1000],
    )
    return _held(row)


async def held_shares(
    db: asyncpg.Connection | asyncpg.Pool,
    *,
    destination: str | None = None,
    plugin: str | None = None,
    reference: str | None = None,
    status: str | None = "held",
) -> list[HeldShare]:
    """Shares held (or in ``status``; None: any), oldest first, narrowed by whichever of
    ``destination``, ``plugin`` and ``reference`` are given."""
    rows = await db.fetch(
        """
        SELECT * FROM marketplace_held_shares
        WHERE ($1::text IS NULL OR destination = $1) AND ($2::text IS NULL OR plugin = $2)
          AND ($3::text IS NULL OR reference = $3) AND ($4::text IS NULL OR status = $4)
        ORDER BY id
        """,
        destination,
        plugin,
        reference,
        status,
    )
    return [_held(row) for row in rows]


async def release_share(
    scope: MoneyScope,
    *,
    charge_id: str,
    role: str,
    from_balance: bool = False,
    attempt: int | None = None,
    description: str = "",
    metadata: Mapping[str, str] | None = None,
) -> Transferred | None:
    """Transfer a held share to its account, once; None when it is not held (any more).

    The hold's row is locked for the transaction, so two releases racing make
    one transfer. The transfer is tied to the share's charge
    (``source_transaction``), or, with ``from_balance``, made from the
    platform's balance (when Stripe says the charge can no longer cover it:
    ``InvalidInput`` with ``stripe_code="amount_too_large"``). Key
    ``<reference>:transfer:share:<charge>:<role>[:attempt:<n>][:from_balance]``,
    ``attempt`` defaulting to the refusals so far (a refused attempt's key is
    never reused for the next).

    Raises:
        NotFound: no such share was held.
        AccountRestricted, InsufficientBalance, InvalidInput: Stripe refused; the
            share stays held, its attempts and reason updated.
    """
    row = await scope.conn.fetchrow(
        "SELECT * FROM marketplace_held_shares WHERE idempotency_key = $1 FOR UPDATE",
        _share_key(scope, charge_id, role),
    )
    if row is None:
        raise NotFound(f"no share of {role} of {charge_id} is held for {scope.reference}")
    share = _held(row)
    if share.status != "held" or share.amount.amount <= 0:
        return None
    tries = share.attempts if attempt is None else attempt
    operation: tuple[object, ...] = ("share", charge_id, role)
    if tries:
        operation += ("attempt", tries)
    if from_balance:
        operation += ("from_balance",)
    try:
        made = await transfer(
            scope,
            destination=share.destination,
            amount=share.amount,
            source_transaction=None if from_balance else charge_id,
            role=role,
            operation=operation,
            transfer_group=share.transfer_group or None,
            description=description,
            metadata=metadata,
        )
    except MarketplaceError as refused:
        await scope.conn.execute(
            "UPDATE marketplace_held_shares SET attempts = attempts + 1, reason = $2, "
            "updated_at = now() WHERE idempotency_key = $1",
            share.key,
            refused.detail[:1000],
        )
        raise
    await scope.conn.execute(
        "UPDATE marketplace_held_shares SET status = 'released', stripe_transfer_id = $2, "
        "released_at = now(), updated_at = now() WHERE idempotency_key = $1",
        share.key,
        made.transfer_id,
    )
    return made


async def take_off_hold(
    scope: MoneyScope, *, charge_id: str, role: str, amount: Money
) -> HeldShare | None:
    """Take ``amount`` (at most what is held) off a held share: less to transfer later.

    A share left at zero is ``cancelled``. Returns the share as it is now, or
    None when no share of ``role`` of ``charge_id`` is held.
    """
    row = await scope.conn.fetchrow(
        """
        UPDATE marketplace_held_shares
        SET amount = GREATEST(amount - $2::bigint, 0),
            status = CASE WHEN amount - $2::bigint <= 0 THEN 'cancelled' ELSE status END,
            updated_at = now()
        WHERE idempotency_key = $1 AND status = 'held'
        RETURNING *
        """,
        _share_key(scope, charge_id, role),
        amount.amount,
    )
    return None if row is None else _held(row)


async def cancel_share(scope: MoneyScope, *, charge_id: str, role: str) -> HeldShare | None:
    """Cancel a held share (nothing will be transferred: a lost dispute); the share as
    cancelled, or None when none is held."""
    row = await scope.conn.fetchrow(
        "UPDATE marketplace_held_shares SET status = 'cancelled', updated_at = now() "
        "WHERE idempotency_key = $1 AND status = 'held' RETURNING *",
        _share_key(scope, charge_id, role),
    )
    return None if row is None else _held(row)
