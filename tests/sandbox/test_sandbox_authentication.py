"""3D Secure in the sandbox: Stripe's authentication test cards, SetupIntents, the page.

Each card of TEST-VALUES.md ("Cards that ask for authentication") on-session, off-session,
and off-session after a SetupIntent saved it; the page that completes or fails the
authentication; `redirect_to_url` with a `return_url`; subscriptions whose invoices wait
for the customer (`invoice.payment_action_required`) and the hosted invoice page.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import stripe

from engine.sandbox.testing import RunningSandbox

DAY = 86_400
HOUR = 3_600
MAR_1_2026 = 1_772_323_200
APR_1_2026 = MAR_1_2026 + 31 * DAY

# card -> (after authenticating on-session, off-session unsaved, off-session once set up)
CARDS = {
    "pm_card_authenticationRequiredOnSetup": ("succeeded", "authentication_required", "ok"),
    "pm_card_authenticationRequired": (
        "succeeded",
        "authentication_required",
        "authentication_required",
    ),
    "pm_card_authenticationRequiredSetupForOffSession": ("succeeded", "ok", "ok"),
    "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds": (
        "insufficient_funds",
        "authentication_required",
        "insufficient_funds",
    ),
    "pm_card_threeDSecure2Required": (
        "succeeded",
        "authentication_required",
        "authentication_required",
    ),
}


def authenticate(sandbox: RunningSandbox, intent: Any, outcome: str = "complete") -> Any:
    """What the customer does on the page the `next_action` points to."""
    page = httpx.get(intent.next_action.use_stripe_sdk["stripe_js"])
    assert page.status_code == 200
    assert "Complete authentication" in page.text
    answer = httpx.post(
        f"{sandbox.url}/_sandbox/authenticate/{intent.id}",
        data={"client_secret": intent.client_secret, "outcome": outcome},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def off_session(client: Any, card: str, customer: str | None = None) -> str:
    params: dict[str, Any] = {
        "amount": 1_500,
        "currency": "usd",
        "payment_method": card,
        "confirm": True,
        "off_session": True,
    }
    if customer:
        params["customer"] = customer
    try:
        client.v1.payment_intents.create(params=params)
    except stripe.CardError as declined:
        return str(getattr(declined.error, "decline_code", ""))
    return "ok"


@pytest.mark.parametrize("card", sorted(CARDS))
def test_each_authentication_card(sandbox: RunningSandbox, client: Any, card: str) -> None:
    after_auth, unsaved, saved = CARDS[card]
    intent = client.v1.payment_intents.create(
        params={"amount": 2_000, "currency": "usd", "payment_method": card, "confirm": True}
    )
    assert intent.status == "requires_action"
    assert intent.next_action.type == "use_stripe_sdk"
    assert intent.latest_charge is None  # nothing charged before the customer authenticates
    done = authenticate(sandbox, intent)
    if after_auth == "succeeded":
        assert (done["status"], done["amount_received"]) == ("succeeded", 2_000)
    else:
        assert done["status"] == "requires_payment_method"
        assert done["last_payment_error"]["decline_code"] == after_auth
    assert off_session(client, card) == unsaved

    customer = client.v1.customers.create(params={"email": "saver@example.com"})
    setup = client.v1.setup_intents.create(
        params={"customer": customer.id, "payment_method": card, "confirm": True}
    )
    if setup.status == "requires_action":
        assert authenticate(sandbox, setup)["status"] == "succeeded"
    saved_pm = client.v1.setup_intents.retrieve(setup.id).payment_method
    assert client.v1.payment_methods.retrieve(saved_pm).customer == customer.id
    assert off_session(client, saved_pm, customer.id) == saved


def test_failed_authentication_and_redirects(sandbox: RunningSandbox, client: Any) -> None:
    intent = client.v1.payment_intents.create(
        params={
            "amount": 2_000,
            "currency": "usd",
            "payment_method": "pm_card_threeDSecure2Required",
            "confirm": True,
        }
    )
    failed = authenticate(sandbox, intent, "fail")
    assert failed["status"] == "requires_payment_method"
    assert failed["last_payment_error"]["code"] == "payment_intent_authentication_failure"
    types = [e.type for e in client.v1.events.list(params={"limit": 10}).data]
    assert "payment_intent.requires_action" in types
    assert "payment_intent.payment_failed" in types
    assert "charge.succeeded" not in types

    retried = client.v1.payment_intents.confirm(
        intent.id,
        params={
            "payment_method": "pm_card_threeDSecure2Required",
            "return_url": "https://shop.example/done",
        },
    )
    assert retried.next_action.type == "redirect_to_url"
    redirect = retried.next_action.redirect_to_url
    assert redirect.return_url == "https://shop.example/done"
    wrong = httpx.post(
        f"{sandbox.url}/_sandbox/authenticate/{intent.id}",
        data={"client_secret": "pi_wrong_secret", "outcome": "complete"},
    )
    assert wrong.status_code == 400
    back = httpx.post(
        f"{sandbox.url}/_sandbox/authenticate/{intent.id}",
        data={"client_secret": intent.client_secret, "outcome": "complete"},
    )
    assert back.status_code == 303
    assert back.headers["location"].startswith("https://shop.example/done?payment_intent=")
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"


def test_setup_intent_lifecycle(sandbox: RunningSandbox, client: Any) -> None:
    customer = client.v1.customers.create()
    setup = client.v1.setup_intents.create(params={"customer": customer.id})
    assert (setup.status, setup.usage) == ("requires_payment_method", "off_session")
    assert setup.client_secret.startswith(f"{setup.id}_secret_")
    confirmed = client.v1.setup_intents.confirm(setup.id, params={"payment_method": "pm_card_visa"})
    assert confirmed.status == "succeeded"
    with pytest.raises(stripe.CardError):
        client.v1.setup_intents.create(
            params={
                "customer": customer.id,
                "payment_method": "pm_card_chargeDeclined",
                "confirm": True,
            }
        )
    cancelled = client.v1.setup_intents.cancel(
        client.v1.setup_intents.create(params={"customer": customer.id}).id
    )
    assert cancelled.status == "canceled"
    listed = client.v1.setup_intents.list(params={"customer": customer.id})
    assert len(listed.data) == 3
    types = {e.type for e in client.v1.events.list(params={"limit": 30}).data}
    assert {
        "setup_intent.created",
        "setup_intent.succeeded",
        "setup_intent.setup_failed",
        "setup_intent.canceled",
        "payment_method.attached",
    } <= types


def test_renewal_that_needs_authentication_waits_for_the_customer(
    sandbox: RunningSandbox, client: Any
) -> None:
    clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": MAR_1_2026})
    customer = client.v1.customers.create(params={"test_clock": clock.id})
    setup = client.v1.setup_intents.create(
        params={
            "customer": customer.id,
            "payment_method": "pm_card_authenticationRequired",
            "confirm": True,
        }
    )
    authenticate(sandbox, setup)
    card = client.v1.setup_intents.retrieve(setup.id).payment_method
    product = client.v1.products.create(params={"name": "Tier"})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 1_000,
            "recurring": {"interval": "month"},
        }
    )
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "default_payment_method": card,
            "expand": ["latest_invoice.confirmation_secret"],
        }
    )
    assert sub.status == "incomplete"  # this card asks every time, off-session too
    first = sub.latest_invoice
    payments = client.v1.invoice_payments.list(
        params={"invoice": first.id, "expand": ["data.payment.payment_intent"]}
    ).data
    intent = payments[0].payment.payment_intent
    assert intent.status == "requires_action"
    assert first.confirmation_secret.client_secret == intent.client_secret
    authenticate(sandbox, intent)
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
    assert client.v1.invoices.retrieve(first.id).status == "paid"

    client.v1.test_helpers.test_clocks.advance(
        clock.id, params={"frozen_time": APR_1_2026 + HOUR + 1}
    )
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    renewal = client.v1.invoices.list(params={"subscription": sub.id, "limit": 1}).data[0]
    assert renewal.status == "open"
    assert renewal.hosted_invoice_url.startswith(f"{sandbox.url}/_sandbox/invoices/")
    types = [e.type for e in client.v1.events.list(params={"limit": 20}).data]
    assert "invoice.payment_action_required" in types
    hosted = httpx.get(renewal.hosted_invoice_url)
    assert "Authenticate the payment" in hosted.text
    pending = client.v1.invoice_payments.list(
        params={"invoice": renewal.id, "expand": ["data.payment.payment_intent"]}
    ).data[0]
    assert pending.status == "open"
    authenticate(sandbox, pending.payment.payment_intent)
    assert client.v1.invoices.retrieve(renewal.id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
    paid = client.v1.invoice_payments.retrieve(pending.id)
    assert (paid.status, paid.amount_paid) == ("paid", 1_000)
