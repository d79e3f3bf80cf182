"""The sandbox's contract: every object type it serves has the shape of the pinned API version.

Two references, both checked for every served type (and every event's ``data.object``):

- the SDK's typed class for the object (``stripe._object_classes``), the SDK being the
  major pinned in pyproject.toml and typed for ``stripe.api_version``: a served key the
  class does not know (a field the version removed) fails, recursively through nested
  objects, embedded lists and expansions; a field the class requires (not Optional)
  that is missing fails. An SDK upgrade that changes shapes therefore fails here loudly;
- Stripe's example objects (``fixtures3.json``): their top-level keys are served (except
  keys the typed class no longer has), with the same ``object`` and id prefix.
"""

from __future__ import annotations

import importlib
import io
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from stripe._object_classes import OBJECT_CLASSES

from engine.sandbox.testing import RunningSandbox, verified_account_params
from engine.stripe_version import STRIPE_API_VERSION

SHARED = Path(__file__).resolve().parents[3] / "shared" / "stripe" / "fixtures3.json"
PACKAGED = Path(__file__).resolve().parents[2] / "engine" / "sandbox" / "data" / "fixtures.json"
FIXTURES: dict[str, Any] = json.loads((SHARED if SHARED.exists() else PACKAGED).read_text())[
    "resources"
]
# Fields the typed class requires that Stripe only serves in some states or on request.
NOT_ALWAYS_SERVED = {
    "invoice": {"payments", "confirmation_secret"},
}
DAY = 86_400


def test_the_engine_speaks_the_sdks_api_version(sandbox: RunningSandbox) -> None:
    assert stripe.api_version == STRIPE_API_VERSION
    response = sandbox.http.get(
        sandbox.url + "/v1/customers", headers={"Authorization": "Bearer sk_test_contract"}
    )
    assert response.headers["stripe-version"] == STRIPE_API_VERSION


