"""Stripe's API conventions through the real SDK: keys, errors, idempotency, scoping, lists."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import stripe

from engine.sandbox.testing import RunningSandbox


def test_bad_api_key_is_401(sandbox: RunningSandbox) -> None:
    with pytest.raises(stripe.AuthenticationError) as caught:
        sandbox.client(api_key="sk_live_nope").v1.customers.list()
    assert caught.value.http_status == 401
    assert "Invalid API Key" in str(caught.value.user_message)


def test_basic_auth_and_request_id(sandbox: RunningSandbox) -> None:
    response = httpx.get(f"{sandbox.url}/v1/balance", auth=("sk_test_abc", ""))
    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")
    assert response.json()["object"] == "balance"
    unknown = httpx.get(f"{sandbox.url}/v1/nothing", auth=("sk_test_abc", ""))
    assert unknown.status_code == 404
    assert "Unrecognized request URL" in unknown.json()["error"]["message"]


def test_unknown_parameter(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.customers.create(params={"email": "a@b.c", "favourite_colour": "red"})  # type: ignore[typeddict-unknown-key]
    assert caught.value.code == "parameter_unknown"
    assert caught.value.param == "favourite_colour"
    assert caught.value.http_status == 400


def test_idempotency_replay_and_conflict(client: stripe.StripeClient) -> None:
    params: Any = {
        "amount": 2000,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
    }
    first = client.v1.payment_intents.create(params=params, options={"idempotency_key": "k-1"})
    again = client.v1.payment_intents.create(params=params, options={"idempotency_key": "k-1"})
    assert again.id == first.id
    assert again.last_response.headers["idempotent-replayed"] == "true"
    assert len(client.v1.payment_intents.list().data) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(
            params={**params, "amount": 2001}, options={"idempotency_key": "k-1"}
        )


def test_declined_results_replay_too(client: stripe.StripeClient) -> None:
    params: Any = {
        "amount": 2000,
        "currency": "usd",
        "payment_method": "pm_card_chargeDeclined",
        "confirm": True,
    }
    with pytest.raises(stripe.CardError) as first:
        client.v1.payment_intents.create(params=params, options={"idempotency_key": "dec"})
    with pytest.raises(stripe.CardError) as second:
        client.v1.payment_intents.create(params=params, options={"idempotency_key": "dec"})
    assert first.value.json_body == second.value.json_body


def test_card_declined_is_402(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_intents.create(
            params={
                "amount": 2000,
                "currency": "usd",
                "payment_method": "pm_card_chargeDeclined",
                "confirm": True,
            }
        )
    err = caught.value
    assert err.http_status == 402
    assert err.code == "card_declined"
    assert err.error is not None
    assert err.error.decline_code == "generic_decline"
    intent = err.error.payment_intent
    assert intent is not None
    assert intent.status == "requires_payment_method"
    events = client.v1.events.list(params={"type": "payment_intent.payment_failed"})
    assert len(events.data) == 1


@pytest.mark.parametrize(
    ("payment_method", "code", "decline_code"),
    [
        ("pm_card_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
    ],
)
def test_other_declines(
    client: stripe.StripeClient, payment_method: str, code: str, decline_code: str
) -> None:
    with pytest.raises(stripe.CardError) as caught:
        client.v1.payment_intents.create(
            params={
                "amount": 2000,
                "currency": "usd",
                "payment_method": payment_method,
                "confirm": True,
            }
        )
    assert caught.value.code == code
    assert caught.value.error is not None
    assert caught.value.error.decline_code == decline_code


def test_cross_account_access_is_404(
    sandbox: RunningSandbox, client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    first, second = make_account(), make_account()
    as_first = sandbox.client(stripe_account=first.id)
    as_second = sandbox.client(stripe_account=second.id)
    customer = as_first.v1.customers.create(params={"email": "x@example.com"})
    assert as_first.v1.customers.retrieve(customer.id).id == customer.id
    for other in (as_second, client):
        with pytest.raises(stripe.InvalidRequestError) as caught:
            other.v1.customers.retrieve(customer.id)
        assert caught.value.http_status == 404
        assert caught.value.code == "resource_missing"
    assert as_second.v1.customers.list().data == []
    # The same idempotency key is independent per account.
    a = as_first.v1.customers.create(params={"email": "1@x.y"}, options={"idempotency_key": "s"})
    b = as_second.v1.customers.create(params={"email": "2@x.y"}, options={"idempotency_key": "s"})
    assert a.id != b.id


def test_unknown_stripe_account_is_rejected(sandbox: RunningSandbox) -> None:
    with pytest.raises(stripe.PermissionError):
        sandbox.client(stripe_account="acct_doesnotexist").v1.balance.retrieve()


def test_pagination_and_expand(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(params={"email": "buyer@example.com"})
    ids = []
    for amount in range(1000, 1005):
        pi = client.v1.payment_intents.create(
            params={
                "amount": amount,
                "currency": "usd",
                "customer": customer.id,
                "payment_method": "pm_card_visa",
                "confirm": True,
            }
        )
        ids.append(pi.id)
    first = client.v1.payment_intents.list(params={"limit": 2})
    assert [p.id for p in first.data] == ids[::-1][:2]
    assert first.has_more
    second = client.v1.payment_intents.list(
        params={"limit": 2, "starting_after": first.data[-1].id}
    )
    assert [p.id for p in second.data] == ids[::-1][2:4]
    before = client.v1.payment_intents.list(params={"limit": 2, "ending_before": ids[0]})
    assert [p.id for p in before.data] == ids[::-1][2:4]
    assert [p.id for p in first.auto_paging_iter()] == ids[::-1]
    expanded = client.v1.payment_intents.retrieve(
        ids[0], params={"expand": ["latest_charge.balance_transaction", "customer"]}
    )
    charge: Any = expanded.latest_charge
    assert charge.object == "charge"
    assert charge.balance_transaction.object == "balance_transaction"
    assert expanded.customer.email == "buyer@example.com"  # type: ignore[union-attr]
    listed = client.v1.charges.list(params={"expand": ["data.balance_transaction"]})
    assert all(
        c.balance_transaction.object == "balance_transaction"  # type: ignore[union-attr]
        for c in listed.data
    )


def test_async_client(sandbox: RunningSandbox) -> None:
    async def scenario() -> None:
        client = sandbox.client()
        pi = await client.v1.payment_intents.create_async(
            params={
                "amount": 1500,
                "currency": "usd",
                "payment_method": "pm_card_mastercard",
                "capture_method": "manual",
                "confirm": True,
            }
        )
        assert pi.status == "requires_capture"
        captured = await client.v1.payment_intents.capture_async(pi.id)
        assert captured.status == "succeeded"
        with pytest.raises(stripe.AuthenticationError):
            await sandbox.client(api_key="pk_test_x").v1.balance.retrieve_async()

    asyncio.run(scenario())


def test_events_by_type_and_account(
    sandbox: RunningSandbox, client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    account = make_account()
    client.v1.payment_intents.create(
        params={
            "amount": 5000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
    )
    succeeded = client.v1.events.list(params={"type": "payment_intent.succeeded"})
    assert [e.type for e in succeeded.data] == ["payment_intent.succeeded"]
    assert succeeded.data[0].data.object["object"] == "payment_intent"
    several = client.v1.events.list(
        params={"types": ["charge.succeeded", "payment_intent.created"]}
    )
    assert sorted(e.type for e in several.data) == ["charge.succeeded", "payment_intent.created"]
    connected_events = sandbox.client(stripe_account=account.id).v1.events.list()
    assert connected_events.data
    assert all(getattr(e, "account", None) == account.id for e in connected_events.data)
    assert all(getattr(e, "account", None) is None for e in client.v1.events.list().data)


def test_a_held_path_waits_until_released(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    """`/_sandbox/holds`: Stripe slow on one path, others answered meanwhile."""
    sandbox.control("POST", "/_sandbox/holds?path=/v1/customers")
    with ThreadPoolExecutor(1) as pool:
        listing = pool.submit(client.v1.customers.list)
        for _ in range(3_000):
            if sandbox.control("GET", "/_sandbox/holds")["data"] == [
                {"path": "/v1/customers", "waiting": 1}
            ]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the held request never reached the sandbox")
        assert not listing.done()
        assert client.v1.balance.retrieve().object == "balance"  # other paths answer
        released = sandbox.control("POST", "/_sandbox/holds/release?path=/v1/customers")
        assert released["data"] == []
        assert listing.result(timeout=30).data == []
    assert client.v1.customers.list().data == []  # no longer held


def test_rate_limit_fault_injection(sandbox: RunningSandbox, client: stripe.StripeClient) -> None:
    sandbox.control("POST", "/_sandbox/faults", status=429, count=1)
    with pytest.raises(stripe.RateLimitError) as caught:
        client.v1.customers.list()
    assert caught.value.http_status == 429
    assert client.v1.customers.list().data == []
