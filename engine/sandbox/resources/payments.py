"""Payment intents and the charges, refunds and disputes they produce.

Charge types: a direct charge (created with `Stripe-Account`) lives on the
connected account; a destination charge (`transfer_data[destination]`) lives on
the platform and transfers to the destination, with `application_fee_amount`
coming back to the platform as an application fee; separate charges and
transfers are plain platform charges followed by `POST /v1/transfers`.

Authentication (3D Secure, `customers.TestCard.authentication`): an on-session
confirmation with a card that asks for it answers `requires_action` with a
`next_action` (`redirect_to_url` when confirmed with a `return_url`, else
`use_stripe_sdk`) pointing at the sandbox's authentication page
(`/_sandbox/authenticate/{id}`, `authenticate`), after which the intent proceeds.
An off-session confirmation that needs it fails with `authentication_required`
(status `requires_payment_method`), except an invoice's, which waits in
`requires_action` for the customer (`confirm_off_session(..., wait_for_action=True)`).
"""

from __future__ import annotations

import copy
import urllib.parse
from typing import Any

from engine.sandbox.errors import StripeError, card_declined, invalid
from engine.sandbox.events import emit
from engine.sandbox.ledger import (
    add_txn,
    fee_detail,
    round_half_up,
    scale_minor,
    stripe_fee,
)
from engine.sandbox.objects import build, new_id, new_secret
from engine.sandbox.resources.common import (
    destination_account,
    domain_of,
    expect_status,
)
from engine.sandbox.resources.customers import (
    behaviour,
    decline_for,
    mark_set_up,
    needs_authentication,
    resolve_payment_method,
)
from engine.sandbox.resources.files import require_file
from engine.sandbox.resources.transfers import (
    application_id,
    create_application_fee,
    make_transfer,
    refund_application_fee,
    require_transfers_capability,
    reverse_transfer,
)
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, Params, embedded_list, page

DAY = 86_400
AUTHORISATION_DAYS = 7
REFUND_FAILS_AFTER = 3_600
"""Seconds after which a refund of `pm_card_refundFail` fails (Stripe: "some time later")."""
REFUND_FAIL_JOB = "refund_fail"
EVIDENCE_FILES = frozenset(
    {
        "cancellation_policy",
        "customer_communication",
        "customer_signature",
        "duplicate_charge_documentation",
        "receipt",
        "refund_policy",
        "service_documentation",
        "shipping_documentation",
        "uncategorized_file",
    }
)
"""Dispute evidence fields that name a file upload (purpose `dispute_evidence`)."""
_PI_FIELDS = (
    "description",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "setup_future_usage",
)


# -- payment intents -------------------------------------------------------------------


def create_payment_intent(call: Call) -> Obj:
    state = call.state
    amount = call.req_int("amount")
    currency = call.req_str("currency").lower()
    _check_amount(amount, currency)
    customer_id = call.str_("customer")
    if customer_id:
        state.get(customer_id, call.account, "customer", "customer")
    domain = domain_of(state, customer_id)
    capture_method = call.str_("capture_method") or "automatic"
    if capture_method not in ("automatic", "automatic_async", "manual"):
        raise invalid("Invalid capture_method", param="capture_method")
    pi_id = new_id("pi")
    pi = build(
        "payment_intent",
        pi_id,
        state.now(domain),
        amount=amount,
        amount_capturable=0,
        amount_received=0,
        capture_method=capture_method,
        client_secret=f"{pi_id}_secret_{new_secret('s', 25)[2:]}",
        confirmation_method=call.str_("confirmation_method") or "automatic",
        currency=currency,
        customer=customer_id or None,
        metadata=call.metadata(),
        payment_method_types=call.list_("payment_method_types") or ["card"],
        status="requires_payment_method",
        transfer_group=call.str_("transfer_group"),
        payment_method_options={"card": {"request_three_d_secure": "automatic"}},
    )
    for name in _PI_FIELDS:
        if call.has(name):
            pi[name] = call.params[name] or None
    if call.has("automatic_payment_methods"):
        apm = call.dict_("automatic_payment_methods")
        pi["automatic_payment_methods"] = {
            "enabled": apm.get("enabled") in ("true", True),
            "allow_redirects": apm.get("allow_redirects", "always"),
        }
    if call.has("shipping"):
        pi["shipping"] = call.dict_("shipping")
    _apply_connect_params(call, pi)
    if domain:
        state.private(pi_id)["domain"] = domain
    state.put(pi, call.account, "payment_intent")
    pm_value = call.str_("payment_method")
    if pm_value:
        pm = resolve_payment_method(state, call.account, pm_value, "payment_method")
        pi["payment_method"] = pm["id"]
        pi["status"] = "requires_confirmation"
    if call.has("off_session") and not call.bool_("confirm"):
        raise invalid("You may only specify `off_session` when confirming.", param="off_session")
    emit(state, "payment_intent.created", pi, account=call.account)
    if call.bool_("confirm"):
        _confirm(call, pi)
    return pi


def charge_off_session(
    state: SandboxState,
    account: str,
    params: Params,
    base_url: str = "",
    *,
    wait_for_action: bool = False,
) -> tuple[Obj, StripeError | None]:
    """Create and confirm an off-session PaymentIntent (what an invoice payment does).

    `params` are `POST /v1/payment_intents` parameters (strings or Python values); returns
    the intent and, if the card was declined, the error Stripe would have answered with.
    `wait_for_action`: a card that asks for authentication leaves the intent in
    `requires_action` for the customer (Stripe's invoices) instead of failing it.
    For `engine.sandbox.billing` and other extensions.
    """
    call = Call(
        state=state,
        method="POST",
        path="/v1/payment_intents",
        account=account,
        params=dict(params),
        base_url=base_url,
        connected=account != state.platform_id,
    )
    intent = create_payment_intent(call)
    return confirm_off_session(state, account, intent, None, base_url, wait_for_action)