def test_a_request_in_another_version_is_refused_naming_the_sandboxs(
    sandbox: RunningSandbox,
) -> None:
    response = sandbox.http.post(
        sandbox.url + "/v1/customers",
        headers={"Authorization": "Bearer sk_test_contract", "Stripe-Version": "2025-01-27.acacia"},
        data={"email": "old@example.com"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("api_version_unsupported", "Stripe-Version")
    assert STRIPE_API_VERSION in error["message"]
    assert "2025-01-27.acacia" in error["message"]
    assert sandbox.client().v1.customers.list().data == []  # nothing was created


# -- the typed classes -------------------------------------------------------------------


def class_of(object_name: str) -> type:
    module, name = OBJECT_CLASSES[object_name]
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def fields(cls: type) -> dict[str, Any]:
    """The annotated fields of a typed SDK class (its own and its bases')."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith(("stripe._stripe_object", "builtins", "typing")):
            continue
        for name, annotation in getattr(klass, "__annotations__", {}).items():
            if typing.get_origin(annotation) is typing.ClassVar or name.startswith("_"):
                continue
            out[name] = annotation
    return out


def optional(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return False


def check(value: Any, cls: type, path: str, *, name: str | None = None) -> Iterator[str]:
    """Every way `value` departs from the typed class `cls` (nested classes included)."""
    known = fields(cls)
    deleted = value.get("deleted") is True
    for key, item in value.items():
        if key not in known:
            yield f"{path}.{key}: not a field of {cls.__qualname__}"
            continue
        inner = getattr(cls, "_inner_class_types", {}).get(key)
        yield from check_value(item, inner, f"{path}.{key}")
    if deleted:
        return
    excused = NOT_ALWAYS_SERVED.get(name or "", set())
    for key, annotation in known.items():
        if key not in value and not optional(annotation) and key not in excused:
            yield f"{path}.{key}: required by {cls.__qualname__}, missing"


def check_value(value: Any, inner: type | None, path: str) -> Iterator[str]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from check_value(item, inner, f"{path}[{i}]")
        return
    if not isinstance(value, dict):
        return
    kind = value.get("object")
    if kind == "list":
        for i, item in enumerate(value.get("data", [])):
            yield from check_value(item, None, f"{path}.data[{i}]")
    elif isinstance(kind, str) and kind in OBJECT_CLASSES:
        yield from check(value, class_of(kind), path, name=kind)
    elif inner is not None:
        yield from check(value, inner, path)


# -- one object of every type ------------------------------------------------------------


def _get(sandbox: RunningSandbox, path: str, account: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": "Bearer sk_test_shapes"}
    if account:
        headers["Stripe-Account"] = account
    response = sandbox.http.get(sandbox.url + path, headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _authenticate(sandbox: RunningSandbox, intent: Any) -> None:
    response = httpx.post(
        f"{sandbox.url}/_sandbox/authenticate/{intent.id}",
        data={"client_secret": intent.client_secret, "outcome": "complete"},
    )
    assert response.status_code in (200, 303), response.text  # 303: to the return_url


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
    evidence = client.v1.files.create(
        params={"purpose": "dispute_evidence", "file": _named(b"%PDF-1.4 receipt", "r.pdf")}
    )
    client.v1.disputes.update(
        dispute.id, params={"evidence": {"receipt": evidence.id}, "submit": False}
    )
    authenticated = client.v1.payment_intents.create(
        params={
            "amount": 2_000,
            "currency": "usd",
            "payment_method": "pm_card_threeDSecure2Required",
            "confirm": True,
            "return_url": "https://example.com/back",
        }
    )
    waiting = _get(sandbox, f"/v1/payment_intents/{authenticated.id}")
    _authenticate(sandbox, authenticated)
    setup = client.v1.setup_intents.create(
        params={
            "customer": customer.id,
            "payment_method": "pm_card_authenticationRequiredOnSetup",
            "confirm": True,
        }
    )
    setup_waiting = _get(sandbox, f"/v1/setup_intents/{setup.id}")
    _authenticate(sandbox, setup)
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
        params={
            "url": "http://127.0.0.1:9/none",
            "enabled_events": ["*"],
            "api_version": STRIPE_API_VERSION,
        }
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
    company = client.v1.accounts.create(
        params={"type": "custom", "business_type": "company", "country": "US"}
    )
    person = client.v1.accounts.persons.create(
        company.id,
        params={
            "first_name": "Rita",
            "last_name": "Representative",
            "dob": {"day": 1, "month": 1, "year": 1901},
            "relationship": {"representative": True, "title": "CEO"},
        },
    )
    gone_person = client.v1.accounts.persons.create(company.id, params={"first_name": "Gone"})
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
        "payment_intent_requires_action": waiting,
        "payment_method": _get(sandbox, f"/v1/payment_methods/{pm.id}"),
        "payout": _get(sandbox, f"/v1/payouts/{payout.id}", other.id),
        "refund": _get(sandbox, f"/v1/refunds/{refund.id}"),
        "setup_intent": _get(sandbox, f"/v1/setup_intents/{setup.id}"),
        "setup_intent_requires_action": setup_waiting,
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
        "person": _get(sandbox, f"/v1/accounts/{company.id}/persons/{person.id}"),
        "deleted_person": client.v1.accounts.persons.delete(company.id, gone_person.id).to_dict(),
        "file": _get(sandbox, f"/v1/files/{evidence.id}"),
        **billing,
    }


def _named(content: bytes, name: str) -> io.BytesIO:
    upload = io.BytesIO(content)
    upload.name = name
    return upload


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
    payment = client.v1.invoice_payments.list(params={"invoice": invoice}).data[0]
    expanded = "?expand[]=payments&expand[]=confirmation_secret"
    return {
        "product": _get(sandbox, f"/v1/products/{product.id}"),
        "deleted_product": client.v1.products.delete(gone.id).to_dict(),
        "price": _get(sandbox, f"/v1/prices/{prices[0].id}"),
        "subscription": _get(sandbox, f"/v1/subscriptions/{subscription.id}"),
        "subscription_item": _get(sandbox, f"/v1/subscription_items/{item.id}"),
        "invoice": _get(sandbox, f"/v1/invoices/{invoice}"),
        "invoice_expanded": _get(sandbox, f"/v1/invoices/{invoice}{expanded}"),
        "invoice_payment": _get(sandbox, f"/v1/invoice_payments/{payment.id}"),
        "line_item": _get(sandbox, f"/v1/invoices/{invoice}/lines")["data"][0],
        "invoiceitem": _get(sandbox, f"/v1/invoiceitems/{pending.id}"),
    }


VARIANTS = {
    "connected_event": "event",
    "payment_intent_requires_action": "payment_intent",
    "setup_intent_requires_action": "setup_intent",
    "invoice_expanded": "invoice",
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
    "payment_intent_requires_action",
    "payment_method",
    "payout",
    "refund",
    "setup_intent",
    "setup_intent_requires_action",
    "test_helpers.test_clock",
    "deleted_test_helpers.test_clock",
    "transfer",
    "transfer_reversal",
    "webhook_endpoint",
    "deleted_webhook_endpoint",
    "deleted_account",
    "deleted_external_account",
    "person",
    "deleted_person",
    "file",
    "product",
    "deleted_product",
    "price",
    "subscription",
    "subscription_item",
    "invoice",
    "invoice_expanded",
    "invoice_payment",
    "line_item",
    "invoiceitem",
]


def _fixture_name(kind: str) -> str:
    return VARIANTS.get(kind, kind)


def _prefix(value: str) -> str:
    return value.split("_", 1)[0] + "_" if "_" in value else ""


@pytest.mark.parametrize("kind", TYPES)
def test_shape_is_the_typed_class_of_the_pinned_version(
    kind: str, served: dict[str, dict[str, Any]]
) -> None:
    actual = served[kind]
    name = _fixture_name(kind)
    problems = list(check_value(actual, None, kind))
    assert problems == []
    assert actual.get("object") == FIXTURES.get(name, {}).get("object", actual.get("object"))


@pytest.mark.parametrize("kind", TYPES)
def test_shape_has_stripes_example_keys(kind: str, served: dict[str, dict[str, Any]]) -> None:
    name = _fixture_name(kind)
    if name not in FIXTURES:
        pytest.skip(f"Stripe publishes no example {name}")
    expected = FIXTURES[name]
    actual = served[kind]
    known = fields(class_of(expected["object"]))
    wanted = {key for key in expected if key in known}  # keys the version still has
    assert wanted - set(actual) == set()
    # `obj_123` is the example's placeholder where Stripe publishes no real id.
    if "id" in expected and name != "capability" and not expected["id"].startswith("obj_"):
        assert _prefix(actual["id"]) == _prefix(expected["id"])
    if kind == "connected_event":
        assert "account" in actual


def test_invoices_name_their_payments_and_subscription_the_current_way(
    served: dict[str, dict[str, Any]],
) -> None:
    invoice = served["invoice"]
    for gone in ("payment_intent", "charge", "subscription", "paid", "paid_out_of_band"):
        assert gone not in invoice
    assert "payments" not in invoice  # includable: only when expanded
    assert (
        invoice["parent"]["subscription_details"]["subscription"] == (served["subscription"]["id"])
    )
    expanded = served["invoice_expanded"]
    payment = expanded["payments"]["data"][0]
    assert payment["payment"]["type"] == "payment_intent"
    assert payment["payment"]["payment_intent"].startswith("pi_")
    assert expanded["confirmation_secret"]["type"] == "payment_intent"
    line = served["line_item"]
    assert line["pricing"]["price_details"]["price"].startswith("price_")
    assert line["parent"]["type"] == "subscription_item_details"
    subscription = served["subscription"]
    assert "current_period_start" not in subscription
    item = subscription["items"]["data"][0]
    assert item["current_period_end"] > item["current_period_start"]
    for kind in ("payment_intent", "charge"):
        assert "invoice" not in served[kind]


def test_every_event_payload_has_the_pinned_shapes(
    sandbox_server: RunningSandbox, served: dict[str, dict[str, Any]]
) -> None:
    client = sandbox_server.client()
    events = client.v1.events.list(params={"limit": 100}).data
    assert events
    problems = []
    for event in events:
        raw = _get(sandbox_server, f"/v1/events/{event.id}")
        assert raw["api_version"] == STRIPE_API_VERSION
        problems += list(check_value(raw, None, f"{raw['type']}"))
    assert problems == []


def test_every_served_type_is_checked() -> None:
    packaged = json.loads(PACKAGED.read_text())["resources"]
    unchecked = set(packaged) - {_fixture_name(t) for t in TYPES}
    assert unchecked == set()
