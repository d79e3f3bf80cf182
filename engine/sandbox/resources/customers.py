"""Customers and payment methods, including Stripe's `pm_card_*` test values."""

from __future__ import annotations

from dataclasses import dataclass

from engine.sandbox.errors import StripeError, card_declined, invalid
from engine.sandbox.events import emit
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.common import copy_fields, merge_nested
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, page


@dataclass(frozen=True, slots=True)
class TestCard:
    """A Stripe test card: its brand, last digits and what charging it does."""

    brand: str
    last4: str
    behaviour: str | None = None
    """None (succeeds), bypass_pending, declined, insufficient_funds, expired_card,
    dispute, customer_fail or refund_fail (charged; its refunds succeed, then fail)."""
    authentication: str | None = None
    """3D Secure: None (never asked), `on_session` (every on-session payment, and an
    off-session one until the card is set up for off-session use) or `always` (every
    payment; off-session ones fail with `authentication_required`)."""
    set_up: bool = False
    """Already set up for off-session use (`pm_card_authenticationRequiredSetupForOffSession`)."""


TEST_PAYMENT_METHODS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_visa_debit": TestCard("visa", "5556"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_amex": TestCard("amex", "8431"),
    "pm_card_bypassPending": TestCard("visa", "0077", "bypass_pending"),
    "pm_card_chargeDeclined": TestCard("visa", "0002", "declined"),
    "pm_card_chargeDeclinedInsufficientFunds": TestCard("visa", "9995", "insufficient_funds"),
    "pm_card_chargeDeclinedExpiredCard": TestCard("visa", "0069", "expired_card"),
    "pm_card_createDispute": TestCard("visa", "0259", "dispute"),
    "pm_card_chargeCustomerFail": TestCard("visa", "0341", "customer_fail"),
    "pm_card_refundFail": TestCard("visa", "5126", "refund_fail"),
    # Cards that ask for authentication (TEST-VALUES.md, "SCA / 3D Secure").
    "pm_card_authenticationRequiredOnSetup": TestCard("visa", "3155", authentication="on_session"),
    "pm_card_authenticationRequired": TestCard("visa", "3184", authentication="always"),
    "pm_card_authenticationRequiredSetupForOffSession": TestCard(
        "visa", "0446", authentication="on_session", set_up=True
    ),
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": TestCard(
        "visa", "3178", "insufficient_funds", authentication="on_session"
    ),
    "pm_card_threeDSecure2Required": TestCard("visa", "3220", authentication="always"),
}
TEST_CARD_NUMBERS: dict[str, str] = {
    "4242424242424242": "pm_card_visa",
    "4000056655665556": "pm_card_visa_debit",
    "5555555555554444": "pm_card_mastercard",
    "378282246310005": "pm_card_amex",
    "4000000000000077": "pm_card_bypassPending",
    "4000000000000002": "pm_card_chargeDeclined",
    "4000000000009995": "pm_card_chargeDeclinedInsufficientFunds",
    "4000000000000069": "pm_card_chargeDeclinedExpiredCard",
    "4000000000000259": "pm_card_createDispute",
    "4000000000000341": "pm_card_chargeCustomerFail",
    "4000000000005126": "pm_card_refundFail",
    "4000002500003155": "pm_card_authenticationRequiredOnSetup",
    "4000002760003184": "pm_card_authenticationRequired",
    "4000003800000446": "pm_card_authenticationRequiredSetupForOffSession",
    "4000008260003178": "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",
    "4000000000003220": "pm_card_threeDSecure2Required",
}
TEST_TOKENS: dict[str, str] = {
    "tok_visa": "pm_card_visa",
    "tok_mastercard": "pm_card_mastercard",
    "tok_amex": "pm_card_amex",
    "tok_bypassPending": "pm_card_bypassPending",
    "tok_chargeDeclined": "pm_card_chargeDeclined",
    "tok_chargeDeclinedInsufficientFunds": "pm_card_chargeDeclinedInsufficientFunds",
    "tok_chargeDeclinedExpiredCard": "pm_card_chargeDeclinedExpiredCard",
    "tok_createDispute": "pm_card_createDispute",
    "tok_chargeCustomerFail": "pm_card_chargeCustomerFail",
}
DECLINES: dict[str, tuple[str, str, str]] = {
    # behaviour -> (code, decline_code, message)
    "declined": ("card_declined", "generic_decline", "Your card was declined."),
    "customer_fail": ("card_declined", "generic_decline", "Your card was declined."),
    "insufficient_funds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "expired_card": ("expired_card", "expired_card", "Your card has expired."),
}