def confirm_off_session(  # noqa: PLR0917 - one internal confirmation, spelled out
    state: SandboxState,
    account: str,
    intent: Obj,
    payment_method: str | None,
    base_url: str = "",
    wait_for_action: bool = False,
) -> tuple[Obj, StripeError | None]:
    """Confirm `intent` off-session (again); returns it and the decline, if any."""
    params: Params = {"off_session": "true"}
    if payment_method:
        params["payment_method"] = payment_method
    call = Call(
        state=state,
        method="POST",
        path=f"/v1/payment_intents/{intent['id']}/confirm",
        account=account,
        params=params,
        args=(intent["id"],),
        base_url=base_url,
        connected=account != state.platform_id,
    )
    if payment_method:
        intent["payment_method"] = payment_method
    try:
        _confirm(call, intent, wait_for_action=wait_for_action)
    except StripeError as err:
        return intent, err
    if intent["status"] == "requires_action":
        return intent, _authentication_error(intent)
    return intent, None


def _check_amount(amount: int, currency: str) -> None:
    if amount < 50:
        raise invalid(
            f"Amount must be at least 50 minor units of {currency}",
            param="amount",
            code="amount_too_small",
        )
    if amount > 99_999_999:
        raise invalid(
            "Amount must be no more than $999,999.99", param="amount", code="amount_too_large"
        )


def _apply_connect_params(call: Call, pi: Obj) -> None:
    """Validate and store application_fee_amount, transfer_data and on_behalf_of."""
    transfer_data = call.dict_("transfer_data")
    if call.has("transfer_data") and not transfer_data:
        pi["transfer_data"] = None
    if transfer_data:
        if call.connected:
            raise invalid("transfer_data cannot be used on a direct charge.", param="transfer_data")
        dest_id = transfer_data.get("destination")
        if not dest_id:
            raise invalid(
                "Missing required param: transfer_data[destination].",
                param="transfer_data[destination]",
                code="parameter_missing",
            )
        dest = destination_account(call, str(dest_id), "transfer_data[destination]")
        require_transfers_capability(dest, "transfer_data[destination]")
        data: Obj = {"destination": dest["id"]}
        if transfer_data.get("amount") not in (None, ""):
            data["amount"] = int(transfer_data["amount"])
            if data["amount"] > pi["amount"]:
                raise invalid(
                    "transfer_data[amount] cannot exceed the amount.",
                    param="transfer_data[amount]",
                    code="amount_too_large",
                )
        pi["transfer_data"] = data
    fee = call.int_("application_fee_amount")
    if fee is not None:
        if not call.connected and not pi["transfer_data"]:
            raise invalid(
                "Can only apply an application_fee_amount when the PaymentIntent is attempting "
                "a direct payment (using an OAuth key or Stripe-Account header) or destination "
                "payment (using `transfer_data[destination]`).",
                param="application_fee_amount",
            )
        if pi["transfer_data"] and "amount" in pi["transfer_data"]:
            raise invalid(
                "You cannot specify both application_fee_amount and transfer_data[amount].",
                param="application_fee_amount",
            )
        if fee < 0 or fee > pi["amount"]:
            raise invalid(
                "application_fee_amount must be between 0 and the amount.",
                param="application_fee_amount",
                code="amount_too_large",
            )
        pi["application_fee_amount"] = fee
    obo = call.str_("on_behalf_of")
    if obo:
        if call.connected:
            raise invalid("on_behalf_of cannot be used on a direct charge.", param="on_behalf_of")
        pi["on_behalf_of"] = destination_account(call, obo, "on_behalf_of")["id"]


def retrieve_payment_intent(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "payment_intent")


def update_payment_intent(call: Call) -> Obj:
    state = call.state
    pi = state.get(call.args[0], call.account, "payment_intent")
    expect_status(
        pi,
        ("requires_payment_method", "requires_confirmation", "requires_action"),
        "updated",
        "payment_intent",
    )
    previous: Obj = {}
    for name in ("amount", "currency", *_PI_FIELDS, "transfer_group"):
        if call.has(name):
            value: Any = call.params[name] or None
            if name == "amount":
                value = call.req_int("amount")
                _check_amount(value, pi["currency"])
            previous[name] = pi[name]
            pi[name] = value
    if call.has("metadata"):
        previous["metadata"] = pi["metadata"]
        pi["metadata"] = call.metadata(pi["metadata"])
    if call.has("customer"):
        customer_id = call.str_("customer")
        if customer_id:
            state.get(customer_id, call.account, "customer", "customer")
        previous["customer"] = pi["customer"]
        pi["customer"] = customer_id or None
    if call.has("payment_method"):
        pm = resolve_payment_method(
            state, call.account, call.req_str("payment_method"), "payment_method"
        )
        previous["payment_method"] = pi["payment_method"]
        pi["payment_method"] = pm["id"]
        pi["status"] = "requires_confirmation"
    if call.has("transfer_data") or call.has("application_fee_amount") or call.has("on_behalf_of"):
        _apply_connect_params(call, pi)
    emit(state, "payment_intent.updated", pi, account=call.account, previous=previous)
    return pi


