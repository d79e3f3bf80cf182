"""Invoices and invoice items: lines, totals, finalisation, collection and dunning.

An invoice goes draft -> open (finalised: numbered, the customer's credit balance
applied, the application fee fixed) -> paid | void | uncollectible. Collecting an
open invoice creates one off-session PaymentIntent through `resources.payments`
(and re-confirms that same intent on a retry, as Stripe does), so an invoice on a
destination subscription books exactly what a destination charge books: the
charge and processing fee on the platform, the transfer of the amount to the
destination with the application fee taken back, all balance transactions.

Renewal invoices stay drafts for `SandboxOptions.invoice_finalize_delay` seconds
(Stripe: about an hour) before they are finalised and charged. A failed automatic
payment is retried `SandboxOptions.invoice_retry_days` days after each previous
attempt; when the last retry fails and the invoice is still its subscription's
latest, the subscription is cancelled or marked unpaid
(`SandboxOptions.invoice_retries_exhausted`).

Shape (the sandbox's one API version, `objects.API_VERSION`): an invoice names its
subscription under `parent.subscription_details`, and its payments are InvoicePayment
objects (`/v1/invoice_payments`, `payment.payment_intent`), served on the invoice only
when asked for (`expand[]=payments`, includable), like `confirmation_secret` (the
client secret of the invoice's PaymentIntent). The invoice's PaymentIntent, charge,
application fee and transfer are kept beside it (`state.private`), never served on it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from engine.sandbox.errors import StripeError, invalid
from engine.sandbox.events import emit
from engine.sandbox.ledger import ZERO_DECIMAL
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.common import destination_account, domain_of, expect_status
from engine.sandbox.resources.customers import resolve_payment_method
from engine.sandbox.resources.payments import (
    cancel_payment_intent,
    charge_off_session,
    confirm_off_session,
    create_payment_intent,
)
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, embedded_list, page, to_int

DAY = 86_400
FINALIZE_JOB = "billing_finalize"
RETRY_JOB = "billing_retry"
MINIMUM_CHARGE = 50
"""Below this many minor units an invoice is not charged: the amount moves to the
customer's balance and is carried to the next invoice, as Stripe does."""
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}


# -- what the invoice keeps beside it ------------------------------------------------


def subscription_of(state: SandboxState, invoice: Obj) -> str | None:
    """The id of the subscription that generated the invoice (`parent.subscription_details`)."""
    value = state.private(invoice["id"]).get("subscription")
    return value if isinstance(value, str) else None


def intent_of(state: SandboxState, invoice: Obj) -> Obj | None:
    """The invoice's (default) PaymentIntent, if one was made."""
    return state.find(state.private(invoice["id"]).get("intent") or "")


def _set_intent(state: SandboxState, invoice: Obj, intent: Obj) -> None:
    """Link the intent to the invoice and keep the default InvoicePayment in step."""
    private = state.private(invoice["id"])
    private["intent"] = intent["id"]
    state.private(intent["id"])["invoice"] = invoice["id"]
    payment = state.find(private.get("payment") or "")
    if payment is None:
        payment = build(
            "invoice_payment",
            new_id("inpay"),
            state.now(domain_of(state, invoice["id"])),
            amount_paid=None,
            amount_requested=invoice["amount_remaining"],
            currency=invoice["currency"],
            invoice=invoice["id"],
            is_default=True,
            livemode=False,
            payment={"payment_intent": intent["id"], "type": "payment_intent"},
            status="open",
            status_transitions={"canceled_at": None, "paid_at": None},
        )
        state.put(payment, state.owner_of(invoice["id"]), "invoice_payment")
        private["payment"] = payment["id"]
    else:
        payment["payment"] = {"payment_intent": intent["id"], "type": "payment_intent"}


def include_payments(state: SandboxState, invoice: Obj) -> Obj:
    """`expand[]=payments`: the invoice's InvoicePayments (includable, like Stripe's)."""
    payment = state.find(state.private(invoice["id"]).get("payment") or "")
    return embedded_list(
        [payment] if payment is not None else [],
        f"/v1/invoice_payments?invoice={invoice['id']}",
    )


def include_confirmation_secret(state: SandboxState, invoice: Obj) -> Obj | None:
    """`expand[]=confirmation_secret`: the client secret of the invoice's PaymentIntent."""
    intent = intent_of(state, invoice)
    if intent is None or invoice["status"] not in ("open", "paid", "uncollectible"):
        return None
    return {"client_secret": intent["client_secret"], "type": "payment_intent"}


# -- building ------------------------------------------------------------------------


