"""The engine's own webhook handlers: accounts, payouts, refunds, disputes, transfers.

They post the movements every business model shares (``engine.core.postings``:
refunds, transfer reversals, application fee refunds, disputes; payouts), made
through the engine or outside it (Stripe's dashboard), and the charges and
transfers made outside the engine (``on_charge_captured``, ``on_transfer``),
keyed by the Stripe object so a plugin's API path posting the same movement
first changes nothing. What no payment record names, the plugins'
``resolve_movement_meaning`` may (``_meaning``).

Each is idempotent and order-insensitive: state only moves forward (an older
``account.updated`` never overwrites a newer one; a payout's status only moves
forward in ``engine.payments.payouts.PAYOUT_STATUS_ORDER``), and ledger postings
are keyed by the Stripe object so a repeated event posts nothing twice. Plugins
add the business meaning on top.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import asyncpg

from engine.accounts.service import apply_stripe_account, bank_errored
from engine.core.contributions import StripeEvent, WebhookRegistration
from engine.core.errors import NotFound
from engine.core.ledger import CUSTOMERS, PLATFORM, stripe_time
from engine.core.money import Money
from engine.core.orders import LifecycleEvent, PayoutFailure
from engine.core.postings import (
    direct_charge_posting,
    dispute_lost_posting,
    dispute_txn_posting,
    fee_refund_posting,
    refund_failure_posting,
    refund_posting,
    reversal_posting,
    transfer_posting,
)
from engine.payments.movements import MoneyScope, post_destination_charge, post_platform_charge
from engine.payments.payouts import apply_payout
from engine.payments.records import (
    MEANING_METADATA,
    dispute_payment_status,
    invoice_owner,
    lock_charge_movements,
    refund_status,
    return_failed_refund,
    update_payment,
)
from engine.worker.dispatch import EventContext, stripe_object

__all__ = ["core_fallbacks", "core_registrations"]

log = logging.getLogger(__name__)


async def on_account_updated(event: StripeEvent, ctx: EventContext) -> None:
    """Mirror charges/payouts enabled and requirements from Stripe's current account.

    The account is re-read from Stripe rather than taken from the event:
    Stripe does not order its deliveries and two snapshots can carry the same
    ``created`` second, so only the live object is safe to apply. Unknown
    accounts (not ours) cost no API call.
    """
    account_id = str(stripe_object(event).get("id") or "")
    known = await ctx.conn.fetchval(
        "SELECT 1 FROM marketplace_accounts WHERE stripe_account_id = $1", account_id
    )
    if not known:
        return
    current = await ctx.services.gateway.retrieve_account(account_id)
    updated = await apply_stripe_account(ctx.conn, current)
    await sync_payout_failure(ctx, account_id, current)
    if updated is None:
        return
    plugins = ctx.services.plugins
    lifecycle = LifecycleEvent(
        "engine.account.updated",
        subject_id=updated.id,
        account_id=updated.id,
        data={
            "role": updated.role,
            "status": updated.status,
            "charges_enabled": updated.charges_enabled,
            "payouts_enabled": updated.payouts_enabled,
            "requirements_due": list(updated.requirements_due),
        },
    )
    ctx.after_commit(lambda: plugins.notify_lifecycle(lifecycle))


async def on_external_account(event: StripeEvent, ctx: EventContext) -> None:
    """A bank account added, changed or removed: the payout failure flag may lift."""
    await sync_payout_failure(ctx, str(event.get("account") or ""))


# One round trip for the common case: whether the account is ours, the latest
# payout's failure code (NULL unless it failed), and, when that payout did not
# fail, the flag cleared in the same statement. A failed latest payout needs
# Stripe's word on the bank first (``_SET_PAYOUT_FAILURE`` then).
_PAYOUT_FAILURE_CHECK = """
WITH known AS (
    SELECT 1 FROM marketplace_accounts WHERE stripe_account_id = $1
), latest AS (
    SELECT CASE WHEN status = 'failed' THEN COALESCE(failure_code, 'unknown') END AS code
    FROM marketplace_payouts WHERE account_id = $1
    ORDER BY created_at DESC, stripe_payout_id DESC LIMIT 1
), cleared AS (
    UPDATE marketplace_accounts SET payout_failure_code = NULL, updated_at = now()
    WHERE stripe_account_id = $1 AND payout_failure_code IS NOT NULL
      AND (SELECT code FROM latest) IS NULL
    RETURNING 1
)
SELECT (SELECT code FROM latest) AS code FROM known
"""

_SET_PAYOUT_FAILURE = (
    "UPDATE marketplace_accounts SET payout_failure_code = $2, updated_at = now() "
    "WHERE stripe_account_id = $1 AND payout_failure_code IS DISTINCT FROM $2"
)


async def sync_payout_failure(
    ctx: EventContext, account: str, stripe_account: Mapping[str, Any] | None = None
) -> str | None:
    """Set the account's payout failure flag from Stripe's facts, in any event order.

    Flagged while the latest payout (by Stripe's time) failed and the bank it
    failed to is still errored: a later payout that succeeds, or a new bank
    account, clears it. ``stripe_account`` is the account as Stripe has it now
    (retrieved here only when the latest payout failed). Returns the flag
    (``None`` too for an account the engine does not know: there is nothing to
    flag). One statement when the latest payout did not fail (the usual case).
    """
    checked = await ctx.conn.fetchrow(_PAYOUT_FAILURE_CHECK, account)
    if checked is None:
        return None  # not an account of ours
    code = checked["code"]
    if code is None:
        return None  # cleared (if it was set) by the check itself
    if stripe_account is None:
        stripe_account = await ctx.services.gateway.retrieve_account(account)
    if not bank_errored(stripe_account):
        code = None
    await ctx.conn.execute(_SET_PAYOUT_FAILURE, account, code)
    return str(code) if code is not None else None


async def on_payout(event: StripeEvent, ctx: EventContext) -> None:
    """Record a payout and post it: paid out, then back if it fails or is canceled.

    Connected accounts' payouts and the platform's own (events without
    ``account``) alike, through ``engine.payments.payouts.apply_payout``: the
    status only moves forward (``PAYOUT_STATUS_ORDER``), ``payout:<id>`` is
    posted at the payout's ``created`` and its funds' return
    (``payout_failure:<id>``/``payout_cancel:<id>``) once, when the status Stripe
    reports is the one on record. A failed connected-account payout flags the
    account and tells the plugins (once).
    """
    payout = stripe_object(event)
    account = str(event.get("account") or PLATFORM)
    applied = await apply_payout(
        ctx.conn, ctx.services.gateway, ctx.services.ledger, payout, account=account
    )
    if account == PLATFORM:
        return
    await sync_payout_failure(ctx, account)
    if not applied.returned or applied.record.status != "failed":
        return  # payout.updated and payout.failed both say so: notify once
    plugins = ctx.services.plugins
    failure = PayoutFailure(
        account_id=account,
        kind="payout",
        failure_code=str(payout.get("failure_code") or "unknown"),
        amount=applied.record.amount,
        stripe_object_id=str(payout["id"]),
        message=str(payout.get("failure_message") or ""),
    )
    ctx.after_commit(lambda: plugins.notify_payout_failure(failure))


def _id(value: Any) -> str:
    """The id of an expandable field (an id or an expanded object)."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


async def _meaning(
    ctx: EventContext,
    charge_id: str,
    payment_intent_id: str = "",
    *,
    account: str = PLATFORM,
    stripe_object: Mapping[str, Any] | None = None,
) -> tuple[str, str]:
    """The business object and plugin of the payment a charge belongs to (``("", "")``
    when nothing names it: the movement is posted all the same).

    Found by the charge, else by its PaymentIntent: a business model may have
    recorded the payment before it learnt the charge's id (a dispute or refund
    can be handled in between). Failing both (the event is handled before the
    transaction recording the payment committed), the PaymentIntent's metadata
    says it: the engine writes the plugin and business object on every intent
    it creates (``MEANING_METADATA``). Failing that too (a charge made outside
    the engine), the plugins' ``resolve_movement_meaning`` is asked, with
    ``stripe_object`` (the charge, or a transfer made outside the engine) or,
    without it, the charge read back from Stripe.
    """
    found = await _recorded_meaning(ctx, charge_id, payment_intent_id, account=account)
    if found is not None:
        return found
    if stripe_object is None and charge_id:
        try:
            stripe_object = await ctx.services.gateway.call(
                "charges", "retrieve", charge_id, account=None if account == PLATFORM else account
            )
        except NotFound:
            return "", ""
    if stripe_object is None:
        return "", ""
    meaning: tuple[str, str] = ctx.services.plugins.movement_meaning(stripe_object)
    return meaning


async def _recorded_meaning(
    ctx: EventContext, charge_id: str, payment_intent_id: str, *, account: str
) -> tuple[str, str] | None:
    """The meaning the engine recorded (a payment record, its intent's metadata), else None."""
    if not charge_id and not payment_intent_id:
        return None
    row = await ctx.conn.fetchrow(
        "SELECT reference, plugin FROM marketplace_payments "
        "WHERE stripe_charge_id = $1 OR stripe_payment_intent_id = $2 "
        "ORDER BY (stripe_charge_id = $1) DESC NULLS LAST, id LIMIT 1",
        charge_id or None,
        payment_intent_id or None,
    )
    if row is not None:
        return str(row["reference"]), str(row["plugin"])
    if not payment_intent_id or account != PLATFORM:
        return None  # the engine creates intents on the platform only
    try:
        intent = await ctx.services.gateway.call("payment_intents", "retrieve", payment_intent_id)
    except NotFound:
        return None
    return _engine_meaning(intent)


def _engine_meaning(intent: Mapping[str, Any]) -> tuple[str, str] | None:
    """The plugin and business object the engine wrote on an intent it made, else None."""
    metadata = intent.get("metadata") or {}
    plugin, reference = (str(metadata.get(key) or "") for key in MEANING_METADATA)
    return (reference, plugin) if plugin and reference else None


def _is_destination_payment(charge_id: str) -> bool:
    # A connected account's ``py_`` (and its ``pyr_`` refunds) are made by the platform's
    # transfer and its reversals, which are posted with them.
    return charge_id.startswith("py_")


async def post_refund(ctx: EventContext, refund: Mapping[str, Any], account: str) -> None:
    """Post one refund on the balance of the charge's owner, made anywhere (API or dashboard)."""
    charge_id = _id(refund.get("charge"))
    refund_id = str(refund.get("id") or "")
    if not refund_id or _is_destination_payment(charge_id) or refund_id.startswith("pyr_"):
        return
    if refund.get("status") == "canceled":
        return  # a canceled refund never left the balance
    await lock_charge_movements(ctx.conn, charge_id)
    reference, plugin = await _meaning(
        ctx, charge_id, _id(refund.get("payment_intent")), account=account
    )
    amount = Money(int(refund.get("amount") or 0), str(refund.get("currency") or "usd"))
    await ctx.services.ledger.post(
        refund_posting(
            account,
            refund_id,
            amount,
            occurred_at=stripe_time(refund.get("created")),
            reference=reference,
            plugin=plugin,
        ),
        conn=ctx.conn,
    )
    returned = refund.get("failure_balance_transaction")
    if refund.get("status") == "failed" and returned:
        posted = await ctx.services.ledger.post(
            refund_failure_posting(
                account,
                refund_id,
                amount,
                occurred_at=await _balance_transaction_time(ctx, returned, account),
                reference=reference,
                plugin=plugin,
            ),
            conn=ctx.conn,
        )
        if posted:  # once per refund: its payment gives it back
            await return_failed_refund(
                ctx.conn, charge_id, amount, payment_intent_id=_id(refund.get("payment_intent"))
            )


async def _balance_transaction_time(ctx: EventContext, txn: object, account: str) -> datetime:
    """Stripe's time of a balance transaction (an expanded one, or read back by id)."""
    if isinstance(txn, Mapping):
        return stripe_time(txn.get("created"))
    found = await ctx.services.gateway.call(
        "balance_transactions",
        "retrieve",
        str(txn),
        account=None if account == PLATFORM else account,
    )
    return stripe_time(found.get("created"))


async def on_refund(event: StripeEvent, ctx: EventContext) -> None:
    """``refund.created``/``updated``/``failed``, ``charge.refund.updated``: post the refund
    (the plugin's API path may have), and, once it failed, its money coming back
    (``refund_failure:<re>``, at the time of Stripe's ``refund_failure`` balance
    transaction), taken off the payment's refunded amount and refund status then
    (``engine.payments.records.return_failed_refund``)."""
    await post_refund(ctx, stripe_object(event), str(event.get("account") or PLATFORM))


async def on_charge_refunded(event: StripeEvent, ctx: EventContext) -> None:
    """Keep the payment's refunded amount in step (it only grows, the status only forward),
    and post the charge's refunds the event lists.

    A charge never captured has nothing refunded (releasing an authorisation is
    no refund), whatever the event says: it changes nothing.
    """
    charge = stripe_object(event)
    status = refund_status(charge)
    if status is None:
        return
    await lock_charge_movements(ctx.conn, str(charge.get("id") or ""))
    await update_payment(
        ctx.conn,
        by_charge=str(charge.get("id") or ""),
        amount_refunded=int(charge.get("amount_refunded") or 0),
        status=status,
    )
    account = str(event.get("account") or PLATFORM)
    for refund in (charge.get("refunds") or {}).get("data") or []:
        if isinstance(refund, Mapping):
            await post_refund(ctx, refund, account)


async def on_charge_captured(event: StripeEvent, ctx: EventContext) -> None:
    """``charge.succeeded``/``charge.captured``, ``payment_intent.succeeded``: post a
    captured platform charge made outside the engine (Stripe's dashboard, a script).

    ``charge:<ch>`` with Stripe's fee (``charge_posting``), a destination charge
    with its transfer and application fee (``destination_charge_posting``),
    labelled as ``_outside_meaning`` says. Left alone: a charge a payment record
    names or whose intent an enabled plugin's money call made
    (``MEANING_METADATA`` naming an enabled plugin: that call posts it, with its
    kind), one paying a Stripe Billing invoice an enabled plugin owns
    (``_pays_a_plugins_invoice``: that plugin posts it from ``invoice.paid``, else
    the engine's fallback ``on_invoice_paid`` does, after it), and a connected
    account's ``py_`` (posted with the platform's transfer). A charge paying any
    other invoice (Billing used directly) is posted here like any other. A charge
    on a connected account's own balance (a direct charge: the event names the
    ``account``) is posted there by the same rule (``_post_direct_charge``).
    """
    account = str(event.get("account") or "")
    found = await _outside_charge(ctx, stripe_object(event), account or None)
    if found is not None:
        await _post_outside_charge(ctx, *found, account)


async def on_invoice_paid(event: StripeEvent, ctx: EventContext) -> None:
    """``invoice.paid``, after every plugin's handler of it (``core_fallbacks``): post the
    invoice's charge as a movement made outside the engine if nobody has.

    An invoice an enabled plugin owns (``invoice_owner``) is left to that plugin,
    which posts its charge from ``invoice.paid`` (named, ``post_destination_charge``
    with ``priced``); its handlers have run by now, in this transaction. One it
    does not settle (no record of it: a subscription made in Stripe with the
    plugin's metadata copied, or a plugin that settles no invoices) would
    otherwise be posted by nobody. The same posting as ``on_charge_captured``'s,
    so whichever of the charge's and the invoice's events comes first, the charge
    is posted once; a plugin recording it later names it
    (``Ledger.name_transaction``).

    No Stripe call when the invoice's charges are known posted: the payments recorded
    for the invoice (``post_destination_charge`` with ``invoice``, as its plugin posts
    them) whose ``charge:<ch>`` is posted cover what the invoice says was paid
    (``_recorded_invoice_paid``). Otherwise its charges are found through its
    InvoicePayments (at the engine's API version the invoice names no charge).
    """
    invoice = stripe_object(event)
    invoice_id = str(invoice.get("id") or "")
    amount_paid = int(invoice.get("amount_paid") or 0)
    if not invoice_id or amount_paid <= 0:
        return  # nothing charged (a free invoice, or paid from the credit balance)
    account = str(event.get("account") or "")
    currency = str(invoice.get("currency") or "")
    if not account and await _recorded_invoice_paid(ctx, invoice_id, currency) >= amount_paid:
        return  # its plugin posted its charges (in this transaction, or before)
    paying = await ctx.services.gateway.call(
        "invoice_payments",
        "list",
        params={
            "invoice": invoice_id,
            "payment": {"type": "payment_intent"},
            "status": "paid",
            "expand": ["data.payment.payment_intent"],
            "limit": 10,
        },
        account=account or None,
    )
    for payment in paying.get("data") or []:
        intent = (payment.get("payment") or {}).get("payment_intent")
        if not isinstance(intent, Mapping):
            continue
        found = await _outside_charge(ctx, intent, account or None, owned_invoices=True)
        if found is not None:
            await _post_outside_charge(ctx, *found, account)


# What the posted charges recorded as paying an invoice took from the customers (each
# ``charge:<ch>`` once, however many payments name it), in the invoice's currency.
_RECORDED_INVOICE_PAID = """
SELECT coalesce(-sum(e.amount), 0)::bigint
FROM marketplace_ledger_transactions t
JOIN marketplace_ledger_entries e ON e.ledger_transaction = t.id
WHERE t.idempotency_key IN (
    SELECT 'charge:' || stripe_charge_id FROM marketplace_payments
    WHERE stripe_invoice_id = $1 AND stripe_charge_id IS NOT NULL
) AND e.account = $2 AND e.currency = $3
"""


async def _recorded_invoice_paid(ctx: EventContext, invoice_id: str, currency: str) -> int:
    """How much of platform invoice ``invoice_id`` its recorded, posted charges paid (minor
    units of ``currency``): the customers' side of each ``charge:<ch>`` whose payment
    names the invoice. An invoice it covers (its ``amount_paid``) has every charge posted:
    Stripe's paid InvoicePayments sum to it, and each charge recorded for it is one."""
    paid = await ctx.conn.fetchval(_RECORDED_INVOICE_PAID, invoice_id, CUSTOMERS, currency)
    return int(paid or 0)


async def _post_outside_charge(
    ctx: EventContext, charge: Mapping[str, Any], meaning: tuple[str, str], account: str
) -> None:
    """Post a charge made outside the engine once (``charge:<ch>``), as ``_outside_charge``
    read it: on connected ``account``'s own balance (a direct charge), else the
    platform's (a destination charge with its transfer and application fee)."""
    if account:
        await _post_direct_charge(ctx, charge, account)
        return
    reference, plugin = meaning
    await lock_charge_movements(ctx.conn, str(charge["id"]))
    scope = MoneyScope(ctx.services.gateway, ctx.services.ledger, ctx.conn, plugin, reference)
    if (charge.get("transfer_data") or {}).get("destination"):
        await post_destination_charge(scope, charge)
    else:
        await post_platform_charge(scope, charge)


async def _outside_charge(
    ctx: EventContext,
    obj: Mapping[str, Any],
    account: str | None,
    *,
    owned_invoices: bool = False,
) -> tuple[Mapping[str, Any], tuple[str, str]] | None:
    """The captured charge of ``obj`` (a charge or PaymentIntent, on ``account``'s
    balance, the platform's when ``None``) with its balance transaction expanded, and
    its meaning (``_outside_meaning``), if the engine is to post it as a movement made
    outside it; ``None`` for one already posted, one a payment record names, one whose
    intent an enabled plugin made (``MEANING_METADATA``), one paying an invoice an
    enabled plugin owns (unless ``owned_invoices``: the fallback after that plugin's
    handlers), a ``py_``, or an authorisation."""
    if obj.get("object") == "payment_intent":
        intent: Mapping[str, Any] | None = obj
        charge_id, intent_id = _id(obj.get("latest_charge")), str(obj.get("id") or "")
    else:
        intent = None
        charge_id, intent_id = str(obj.get("id") or ""), _id(obj.get("payment_intent"))
        if not obj.get("captured"):
            return None  # an authorisation: posted when captured (``charge.captured``)
    if not charge_id or _is_destination_payment(charge_id):
        return None
    # Checked before taking the charge's lock: an engine's charge (the usual case) must
    # not wait on its API path's transaction, which may hold that lock.
    if await _posted(ctx, f"charge:{charge_id}"):
        return None
    recorded = await ctx.conn.fetchval(
        "SELECT 1 FROM marketplace_payments "
        "WHERE stripe_charge_id = $1 OR stripe_payment_intent_id = $2 LIMIT 1",
        charge_id,
        intent_id or None,
    )
    if recorded:
        return None
    gateway = ctx.services.gateway
    engine_meaning = None
    if intent_id:
        if intent is None:
            try:
                intent = await gateway.call(
                    "payment_intents", "retrieve", intent_id, account=account
                )
            except NotFound:
                return None
        engine_meaning = _engine_meaning(intent) if account is None else None
        if engine_meaning is not None and ctx.services.plugins.is_enabled(engine_meaning[1]):
            return None  # an enabled plugin's money call made it: that call posts it
        if not owned_invoices and await _pays_a_plugins_invoice(ctx, intent_id, account):
            return None
    charge: Mapping[str, Any] = obj
    if intent is not None or not isinstance(obj.get("balance_transaction"), Mapping):
        try:  # the balance transaction (Stripe's fee, the capture's time) read back
            charge = await gateway.call(
                "charges",
                "retrieve",
                charge_id,
                params={"expand": ["balance_transaction"]},
                account=account,
            )
        except NotFound:
            return None  # not a charge of this balance's
    if not charge.get("captured") or not isinstance(charge.get("balance_transaction"), Mapping):
        return None
    return charge, _outside_meaning(ctx, charge, engine_meaning)


def _outside_meaning(
    ctx: EventContext, charge: Mapping[str, Any], engine_meaning: tuple[str, str] | None
) -> tuple[str, str]:
    """The meaning of a charge posted as made outside the engine: its intent's
    ``MEANING_METADATA`` when it has one (a plugin's intent, that plugin not enabled:
    named as ``_meaning`` names its refunds and disputes), else the plugins'
    ``resolve_movement_meaning`` of the charge."""
    if engine_meaning is not None:
        return engine_meaning
    meaning: tuple[str, str] = ctx.services.plugins.movement_meaning(charge)
    return meaning


async def _pays_a_plugins_invoice(ctx: EventContext, intent_id: str, account: str | None) -> bool:
    """Whether PaymentIntent ``intent_id`` pays a Stripe Billing invoice an enabled plugin
    owns (``invoice_owner``), so that plugin posts its charge (from ``invoice.paid``)
    and the charge's events must not post it first: the same ``charge:<ch>`` under
    another kind and meaning.

    Decided from Stripe's data alone, never from what a handler has done yet, so the
    charge's events leave it whatever order they and the invoice's are handled in;
    a charge the owner does not post from ``invoice.paid`` is posted by the engine's
    fallback after it (``on_invoice_paid``). An invoice no enabled plugin owns (made
    with Stripe's API or dashboard directly) is a movement made outside the engine."""
    gateway = ctx.services.gateway
    paying = await gateway.call(
        "invoice_payments",
        "list",
        params={
            "payment": {"type": "payment_intent", "payment_intent": intent_id},
            "limit": 1,
            "expand": ["data.invoice"],
        },
        account=account,
    )
    for payment in paying.get("data") or []:
        invoice = payment.get("invoice")
        if not isinstance(invoice, Mapping):
            invoice = await gateway.call("invoices", "retrieve", _id(invoice), account=account)
        owner = invoice_owner(invoice)
        return bool(owner) and ctx.services.plugins.is_enabled(owner)
    return False


async def _post_direct_charge(ctx: EventContext, charge: Mapping[str, Any], account: str) -> None:
    """Post a captured charge made directly on connected ``account``'s own balance once
    (``charge:<ch>``, ``direct_charge_posting``): the amount, Stripe's fee and the
    application fee from Stripe's ``charge`` balance transaction on that account
    (``charge`` as ``_outside_charge`` read it)."""
    charge_id = str(charge["id"])
    txn: Mapping[str, Any] = charge["balance_transaction"]
    currency = str(charge.get("currency") or txn.get("currency") or "usd")
    application_fee = Money(
        sum(
            int(detail.get("amount") or 0)
            for detail in txn.get("fee_details") or []
            if isinstance(detail, Mapping) and detail.get("type") == "application_fee"
        ),
        currency,
    )
    stripe_fee = Money(int(txn.get("fee") or 0), currency) - application_fee
    meaning: tuple[str, str] = ctx.services.plugins.movement_meaning(charge)
    reference, plugin = meaning
    await lock_charge_movements(ctx.conn, charge_id)
    await ctx.services.ledger.post(
        direct_charge_posting(
            account,
            charge_id,
            Money(int(txn.get("amount") or 0), currency),
            stripe_fee,
            application_fee,
            occurred_at=stripe_time(txn.get("created")),
            reference=reference,
            plugin=plugin,
        ),
        conn=ctx.conn,
    )


async def on_payment_intent_canceled(event: StripeEvent, ctx: EventContext) -> None:
    """An authorisation released or expired (``cancellation_reason=expired``): the payment
    is ``canceled`` (forward only), so an expired one does not stay ``requires_capture``.
    Nothing moved, nothing is posted."""
    intent = stripe_object(event)
    intent_id = str(intent.get("id") or "")
    if intent_id:
        await update_payment(ctx.conn, intent_id, status="canceled")


async def on_fee_refunded(event: StripeEvent, ctx: EventContext) -> None:
    """``application_fee.refunded``: post each refund of the fee back to the account that paid.

    Named by the fee's charge: the platform's (``originating_transaction``) for a
    destination charge, else the charge on the payer's own balance (a direct charge).
    """
    fee = stripe_object(event)
    payer = _id(fee.get("account"))
    if not payer:
        return
    charge_id, owner = _id(fee.get("originating_transaction")), PLATFORM
    if not charge_id:
        charge_id, owner = _id(fee.get("charge")), payer
    await lock_charge_movements(ctx.conn, charge_id)
    reference, plugin = await _meaning(ctx, charge_id, account=owner)
    for refund in (fee.get("refunds") or {}).get("data") or []:
        if not isinstance(refund, Mapping):
            continue
        await ctx.services.ledger.post(
            fee_refund_posting(
                payer,
                str(refund["id"]),
                Money(int(refund.get("amount") or 0), str(refund.get("currency") or "usd")),
                occurred_at=stripe_time(refund.get("created")),
                reference=reference,
                plugin=plugin,
            ),
            conn=ctx.conn,
        )


def _decided_at(dispute: Mapping[str, Any]) -> datetime:
    """Stripe's time of the dispute's last balance movement (else its opening)."""
    times = [
        int(txn["created"])
        for txn in dispute.get("balance_transactions") or []
        if isinstance(txn, Mapping) and txn.get("created")
    ]
    return stripe_time(max(times) if times else dispute.get("created"))


async def on_dispute(event: StripeEvent, ctx: EventContext) -> None:
    """Record the dispute, move the payment's status forward and post its money.

    Each of the dispute's balance transactions (funds withdrawn with Stripe's
    dispute fee, funds reinstated) is posted once on the charge owner's
    balance; a lost dispute's withdrawal is final (``dispute:<id>:lost``).
    The same postings whichever business model made the charge.
    """
    dispute = stripe_object(event)
    event_type = str(event.get("type"))
    charge_id = _id(dispute.get("charge"))
    await lock_charge_movements(ctx.conn, charge_id)
    await _audit(ctx.conn, event_type, charge_id, dispute)
    status = dispute_payment_status(event_type, dispute)
    intent_id = _id(dispute.get("payment_intent"))
    await update_payment(
        ctx.conn,
        intent_id or None,
        by_charge=charge_id,
        charge_id=charge_id or None,
        status=status,
    )
    account = str(event.get("account") or PLATFORM)
    reference, plugin = await _meaning(ctx, charge_id, intent_id, account=account)
    ledger = ctx.services.ledger
    for txn in dispute.get("balance_transactions") or []:
        if not isinstance(txn, Mapping):
            continue
        currency = str(txn.get("currency") or dispute.get("currency") or "usd")
        await ledger.post(
            dispute_txn_posting(
                account,
                str(dispute["id"]),
                str(txn["id"]),
                Money(int(txn.get("amount") or 0), currency),
                Money(int(txn.get("fee") or 0), currency),
                occurred_at=stripe_time(txn.get("created")),
                reference=reference,
                plugin=plugin,
            ),
            conn=ctx.conn,
        )
    if dispute.get("status") == "lost":
        await ledger.post(
            dispute_lost_posting(
                str(dispute["id"]),
                Money(int(dispute.get("amount") or 0), str(dispute.get("currency") or "usd")),
                occurred_at=_decided_at(dispute),
                reference=reference,
                plugin=plugin,
            ),
            conn=ctx.conn,
        )


async def on_transfer(event: StripeEvent, ctx: EventContext) -> None:
    """Keep a known transfer's reversed amount in step (it only grows); post its reversals,
    and a transfer made outside the engine (``transfer:<tr>``, see ``_transfer_origin``).

    The reversals of a destination charge's own transfer are named as that charge
    (``_meaning`` with the charge); those of any other transfer as the transfer."""
    transfer = stripe_object(event)
    await ctx.conn.execute(
        """
        UPDATE marketplace_transfers
        SET amount_reversed = GREATEST(amount_reversed, $2),
            status = CASE WHEN $3 THEN 'reversed' ELSE status END
        WHERE stripe_transfer_id = $1
        """,
        transfer.get("id"),
        int(transfer.get("amount_reversed") or 0),
        bool(transfer.get("reversed")),
    )
    destination = _id(transfer.get("destination"))
    if not destination:
        return
    charge_id = _id(transfer.get("source_transaction"))
    outside, own_charge = await _transfer_origin(ctx, transfer, charge_id)
    reversals = [
        reversal
        for reversal in (transfer.get("reversals") or {}).get("data") or []
        if isinstance(reversal, Mapping)
    ]
    if not outside and not reversals:
        return
    await lock_charge_movements(ctx.conn, charge_id)
    # A destination charge's own transfer is named as its charge (the charge's intent,
    # else the charge for ``resolve_movement_meaning``); any other, as the transfer.
    reference, plugin = await _meaning(
        ctx,
        charge_id,
        _id(own_charge.get("payment_intent")) if own_charge is not None else "",
        stripe_object=own_charge if own_charge is not None else transfer,
    )
    if outside:
        await ctx.services.ledger.post(
            transfer_posting(
                destination,
                str(transfer["id"]),
                Money(int(transfer.get("amount") or 0), str(transfer.get("currency") or "usd")),
                occurred_at=stripe_time(transfer.get("created")),
                reference=reference,
                plugin=plugin,
            ),
            conn=ctx.conn,
        )
    for reversal in reversals:
        await ctx.services.ledger.post(
            reversal_posting(
                destination,
                str(reversal["id"]),
                Money(int(reversal.get("amount") or 0), str(reversal.get("currency") or "usd")),
                occurred_at=stripe_time(reversal.get("created")),
                reference=reference,
                plugin=plugin,
            ),
            conn=ctx.conn,
        )


async def _posted(ctx: EventContext, key: str) -> bool:
    found = await ctx.conn.fetchval(
        "SELECT 1 FROM marketplace_ledger_transactions WHERE idempotency_key = $1", key
    )
    return found is not None


async def _transfer_origin(
    ctx: EventContext, transfer: Mapping[str, Any], charge_id: str
) -> tuple[bool, Mapping[str, Any] | None]:
    """Whether a transfer was made outside the engine, so the engine posts it
    (``transfer:<tr>``), and the destination charge whose own transfer it is, if it
    is one (posted with that charge, ``charge:<ch>``; its reversals are named as the
    charge is). Not made outside: one recorded, one made by the engine's ``transfer``
    (its key in the metadata: that call posts it), one posted, and a destination
    charge's own transfer."""
    transfer_id = str(transfer.get("id") or "")
    if not transfer_id or (transfer.get("metadata") or {}).get("idempotency_key"):
        return False, None
    if await _posted(ctx, f"transfer:{transfer_id}"):
        return False, None
    recorded = await ctx.conn.fetchval(
        "SELECT 1 FROM marketplace_transfers WHERE stripe_transfer_id = $1", transfer_id
    )
    if recorded:
        return False, None
    if not charge_id:
        return True, None
    try:
        charge = await ctx.services.gateway.call("charges", "retrieve", charge_id)
    except NotFound:
        return True, None
    if _id(charge.get("transfer")) == transfer_id:
        return False, charge
    return True, None


async def _audit(conn: asyncpg.Connection, action: str, subject: str, data: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO marketplace_audit_log (actor, action, subject, data, created_at) "
        "VALUES ('stripe', $1, $2, $3::jsonb, now())",
        action,
        subject,
        json.dumps(
            {"id": data.get("id"), "status": data.get("status"), "amount": data.get("amount")}
        ),
    )


def core_fallbacks() -> list[WebhookRegistration]:
    """The engine's handlers run after every plugin's handler of the event, in its
    transaction: what no plugin did (``Dispatcher``'s ``after``)."""
    handler: Callable[..., Any] = on_invoice_paid
    return [WebhookRegistration("invoice.paid", handler, "engine.on_invoice_paid")]


def core_registrations() -> list[WebhookRegistration]:
    """The engine's handlers, run before any plugin's."""
    table: list[tuple[str, Callable[..., Any]]] = [
        ("account.updated", on_account_updated),
        ("account.external_account.created", on_external_account),
        ("account.external_account.updated", on_external_account),
        ("account.external_account.deleted", on_external_account),
        ("payout.created", on_payout),
        ("payout.updated", on_payout),
        ("payout.paid", on_payout),
        ("payout.failed", on_payout),
        ("payout.canceled", on_payout),
        ("charge.refunded", on_charge_refunded),
        ("payment_intent.canceled", on_payment_intent_canceled),
        ("charge.succeeded", on_charge_captured),
        ("charge.captured", on_charge_captured),
        ("payment_intent.succeeded", on_charge_captured),
        ("refund.created", on_refund),
        ("refund.updated", on_refund),
        ("charge.refund.updated", on_refund),
        ("refund.failed", on_refund),
        ("application_fee.refunded", on_fee_refunded),
        ("charge.dispute.created", on_dispute),
        ("charge.dispute.updated", on_dispute),
        ("charge.dispute.closed", on_dispute),
        ("charge.dispute.funds_withdrawn", on_dispute),
        ("charge.dispute.funds_reinstated", on_dispute),
        ("transfer.created", on_transfer),
        ("transfer.updated", on_transfer),
        ("transfer.reversed", on_transfer),
    ]
    return [
        WebhookRegistration(event_type, handler, f"engine.{handler.__name__}")
        for event_type, handler in table
    ]