def confirm_payment_intent(call: Call) -> Obj:
    state = call.state
    pi = state.get(call.args[0], call.account, "payment_intent")
    expect_status(
        pi,
        ("requires_payment_method", "requires_confirmation", "requires_action"),
        "confirmed",
        "payment_intent",
    )
    pm_value = call.str_("payment_method")
    if pm_value:
        pm = resolve_payment_method(state, call.account, pm_value, "payment_method")
        pi["payment_method"] = pm["id"]
    for name in ("receipt_email", "setup_future_usage"):
        if call.has(name):
            pi[name] = call.params[name] or None
    _confirm(call, pi)
    if pi["status"] == "succeeded":
        for callback in state.payment_callbacks:
            callback(state, pi)
    return pi


def _off_session(call: Call) -> bool:
    """`off_session` is a boolean or `one_off` / `recurring` (both off-session)."""
    value = call.params.get("off_session")
    if value in (None, "", "false", "False", "0", False):
        return False
    if value in ("one_off", "recurring"):
        return True
    return call.bool_("off_session")


def _confirm(call: Call, pi: Obj, *, wait_for_action: bool = False) -> None:
    state = call.state
    if not pi["payment_method"]:
        raise invalid(
            "You cannot confirm this PaymentIntent because it's missing a payment method. "
            "To confirm the PaymentIntent with a payment method, pass `payment_method`.",
            code="payment_intent_unexpected_state",
        )
    pm_id = pi["payment_method"]
    private = state.private(pi["id"])
    off_session = _off_session(call)
    if not private.get("authenticated") and needs_authentication(
        state, pm_id, off_session=off_session
    ):
        if off_session and not wait_for_action:
            _authentication_required(call, pi)
        require_action(
            state,
            pi,
            owner=call.account,
            base_url=call.base_url,
            return_url=call.str_("return_url"),
        )
        return
    _attempt(call, pi)


def _attempt(call: Call, pi: Obj) -> None:
    """Charge the intent's card: declined, authorised (manual capture) or captured."""
    state = call.state
    owner = call.account
    pm_id = pi["payment_method"]
    pm = state.objects[pm_id]
    pi["next_action"] = None
    charge = _new_charge(call, pi, pm)
    pi["latest_charge"] = charge["id"]
    decline = decline_for(state, pm_id)
    if decline is not None:
        _decline(call, pi, charge, pm, decline)
    charge["outcome"] = _outcome("authorized", "approved_by_network", None)
    if pi["capture_method"] == "manual":
        charge["captured"] = False
        pi["status"] = "requires_capture"
        pi["amount_capturable"] = pi["amount"]
        domain = domain_of(state, pi["id"])
        state.schedule(
            domain, state.now(domain) + AUTHORISATION_DAYS * DAY, "auth_expiry", pi["id"]
        )
        emit(state, "charge.succeeded", charge, account=owner)
        emit(state, "payment_intent.amount_capturable_updated", pi, account=owner)
        return
    _settle(state, pi, charge, pi["amount"])
    pi["status"] = "succeeded"
    pi["amount_received"] = pi["amount"]
    emit(state, "charge.succeeded", charge, account=owner)
    emit(state, "payment_intent.succeeded", pi, account=owner)
    if behaviour(state, pm_id) == "dispute":
        open_dispute(state, charge)


def require_action(
    state: SandboxState, intent: Obj, *, owner: str, base_url: str, return_url: str | None
) -> None:
    """Ask the customer to authenticate: `requires_action` with Stripe's `next_action`."""
    kind = "setup_intent" if intent["object"] == "setup_intent" else "payment_intent"
    base = base_url or state.base_url
    query = {"client_secret": intent["client_secret"]}
    if return_url:
        query["return_url"] = return_url
    page_url = f"{base}/_sandbox/authenticate/{intent['id']}?" + urllib.parse.urlencode(query)
    if return_url:
        next_action: Obj = {
            "redirect_to_url": {"return_url": return_url, "url": page_url},
            "type": "redirect_to_url",
        }
    else:
        next_action = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {
                "source": new_id("src"),
                "stripe_js": page_url,
                "type": "three_d_secure_redirect",
            },
        }
    intent.update(status="requires_action", next_action=next_action)
    state.private(intent["id"])["return_url"] = return_url
    emit(state, f"{kind}.requires_action", intent, account=owner)


def _authentication_error(intent: Obj) -> StripeError:
    pm = intent["payment_method"]
    return card_declined(
        "Your card was declined. This transaction requires authentication.",
        "authentication_required",
        "authentication_required",
        {"payment_intent": copy.deepcopy(intent), "payment_method": {"id": pm}},
    )


def _authentication_required(call: Call, pi: Obj) -> None:
    """An off-session payment the card wants authenticated: Stripe's `authentication_required`."""
    state = call.state
    pm = state.objects[pi["payment_method"]]
    error: Obj = {
        "code": "authentication_required",
        "decline_code": "authentication_required",
        "doc_url": "https://stripe.com/docs/error-codes/authentication-required",
        "message": "Your card was declined. This transaction requires authentication.",
        "payment_method": pm,
        "type": "card_error",
    }
    pi.update(
        last_payment_error=error,
        payment_method=None,
        status="requires_payment_method",
        next_action=None,
    )
    emit(state, "payment_intent.payment_failed", pi, account=call.account)
    raise card_declined(
        error["message"],
        "authentication_required",
        "authentication_required",
        {"payment_intent": copy.deepcopy(pi), "payment_method": pm},
    )