def behaviour(state: SandboxState, payment_method_id: str) -> str | None:
    """What charging this payment method does (see `TestCard.behaviour`)."""
    value = state.private(payment_method_id).get("behaviour")
    return value if isinstance(value, str) else None


def authentication(state: SandboxState, payment_method_id: str) -> str | None:
    """When the card asks for 3D Secure (see `TestCard.authentication`)."""
    value = state.private(payment_method_id).get("authentication")
    return value if isinstance(value, str) else None


def set_up_for_off_session(state: SandboxState, payment_method_id: str) -> bool:
    """Whether the card was saved for off-session use (a SetupIntent, or an authenticated
    payment with `setup_future_usage`)."""
    return bool(state.private(payment_method_id).get("set_up"))


def mark_set_up(state: SandboxState, payment_method_id: str) -> None:
    state.private(payment_method_id)["set_up"] = True


def needs_authentication(state: SandboxState, payment_method_id: str, *, off_session: bool) -> bool:
    """Whether a payment (or a setup) with this card must be authenticated by the customer."""
    asked = authentication(state, payment_method_id)
    if asked is None:
        return False
    if asked == "always" or not off_session:
        return True
    return not set_up_for_off_session(state, payment_method_id)


def new_test_payment_method(state: SandboxState, account: str, name: str) -> Obj:
    """A fresh `pm_` object for a `pm_card_*` test value, owned by `account`."""
    card = TEST_PAYMENT_METHODS[name]
    pm = build("payment_method", new_id("pm"), state.now(), type="card", customer=None)
    pm["card"].update(
        brand=card.brand,
        display_brand=card.brand,
        last4=card.last4,
        fingerprint=new_id("fp", 16)[3:],
        generated_from=None,
        wallet=None,
        networks={"available": [card.brand], "preferred": None},
    )
    for key in ("email", "name", "phone"):
        pm["billing_details"][key] = None
    pm["billing_details"]["address"] = dict.fromkeys(pm["billing_details"]["address"])
    state.put(pm, account, "payment_method")
    private = state.private(pm["id"])
    private.update(behaviour=card.behaviour, authentication=card.authentication)
    if card.set_up:
        private["set_up"] = True
    return pm


def resolve_payment_method(state: SandboxState, account: str, value: str, param: str) -> Obj:
    """`payment_method=` value -> pm object (test values create a fresh pm)."""
    if value in TEST_PAYMENT_METHODS:
        return new_test_payment_method(state, account, value)
    if value in TEST_TOKENS:
        return new_test_payment_method(state, account, TEST_TOKENS[value])
    return state.get(value, account, "payment_method", param)


def decline_for(state: SandboxState, pm_id: str) -> tuple[str, str, str] | None:
    value = behaviour(state, pm_id)
    return DECLINES.get(value) if value else None


# -- customers -----------------------------------------------------------------------

_CUSTOMER_FIELDS = ("email", "name", "description", "phone", "preferred_locales")


