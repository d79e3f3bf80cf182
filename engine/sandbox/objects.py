"""Object templates: Stripe's published example of each type, normalised, copied per object.

`data/fixtures.json` is the subset of Stripe's `fixtures3.json` (MIT, see
`data/LICENSE-stripe-fixtures`) for the types the sandbox serves. Each new
object starts as a fresh copy of its template, so it always carries exactly
Stripe's top-level keys; the resource modules then set the values that matter.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
from pathlib import Path
from typing import Any

import msgspec

from engine.sandbox.wire import Obj
from engine.stripe_version import STRIPE_API_VERSION

API_VERSION = STRIPE_API_VERSION
"""The one Stripe API version the sandbox speaks: the engine's (`engine.stripe_version`).
Every object it serves has this version's shape (tests/sandbox/test_sandbox_contract.py)."""

_FIXTURES = Path(__file__).with_name("data") / "fixtures.json"

# Sample values in Stripe's examples that describe some other state of the object
# than "just created": reset so a new object starts neutral.
_NORMALISE: dict[str, dict[str, Any]] = {
    "account": {
        "capabilities": {},
        "email": None,
        "controller": {"type": "application", "is_controller": True},
        "type": "custom",
    },
    "balance_transaction": {"description": None, "exchange_rate": None},
    "charge": {
        "billing_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": None,
            "name": None,
            "phone": None,
            "tax_id": None,
        },
        "description": None,
        "outcome": None,
        "receipt_url": None,
        "shipping": None,
        "source": None,
        "transfer_data": None,
        "fraud_details": {},
    },
    "customer": {"discount": None, "shipping": None, "invoice_prefix": None},
    "dispute": {"enhanced_eligibility_types": []},
    "event": {"data": {"object": {}}},
    "payment_intent": {
        "amount_details": {"tip": {}},
        "automatic_payment_methods": None,
        "canceled_at": None,
        "last_payment_error": None,
        "managed_payments": None,
        "next_action": None,
        "payment_method_configuration_details": None,
        "processing": None,
        "shipping": None,
        "source": None,
        "transfer_data": None,
    },
    "payment_method": {"metadata": {}, "allow_redisplay": "unspecified"},
    "payout": {"trace_id": {"status": "pending", "value": None}},
    "webhook_endpoint": {"description": None, "enabled_events": []},
}


# Keys of Stripe's example objects that the API version the sandbox speaks no longer has
# (the SDK's typed class for that version has no such field): never served.
_REMOVED: dict[str, tuple[str, ...]] = {
    "invoice": ("subscription",),  # moved to parent.subscription_details (2025-03-31.basil)
}


@functools.cache
def _templates() -> dict[str, bytes]:
    raw = json.loads(_FIXTURES.read_text())["resources"]
    out: dict[str, bytes] = {}
    for name, example in raw.items():
        for key in _REMOVED.get(name, ()):
            example.pop(key, None)
        example.update(_NORMALISE.get(name, {}))
        if "livemode" in example:
            example["livemode"] = False
        if "metadata" in example and name != "payment_method":
            example["metadata"] = {}
        out[name] = msgspec.json.encode(example)
    return out


def template(kind: str) -> Obj:
    """A fresh (deep) copy of the normalised example object for `kind`."""
    result: Obj = msgspec.json.decode(_templates()[kind])
    return result


def template_keys(kind: str) -> frozenset[str]:
    """The top-level keys of Stripe's example object for `kind`."""
    return frozenset(template(kind))


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking id such as `pi_3a9f...` (alphanumeric; hex keeps it fast)."""
    return prefix + "_" + os.urandom((length + 1) // 2).hex()[:length]


def new_secret(prefix: str, length: int = 32) -> str:
    """An opaque secret (webhook signing secret, client secret suffix)."""
    return prefix + "_" + secrets.token_hex((length + 1) // 2)[:length]


def build(kind: str, object_id: str, created: int, **fields: Any) -> Obj:
    """A new object of `kind` from its template with `id`, `created` and `fields` set."""
    obj = template(kind)
    if object_id:
        obj["id"] = object_id
    if "created" in obj:
        obj["created"] = created
    for key, value in fields.items():
        if key not in obj:
            raise KeyError(f"{kind} has no field {key!r}")
        obj[key] = value
    return obj