def authenticate(state: SandboxState, intent_id: str, *, success: bool) -> Obj:
    """The customer completed (or failed) 3D Secure on the sandbox's page for a PaymentIntent.

    Success charges the card as the confirmation would have (a decline may still follow);
    failure returns the intent to `requires_payment_method` with
    `payment_intent_authentication_failure`. Billing hears of a success through
    `state.payment_callbacks`.
    """
    pi = state.objects[intent_id]
    owner = state.owner_of(intent_id)
    expect_status(pi, ("requires_action",), "authenticated", "payment_intent")
    call = Call(
        state=state,
        method="POST",
        path=f"/_sandbox/authenticate/{intent_id}",
        account=owner,
        params={},
        args=(intent_id,),
        base_url=state.base_url,
        connected=owner != state.platform_id,
    )
    if not success:
        pm = state.objects[pi["payment_method"]]
        pi.update(
            status="requires_payment_method",
            next_action=None,
            payment_method=None,
            last_payment_error={
                "code": "payment_intent_authentication_failure",
                "doc_url": "https://stripe.com/docs/error-codes/"
                "payment-intent-authentication-failure",
                "message": "The provided PaymentMethod has failed authentication. You can "
                "provide payment_method_data or a new PaymentMethod to attempt to fulfill "
                "this PaymentIntent again.",
                "payment_method": pm,
                "type": "invalid_request_error",
            },
        )
        emit(state, "payment_intent.payment_failed", pi, account=owner)
        return pi
    state.private(intent_id)["authenticated"] = True
    pm_id = pi["payment_method"]
    if pi["setup_future_usage"] in ("off_session", "on_session"):
        _save_for_future(state, pi, pm_id, owner)
    try:
        _attempt(call, pi)
    except StripeError:
        return pi  # declined after authentication: the intent says so, events are out
    for callback in state.payment_callbacks:
        callback(state, pi)
    return pi


def _save_for_future(state: SandboxState, pi: Obj, pm_id: str, owner: str) -> None:
    """`setup_future_usage` on an authenticated payment saves the card (attached, set up)."""
    pm = state.objects[pm_id]
    if pi["setup_future_usage"] == "off_session":
        mark_set_up(state, pm_id)
    if pi["customer"] and pm["customer"] is None:
        pm["customer"] = pi["customer"]
        emit(state, "payment_method.attached", pm, account=owner)


def _new_charge(call: Call, pi: Obj, pm: Obj) -> Obj:
    state = call.state
    domain = domain_of(state, pi["id"])
    charge_id = new_id("ch")
    details = build("charge", "", 0)["payment_method_details"]
    card = details["card"]
    card.update(
        brand=pm["card"]["brand"],
        last4=pm["card"]["last4"],
        fingerprint=pm["card"]["fingerprint"],
        network=pm["card"]["brand"],
        wallet=None,
        amount_authorized=pi["amount"],
        installments=None,
    )
    card["overcapture"]["maximum_amount_capturable"] = pi["amount"]
    transfer_data = None
    if pi["transfer_data"]:
        transfer_data = {
            "amount": pi["transfer_data"].get("amount"),
            "destination": pi["transfer_data"]["destination"],
        }
    charge = build(
        "charge",
        charge_id,
        state.now(domain),
        amount=pi["amount"],
        amount_captured=0,
        amount_refunded=0,
        application=application_id(state) if pi["application_fee_amount"] else None,
        application_fee_amount=pi["application_fee_amount"],
        balance_transaction=None,
        calculated_statement_descriptor="SANDBOX",
        captured=False,
        currency=pi["currency"],
        customer=pi["customer"],
        description=pi["description"],
        metadata=dict(pi["metadata"]),
        on_behalf_of=pi["on_behalf_of"],
        paid=False,
        payment_intent=pi["id"],
        payment_method=pm["id"],
        payment_method_details=details,
        receipt_email=pi["receipt_email"],
        receipt_url=f"{call.base_url}/_sandbox/receipts/{charge_id}",
        refunds=embedded_list([], f"/v1/charges/{charge_id}/refunds"),
        statement_descriptor=pi["statement_descriptor"],
        statement_descriptor_suffix=pi["statement_descriptor_suffix"],
        status="pending",
        transfer_data=transfer_data,
        transfer_group=pi["transfer_group"],
    )
    charge["billing_details"] = copy.deepcopy(pm["billing_details"])
    if pi["transfer_data"]:
        # Not in Stripe's example object, but Stripe sets it on destination charges.
        charge["transfer"] = None
    state.put(charge, call.account, "charge")
    if domain:
        state.private(charge_id)["domain"] = domain
    return charge


def _outcome(type_: str, network_status: str, reason: str | None) -> Obj:
    return {
        "advice_code": None,
        "network_advice_code": None,
        "network_decline_code": None,
        "network_status": network_status,
        "reason": reason,
        "risk_level": "normal",
        "risk_score": 20,
        "seller_message": "Payment complete."
        if type_ == "authorized"
        else "The bank did not return any further details with this decline.",
        "type": type_,
    }


