"""SetupIntents: save a card for later (off-session) payments, authenticating it if it asks.

Confirming a SetupIntent with a card that asks for authentication on setup answers
`requires_action` (the same `next_action` and sandbox page as a PaymentIntent's);
once authenticated, or straight away for other cards, the card is attached to the
customer and, with `usage=off_session` (the default), set up for off-session use:
`pm_card_authenticationRequiredOnSetup` then pays off-session without asking again.
A card that declines every use fails the setup (`setup_intent.setup_failed`).
"""

from __future__ import annotations

import contextlib
import copy

from engine.sandbox.errors import StripeError, invalid
from engine.sandbox.events import emit
from engine.sandbox.objects import build, new_id, new_secret
from engine.sandbox.resources.common import expect_status
from engine.sandbox.resources.customers import (
    authentication,
    behaviour,
    decline_for,
    mark_set_up,
    resolve_payment_method,
)
from engine.sandbox.resources.payments import require_action
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, page

USAGES = ("off_session", "on_session")
_OPEN = ("requires_payment_method", "requires_confirmation", "requires_action")


def create_setup_intent(call: Call) -> Obj:
    state = call.state
    customer_id = call.str_("customer")
    if customer_id:
        state.get(customer_id, call.account, "customer", "customer")
    usage = call.str_("usage") or "off_session"
    if usage not in USAGES:
        raise invalid("Invalid usage: must be one of off_session or on_session", param="usage")
    seti_id = new_id("seti")
    seti = build(
        "setup_intent",
        seti_id,
        state.now(),
        application=None,
        automatic_payment_methods=None,
        cancellation_reason=None,
        client_secret=f"{seti_id}_secret_{new_secret('s', 25)[2:]}",
        customer=customer_id or None,
        description=call.str_("description") or None,
        flow_directions=None,
        last_setup_error=None,
        latest_attempt=None,
        mandate=None,
        metadata=call.metadata(),
        next_action=None,
        on_behalf_of=None,
        payment_method=None,
        payment_method_configuration_details=None,
        payment_method_options={
            "card": {
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        },
        payment_method_types=call.list_("allowed_payment_method_types") or ["card"],
        single_use_mandate=None,
        status="requires_payment_method",
        usage=usage,
    )
    if call.has("automatic_payment_methods"):
        apm = call.dict_("automatic_payment_methods")
        seti["automatic_payment_methods"] = {
            "allow_redirects": apm.get("allow_redirects", "always"),
            "enabled": apm.get("enabled") in ("true", True),
        }
    state.put(seti, call.account, "setup_intent")
    pm_value = call.str_("payment_method")
    if pm_value:
        seti["payment_method"] = resolve_payment_method(
            state, call.account, pm_value, "payment_method"
        )["id"]
        seti["status"] = "requires_confirmation"
    emit(state, "setup_intent.created", seti, account=call.account)
    if call.bool_("confirm"):
        _confirm(call, seti)
    return seti


def retrieve_setup_intent(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "setup_intent")


def update_setup_intent(call: Call) -> Obj:
    state = call.state
    seti = state.get(call.args[0], call.account, "setup_intent")
    expect_status(seti, _OPEN, "updated", "setup_intent")
    previous: Obj = {}
    if call.has("metadata"):
        previous["metadata"] = seti["metadata"]
        seti["metadata"] = call.metadata(seti["metadata"])
    if call.has("description"):
        previous["description"] = seti["description"]
        seti["description"] = call.str_("description") or None
    if call.has("customer"):
        customer_id = call.str_("customer")
        if customer_id:
            state.get(customer_id, call.account, "customer", "customer")
        previous["customer"] = seti["customer"]
        seti["customer"] = customer_id or None
    if call.has("payment_method"):
        pm = resolve_payment_method(
            state, call.account, call.req_str("payment_method"), "payment_method"
        )
        previous["payment_method"] = seti["payment_method"]
        seti.update(payment_method=pm["id"], status="requires_confirmation")
    emit(state, "setup_intent.updated", seti, account=call.account, previous=previous)
    return seti


def confirm_setup_intent(call: Call) -> Obj:
    state = call.state
    seti = state.get(call.args[0], call.account, "setup_intent")
    expect_status(seti, _OPEN, "confirmed", "setup_intent")
    pm_value = call.str_("payment_method")
    if pm_value:
        seti["payment_method"] = resolve_payment_method(
            state, call.account, pm_value, "payment_method"
        )["id"]
    _confirm(call, seti)
    return seti


def _confirm(call: Call, seti: Obj) -> None:
    state = call.state
    if not seti["payment_method"]:
        raise invalid(
            "You cannot confirm this SetupIntent because it's missing a payment method. "
            "To confirm the SetupIntent with a payment method, pass `payment_method`.",
            code="setup_intent_unexpected_state",
        )
    pm_id = seti["payment_method"]
    asked = authentication(state, pm_id)
    already = bool(state.private(pm_id).get("set_up"))
    if asked is not None and not already and not state.private(seti["id"]).get("authenticated"):
        require_action(
            state,
            seti,
            owner=call.account,
            base_url=call.base_url,
            return_url=call.str_("return_url"),
        )
        return
    _finish(state, call.account, seti)


def _finish(state: SandboxState, owner: str, seti: Obj) -> None:
    """Save the card: attach it to the customer, set it up for off-session use."""
    pm_id = seti["payment_method"]
    pm = state.objects[pm_id]
    decline = decline_for(state, pm_id)
    if (
        decline is not None
        and behaviour(state, pm_id) != "customer_fail"
        and not authentication(state, pm_id)
    ):
        code, decline_code, message = decline
        seti.update(
            status="requires_payment_method",
            payment_method=None,
            next_action=None,
            last_setup_error={
                "code": code,
                "decline_code": decline_code,
                "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
                "message": message,
                "payment_method": pm,
                "type": "card_error",
            },
        )
        emit(state, "setup_intent.setup_failed", seti, account=owner)
        raise StripeError(
            402,
            message,
            type_="card_error",
            code=code,
            decline_code=decline_code,
            extra={"setup_intent": copy.deepcopy(seti), "payment_method": pm},
        )
    if seti["customer"] and pm["customer"] is None:
        pm["customer"] = seti["customer"]
        emit(state, "payment_method.attached", pm, account=owner)
    if seti["usage"] == "off_session":
        mark_set_up(state, pm_id)
    seti.update(status="succeeded", next_action=None, last_setup_error=None)
    emit(state, "setup_intent.succeeded", seti, account=owner)


def authenticate_setup(state: SandboxState, seti_id: str, *, success: bool) -> Obj:
    """The customer completed (or failed) authentication on the sandbox's page."""
    seti = state.objects[seti_id]
    owner = state.owner_of(seti_id)
    expect_status(seti, ("requires_action",), "authenticated", "setup_intent")
    if success:
        state.private(seti_id)["authenticated"] = True
        # A decline after authentication fails the setup: the SetupIntent and its event say so.
        with contextlib.suppress(StripeError):
            _finish(state, owner, seti)
        return seti
    pm = state.objects[seti["payment_method"]]
    seti.update(
        status="requires_payment_method",
        payment_method=None,
        next_action=None,
        last_setup_error={
            "code": "setup_intent_authentication_failure",
            "doc_url": "https://stripe.com/docs/error-codes/setup-intent-authentication-failure",
            "message": "The latest attempt to set up the payment method has failed because "
            "authentication failed.",
            "payment_method": pm,
            "type": "invalid_request_error",
        },
    )
    emit(state, "setup_intent.setup_failed", seti, account=owner)
    return seti


def cancel_setup_intent(call: Call) -> Obj:
    state = call.state
    seti = state.get(call.args[0], call.account, "setup_intent")
    expect_status(seti, _OPEN, "canceled", "setup_intent")
    reason = call.str_("cancellation_reason") or "requested_by_customer"
    seti.update(status="canceled", cancellation_reason=reason, next_action=None)
    emit(state, "setup_intent.canceled", seti, account=call.account)
    return seti


def list_setup_intents(call: Call) -> Obj:
    customer = call.str_("customer")
    pm = call.str_("payment_method")
    return page(
        call,
        call.state.listed(call.account, "setup_intent"),
        "/v1/setup_intents",
        keep=lambda s: (
            (customer is None or s["customer"] == customer)
            and (pm is None or s["payment_method"] == pm)
        ),
        position=call.state.store.position,
    )


ROUTES = (
    Route("POST", "/v1/setup_intents", create_setup_intent, "SetupIntentCreateParams"),
    Route("GET", "/v1/setup_intents", list_setup_intents, "SetupIntentListParams"),
    Route("GET", "/v1/setup_intents/{}", retrieve_setup_intent, "SetupIntentRetrieveParams"),
    Route("POST", "/v1/setup_intents/{}", update_setup_intent, "SetupIntentUpdateParams"),
    Route("POST", "/v1/setup_intents/{}/confirm", confirm_setup_intent, "SetupIntentConfirmParams"),
    Route("POST", "/v1/setup_intents/{}/cancel", cancel_setup_intent, "SetupIntentCancelParams"),
)