def new_invoice(
    state: SandboxState,
    *,
    owner: str,
    customer: Obj,
    subscription: Obj | None,
    billing_reason: str,
    period_start: int,
    period_end: int,
) -> Obj:
    """A draft invoice without lines, indexed by customer and subscription (no event yet)."""
    domain = domain_of(state, customer["id"])
    now = state.now(domain)
    invoice_id = new_id("in")
    sub_id = subscription["id"] if subscription else None
    hosted = f"/_sandbox/invoices/{invoice_id}"
    invoice = build(
        "invoice",
        invoice_id,
        now,
        account_country="US",
        account_name=None,
        account_tax_ids=None,
        amount_due=0,
        amount_overpaid=0,
        amount_paid=0,
        amount_remaining=0,
        amount_shipping=0,
        application=None,
        attempt_count=0,
        attempted=False,
        auto_advance=True,
        automatic_tax={
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        automatically_finalizes_at=None,
        billing_reason=billing_reason,
        collection_method="charge_automatically",
        currency=subscription["currency"] if subscription else customer["currency"] or "usd",
        custom_fields=None,
        customer=customer["id"],
        customer_account=None,
        customer_address=customer["address"],
        customer_email=customer["email"],
        customer_name=customer["name"],
        customer_phone=customer["phone"],
        customer_shipping=customer["shipping"] or None,
        customer_tax_exempt=customer["tax_exempt"],
        customer_tax_ids=[],
        default_payment_method=None,
        default_source=None,
        default_tax_rates=[],
        description=None,
        discounts=[],
        due_date=None,
        effective_at=None,
        ending_balance=None,
        footer=None,
        from_invoice=None,
        hosted_invoice_url=None,
        invoice_pdf=None,
        last_finalization_error=None,
        latest_revision=None,
        lines=embedded_list([], f"/v1/invoices/{invoice_id}/lines"),
        metadata={},
        next_payment_attempt=None,
        number=None,
        on_behalf_of=subscription["on_behalf_of"] if subscription else None,
        parent=None,
        payment_settings={
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        period_end=period_end,
        period_start=period_start,
        post_payment_credit_notes_amount=0,
        pre_payment_credit_notes_amount=0,
        receipt_number=None,
        rendering=None,
        shipping_cost=None,
        shipping_details=None,
        starting_balance=0,
        statement_descriptor=None,
        status="draft",
        status_transitions={
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        subtotal=0,
        subtotal_excluding_tax=0,
        test_clock=customer["test_clock"],
        total=0,
        total_discount_amounts=[],
        total_excluding_tax=0,
        total_pretax_credit_amounts=[],
        total_taxes=[],
        webhooks_delivered_at=None,
    )
    private = state.private(invoice_id)
    private.update(lines=[], hosted=hosted, subscription=sub_id, intent=None, charge=None)
    private.update(app_fee=None, transfer=None, payment=None)
    if subscription is not None:
        invoice["parent"] = {
            "quote_details": None,
            "subscription_details": {
                "metadata": dict(subscription["metadata"]),
                "subscription": sub_id,
                "subscription_proration_date": None,
            },
            "type": "subscription_details",
        }
        if subscription["transfer_data"]:
            private["transfer"] = {
                "amount": None,
                "destination": subscription["transfer_data"]["destination"],
            }
    state.put(invoice, owner, "invoice")
    if domain:
        private["domain"] = domain
    state.private(customer["id"]).setdefault("invoices", []).append(invoice_id)
    if subscription is not None:
        sub_private = state.private(subscription["id"])
        sub_private.setdefault("invoices", []).append(invoice_id)
        for key in ("fee_percent", "transfer_percent"):
            if sub_private.get(key) is not None:
                private[key] = sub_private[key]
    return invoice


def add_line(
    state: SandboxState,
    invoice: Obj,
    *,
    amount: int,
    description: str,
    period: tuple[int, int],
    price: Obj,
    quantity: int,
    subscription_item: str | None,
    proration: bool = False,
    invoice_item: str | None = None,
) -> Obj:
    """Append one `il_` line to a draft invoice."""
    line_id = new_id("il")
    sub_id = subscription_of(state, invoice)
    line = build(
        "line_item",
        line_id,
        0,
        amount=amount,
        currency=invoice["currency"],
        description=description,
        discount_amounts=[],
        discountable=not proration,
        discounts=[],
        invoice=invoice["id"],
        metadata={},
        parent={
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": invoice_item,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": sub_id,
                "subscription_item": subscription_item,
            },
            "type": "subscription_item_details",
        },
        period={"end": period[1], "start": period[0]},
        pretax_credit_amounts=[],
        pricing={
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        quantity=quantity,
        quantity_decimal=str(quantity),
        subscription=sub_id,
        subtotal=amount,
        taxes=[],
    )
    state.put(line, state.owner_of(invoice["id"]), "line_item", listed=False)
    state.private(invoice["id"])["lines"].append(line_id)
    invoice["lines"]["data"].append(line)
    return line


def add_pending_item(
    state: SandboxState,
    subscription: Obj,
    *,
    amount: int,
    description: str,
    period: tuple[int, int],
    price: Obj,
    quantity: int,
    subscription_item: str,
) -> Obj:
    """A pending proration `ii_` that the subscription's next invoice picks up."""
    owner = state.owner_of(subscription["id"])
    domain = domain_of(state, subscription["id"])
    item = build(
        "invoiceitem",
        new_id("ii"),
        0,
        amount=amount,
        currency=subscription["currency"],
        customer=subscription["customer"],
        customer_account=None,
        date=state.now(domain),
        description=description,
        discountable=False,
        discounts=[],
        invoice=None,
        metadata={},
        net_amount=amount,
        parent={
            "subscription_details": {
                "subscription": subscription["id"],
                "subscription_item": subscription_item,
            },
            "type": "subscription_details",
        },
        period={"end": period[1], "start": period[0]},
        pricing={
            "price_details": {"price": price["id"], "product": price["product"]},
            "type": "price_details",
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        proration=True,
        quantity=quantity,
        quantity_decimal=str(quantity),
        tax_rates=[],
        test_clock=subscription["test_clock"],
    )
    state.put(item, owner, "invoiceitem")
    state.private(item["id"])["price"] = price["id"]
    state.private(subscription["id"]).setdefault("pending", []).append(item["id"])
    emit(state, "invoiceitem.created", item, account=owner)
    return item


def take_pending_items(state: SandboxState, invoice: Obj, subscription: Obj) -> None:
    """Move the subscription's pending invoice items onto `invoice` as lines."""
    pending: list[str] = state.private(subscription["id"]).get("pending", [])
    for item_id in pending:
        item = state.find(item_id)
        if item is None:
            continue
        price = state.objects[state.private(item_id)["price"]]
        item["invoice"] = invoice["id"]
        period = item["period"]
        add_line(
            state,
            invoice,
            amount=item["amount"],
            description=item["description"],
            period=(period["start"], period["end"]),
            price=price,
            quantity=item["quantity"],
            subscription_item=item["parent"]["subscription_details"]["subscription_item"],
            proration=bool(item["proration"]),
            invoice_item=item_id,
        )
    pending.clear()


def drop_pending_items(state: SandboxState, subscription: Obj) -> None:
    """Forget pending prorations (what cancelling at once without `invoice_now` does)."""
    pending: list[str] = state.private(subscription["id"]).get("pending", [])
    for item_id in pending:
        state.delete(item_id)
    pending.clear()


def publish_draft(state: SandboxState, invoice: Obj) -> None:
    """Compute the totals of a newly built draft and announce it (`invoice.created`)."""
    _totals(invoice)
    emit(state, "invoice.created", invoice, account=state.owner_of(invoice["id"]))


def _totals(invoice: Obj) -> None:
    subtotal = sum(int(line["amount"]) for line in invoice["lines"]["data"])
    due = max(subtotal, 0)
    invoice.update(
        subtotal=subtotal,
        subtotal_excluding_tax=subtotal,
        total=subtotal,
        total_excluding_tax=subtotal,
        amount_due=due,
        amount_remaining=due,
    )


def line_description(state: SandboxState, price: Obj, quantity: int) -> str:
    """Stripe's wording for a subscription line: `1 × Gold (at $10.00 / month)`."""
    product = state.find(price["product"])
    name = product["name"] if product is not None else price["product"]
    recurring = price["recurring"] or {"interval": "once", "interval_count": 1}
    count = recurring["interval_count"]
    every = recurring["interval"] if count == 1 else f"every {count} {recurring['interval']}s"
    return (
        f"{quantity} × {name} (at {format_amount(price['unit_amount'], price['currency'])}"
        f" / {every})"
    )


def format_amount(amount: int, currency: str) -> str:
    """`1000, usd` -> `$10.00` (zero-decimal currencies without decimals)."""
    symbol = _SYMBOLS.get(currency, currency.upper() + " ")
    if currency in ZERO_DECIMAL:
        return f"{symbol}{amount:,}"
    sign = "-" if amount < 0 else ""
    return f"{sign}{symbol}{abs(amount) // 100:,}.{abs(amount) % 100:02d}"


def percent_of(amount: int, percent: Decimal) -> int:
    """`amount * percent / 100`, rounded half up to a whole minor unit."""
    exact = Decimal(amount) * percent / Decimal(100)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# -- finalising and collecting -----------------------------------------------------------


def finalize(state: SandboxState, invoice: Obj, *, apply_balance: bool = True) -> None:
    """Draft -> open: number, customer balance, application fee (no payment yet)."""
    owner = state.owner_of(invoice["id"])
    domain = domain_of(state, invoice["id"])
    now = state.now(domain)
    _totals(invoice)
    customer = state.find(invoice["customer"])
    balance = int(customer["balance"]) if customer is not None and apply_balance else 0
    due = invoice["total"] + balance
    ending = 0
    if due < 0 or 0 < due < MINIMUM_CHARGE:
        ending, due = due, 0
    invoice.update(
        starting_balance=balance,
        ending_balance=ending if apply_balance else None,
        amount_due=due,
        amount_remaining=due,
    )
    if customer is not None:
        sequence = int(customer["next_invoice_sequence"] or 1)
        invoice["number"] = f"{customer['invoice_prefix']}-{sequence:04d}"
        customer["next_invoice_sequence"] = sequence + 1
        if apply_balance and ending != balance:
            previous = {"balance": customer["balance"]}
            customer["balance"] = ending
            emit(state, "customer.updated", customer, account=owner, previous=previous)
    private = state.private(invoice["id"])
    if due > 0 and private.get("fee_percent") is not None:
        fee = percent_of(invoice["total"], Decimal(private["fee_percent"]))
        private["app_fee"] = min(fee, due)
    if private.get("transfer") is not None and private.get("transfer_percent") is not None:
        share = percent_of(invoice["total"], Decimal(private["transfer_percent"]))
        private["transfer"]["amount"] = max(0, min(share, due))
    invoice["hosted_invoice_url"] = f"{state.base_url}{private['hosted']}"
    invoice["invoice_pdf"] = f"{state.base_url}{private['hosted']}/pdf"
    _snapshot_subscription_metadata(state, invoice)
    invoice["status"] = "open"
    invoice["status_transitions"]["finalized_at"] = now
    invoice["effective_at"] = now
    invoice["automatically_finalizes_at"] = None
    if subscription_of(state, invoice) is None and intent_of(state, invoice) is None:
        # A one-off invoice gets its PaymentIntent when it is finalised, as at Stripe
        # (`payments`, `confirmation_secret`); paying it confirms that intent.
        open_intent(state, invoice)
    emit(state, "invoice.finalized", invoice, account=owner)


def _snapshot_subscription_metadata(state: SandboxState, invoice: Obj) -> None:
    """``parent.subscription_details.metadata`` becomes, as at Stripe, an immutable
    snapshot of the subscription's metadata at finalisation (a draft's was copied when
    it was created; the subscription may have changed since)."""
    sub_id = subscription_of(state, invoice)
    subscription = state.find(sub_id) if sub_id else None
    parent = invoice.get("parent")
    if subscription is None or not isinstance(parent, dict):
        return
    details = parent.get("subscription_details")
    if isinstance(details, dict):
        details["metadata"] = dict(subscription["metadata"])


def collect(
    state: SandboxState,
    invoice: Obj,
    *,
    payment_method: str | None = None,
    automatic: bool = True,
    base_url: str = "",
) -> StripeError | None:
    """Try to pay an open invoice; returns the decline (or other refusal) if it failed.

    `automatic` attempts (finalisation, renewals, retries) schedule the next retry or end
    the dunning; a payment the API asked for (`POST /v1/invoices/{id}/pay`) does not.
    """
    owner = state.owner_of(invoice["id"])
    if invoice["amount_remaining"] <= 0:
        mark_paid(state, invoice)
        return None
    pm_id = payment_method or default_payment_method(state, invoice)
    error: StripeError | None
    intent = intent_of(state, invoice)
    if pm_id is None:
        error = invalid(
            "This customer has no attached payment source or default payment method. "
            "Please consider adding a default payment method.",
            param="payment_method",
        )
    elif intent is not None and intent["status"] in (
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
    ):
        # Retries confirm the invoice's intent again; a card that asks for
        # authentication leaves it waiting for the customer (`requires_action`).
        intent, error = confirm_off_session(
            state, owner, intent, pm_id, base_url, wait_for_action=True
        )
    else:
        try:
            intent, error = charge_off_session(
                state,
                owner,
                _intent_params(state, invoice, pm_id),
                base_url,
                wait_for_action=True,
            )
        except StripeError as err:
            intent, error = None, err
    if intent is not None:
        _set_intent(state, invoice, intent)
    invoice["attempt_count"] += 1
    invoice["attempted"] = True
    if invoice["status"] == "paid":
        return None  # the intent's success already paid it (`pay_for_intent`)
    if error is None and intent is not None and intent["status"] == "succeeded":
        mark_paid(state, invoice, charge=intent["latest_charge"])
        return None
    _payment_failed(state, invoice, automatic=automatic)
    if intent is not None and intent["status"] == "requires_action":
        emit(state, "invoice.payment_action_required", invoice, account=owner)
    return error or invalid("The payment did not succeed.")


def default_payment_method(state: SandboxState, invoice: Obj) -> str | None:
    """Stripe's order: the invoice's own, the subscription's, then the customer's invoice
    default."""
    if invoice["default_payment_method"]:
        return str(invoice["default_payment_method"])
    subscription = state.find(subscription_of(state, invoice) or "")
    if subscription is not None and subscription["default_payment_method"]:
        return str(subscription["default_payment_method"])
    customer = state.find(invoice["customer"])
    if customer is not None and customer["invoice_settings"]["default_payment_method"]:
        return str(customer["invoice_settings"]["default_payment_method"])
    return None


def _intent_params(state: SandboxState, invoice: Obj, pm_id: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "amount": invoice["amount_remaining"],
        "currency": invoice["currency"],
        "customer": invoice["customer"],
        "payment_method": pm_id,
    }
    if subscription_of(state, invoice) is not None:
        params["description"] = (
            "Subscription creation"
            if invoice["billing_reason"] == "subscription_create"
            else "Subscription update"
        )
    private = state.private(invoice["id"])
    transfer = private.get("transfer")
    if transfer:
        params["transfer_data"] = {"destination": transfer["destination"]}
        if transfer.get("amount") is not None:
            params["transfer_data"]["amount"] = transfer["amount"]
    if private.get("app_fee"):
        params["application_fee_amount"] = private["app_fee"]
    if invoice["on_behalf_of"]:
        params["on_behalf_of"] = invoice["on_behalf_of"]
    return params


def open_intent(state: SandboxState, invoice: Obj) -> None:
    """`payment_behavior=default_incomplete`: an unconfirmed intent for the client to confirm."""
    if invoice["amount_remaining"] <= 0:
        return
    owner = state.owner_of(invoice["id"])
    pm_id = default_payment_method(state, invoice)
    params = _intent_params(state, invoice, pm_id or "")
    if not pm_id:
        params.pop("payment_method")
    call = Call(
        state=state,
        method="POST",
        path="/v1/payment_intents",
        account=owner,
        params=params,
        connected=owner != state.platform_id,
    )
    _set_intent(state, invoice, create_payment_intent(call))


def sync_intent(state: SandboxState, invoice: Obj) -> None:
    """Mark an open invoice paid once its intent succeeded outside `collect`."""
    intent = intent_of(state, invoice)
    if invoice["status"] not in ("open", "uncollectible") or intent is None:
        return
    if intent["status"] == "succeeded":
        invoice["attempt_count"] += 1
        invoice["attempted"] = True
        mark_paid(state, invoice, charge=intent["latest_charge"])


def pay_for_intent(state: SandboxState, intent: Obj) -> None:
    """A payment callback: the customer authenticated (or confirmed) an invoice's intent."""
    invoice = state.find(state.private(intent["id"]).get("invoice") or "")
    if invoice is not None:
        sync_intent(state, invoice)


def mark_paid(
    state: SandboxState, invoice: Obj, *, charge: str | None = None, out_of_band: bool = False
) -> None:
    if invoice["status"] == "paid":
        return
    owner = state.owner_of(invoice["id"])
    previous = {
        "status": invoice["status"],
        "amount_paid": invoice["amount_paid"],
        "amount_remaining": invoice["amount_remaining"],
    }
    paid = invoice["amount_remaining"]
    invoice.update(
        status="paid",
        amount_paid=paid,
        amount_remaining=0,
        next_payment_attempt=None,
    )
    state.private(invoice["id"])["charge"] = charge
    invoice["status_transitions"]["paid_at"] = state.now(domain_of(state, invoice["id"]))
    payment = state.find(state.private(invoice["id"]).get("payment") or "")
    if payment is not None and not out_of_band:
        payment.update(amount_paid=paid, status="paid")
        payment["status_transitions"]["paid_at"] = invoice["status_transitions"]["paid_at"]
    if invoice["status_transitions"]["finalized_at"] is None:
        invoice["status_transitions"]["finalized_at"] = invoice["status_transitions"]["paid_at"]
    emit(state, "invoice.paid", invoice, account=owner, previous=previous)
    if not out_of_band:
        emit(state, "invoice.payment_succeeded", invoice, account=owner, previous=previous)
    _after_payment(state, invoice, paid=True)


def _payment_failed(state: SandboxState, invoice: Obj, *, automatic: bool) -> None:
    owner = state.owner_of(invoice["id"])
    retries = state.options.invoice_retry_days
    attempt = int(invoice["attempt_count"])
    retry_at = None
    retryable = automatic and invoice["billing_reason"] != "subscription_create"
    if retryable and invoice["auto_advance"] and attempt <= len(retries):
        domain = domain_of(state, invoice["id"])
        retry_at = state.now(domain) + retries[attempt - 1] * DAY
        state.schedule(domain, retry_at, RETRY_JOB, f"{invoice['id']}#{attempt}")
    if automatic:
        invoice["next_payment_attempt"] = retry_at
    emit(state, "invoice.payment_failed", invoice, account=owner)
    _after_payment(state, invoice, paid=False)
    if retryable and retry_at is None and invoice["auto_advance"]:
        _retries_exhausted(state, invoice)


def _after_payment(state: SandboxState, invoice: Obj, *, paid: bool) -> None:
    """Subscription status and customer delinquency that follow a payment outcome."""
    owner = state.owner_of(invoice["id"])
    customer = state.find(invoice["customer"])
    if customer is not None and customer["delinquent"] == paid:
        customer["delinquent"] = not paid
    subscription = state.find(subscription_of(state, invoice) or "")
    if subscription is None or subscription["status"] in ("canceled", "incomplete_expired"):
        return
    status = subscription["status"]
    new_status = status
    if paid and status in ("incomplete", "past_due", "unpaid"):
        latest = state.find(subscription["latest_invoice"] or "")
        if latest is None or latest["status"] in ("paid", "void"):
            new_status = "active"
    elif not paid and status == "active" and invoice["billing_reason"] != "subscription_create":
        new_status = "past_due"
    if new_status == status:
        return
    subscription["status"] = new_status
    if not state.private(subscription["id"]).get("creating"):
        emit(
            state,
            "customer.subscription.updated",
            subscription,
            account=owner,
            previous={"status": status},
        )


def _retries_exhausted(state: SandboxState, invoice: Obj) -> None:
    subscription = state.find(subscription_of(state, invoice) or "")
    if subscription is None or subscription["latest_invoice"] != invoice["id"]:
        return  # A later invoice decides the subscription's fate (Stripe does the same).
    action = state.options.invoice_retries_exhausted
    if action == "cancel":
        end_subscription(
            state,
            subscription,
            reason="payment_failed",
            when=state.now(domain_of(state, subscription["id"])),
        )
    elif action == "unpaid" and subscription["status"] != "unpaid":
        previous = {"status": subscription["status"]}
        subscription["status"] = "unpaid"
        emit(
            state,
            "customer.subscription.updated",
            subscription,
            account=state.owner_of(subscription["id"]),
            previous=previous,
        )


def retry_job(state: SandboxState, ref: str) -> None:
    """Job: a smart retry of a failed invoice payment (`in_...#attempt`)."""
    invoice_id, _, attempt = ref.partition("#")
    invoice = state.find(invoice_id)
    if (
        invoice is None
        or invoice["status"] != "open"
        or not invoice["auto_advance"]
        or str(invoice["attempt_count"]) != attempt
    ):
        return
    collect(state, invoice)


def finalize_job(state: SandboxState, invoice_id: str) -> None:
    """Job: a renewal draft's hour is up: finalise it and charge it."""
    invoice = state.find(invoice_id)
    if invoice is None or invoice["status"] != "draft" or not invoice["auto_advance"]:
        return
    finalize(state, invoice)
    collect(state, invoice)


def end_subscription(state: SandboxState, subscription: Obj, *, reason: str, when: int) -> None:
    """Cancel a subscription now: stop collecting its open invoices, announce the end."""
    owner = state.owner_of(subscription["id"])
    previous = {"status": subscription["status"]}
    subscription.update(status="canceled", ended_at=when)
    if subscription["canceled_at"] is None:
        subscription["canceled_at"] = when
    subscription["cancellation_details"]["reason"] = reason
    for invoice_id in state.private(subscription["id"]).get("invoices", []):
        invoice = state.find(invoice_id)
        if invoice is not None and invoice["status"] in ("open", "draft"):
            # Stripe stops automatic collection of a cancelled subscription's invoices.
            invoice["auto_advance"] = False
            invoice["next_payment_attempt"] = None
    emit(state, "customer.subscription.deleted", subscription, account=owner, previous=previous)


def void(state: SandboxState, invoice: Obj) -> None:
    """Open -> void: nothing is owed any more; a balance the invoice used comes back."""
    owner = state.owner_of(invoice["id"])
    previous = {"status": invoice["status"]}
    customer = state.find(invoice["customer"])
    if customer is not None and invoice["ending_balance"] is not None:
        used = invoice["ending_balance"] - invoice["starting_balance"]
        if used:
            customer["balance"] -= used
    intent = intent_of(state, invoice)
    if intent is not None and intent["status"] in (
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
    ):
        call = Call(
            state=state,
            method="POST",
            path=f"/v1/payment_intents/{intent['id']}/cancel",
            account=owner,
            params={},
            args=(intent["id"],),
            connected=owner != state.platform_id,
        )
        cancel_payment_intent(call)
    payment = state.find(state.private(invoice["id"]).get("payment") or "")
    if payment is not None and payment["status"] == "open":
        payment["status"] = "canceled"
        payment["status_transitions"]["canceled_at"] = state.now(domain_of(state, invoice["id"]))
    invoice.update(status="void", amount_remaining=0, next_payment_attempt=None, auto_advance=False)
    invoice["status_transitions"]["voided_at"] = state.now(domain_of(state, invoice["id"]))
    emit(state, "invoice.voided", invoice, account=owner, previous=previous)


def mark_uncollectible(state: SandboxState, invoice: Obj) -> None:
    owner = state.owner_of(invoice["id"])
    previous = {"status": invoice["status"]}
    invoice.update(status="uncollectible", next_payment_attempt=None, auto_advance=False)
    invoice["status_transitions"]["marked_uncollectible_at"] = state.now(
        domain_of(state, invoice["id"])
    )
    emit(state, "invoice.marked_uncollectible", invoice, account=owner, previous=previous)


# -- one-off invoices and invoice items -------------------------------------------------

_UNSUPPORTED_ON_INVOICES = (
    "subscription",
    "from_invoice",
    "discounts",
    "default_tax_rates",
    "shipping_cost",
)
_UNSUPPORTED_ON_ITEMS = (
    "subscription",
    "discounts",
    "price_data",
    "tax_rates",
    "unit_amount_decimal",
)


def _reject_unsupported(call: Call, names: tuple[str, ...], kind: str) -> None:
    for name in names:
        if call.params.get(name) not in (None, ""):
            raise invalid(f"The sandbox does not support `{name}` on {kind}.", param=name)


def create_invoice(call: Call) -> Obj:
    """`POST /v1/invoices`: a draft one-off invoice for a customer (`billing_reason`
    `manual`), announced with `invoice.created`.

    As at Stripe: `auto_advance` is false unless asked for (then the draft is finalised
    and charged `invoice_finalize_delay` later, like a renewal's); the customer's pending
    invoice items are left out unless `pending_invoice_items_behavior=include`;
    `transfer_data`, `application_fee_amount` and `on_behalf_of` shape the PaymentIntent
    made when it is finalised (a destination charge), and are not served on the invoice
    (the API version's Invoice has no such fields).
    """
    state = call.state
    _reject_unsupported(call, _UNSUPPORTED_ON_INVOICES, "invoices")
    if call.str_("collection_method") not in (None, "charge_automatically"):
        raise invalid(
            "The sandbox supports collection_method=charge_automatically only.",
            param="collection_method",
        )
    customer = state.get(call.req_str("customer"), call.account, "customer", "customer")
    behavior = call.str_("pending_invoice_items_behavior") or "exclude"
    if behavior not in ("include", "exclude"):
        raise invalid(
            "Invalid pending_invoice_items_behavior", param="pending_invoice_items_behavior"
        )
    transfer = call.dict_("transfer_data")
    if transfer:
        destination_account(call, str(transfer.get("destination") or ""), "transfer_data")
    on_behalf_of = call.str_("on_behalf_of")
    if on_behalf_of:
        destination_account(call, on_behalf_of, "on_behalf_of")
    fee = call.int_("application_fee_amount")
    if fee is not None and (fee < 0 or not (transfer or call.connected)):
        raise invalid(
            "An application fee needs a connected account: transfer_data[destination], "
            "or the invoice made on the connected account.",
            param="application_fee_amount",
        )
    pm_value = call.str_("default_payment_method")
    pm_id = (
        resolve_payment_method(state, call.account, pm_value, "default_payment_method")["id"]
        if pm_value
        else None
    )
    now = state.now(domain_of(state, customer["id"]))
    invoice = new_invoice(
        state,
        owner=call.account,
        customer=customer,
        subscription=None,
        billing_reason="manual",
        period_start=now,
        period_end=now,
    )
    auto_advance = call.bool_("auto_advance", False)
    invoice.update(
        auto_advance=auto_advance,
        currency=(call.str_("currency") or invoice["currency"]).lower(),
        default_payment_method=pm_id,
        description=call.str_("description"),
        metadata=call.metadata(),
        on_behalf_of=on_behalf_of,
    )
    private = state.private(invoice["id"])
    if transfer:
        amount = transfer.get("amount")
        private["transfer"] = {
            "amount": None if amount in (None, "") else to_int(amount, "transfer_data[amount]"),
            "destination": str(transfer["destination"]),
        }
    if fee:
        private["app_fee"] = fee
    if behavior == "include":
        _take_customer_pending_items(state, invoice, customer)
    if auto_advance:
        domain = domain_of(state, customer["id"])
        due = now + state.options.invoice_finalize_delay
        invoice["automatically_finalizes_at"] = due
        state.schedule(domain, due, FINALIZE_JOB, invoice["id"])
    publish_draft(state, invoice)
    return invoice


def _add_item_line(state: SandboxState, invoice: Obj, item: Obj) -> None:
    """Append invoice item `item` to draft `invoice` as an `il_` line."""
    line = build(
        "line_item",
        new_id("il"),
        0,
        amount=item["amount"],
        currency=item["currency"],
        description=item["description"],
        discount_amounts=[],
        discountable=item["discountable"],
        discounts=[],
        invoice=invoice["id"],
        metadata=dict(item["metadata"]),
        parent={
            "invoice_item_details": {
                "invoice_item": item["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
            "type": "invoice_item_details",
        },
        period=dict(item["period"]),
        pretax_credit_amounts=[],
        pricing=dict(item["pricing"]),
        quantity=item["quantity"],
        quantity_decimal=item["quantity_decimal"],
        subscription=None,
        subtotal=item["amount"],
        taxes=[],
    )
    state.put(line, state.owner_of(invoice["id"]), "line_item", listed=False)
    state.private(invoice["id"])["lines"].append(line["id"])
    invoice["lines"]["data"].append(line)
    item["invoice"] = invoice["id"]
    _totals(invoice)


def _take_customer_pending_items(state: SandboxState, invoice: Obj, customer: Obj) -> None:
    """`pending_invoice_items_behavior=include`: the customer's pending one-off items of
    the invoice's currency become its lines."""
    pending: list[str] = state.private(customer["id"]).get("pending_items", [])
    for item_id in list(pending):
        item = state.find(item_id)
        if item is None or item["invoice"] is not None:
            pending.remove(item_id)
        elif item["currency"] == invoice["currency"]:
            _add_item_line(state, invoice, item)
            pending.remove(item_id)


def create_invoice_item(call: Call) -> Obj:
    """`POST /v1/invoiceitems`: an amount (`amount` + `currency`) or a price
    (`pricing[price]`, `quantity`) for a customer, on a draft invoice (`invoice`) or
    pending until an invoice takes it (`invoiceitem.created`)."""
    state = call.state
    _reject_unsupported(call, _UNSUPPORTED_ON_ITEMS, "invoice items")
    customer = state.get(call.req_str("customer"), call.account, "customer", "customer")
    invoice = None
    invoice_id = call.str_("invoice")
    if invoice_id:
        invoice = state.get(invoice_id, call.account, "invoice", "invoice")
        if invoice["customer"] != customer["id"]:
            raise invalid(
                "The invoice and the invoice item must belong to the same customer.",
                param="invoice",
            )
        if invoice["status"] != "draft" or subscription_of(state, invoice) is not None:
            raise invalid("You can only add invoice items to draft invoices.", param="invoice")
    pricing = call.dict_("pricing")
    price = None
    if pricing.get("price"):
        price = state.get(str(pricing["price"]), call.account, "price", "pricing[price]")
    amount = call.int_("amount")
    if (amount is None) == (price is None):
        raise invalid("You must specify either `amount` or `pricing[price]`.", param="amount")
    quantity = call.int_("quantity") or 1
    if price is not None:
        if price["unit_amount"] is None:
            raise invalid("The price has no unit_amount.", param="pricing[price]")
        amount = int(price["unit_amount"]) * quantity
        currency = str(price["currency"])
        details: Obj | None = {"price": price["id"], "product": price["product"]}
        unit = str(price["unit_amount_decimal"])
    else:
        assert amount is not None
        currency = (call.str_("currency") or (invoice or {}).get("currency") or "").lower()
        if not currency:
            raise invalid("Missing required param: currency.", param="currency")
        details, unit = None, str(amount // quantity)
    if invoice is not None and currency != invoice["currency"]:
        raise invalid(
            "The currency of the invoice item must match the invoice's currency.",
            param="currency",
        )
    domain = domain_of(state, customer["id"])
    now = state.now(domain)
    period = call.dict_("period")
    start = to_int(period.get("start", now), "period[start]")
    end = to_int(period.get("end", start), "period[end]")
    item = build(
        "invoiceitem",
        new_id("ii"),
        0,
        amount=amount,
        currency=currency,
        customer=customer["id"],
        customer_account=None,
        date=now,
        description=call.str_("description"),
        discountable=call.bool_("discountable", amount >= 0),
        discounts=[],
        invoice=None,
        metadata=call.metadata(),
        net_amount=amount,
        parent=None,
        period={"end": end, "start": start},
        pricing={
            "price_details": details,
            "type": "price_details",
            "unit_amount_decimal": unit,
        },
        proration=False,
        quantity=quantity,
        quantity_decimal=str(quantity),
        tax_rates=[],
        test_clock=customer["test_clock"],
    )
    state.put(item, call.account, "invoiceitem")
    if invoice is not None:
        _add_item_line(state, invoice, item)
    else:
        state.private(customer["id"]).setdefault("pending_items", []).append(item["id"])
    emit(state, "invoiceitem.created", item, account=call.account)
    return item


# -- API -------------------------------------------------------------------------------


def retrieve_invoice(call: Call) -> Obj:
    invoice = call.state.get(call.args[0], call.account, "invoice")
    sync_intent(call.state, invoice)
    return invoice


def list_invoices(call: Call) -> Obj:
    state = call.state
    status = call.str_("status")
    method = call.str_("collection_method")
    ids: list[str] = state.listed(call.account, "invoice")
    position: dict[str, int] | None = state.store.position
    sub_id = call.str_("subscription")
    customer_id = call.str_("customer")
    if sub_id:
        state.get(sub_id, call.account, "subscription", "subscription")
        ids, position = state.private(sub_id).get("invoices", []), None
    elif customer_id:
        state.get(customer_id, call.account, "customer", "customer")
        ids, position = state.private(customer_id).get("invoices", []), None

    def keep(invoice: Obj) -> bool:
        return (
            (status is None or invoice["status"] == status)
            and (method is None or invoice["collection_method"] == method)
            and (customer_id is None or invoice["customer"] == customer_id)
        )

    return page(call, ids, "/v1/invoices", keep=keep, position=position)


def list_lines(call: Call) -> Obj:
    invoice = call.state.get(call.args[0], call.account, "invoice")
    lines: list[str] = call.state.private(invoice["id"])["lines"]
    # Lines read in invoice order, so serve them oldest first like Stripe does.
    return page(call, list(reversed(lines)), f"/v1/invoices/{invoice['id']}/lines")


def pay_invoice(call: Call) -> Obj:
    state = call.state
    invoice = state.get(call.args[0], call.account, "invoice")
    sync_intent(state, invoice)
    if invoice["status"] == "draft":
        finalize(state, invoice)
    if invoice["status"] == "paid":
        raise invalid("Invoice is already paid", code="invoice_already_paid")
    expect_status(invoice, ("open", "uncollectible"), "paid", "invoice")
    if call.bool_("paid_out_of_band"):
        mark_paid(state, invoice, out_of_band=True)
        return invoice
    pm_value = call.str_("payment_method")
    pm_id = None
    if pm_value:
        pm_id = resolve_payment_method(state, call.account, pm_value, "payment_method")["id"]
    error = collect(state, invoice, payment_method=pm_id, automatic=False, base_url=call.base_url)
    if error is not None:
        raise error
    return invoice


def finalize_invoice(call: Call) -> Obj:
    state = call.state
    invoice = state.get(call.args[0], call.account, "invoice")
    expect_status(invoice, ("draft",), "finalized", "invoice")
    if call.has("auto_advance"):
        invoice["auto_advance"] = call.bool_("auto_advance")
    finalize(state, invoice)
    if invoice["amount_remaining"] <= 0:
        mark_paid(state, invoice)
    elif invoice["auto_advance"]:
        collect(state, invoice, base_url=call.base_url)
    return invoice


def void_invoice(call: Call) -> Obj:
    invoice = call.state.get(call.args[0], call.account, "invoice")
    expect_status(invoice, ("open", "uncollectible"), "voided", "invoice")
    void(call.state, invoice)
    return invoice


def mark_invoice_uncollectible(call: Call) -> Obj:
    invoice = call.state.get(call.args[0], call.account, "invoice")
    expect_status(invoice, ("open",), "marked uncollectible", "invoice")
    mark_uncollectible(call.state, invoice)
    return invoice


def retrieve_invoice_payment(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "invoice_payment")


def list_invoice_payments(call: Call) -> Obj:
    state = call.state
    invoice_id = call.str_("invoice")
    status = call.str_("status")
    payment = call.dict_("payment")
    if invoice_id:
        state.get(invoice_id, call.account, "invoice", "invoice")

    def keep(item: Obj) -> bool:
        return (
            (invoice_id is None or item["invoice"] == invoice_id)
            and (status is None or item["status"] == status)
            and all(item["payment"].get(key) == value for key, value in payment.items())
        )

    return page(
        call,
        state.listed(call.account, "invoice_payment"),
        "/v1/invoice_payments",
        keep=keep,
        position=state.store.position,
    )


def retrieve_invoice_item(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "invoiceitem")


def list_invoice_items(call: Call) -> Obj:
    customer = call.str_("customer")
    invoice = call.str_("invoice")
    pending = call.params.get("pending")
    want_pending = None if pending is None else call.bool_("pending")
    return page(
        call,
        call.state.listed(call.account, "invoiceitem"),
        "/v1/invoiceitems",
        keep=lambda ii: (
            (customer is None or ii["customer"] == customer)
            and (invoice is None or ii["invoice"] == invoice)
            and (want_pending is None or (ii["invoice"] is None) == want_pending)
        ),
        position=call.state.store.position,
    )


ROUTES = (
    Route("POST", "/v1/invoices", create_invoice, "InvoiceCreateParams"),
    Route("POST", "/v1/invoiceitems", create_invoice_item, "InvoiceItemCreateParams"),
    Route("GET", "/v1/invoices", list_invoices, "InvoiceListParams"),
    Route("GET", "/v1/invoices/{}", retrieve_invoice, "InvoiceRetrieveParams"),
    Route("GET", "/v1/invoices/{}/lines", list_lines, "InvoiceListLinesParams"),
    Route("POST", "/v1/invoices/{}/pay", pay_invoice, "InvoicePayParams"),
    Route("POST", "/v1/invoices/{}/finalize", finalize_invoice, "InvoiceFinalizeInvoiceParams"),
    Route("POST", "/v1/invoices/{}/void", void_invoice, "InvoiceVoidInvoiceParams"),
    Route(
        "POST",
        "/v1/invoices/{}/mark_uncollectible",
        mark_invoice_uncollectible,
        "InvoiceMarkUncollectibleParams",
    ),
    Route("GET", "/v1/invoice_payments", list_invoice_payments, "InvoicePaymentListParams"),
    Route(
        "GET", "/v1/invoice_payments/{}", retrieve_invoice_payment, "InvoicePaymentRetrieveParams"
    ),
    Route("GET", "/v1/invoiceitems", list_invoice_items, "InvoiceItemListParams"),
    Route("GET", "/v1/invoiceitems/{}", retrieve_invoice_item, "InvoiceItemRetrieveParams"),
)
JOBS = {FINALIZE_JOB: finalize_job, RETRY_JOB: retry_job}
