"""One Stripe API version: the engine's constant is the pinned SDK's, and the gateway sends it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import stripe

from engine.core.authentication import customer_action
from engine.gateway import StripeGateway
from engine.stripe_version import STRIPE_API_VERSION
from engine.webhooks.versions import ForeignApiVersion, ensure_engine_version

ROOT = Path(__file__).resolve().parents[2]


def test_the_constant_is_the_sdks_api_version() -> None:
    assert stripe.api_version == STRIPE_API_VERSION


def test_the_sdk_is_pinned_to_the_installed_major() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in project["project"]["dependencies"] if d.startswith("stripe")]
    major = int(stripe.VERSION.split(".")[0])
    assert pins == [f"stripe>={major},<{major + 1}"]


def test_the_gateway_pins_the_version_on_its_client() -> None:
    gateway = StripeGateway("sk_test_unit", "http://127.0.0.1:9")
    client: Any = getattr(gateway, "_client")  # noqa: B009 - the SDK client it wraps
    assert client._requestor._options.stripe_version == STRIPE_API_VERSION


@pytest.mark.parametrize("version", ["2025-01-27.acacia", None])
def test_an_event_of_another_version_is_refused_with_the_fix(version: str | None) -> None:
    ensure_engine_version({"id": "evt_1", "api_version": STRIPE_API_VERSION})
    with pytest.raises(
        ForeignApiVersion, match="marketplace stripe-setup-webhooks --url"
    ) as refused:
        ensure_engine_version({"id": "evt_2", "api_version": version})
    assert refused.value.permanent
    assert STRIPE_API_VERSION in str(refused.value)


def test_customer_action_of_intents() -> None:
    waiting = {
        "id": "pi_1",
        "status": "requires_action",
        "client_secret": "pi_1_secret_x",
        "next_action": {"type": "use_stripe_sdk", "use_stripe_sdk": {"stripe_js": "u"}},
    }
    action = customer_action(waiting, hosted_invoice_url="https://i")
    assert action is not None
    assert (action.status, action.reason, action.hosted_invoice_url) == (
        "requires_action",
        "authentication_required",
        "https://i",
    )
    failed = {
        "id": "seti_1",
        "status": "requires_payment_method",
        "client_secret": "s",
        "last_setup_error": {"code": "setup_intent_authentication_failure"},
    }
    retried = customer_action(failed)
    assert retried is not None
    assert retried.reason == "setup_intent_authentication_failure"
    assert customer_action({"id": "pi_2", "status": "succeeded"}) is None
    assert customer_action({"id": "pi_3", "status": "requires_payment_method"}) is None
