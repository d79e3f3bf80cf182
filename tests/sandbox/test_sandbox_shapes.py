"""Every object type the sandbox serves has Stripe's top-level keys, `object` and id prefix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.sandbox.testing import RunningSandbox, verified_account_params

SHARED = Path(__file__).resolve().parents[3] / "shared" / "stripe" / "fixtures3.json"
PACKAGED = Path(__file__).resolve().parents[2] / "engine" / "sandbox" / "data" / "fixtures.json"
FIXTURES: dict[str, Any] = json.loads((SHARED if SHARED.exists() else PACKAGED).read_text())[
    "resources"
]
# Documented departures: Stripe adds these conditionally, its example object omits them.
EXTRA_KEYS = {
    "charge": {"transfer"},  # destination charges
    "event": {"account"},  # events of connected accounts
    # Fields of API version 2025-01-27.acacia, which the sandbox speaks; the newer example
    # objects moved them (to `payments`/`parent`, and onto subscription items).
    "invoice": {"payment_intent", "charge", "application_fee_amount", "transfer_data"},
    "subscription": {"current_period_start", "current_period_end"},
}

DAY = 86_400


def _get(sandbox: RunningSandbox, path: str, account: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": "Bearer sk_test_shapes"}
    if account:
        headers["Stripe-Account"] = account
    response = sandbox.http.get(sandbox.url + path, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture(scope="module")
def served(sandbox_server: RunningSandbox) -> dict[str, dict[str, Any]]:
    """One object of every type, fetched back as raw JSON (built once for the module)."""
    sandbox = sandbox_server
    sandbox.control("POST", "/_sandbox/reset")
    client = sandbox.client()
    account = client.v1.accounts.create(params=verified_account_params())
    other = client.v1.accounts.create(params=verified_account_params())
    customer = client.v1.customers.create(params={"email": "shape@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    pi = client.v1.payment_intents.create(
        params={
            "amount": 5_000,
            "currency": "usd",
            "payment_method": "pm_card_bypassPending",
            "confirm": True,
            "application_fee_amount": 500,
            "transfer_data": {"destination": account.id},
        }
    )
    charge = _get(sandbox, f"/v1/charges/{pi.latest_charge}")
    refund = client.v1.refunds.create(
        params={
            "charge": pi.latest_charge,
            "amount": 1_000,
            "reverse_transfer": True,
            "refund_application_fee": True,
        }
    )
    transfer = client.v1.transfers.retrieve(charge["transfer"])
    reversal_id = transfer.reversals.data[0].id
    fee = client.v1.application_fees.retrieve(charge["application_fee"])
    dispute_pi = client.v1.payment_intents.create(
        params={
            "amount": 5_000,
            "currency": "usd",
            "payment_method": "pm_card_createDispute",
            "confirm": True,
        }
    )
    dispute = client.v1.disputes.list(params={"payment_intent": dispute_pi.id}).data[0]
    direct = sandbox.client(stripe_account=other.id)
    direct.v1.payment_intents.create(
        params={
            "amount": 5_000,
            "currency": "usd",
            "payment_method": "pm_card_bypassPending",
            "confirm": True,
        }
    )
    payout = direct.v1.payouts.create(params={"amount": 1_000, "currency": "usd"})
    endpoint = client.v1.webhook_endpoints.create(
        params={"url": "http://127.0.0.1:9/none", "enabled_events": ["*"]}
    )
    clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": 1_800_000_000})
    link = client.v1.account_links.create(
        params={
            "account": account.id,
            "type": "account_onboarding",
            "refresh_url": "https://e.x/r",
            "return_url": "https://e.x/b",
        }
    )
    express = client.v1.accounts.create(params={"type": "express"})
    login = client.v1.accounts.login_links.create(express.id)
    event = client.v1.events.list(params={"limit": 1}).data[0]
    connected_event = direct.v1.events.list(params={"limit": 1}).data[0]
    bank = account.external_accounts.data[0]
    spare = client.v1.accounts.external_accounts.create(
        account.id, params={"external_account": "btok_us_verified"}
    )
    deleted_customer = client.v1.customers.create()
    billing = _billing_objects(sandbox, client, account.id)
    return {
        "account": _get(sandbox, f"/v1/accounts/{account.id}"),
        "account_link": link.to_dict(),
        "login_link": login.to_dict(),
        "bank_account": _get(sandbox, f"/v1/accounts/{account.id}/external_accounts/{bank.id}"),
        "external_account": _get(sandbox, f"/v1/accounts/{account.id}/external_accounts/{bank.id}"),
        "capability": _get(sandbox, f"/v1/accounts/{account.id}/capabilities/transfers"),
        "balance": _get(sandbox, "/v1/balance"),
        "balance_transaction": _get(
            sandbox, f"/v1/balance_transactions/{charge['balance_transaction']}"
        ),
        "application_fee": _get(sandbox, f"/v1/application_fees/{fee.id}"),
        "fee_refund": _get(
            sandbox, f"/v1/application_fees/{fee.id}/refunds/{fee.refunds.data[0].id}"
        ),
        "charge": charge,
        "customer": _get(sandbox, f"/v1/customers/{customer.id}"),
        "deleted_customer": client.v1.customers.delete(deleted_customer.id).to_dict(),
        "dispute": _get(sandbox, f"/v1/disputes/{dispute.id}"),
        "event": _get(sandbox, f"/v1/events/{event.id}"),
        "connected_event": _get(sandbox, f"/v1/events/{connected_event.id}", other.id),
        "payment_intent": _get(sandbox, f"/v1/payment_intents/{pi.id}"),
        "payment_method": _get(sandbox, f"/v1/payment_methods/{pm.id}"),
        "payout": _get(sandbox, f"/v1/payouts/{payout.id}", other.id),
        "refund": _get(sandbox, f"/v1/refunds/{refund.id}"),
        "test_helpers.test_clock": _get(sandbox, f"/v1/test_helpers/test_clocks/{clock.id}"),
        "deleted_test_helpers.test_clock": client.v1.test_helpers.test_clocks.delete(
            clock.id
        ).to_dict(),
        "transfer": _get(sandbox, f"/v1/transfers/{transfer.id}"),
        "transfer_reversal": _get(sandbox, f"/v1/transfers/{transfer.id}/reversals/{reversal_id}"),
        "webhook_endpoint": _get(sandbox, f"/v1/webhook_endpoints/{endpoint.id}"),
        "deleted_webhook_endpoint": client.v1.webhook_endpoints.delete(endpoint.id).to_dict(),
        "deleted_account": client.v1.accounts.delete(express.id).to_dict(),
        "deleted_external_account": client.v1.accounts.external_accounts.delete(
            account.id, spare.id
        ).to_dict(),
        **billing,
    }


def _billing_objects(sandbox: RunningSandbox, client: Any, destination: str) -> dict[str, Any]:
    """A product, prices, a destination subscription with a proration, its invoice and lines."""
    product = client.v1.products.create(params={"name": "Shape tier"})
    prices = [
        client.v1.prices.create(
            params={
                "product": product.id,
                "currency": "usd",
                "unit_amount": amount,
                "recurring": {"interval": "month"},
            }
        )
        for amount in (1_000, 2_000)
    ]
    billed = client.v1.customers.create(params={"email": "billed@example.com"})
    card = client.v1.payment_methods.attach("pm_card_visa", params={"customer": billed.id})
    subscription = client.v1.subscriptions.create(
        params={
            "customer": billed.id,
            "items": [{"price": prices[0].id}],
            "default_payment_method": card.id,
            "transfer_data": {"destination": destination},
            "application_fee_percent": 10,
        }
    )
    item = subscription["items"].data[0]
    client.v1.subscriptions.update(
        subscription.id, params={"items": [{"id": item.id, "price": prices[1].id}]}
    )
    pending = client.v1.invoice_items.list(params={"pending": True}).data[0]
    gone = client.v1.products.create(params={"name": "Gone"})
    invoice = subscription.latest_invoice
    return {
        "product": _get(sandbox, f"/v1/products/{product.id}"),
        "deleted_product": client.v1.products.delete(gone.id).to_dict(),
        "price": _get(sandbox, f"/v1/prices/{prices[0].id}"),
        "subscription": _get(sandbox, f"/v1/subscriptions/{subscription.id}"),
        "subscription_item": _get(sandbox, f"/v1/subscription_items/{item.id}"),
        "invoice": _get(sandbox, f"/v1/invoices/{invoice}"),
        "line_item": _get(sandbox, f"/v1/invoices/{invoice}/lines")["data"][0],
        "invoiceitem": _get(sandbox, f"/v1/invoiceitems/{pending.id}"),
    }


TYPES = [
    "account",
    "account_link",
    "login_link",
    "bank_account",
    "external_account",
    "capability",
    "balance",
    "balance_transaction",
    "application_fee",
    "fee_refund",
    "charge",
    "customer",
    "deleted_customer",
    "dispute",
    "event",
    "connected_event",
    "payment_intent",
    "payment_method",
    "payout",
    "refund",
    "test_helpers.test_clock",
    "deleted_test_helpers.test_clock",
    "transfer",
    "transfer_reversal",
    "webhook_endpoint",
    "deleted_webhook_endpoint",
    "deleted_account",
    "deleted_external_account",
    "product",
    "deleted_product",
    "price",
    "subscription",
    "subscription_item",
    "invoice",
    "line_item",
    "invoiceitem",
]


def _prefix(value: str) -> str:
    return value.split("_", 1)[0] + "_" if "_" in value else ""


def _fixture_name(kind: str) -> str:
    return "event" if kind == "connected_event" else kind


@pytest.mark.parametrize("kind", TYPES)
def test_shape_matches_stripe_fixture(kind: str, served: dict[str, dict[str, Any]]) -> None:
    name = _fixture_name(kind)
    expected = FIXTURES[name]
    actual = served[kind]
    allowed_extra = EXTRA_KEYS.get(name, set())
    assert set(actual) - set(expected) <= allowed_extra, set(actual) - set(expected)
    assert set(expected) - set(actual) == set(), set(expected) - set(actual)
    assert actual.get("object") == expected.get("object")
    if "id" in expected and name not in ("capability",):
        assert _prefix(actual["id"]) == _prefix(expected["id"])
    if kind == "connected_event":
        assert "account" in actual


def test_every_served_type_is_checked() -> None:
    packaged = json.loads(PACKAGED.read_text())["resources"]
    unchecked = set(packaged) - {_fixture_name(t) for t in TYPES}
    assert unchecked == set()