def _decline(call: Call, pi: Obj, charge: Obj, pm: Obj, decline: tuple[str, str, str]) -> None:
    state = call.state
    code, decline_code, message = decline
    charge.update(
        status="failed",
        failure_code=code,
        failure_message=message,
        outcome=_outcome("issuer_declined", "declined_by_network", decline_code),
    )
    error: Obj = {
        "charge": charge["id"],
        "code": code,
        "decline_code": decline_code,
        "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
        "message": message,
        "payment_method": pm,
        "type": "card_error",
    }
    pi["last_payment_error"] = error
    pi["payment_method"] = None
    pi["status"] = "requires_payment_method"
    emit(state, "charge.failed", charge, account=call.account)
    emit(state, "payment_intent.payment_failed", pi, account=call.account)
    raise card_declined(
        message,
        code,
        decline_code,
        {"charge": charge["id"], "payment_intent": copy.deepcopy(pi), "payment_method": pm},
    )


def _settle(state: SandboxState, pi: Obj, charge: Obj, captured: int) -> None:
    """Book a captured charge: processing fee, transfer, application fee."""
    owner = state.owner_of(charge["id"])
    platform = state.platform_id
    currency = charge["currency"]
    domain = domain_of(state, charge["id"])
    now = state.now(domain)
    pm_id = charge["payment_method"]
    delay = (
        0
        if pm_id and behaviour(state, pm_id) == "bypass_pending"
        else (state.options.funds_delay_days)
    )
    available_on = now + delay * DAY
    processing = stripe_fee(state, captured, currency)
    details = (
        [fee_detail(processing, currency, "stripe_fee", "Stripe processing fees")]
        if (processing)
        else []
    )
    app_fee = int(pi["application_fee_amount"] or 0)
    direct = owner != platform
    if direct and app_fee:
        detail = fee_detail(app_fee, currency, "application_fee", "Application fee")
        detail["application"] = application_id(state)
        details.append(detail)
    txn = add_txn(
        state,
        owner,
        amount=captured,
        currency=currency,
        type_="charge",
        source=charge["id"],
        fee_details=details,
        available_on=available_on,
        domain=domain,
    )
    charge.update(
        balance_transaction=txn["id"],
        captured=True,
        amount_captured=captured,
        paid=True,
        status="succeeded",
    )
    if direct and app_fee:
        fee = create_application_fee(
            state,
            amount=app_fee,
            currency=currency,
            payer=owner,
            charge_id=charge["id"],
            originating=None,
            available_on=available_on,
            domain=domain,
        )
        charge["application_fee"] = fee["id"]
        return
    transfer_data = pi["transfer_data"]
    if not transfer_data:
        return
    destination = transfer_data["destination"]
    amount = min(int(transfer_data.get("amount", captured)), captured)
    app_fee = min(app_fee, amount)
    transfer = make_transfer(
        state,
        amount=amount,
        currency=currency,
        destination=destination,
        source_charge=charge,
        transfer_group=pi["transfer_group"] or f"group_{pi['id']}",
        available_on=available_on,
        domain=domain,
        application_fee=app_fee,
    )
    state.private(charge["id"])["transferred"] = amount
    charge["transfer"] = transfer["id"]
    if not charge["transfer_group"]:
        charge["transfer_group"] = transfer["transfer_group"]
    if app_fee:
        payment = state.objects[transfer["destination_payment"]]
        fee = create_application_fee(
            state,
            amount=app_fee,
            currency=currency,
            payer=destination,
            charge_id=payment["id"],
            originating=charge["id"],
            available_on=available_on,
            domain=domain,
        )
        charge["application_fee"] = fee["id"]
        payment["application_fee"] = fee["id"]
        payment["application_fee_amount"] = app_fee


def capture_payment_intent(call: Call) -> Obj:
    state = call.state
    pi = state.get(call.args[0], call.account, "payment_intent")
    expect_status(pi, ("requires_capture",), "captured", "payment_intent")
    amount = call.int_("amount_to_capture")
    capturable = pi["amount_capturable"]
    amount = capturable if amount is None else amount
    if amount <= 0 or amount > capturable:
        raise invalid(
            f"The amount to capture ({amount}) must be positive and no more than the amount "
            f"capturable ({capturable}).",
            param="amount_to_capture",
            code="amount_too_large",
        )
    if call.has("application_fee_amount"):
        pi["application_fee_amount"] = call.int_("application_fee_amount")
    if call.has("metadata"):
        pi["metadata"] = call.metadata(pi["metadata"])
    charge = state.objects[pi["latest_charge"]]
    _settle(state, pi, charge, amount)
    # Since 2025-03-31.basil the uncaptured rest is released, not refunded: no
    # Refund, no amount_refunded, no charge.refunded.
    pi.update(status="succeeded", amount_received=amount, amount_capturable=0)
    emit(state, "charge.captured", charge, account=call.account)
    emit(state, "payment_intent.succeeded", pi, account=call.account)
    if behaviour(state, charge["payment_method"]) == "dispute":
        open_dispute(state, charge)
    return pi


def cancel_payment_intent(call: Call) -> Obj:
    state = call.state
    pi = state.get(call.args[0], call.account, "payment_intent")
    expect_status(
        pi,
        (
            "requires_payment_method",
            "requires_capture",
            "requires_confirmation",
            "requires_action",
            "processing",
        ),
        "canceled",
        "payment_intent",
    )
    reason = call.str_("cancellation_reason") or "requested_by_customer"
    _cancel(state, pi, reason)
    return pi