def create_customer(call: Call) -> Obj:
    state = call.state
    clock_id = call.str_("test_clock")
    if clock_id:
        state.get(clock_id, call.account, "test_helpers.test_clock", "test_clock")
    customer = build(
        "customer",
        new_id("cus", 14),
        state.now(clock_id or ""),
        metadata=call.metadata(),
        test_clock=clock_id or None,
        currency=None,
        invoice_prefix=new_id("x", 8)[2:].upper(),
        preferred_locales=[],
    )
    copy_fields(customer, call.params, _CUSTOMER_FIELDS)
    _customer_nested(call, customer)
    state.put(customer, call.account, "customer")
    if clock_id:
        state.private(customer["id"])["domain"] = clock_id
    emit(state, "customer.created", customer, account=call.account)
    pm_value = call.str_("payment_method")
    if pm_value:
        _attach(state, call.account, pm_value, customer, "payment_method")
    return customer


def _customer_nested(call: Call, customer: Obj) -> None:
    if call.has("address"):
        customer["address"] = dict.fromkeys(
            ("city", "country", "line1", "line2", "postal_code", "state")
        )
        merge_nested(customer["address"], call.dict_("address"))
    if call.has("shipping"):
        customer["shipping"] = call.dict_("shipping") or None
    if call.has("invoice_settings"):
        settings = call.dict_("invoice_settings")
        pm_id = settings.get("default_payment_method")
        if pm_id:
            call.state.get(
                pm_id, call.account, "payment_method", "invoice_settings[default_payment_method]"
            )
        merge_nested(customer["invoice_settings"], settings)


def retrieve_customer(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "customer")


def update_customer(call: Call) -> Obj:
    customer = call.state.get(call.args[0], call.account, "customer")
    previous = copy_fields(customer, call.params, _CUSTOMER_FIELDS)
    if call.has("metadata"):
        previous["metadata"] = customer["metadata"]
        customer["metadata"] = call.metadata(customer["metadata"])
    if call.has("invoice_settings"):
        previous["invoice_settings"] = dict(customer["invoice_settings"])
    _customer_nested(call, customer)
    emit(call.state, "customer.updated", customer, account=call.account, previous=previous)
    return customer


def delete_customer(call: Call) -> Obj:
    customer = call.state.get(call.args[0], call.account, "customer")
    call.state.delete(customer["id"])
    emit(call.state, "customer.deleted", customer, account=call.account)
    return build("deleted_customer", customer["id"], 0)


def list_customers(call: Call) -> Obj:
    email = call.str_("email")
    clock = call.str_("test_clock")
    return page(
        call,
        call.state.listed(call.account, "customer"),
        "/v1/customers",
        keep=None
        if email is None and clock is None
        else lambda c: (
            (email is None or c["email"] == email) and (clock is None or c["test_clock"] == clock)
        ),
        position=call.state.store.position,
    )


# -- payment methods ---------------------------------------------------------------------


def create_payment_method(call: Call) -> Obj:
    if call.str_("type") != "card":
        raise invalid("The sandbox supports card payment methods only.", param="type")
    card = call.dict_("card")
    name = None
    if card.get("token"):
        name = TEST_TOKENS.get(str(card["token"]))
    elif card.get("number"):
        name = TEST_CARD_NUMBERS.get(str(card["number"]).replace(" ", ""))
    if name is None:
        raise StripeError(
            402,
            "Your card number is incorrect.",
            type_="card_error",
            code="incorrect_number",
            param="card[number]",
        )
    pm = new_test_payment_method(call.state, call.account, name)
    if call.has("billing_details"):
        merge_nested(pm["billing_details"], call.dict_("billing_details"))
    pm["metadata"] = call.metadata()
    return pm


def retrieve_payment_method(call: Call) -> Obj:
    value = call.args[0]
    if value in TEST_PAYMENT_METHODS:
        return new_test_payment_method(call.state, call.account, value)
    return call.state.get(value, call.account, "payment_method")


def update_payment_method(call: Call) -> Obj:
    pm = call.state.get(call.args[0], call.account, "payment_method")
    previous: Obj = {}
    if call.has("billing_details"):
        previous["billing_details"] = dict(pm["billing_details"])
        merge_nested(pm["billing_details"], call.dict_("billing_details"))
    if call.has("metadata"):
        previous["metadata"] = pm["metadata"]
        pm["metadata"] = call.metadata(pm["metadata"])
    emit(call.state, "payment_method.updated", pm, account=call.account, previous=previous)
    return pm


