"""Whose Stripe Billing invoice it is (``engine.payments.records.invoice_owner``), from
Stripe's invoice alone: the engine leaves an owned invoice's charge to its plugin."""

from __future__ import annotations

from typing import Any

from engine.payments.records import MEANING_METADATA, invoice_owner, meaning_metadata


def invoice(own: dict[str, str] | None = None, subscription: dict[str, str] | None = None) -> Any:
    parent = (
        None
        if subscription is None
        else {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"subscription": "sub_1", "metadata": subscription},
        }
    )
    return {"id": "in_1", "object": "invoice", "metadata": own or {}, "parent": parent}


def test_meaning_metadata_is_the_engines_two_keys() -> None:
    assert meaning_metadata("creators", "creators:subscription:4") == {
        MEANING_METADATA[0]: "creators",
        MEANING_METADATA[1]: "creators:subscription:4",
    }


def test_the_subscriptions_snapshot_on_the_invoice_names_the_owner() -> None:
    assert invoice_owner(invoice(subscription=meaning_metadata("creators", "c:1"))) == "creators"


def test_the_invoices_own_metadata_comes_first() -> None:
    found = invoice(
        own=meaning_metadata("billing", "b:1"), subscription=meaning_metadata("creators", "c:1")
    )
    assert invoice_owner(found) == "billing"


def test_an_invoice_naming_no_plugin_has_no_owner() -> None:
    assert invoice_owner(invoice()) == ""
    assert invoice_owner(invoice(subscription={"plugin": "creators"})) == ""
    assert invoice_owner({"id": "in_2", "metadata": None, "parent": None}) == ""