def _cancel(state: SandboxState, pi: Obj, reason: str) -> None:
    """Cancel an intent; an authorisation is released, which is no refund (2025-03-31.basil):
    the charge keeps ``amount_refunded`` 0 and ``refunded`` false, no ``charge.refunded``;
    only an expired one announces ``charge.expired``."""
    owner = state.owner_of(pi["id"])
    previous = {"status": pi["status"], "amount_capturable": pi["amount_capturable"]}
    if pi["status"] == "requires_capture" and pi["latest_charge"]:
        charge = state.objects[pi["latest_charge"]]
        charge["amount_captured"] = 0
        if reason == "expired":
            emit(state, "charge.expired", charge, account=owner)
    pi.update(
        status="canceled",
        cancellation_reason=reason,
        canceled_at=state.now(domain_of(state, pi["id"])),
        amount_capturable=0,
    )
    emit(state, "payment_intent.canceled", pi, account=owner, previous=previous)


def expire_authorisation(state: SandboxState, pi_id: str) -> None:
    """Job: an uncaptured authorisation lapses after 7 days (``cancellation_reason=expired``)."""
    pi = state.find(pi_id)
    if pi is not None and pi["status"] == "requires_capture":
        _cancel(state, pi, "expired")


def list_payment_intents(call: Call) -> Obj:
    customer = call.str_("customer")
    return page(
        call,
        call.state.listed(call.account, "payment_intent"),
        "/v1/payment_intents",
        keep=None if customer is None else lambda pi: pi["customer"] == customer,
        position=call.state.store.position,
    )


# -- charges ------------------------------------------------------------------------


def retrieve_charge(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "charge")


def update_charge(call: Call) -> Obj:
    charge = call.state.get(call.args[0], call.account, "charge")
    previous: Obj = {}
    for name in ("description", "receipt_email", "transfer_group"):
        if call.has(name):
            previous[name] = charge[name]
            charge[name] = call.params[name] or None
    if call.has("metadata"):
        previous["metadata"] = charge["metadata"]
        charge["metadata"] = call.metadata(charge["metadata"])
    emit(call.state, "charge.updated", charge, account=call.account, previous=previous)
    return charge


def list_charges(call: Call) -> Obj:
    customer = call.str_("customer")
    intent = call.str_("payment_intent")
    group = call.str_("transfer_group")
    return page(
        call,
        call.state.listed(call.account, "charge"),
        "/v1/charges",
        keep=lambda c: (
            (customer is None or c["customer"] == customer)
            and (intent is None or c["payment_intent"] == intent)
            and (group is None or c["transfer_group"] == group)
        ),
        position=call.state.store.position,
    )


# -- refunds ------------------------------------------------------------------------


def create_refund(call: Call) -> Obj:
    state = call.state
    charge_id = call.str_("charge")
    intent_id = call.str_("payment_intent")
    if intent_id:
        pi = state.get(intent_id, call.account, "payment_intent", "payment_intent")
        if not pi["latest_charge"] or pi["status"] != "succeeded":
            raise invalid(
                f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                param="payment_intent",
                code="charge_not_refundable",
            )
        charge_id = pi["latest_charge"]
    if not charge_id:
        raise invalid(
            "One of the following params should be provided for this request: "
            "payment_intent or charge.",
            code="parameter_missing",
        )
    charge = state.get(charge_id, call.account, "charge", "charge")
    if not charge["captured"]:
        raise invalid(f"Charge {charge_id} has not been captured.", code="charge_not_refundable")
    private = state.private(charge_id)
    done = int(private.get("refunded_captured", 0))
    remaining = charge["amount_captured"] - done
    amount = call.int_("amount")
    amount = remaining if amount is None else amount
    if remaining <= 0:
        raise invalid(
            f"Charge {charge_id} has already been refunded.", code="charge_already_refunded"
        )
    if amount <= 0 or amount > remaining:
        raise invalid(
            f"Refund amount ({amount}) is greater than charge amount ({remaining})",
            param="amount",
            code="amount_too_large",
        )
    reason = call.str_("reason")
    return refund_charge(
        state,
        charge,
        amount,
        reason=reason,
        metadata=call.metadata(),
        reverse=call.bool_("reverse_transfer"),
        refund_fee=call.bool_("refund_application_fee"),
    )


def refund_charge(
    state: SandboxState,
    charge: Obj,
    amount: int,
    *,
    reason: str | None = None,
    metadata: Obj | None = None,
    reverse: bool = False,
    refund_fee: bool = False,
) -> Obj:
    """Refund `amount` of a captured charge; with `reverse`/`refund_fee`, proportionally."""
    owner = state.owner_of(charge["id"])
    currency = charge["currency"]
    refund_id = new_id("re")
    txn = add_txn(state, owner, amount=-amount, currency=currency, type_="refund", source=refund_id)
    refund = build(
        "refund",
        refund_id,
        state.now(),
        amount=amount,
        balance_transaction=txn["id"],
        charge=charge["id"],
        currency=currency,
        metadata=metadata or {},
        payment_intent=charge["payment_intent"],
        reason=reason,
        status="succeeded",
        customer=charge["customer"],
        payment_method=charge["payment_method"],
    )
    state.put(refund, owner, "refund")
    private = state.private(charge["id"])
    refunded = int(private.get("refunded_captured", 0)) + amount
    private["refunded_captured"] = refunded
    previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
    charge["amount_refunded"] += amount
    # Refunded once refunds reach what was captured (a partial capture's released
    # rest is not part of amount_refunded).
    charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    charge["refunds"]["data"].insert(0, refund)
    captured = charge["amount_captured"]
    transfer = state.objects.get(charge.get("transfer") or "")
    if reverse and transfer is not None:
        target = round_half_up(transfer["amount"] * refunded, captured)
        share = min(target, transfer["amount"]) - transfer["amount_reversed"]
        if share > 0:
            reversal = reverse_transfer(state, transfer, share, source_refund=refund_id)
            refund["transfer_reversal"] = reversal["id"]
    fee = state.objects.get(charge.get("application_fee") or "")
    if refund_fee and fee is not None:
        target = round_half_up(fee["amount"] * refunded, captured)
        share = min(target, fee["amount"]) - fee["amount_refunded"]
        if share > 0:
            refund_application_fee(state, fee, share)
    emit(state, "charge.refunded", charge, account=owner, previous=previous)
    emit(state, "refund.created", refund, account=owner)
    if behaviour(state, charge["payment_method"]) == "refund_fail":
        domain = domain_of(state, charge["payment_intent"])
        state.schedule(domain, state.now(domain) + REFUND_FAILS_AFTER, REFUND_FAIL_JOB, refund_id)
    return refund