def _attach(state: SandboxState, account: str, value: str, customer: Obj, param: str) -> Obj:
    pm = resolve_payment_method(state, account, value, param)
    decline = decline_for(state, pm["id"])
    # Attaching runs no payment: only cards that decline every use are refused here.
    if (
        decline is not None
        and behaviour(state, pm["id"]) != "customer_fail"
        and authentication(state, pm["id"]) is None
    ):
        code, decline_code, message = decline
        raise card_declined(message, code, decline_code, {"payment_method": pm})
    if pm["customer"] not in (None, customer["id"]):
        raise invalid(
            "The payment method you provided has already been attached to a customer.",
            param=param,
            code="payment_method_unexpected_state",
        )
    pm["customer"] = customer["id"]
    emit(state, "payment_method.attached", pm, account=account)
    return pm


def attach_payment_method(call: Call) -> Obj:
    customer = call.state.get(call.req_str("customer"), call.account, "customer", "customer")
    return _attach(call.state, call.account, call.args[0], customer, "payment_method")


def detach_payment_method(call: Call) -> Obj:
    pm = call.state.get(call.args[0], call.account, "payment_method")
    if pm["customer"] is None:
        raise invalid(
            "The payment method you provided is not attached to a customer so detachment "
            "is impossible.",
            code="payment_method_unexpected_state",
        )
    previous = {"customer": pm["customer"]}
    pm["customer"] = None
    emit(call.state, "payment_method.detached", pm, account=call.account, previous=previous)
    return pm


def list_payment_methods(call: Call) -> Obj:
    customer = call.str_("customer")
    if customer:
        call.state.get(customer, call.account, "customer", "customer")
    type_ = call.str_("type")
    return page(
        call,
        call.state.listed(call.account, "payment_method"),
        "/v1/payment_methods",
        keep=lambda pm: (
            (customer is None or pm["customer"] == customer)
            and (type_ is None or pm["type"] == type_)
        ),
        position=call.state.store.position,
    )


def list_customer_payment_methods(call: Call) -> Obj:
    customer = call.state.get(call.args[0], call.account, "customer")
    type_ = call.str_("type")
    return page(
        call,
        call.state.listed(call.account, "payment_method"),
        f"/v1/customers/{customer['id']}/payment_methods",
        keep=lambda pm: pm["customer"] == customer["id"] and (type_ is None or pm["type"] == type_),
        position=call.state.store.position,
    )


ROUTES = (
    Route("POST", "/v1/customers", create_customer, "CustomerCreateParams"),
    Route("GET", "/v1/customers", list_customers, "CustomerListParams"),
    Route("GET", "/v1/customers/{}", retrieve_customer, "CustomerRetrieveParams"),
    Route("POST", "/v1/customers/{}", update_customer, "CustomerUpdateParams"),
    Route("DELETE", "/v1/customers/{}", delete_customer, "CustomerDeleteParams"),
    Route(
        "GET",
        "/v1/customers/{}/payment_methods",
        list_customer_payment_methods,
        "CustomerPaymentMethodListParams",
    ),
    Route("POST", "/v1/payment_methods", create_payment_method, "PaymentMethodCreateParams"),
    Route("GET", "/v1/payment_methods", list_payment_methods, "PaymentMethodListParams"),
    Route("GET", "/v1/payment_methods/{}", retrieve_payment_method, "PaymentMethodRetrieveParams"),
    Route("POST", "/v1/payment_methods/{}", update_payment_method, "PaymentMethodUpdateParams"),
    Route(
        "POST", "/v1/payment_methods/{}/attach", attach_payment_method, "PaymentMethodAttachParams"
    ),
    Route(
        "POST", "/v1/payment_methods/{}/detach", detach_payment_method, "PaymentMethodDetachParams"
    ),
)