def fail_refund(state: SandboxState, refund_id: str) -> None:
    """What a refund of `pm_card_refundFail` does later: it fails and its money comes back.

    As Stripe's testing docs describe: the refund moves from `succeeded` to `failed`
    (`failure_reason`), a `refund_failure` balance transaction returns its amount to the
    balance (`failure_balance_transaction`), the charge's refunded amount drops by it,
    and `charge.refund.updated`, `refund.updated` and `refund.failed` are sent. A
    transfer reversal or application fee refund made with the refund stays as it is.
    """
    refund = state.objects.get(refund_id)
    if refund is None or refund["status"] != "succeeded":
        return
    owner = state.owner_of(refund_id)
    charge = state.objects[refund["charge"]]
    domain = domain_of(state, charge["payment_intent"])
    txn = add_txn(
        state,
        owner,
        amount=refund["amount"],
        currency=refund["currency"],
        type_="refund_failure",
        source=refund_id,
        domain=domain,
        description=f"REFUND FOR FAILED REFUND ({refund_id})",
    )
    previous = {"status": refund["status"]}
    refund["status"] = "failed"
    refund["failure_reason"] = "expired_or_canceled_card"
    refund["failure_balance_transaction"] = txn["id"]
    private = state.private(charge["id"])
    private["refunded_captured"] = int(private.get("refunded_captured", 0)) - refund["amount"]
    charge["amount_refunded"] -= refund["amount"]
    charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
    listed = charge["refunds"]["data"]
    charge["refunds"]["data"] = [refund if item["id"] == refund_id else item for item in listed]
    emit(state, "charge.refund.updated", refund, account=owner, previous=previous)
    emit(state, "refund.updated", refund, account=owner, previous=previous)
    emit(state, "refund.failed", refund, account=owner)


def retrieve_refund(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "refund")


def update_refund(call: Call) -> Obj:
    refund = call.state.get(call.args[0], call.account, "refund")
    previous = {"metadata": refund["metadata"]}
    refund["metadata"] = call.metadata(refund["metadata"])
    emit(call.state, "refund.updated", refund, account=call.account, previous=previous)
    return refund


def list_refunds(call: Call) -> Obj:
    charge = call.str_("charge")
    intent = call.str_("payment_intent")
    return page(
        call,
        call.state.listed(call.account, "refund"),
        "/v1/refunds",
        keep=lambda r: (
            (charge is None or r["charge"] == charge)
            and (intent is None or r["payment_intent"] == intent)
        ),
        position=call.state.store.position,
    )


def list_charge_refunds(call: Call) -> Obj:
    charge = call.state.get(call.args[0], call.account, "charge")
    ids = [r["id"] for r in reversed(charge["refunds"]["data"])]
    return page(call, ids, f"/v1/charges/{charge['id']}/refunds")


# -- disputes ------------------------------------------------------------------------


def open_dispute(state: SandboxState, charge: Obj) -> Obj:
    """What `pm_card_createDispute` does after a successful charge."""
    owner = state.owner_of(charge["id"])
    currency = charge["currency"]
    amount = charge["amount_captured"]
    dispute_id = new_id("dp")
    fee = scale_minor(state.options.dispute_fee, currency)
    txn = add_txn(
        state,
        owner,
        amount=-amount,
        currency=currency,
        type_="adjustment",
        source=dispute_id,
        fee_details=[fee_detail(fee, currency, "stripe_fee", "Dispute fee")] if fee else [],
        description=f"Chargeback withdrawal for {charge['id']}",
    )
    now = state.now()
    dispute = build(
        "dispute",
        dispute_id,
        now,
        amount=amount,
        balance_transactions=[txn],
        charge=charge["id"],
        currency=currency,
        is_charge_refundable=False,
        payment_intent=charge["payment_intent"],
        reason="fraudulent",
        status="needs_response",
    )
    dispute["evidence_details"].update(
        due_by=now + 7 * DAY,
        has_evidence=False,
        past_due=False,
        submission_count=0,
        submission_method="not_submitted",
    )
    dispute["payment_method_details"]["card"].update(
        brand=charge["payment_method_details"]["card"]["brand"],
        case_type="chargeback",
        network_reason_code="10.4",
    )
    state.put(dispute, owner, "dispute")
    previous = {"disputed": False}
    charge["disputed"] = True
    emit(state, "charge.dispute.created", dispute, account=owner)
    emit(state, "charge.dispute.funds_withdrawn", dispute, account=owner)
    emit(state, "charge.updated", charge, account=owner, previous=previous)
    return dispute


def retrieve_dispute(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "dispute")


def update_dispute(call: Call) -> Obj:
    state = call.state
    dispute = state.get(call.args[0], call.account, "dispute")
    expect_status(
        dispute,
        ("needs_response", "warning_needs_response", "under_review", "warning_under_review"),
        "updated",
        "dispute",
    )
    previous: Obj = {}
    if call.has("evidence"):
        previous["evidence"] = dict(dispute["evidence"])
        for key, value in call.dict_("evidence").items():
            if key in EVIDENCE_FILES and value:
                require_file(call, str(value), ("dispute_evidence",), f"evidence[{key}]")
            dispute["evidence"][key] = value or None
        dispute["evidence_details"]["has_evidence"] = True
    if call.has("metadata"):
        previous["metadata"] = dispute["metadata"]
        dispute["metadata"] = call.metadata(dispute["metadata"])
    # `submit` defaults to true: evidence goes to the bank unless staged with submit=false.
    if call.bool_("submit", True) and (call.has("evidence") or call.has("submit")):
        previous["status"] = dispute["status"]
        dispute["status"] = "under_review"
        dispute["evidence_details"]["submission_count"] += 1
        dispute["evidence_details"]["submission_method"] = "manual"
        state.schedule("", state.now(), "dispute_decision", dispute["id"])
    emit(state, "charge.dispute.updated", dispute, account=call.account, previous=previous)
    return dispute


def decide_dispute(state: SandboxState, dispute_id: str) -> None:
    """Job: Stripe's test mode decides on submitted evidence (winning/losing_evidence)."""
    dispute = state.find(dispute_id)
    if dispute is None or dispute["status"] != "under_review":
        return
    texts = " ".join(str(v) for v in dispute["evidence"].values() if isinstance(v, str))
    if "winning_evidence" in texts:
        _close_dispute(state, dispute, "won")
    elif "losing_evidence" in texts:
        _close_dispute(state, dispute, "lost")


def _close_dispute(state: SandboxState, dispute: Obj, outcome: str) -> None:
    owner = state.owner_of(dispute["id"])
    previous = {"status": dispute["status"]}
    dispute["status"] = outcome
    if outcome == "won":
        withdrawn = dispute["balance_transactions"][0]
        fee = int(withdrawn["fee"])
        txn = add_txn(
            state,
            owner,
            amount=dispute["amount"],
            currency=dispute["currency"],
            type_="adjustment",
            source=dispute["id"],
            fee_details=[fee_detail(-fee, dispute["currency"], "stripe_fee", "Dispute fee refund")]
            if fee
            else [],
            description=f"Chargeback reversal for {dispute['charge']}",
        )
        dispute["balance_transactions"].append(txn)
        emit(state, "charge.dispute.funds_reinstated", dispute, account=owner)
    emit(state, "charge.dispute.closed", dispute, account=owner, previous=previous)


def close_dispute(call: Call) -> Obj:
    dispute = call.state.get(call.args[0], call.account, "dispute")
    expect_status(dispute, ("needs_response", "warning_needs_response"), "closed", "dispute")
    _close_dispute(call.state, dispute, "lost")
    return dispute


def list_disputes(call: Call) -> Obj:
    charge = call.str_("charge")
    intent = call.str_("payment_intent")
    return page(
        call,
        call.state.listed(call.account, "dispute"),
        "/v1/disputes",
        keep=lambda d: (
            (charge is None or d["charge"] == charge)
            and (intent is None or d["payment_intent"] == intent)
        ),
        position=call.state.store.position,
    )


ROUTES = (
    Route("POST", "/v1/payment_intents", create_payment_intent, "PaymentIntentCreateParams"),
    Route("GET", "/v1/payment_intents", list_payment_intents, "PaymentIntentListParams"),
    Route("GET", "/v1/payment_intents/{}", retrieve_payment_intent, "PaymentIntentRetrieveParams"),
    Route("POST", "/v1/payment_intents/{}", update_payment_intent, "PaymentIntentUpdateParams"),
    Route(
        "POST",
        "/v1/payment_intents/{}/confirm",
        confirm_payment_intent,
        "PaymentIntentConfirmParams",
    ),
    Route(
        "POST",
        "/v1/payment_intents/{}/capture",
        capture_payment_intent,
        "PaymentIntentCaptureParams",
    ),
    Route(
        "POST", "/v1/payment_intents/{}/cancel", cancel_payment_intent, "PaymentIntentCancelParams"
    ),
    Route("GET", "/v1/charges", list_charges, "ChargeListParams"),
    Route("GET", "/v1/charges/{}", retrieve_charge, "ChargeRetrieveParams"),
    Route("POST", "/v1/charges/{}", update_charge, "ChargeUpdateParams"),
    Route("GET", "/v1/charges/{}/refunds", list_charge_refunds, "ChargeListRefundsParams"),
    Route("POST", "/v1/refunds", create_refund, "RefundCreateParams"),
    Route("GET", "/v1/refunds", list_refunds, "RefundListParams"),
    Route("GET", "/v1/refunds/{}", retrieve_refund, "RefundRetrieveParams"),
    Route("POST", "/v1/refunds/{}", update_refund, "RefundUpdateParams"),
    Route("GET", "/v1/disputes", list_disputes, "DisputeListParams"),
    Route("GET", "/v1/disputes/{}", retrieve_dispute, "DisputeRetrieveParams"),
    Route("POST", "/v1/disputes/{}", update_dispute, "DisputeUpdateParams"),
    Route("POST", "/v1/disputes/{}/close", close_dispute, "DisputeCloseParams"),
)
