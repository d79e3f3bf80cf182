"""Connect money flows end to end through the SDK: every balance checked to the unit."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import stripe

from engine.sandbox.testing import RunningSandbox

DAY = 86_400


def fee(amount: int) -> int:
    """The sandbox's documented processing fee for usd: 2.9% (half up) + 30."""
    return (amount * 290 + 5_000) // 10_000 + 30


def totals(client: stripe.StripeClient, account: str | None = None) -> tuple[int, int]:
    """(available, pending) in usd for the platform or a connected account."""
    options: Any = {"stripe_account": account} if account else {}
    balance = client.v1.balance.retrieve(options=options)
    available = sum(b.amount for b in balance.available if b.currency == "usd")
    pending = sum(b.amount for b in balance.pending if b.currency == "usd")
    return available, pending


def total(client: stripe.StripeClient, account: str | None = None) -> int:
    return sum(totals(client, account))


def test_custom_account_enabled_by_test_values(make_account: Callable[..., Any]) -> None:
    account = make_account()
    assert account.charges_enabled
    assert account.payouts_enabled
    assert account.details_submitted
    assert account.requirements.currently_due == []
    assert account.capabilities.transfers == "active"
    assert account.external_accounts.data[0].last4 == "6789"


def test_custom_account_with_other_dob_stays_restricted(
    client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    account = make_account(
        individual={
            "first_name": "A",
            "last_name": "B",
            "dob": {"day": 2, "month": 3, "year": 1980},
        }
    )
    assert not account.charges_enabled
    assert "individual.verification.document" in account.requirements.currently_due
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.create(
            params={"amount": 1000, "currency": "usd", "transfer_data": {"destination": account.id}}
        )
    assert caught.value.code == "insufficient_capabilities_for_transfer"
    fixed = client.v1.accounts.update(
        account.id, params={"individual": {"dob": {"day": 1, "month": 1, "year": 1902}}}
    )
    assert fixed.charges_enabled
    assert fixed.payouts_enabled


def test_express_onboarding_through_account_link(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    account = client.v1.accounts.create(
        params={
            "type": "express",
            "country": "US",
            "email": "e@example.com",
            "capabilities": {
                "card_payments": {"requested": True},
                "transfers": {"requested": True},
            },
        }
    )
    assert not account.charges_enabled
    assert account.requirements.currently_due
    link = client.v1.account_links.create(
        params={
            "account": account.id,
            "type": "account_onboarding",
            "refresh_url": "https://example.com/refresh",
            "return_url": "https://example.com/back",
        }
    )
    page = httpx.get(link.url)
    assert page.status_code == 200
    assert "Complete onboarding" in page.text
    done = httpx.post(
        f"{sandbox.url}/_sandbox/accounts/{account.id}/complete_onboarding",
        data={"return_url": "https://example.com/back"},
    )
    assert done.status_code == 303
    assert done.headers["location"] == "https://example.com/back"
    account = client.v1.accounts.retrieve(account.id)
    assert account.charges_enabled
    assert account.payouts_enabled
    assert account.details_submitted
    events = sandbox.client(stripe_account=account.id).v1.events.list(
        params={"type": "account.updated"}
    )
    assert events.data
    assert events.data[0].data.previous_attributes["charges_enabled"] is False
    restricted = sandbox.control("POST", f"/_sandbox/accounts/{account.id}/restrict")
    assert restricted["charges_enabled"] is False
    assert restricted["requirements"]["disabled_reason"] == "requirements.past_due"


def test_destination_charge_with_application_fee(
    sandbox: RunningSandbox, client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    account = make_account()
    pi = client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "application_fee_amount": 1_230,
            "transfer_data": {"destination": account.id},
            "expand": ["latest_charge"],
        }
    )
    charge: Any = pi.latest_charge
    assert pi.status == "succeeded"
    assert charge.amount_captured == 10_000
    platform_charge_txn = client.v1.balance_transactions.retrieve(charge.balance_transaction)
    assert (platform_charge_txn.type, platform_charge_txn.amount, platform_charge_txn.fee) == (
        "charge",
        10_000,
        fee(10_000),
    )
    assert platform_charge_txn.status == "pending"
    transfer = client.v1.transfers.retrieve(charge.transfer)
    assert transfer.amount == 10_000
    assert transfer.destination == account.id
    assert transfer.transfer_group == f"group_{pi.id}"
    app_fee = client.v1.application_fees.retrieve(charge.application_fee)
    assert (app_fee.amount, app_fee.account, app_fee.originating_transaction) == (
        1_230,
        account.id,
        charge.id,
    )
    fee_txn = client.v1.balance_transactions.retrieve(app_fee.balance_transaction)  # type: ignore[arg-type]
    assert (fee_txn.type, fee_txn.amount, fee_txn.source) == ("application_fee", 1_230, app_fee.id)

    as_account = sandbox.client(stripe_account=account.id)
    payment = as_account.v1.charges.retrieve(transfer.destination_payment)  # type: ignore[arg-type]
    assert payment.id.startswith("py_")
    assert payment.application_fee == app_fee.id
    payment_txn = as_account.v1.balance_transactions.retrieve(payment.balance_transaction)  # type: ignore[arg-type]
    assert (payment_txn.type, payment_txn.amount, payment_txn.fee, payment_txn.net) == (
        "payment",
        10_000,
        1_230,
        8_770,
    )
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.charges.retrieve(payment.id)  # the payment lives on the connected account

    assert totals(client) == (0, 10_000 - fee(10_000) - 10_000 + 1_230)
    assert totals(client, account.id) == (0, 8_770)
    sandbox.advance(2 * DAY + 1)
    assert totals(client) == (10_000 - fee(10_000) - 10_000 + 1_230, 0)
    assert totals(client, account.id) == (8_770, 0)
    txns = client.v1.balance_transactions.list(params={"limit": 100}).data
    assert sum(t.net for t in txns) == total(client)


def test_destination_refund_reverses_transfer_and_fee_proportionally(
    sandbox: RunningSandbox, client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    account = make_account()
    pi = client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "application_fee_amount": 1_230,
            "transfer_data": {"destination": account.id},
        }
    )
    refund = client.v1.refunds.create(
        params={
            "payment_intent": pi.id,
            "amount": 5_000,
            "reverse_transfer": True,
            "refund_application_fee": True,
        }
    )
    reversal = client.v1.transfers.reversals.retrieve(
        client.v1.charges.retrieve(pi.latest_charge).transfer,  # type: ignore[arg-type]
        refund.transfer_reversal,
    )  # type: ignore[arg-type]
    assert reversal.amount == 5_000
    assert reversal.source_refund == refund.id
    charge: Any = client.v1.charges.retrieve(
        pi.latest_charge,
        params={  # type: ignore[arg-type]
            "expand": ["application_fee", "transfer"]
        },
    )
    assert charge.application_fee.amount_refunded == 615
    assert charge.transfer.amount_reversed == 5_000
    assert charge.amount_refunded == 5_000
    assert not charge.refunded
    assert total(client) == 10_000 - fee(10_000) - 10_000 + 1_230 - 5_000 + 5_000 - 615
    assert total(client, account.id) == 10_000 - 1_230 - 5_000 + 615
    # Refund the rest: cumulative rounding returns exactly the whole fee and transfer.
    client.v1.refunds.create(
        params={"charge": charge.id, "reverse_transfer": True, "refund_application_fee": True}
    )
    assert total(client, account.id) == 0
    assert total(client) == -fee(10_000)


def test_separate_charges_and_transfers(
    sandbox: RunningSandbox, client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    seller, courier = make_account(), make_account()
    pi = client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "transfer_group": "order-1",
        }
    )
    charge_id: Any = pi.latest_charge
    to_seller = client.v1.transfers.create(
        params={
            "amount": 6_000,
            "currency": "usd",
            "destination": seller.id,
            "source_transaction": charge_id,
            "transfer_group": "order-1",
        }
    )
    to_courier = client.v1.transfers.create(
        params={
            "amount": 2_500,
            "currency": "usd",
            "destination": courier.id,
            "source_transaction": charge_id,
            "transfer_group": "order-1",
        }
    )
    group = client.v1.transfers.list(params={"transfer_group": "order-1"})
    assert {t.id for t in group.data} == {to_seller.id, to_courier.id}
    with pytest.raises(stripe.InvalidRequestError):  # more than the charge has left
        client.v1.transfers.create(
            params={
                "amount": 2_000,
                "currency": "usd",
                "destination": seller.id,
                "source_transaction": charge_id,
            }
        )
    with pytest.raises(stripe.InvalidRequestError) as caught:  # nothing available yet
        client.v1.transfers.create(
            params={"amount": 100, "currency": "usd", "destination": seller.id}
        )
    assert caught.value.code == "balance_insufficient"

    client.v1.refunds.create(params={"charge": charge_id, "amount": 4_000})
    # A refund does not reverse separate transfers: the platform reverses them in proportion.
    assert client.v1.transfers.retrieve(to_seller.id).amount_reversed == 0
    client.v1.transfers.reversals.create(to_seller.id, params={"amount": 2_400})
    client.v1.transfers.reversals.create(to_courier.id, params={"amount": 1_000})
    reversals = client.v1.transfers.reversals.list(to_seller.id)
    assert [r.amount for r in reversals.data] == [2_400]

    sandbox.advance(3 * DAY)
    assert totals(client) == (10_000 - fee(10_000) - 6_000 - 2_500 - 4_000 + 2_400 + 1_000, 0)
    assert totals(client, seller.id) == (3_600, 0)
    assert totals(client, courier.id) == (1_500, 0)


def test_manual_capture_of_less_releases_the_rest(client: stripe.StripeClient) -> None:
    pi = client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "capture_method": "manual",
            "confirm": True,
        }
    )
    assert (pi.status, pi.amount_capturable) == ("requires_capture", 10_000)
    assert client.v1.charges.retrieve(pi.latest_charge).balance_transaction is None  # type: ignore[arg-type]
    captured = client.v1.payment_intents.capture(pi.id, params={"amount_to_capture": 6_000})
    assert (captured.status, captured.amount_received, captured.amount_capturable) == (
        "succeeded",
        6_000,
        0,
    )
    charge = client.v1.charges.retrieve(
        pi.latest_charge,
        params={  # type: ignore[arg-type]
            "expand": ["balance_transaction"]
        },
    )
    assert (charge.amount_captured, charge.amount_refunded, charge.captured) == (6_000, 0, True)
    assert not charge.refunded
    txn: Any = charge.balance_transaction
    assert (txn.amount, txn.fee) == (6_000, fee(6_000))
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.capture(pi.id)
    assert total(client) == 6_000 - fee(6_000)


def test_a_released_authorisation_is_no_refund(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    """As since 2025-03-31.basil: releasing the uncaptured rest, canceling or letting an
    authorisation expire creates no refund and no ``charge.refunded``; a charge is
    ``refunded`` once refunds reach the amount captured."""

    def authorise(amount: int) -> Any:
        return client.v1.payment_intents.create(
            params={
                "amount": amount,
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "capture_method": "manual",
                "confirm": True,
            }
        )

    partly = authorise(10_000)
    client.v1.payment_intents.capture(partly.id, params={"amount_to_capture": 6_000})
    canceled = authorise(3_000)
    client.v1.payment_intents.cancel(canceled.id)
    expiring = authorise(2_000)
    sandbox.advance(7 * DAY + 60)

    for pi, captured in ((partly, 6_000), (canceled, 0), (expiring, 0)):
        charge = client.v1.charges.retrieve(pi.latest_charge)  # type: ignore[arg-type]
        assert (charge.amount_captured, charge.amount_refunded, charge.refunded) == (
            captured,
            0,
            False,
        )
        assert client.v1.refunds.list(params={"charge": charge.id}).data == []
    assert client.v1.events.list(params={"type": "charge.refunded"}).data == []
    reasons = {
        pi.id: client.v1.payment_intents.retrieve(pi.id).cancellation_reason
        for pi in (canceled, expiring)
    }
    assert reasons == {canceled.id: "requested_by_customer", expiring.id: "expired"}
    expired = client.v1.events.list(params={"type": "charge.expired"}).data
    assert [event.data.object["payment_intent"] for event in expired] == [expiring.id]

    client.v1.refunds.create(params={"charge": partly.latest_charge, "amount": 5_000})  # type: ignore[typeddict-item]
    assert not client.v1.charges.retrieve(partly.latest_charge).refunded  # type: ignore[arg-type]
    client.v1.refunds.create(params={"charge": partly.latest_charge})  # type: ignore[typeddict-item]
    charge = client.v1.charges.retrieve(partly.latest_charge)  # type: ignore[arg-type]
    assert (charge.amount_refunded, charge.refunded) == (6_000, True)


def test_uncaptured_intent_cancelled_after_seven_days_of_test_clock(
    client: stripe.StripeClient,
) -> None:
    start = 1_800_000_000
    clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": start})
    customer = client.v1.customers.create(params={"test_clock": clock.id})
    pi = client.v1.payment_intents.create(
        params={
            "amount": 3_000,
            "currency": "usd",
            "customer": customer.id,
            "payment_method": "pm_card_visa",
            "capture_method": "manual",
            "confirm": True,
        }
    )
    assert pi.created == start
    client.v1.test_helpers.test_clocks.advance(clock.id, params={"frozen_time": start + 6 * DAY})
    assert client.v1.payment_intents.retrieve(pi.id).status == "requires_capture"
    advanced = client.v1.test_helpers.test_clocks.advance(
        clock.id, params={"frozen_time": start + 8 * DAY}
    )
    assert advanced.status == "ready"
    expired = client.v1.payment_intents.retrieve(pi.id)
    assert (expired.status, expired.cancellation_reason) == ("canceled", "expired")
    assert expired.canceled_at == start + 7 * DAY
    events = client.v1.events.list(params={"type": "payment_intent.canceled"})
    assert events.data[0].data.object["id"] == pi.id


def test_uncaptured_intent_cancelled_on_global_clock(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    pi = client.v1.payment_intents.create(
        params={
            "amount": 3_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "capture_method": "manual",
            "confirm": True,
        }
    )
    sandbox.advance(7 * DAY + 60)
    assert client.v1.payment_intents.retrieve(pi.id).cancellation_reason == "expired"


def test_dispute_opens_and_is_won_with_winning_evidence(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    pi = client.v1.payment_intents.create(
        params={
            "amount": 8_000,
            "currency": "usd",
            "payment_method": "pm_card_createDispute",
            "confirm": True,
        }
    )
    created = client.v1.events.list(params={"type": "charge.dispute.created"}).data
    assert len(created) == 1
    dispute_id = created[0].data.object["id"]
    dispute = client.v1.disputes.retrieve(dispute_id)
    assert (dispute.status, dispute.amount, dispute.charge) == (
        "needs_response",
        8_000,
        pi.latest_charge,
    )
    assert client.v1.charges.retrieve(pi.latest_charge).disputed  # type: ignore[arg-type]
    assert total(client) == 8_000 - fee(8_000) - 8_000 - 1_500
    updated = client.v1.disputes.update(
        dispute_id, params={"evidence": {"uncategorized_text": "winning_evidence"}}
    )
    assert updated.status == "under_review"
    assert client.v1.disputes.retrieve(dispute_id).status == "won"
    assert total(client) == 8_000 - fee(8_000)
    closed = client.v1.events.list(params={"type": "charge.dispute.closed"}).data
    assert closed[0].data.object["status"] == "won"


def test_dispute_lost_with_losing_evidence(client: stripe.StripeClient) -> None:
    client.v1.payment_intents.create(
        params={
            "amount": 8_000,
            "currency": "usd",
            "payment_method": "pm_card_createDispute",
            "confirm": True,
        }
    )
    dispute = client.v1.disputes.list().data[0]
    client.v1.disputes.update(
        dispute.id, params={"evidence": {"uncategorized_text": "losing_evidence"}, "submit": True}
    )
    assert client.v1.disputes.retrieve(dispute.id).status == "lost"
    assert total(client) == 8_000 - fee(8_000) - 8_000 - 1_500


def test_failed_payout_reaches_connect_endpoint(
    sandbox: RunningSandbox,
    client: stripe.StripeClient,
    make_account: Callable[..., Any],
    webhooks: Any,
) -> None:
    connect = client.v1.webhook_endpoints.create(
        params={
            "url": webhooks.url,
            "enabled_events": ["payout.failed", "payout.created"],
            "connect": True,
        }
    )
    platform = client.v1.webhook_endpoints.create(
        params={"url": webhooks.url + "?platform", "enabled_events": ["*"]}
    )
    assert connect.secret.startswith("whsec_")
    assert connect.secret != platform.secret
    account = make_account("000111111116")
    client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_bypassPending",
            "confirm": True,
            "transfer_data": {"destination": account.id},
        }
    )
    assert totals(client, account.id) == (10_000, 0)
    as_account = sandbox.client(stripe_account=account.id)
    payout = as_account.v1.payouts.create(params={"amount": 6_000, "currency": "usd"})
    assert payout.status == "pending"  # until the next midnight's batch goes to the bank
    assert as_account.v1.payouts.retrieve(payout.id).status == "pending"
    sandbox.advance(86_400)  # the bank rejects it when it is submitted
    failed = as_account.v1.payouts.retrieve(payout.id)
    assert (failed.status, failed.failure_code) == ("failed", "no_account")
    assert totals(client, account.id) == (10_000, 0)
    failure_txn = as_account.v1.balance_transactions.retrieve(failed.failure_balance_transaction)  # type: ignore[arg-type]
    assert (failure_txn.type, failure_txn.amount) == ("payout_failure", 6_000)

    def got_failure(requests: list[Any]) -> bool:
        return any(b'"payout.failed"' in r.body for r in requests)

    webhooks.wait_for(got_failure)
    request = next(r for r in webhooks.requests if b'"payout.failed"' in r.body)
    event = stripe.Webhook.construct_event(
        request.body, request.headers["stripe-signature"], connect.secret
    )
    assert event.type == "payout.failed"
    assert event.account == account.id  # type: ignore[attr-defined]
    assert event.data.object["failure_code"] == "no_account"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(
            request.body, request.headers["stripe-signature"], platform.secret
        )
    sandbox.wait_for_deliveries()
    platform_bodies = [json.loads(r.body) for r in webhooks.requests]
    assert all(("account" in b) == (b["type"].startswith("payout.")) for b in platform_bodies)


def test_automatic_daily_payout(
    sandbox: RunningSandbox, client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    account = make_account(settings={"payouts": {"schedule": {"interval": "daily"}}})
    client.v1.payment_intents.create(
        params={
            "amount": 5_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "transfer_data": {"destination": account.id},
        }
    )
    as_account = sandbox.client(stripe_account=account.id)
    sandbox.advance(DAY)
    assert as_account.v1.payouts.list().data == []  # funds still pending
    sandbox.advance(2 * DAY)
    payouts = as_account.v1.payouts.list().data
    assert len(payouts) == 1
    assert payouts[0].automatic
    assert payouts[0].amount == 5_000
    assert totals(client, account.id) == (0, 0)
    swept = as_account.v1.balance_transactions.list(params={"payout": payouts[0].id}).data
    assert {t.type for t in swept} == {"payment", "payout"}
    sandbox.advance(3 * DAY)
    assert as_account.v1.payouts.retrieve(payouts[0].id).status == "paid"


def test_a_failed_payout_errors_the_bank_and_stops_scheduled_payouts_until_it_is_replaced(
    sandbox: RunningSandbox, client: stripe.StripeClient, make_account: Callable[..., Any]
) -> None:
    account = make_account(
        "000111111116", settings={"payouts": {"schedule": {"interval": "daily"}}}
    )
    for _ in range(2):
        client.v1.payment_intents.create(
            params={
                "amount": 5_000,
                "currency": "usd",
                "payment_method": "pm_card_bypassPending",
                "confirm": True,
                "transfer_data": {"destination": account.id},
            }
        )
    as_account = sandbox.client(stripe_account=account.id)
    sandbox.advance(DAY)
    [failed] = as_account.v1.payouts.list().data
    assert (failed.status, failed.failure_code) == ("failed", "no_account")
    [bank] = client.v1.accounts.external_accounts.list(account.id).data
    assert bank.status == "errored"  # Stripe: scheduled payouts stop until it is updated
    sandbox.advance(3 * DAY)
    assert len(as_account.v1.payouts.list().data) == 1
    client.v1.accounts.external_accounts.create(
        account.id,
        params={
            "external_account": {
                "object": "bank_account",
                "country": "US",
                "currency": "usd",
                "routing_number": "110000000",
                "account_number": "000123456789",
            },
            "default_for_currency": True,
        },
    )
    sandbox.advance(DAY)
    payouts = as_account.v1.payouts.list().data
    assert payouts[0].status in {"pending", "in_transit", "paid"}
    assert len(payouts) == 2


def test_webhook_retried_until_delivered(
    sandbox: RunningSandbox, client: stripe.StripeClient, webhooks: Any
) -> None:
    webhooks.fail_first = 2
    endpoint = client.v1.webhook_endpoints.create(
        params={"url": webhooks.url, "enabled_events": ["customer.created"]}
    )
    # Stripe signs each attempt with the time it is sent (wall time, as Stripe does).
    before = int(time.time())
    client.v1.customers.create(params={"email": "retry@example.com"})
    deliveries = sandbox.wait_for_deliveries()
    assert [d["status"] for d in deliveries] == ["succeeded"]
    assert [a["status"] for a in deliveries[0]["attempts"]] == [500, 500, 200]
    request = webhooks.requests[0]
    event = stripe.Webhook.construct_event(
        request.body, request.headers["stripe-signature"], endpoint.secret
    )
    assert event.type == "customer.created"
    assert client.v1.events.retrieve(event.id).pending_webhooks == 0
    signed_at = int(request.headers["stripe-signature"].split(",")[0][2:])
    assert before <= signed_at <= int(time.time())


def test_a_pending_manual_payout_can_be_canceled_until_the_bank_has_it(
    sandbox: RunningSandbox,
    client: stripe.StripeClient,
    make_account: Callable[..., Any],
) -> None:
    account = make_account()
    client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_bypassPending",
            "confirm": True,
            "transfer_data": {"destination": account.id},
        }
    )
    as_account = sandbox.client(stripe_account=account.id)
    payout = as_account.v1.payouts.create(params={"amount": 4_000, "currency": "usd"})
    assert totals(client, account.id) == (6_000, 0)
    canceled = as_account.v1.payouts.cancel(payout.id)
    assert canceled.status == "canceled"
    assert totals(client, account.id) == (10_000, 0)  # Stripe refunds it to the available balance
    returned = as_account.v1.balance_transactions.retrieve(canceled.failure_balance_transaction)  # type: ignore[arg-type]
    assert (returned.type, returned.amount, returned.source) == ("payout_cancel", 4_000, payout.id)
    with pytest.raises(stripe.InvalidRequestError):
        as_account.v1.payouts.cancel(payout.id)  # already canceled

    # Submitted with the next midnight's batch: in transit, no longer cancelable.
    later = as_account.v1.payouts.create(params={"amount": 1_000, "currency": "usd"})
    sandbox.advance(86_400)
    assert as_account.v1.payouts.retrieve(later.id).status in {"in_transit", "paid"}
    with pytest.raises(stripe.InvalidRequestError):
        as_account.v1.payouts.cancel(later.id)
    assert totals(client, account.id) == (9_000, 0)


def test_payouts_list_by_their_created_time_as_stripe_filters_them(
    sandbox: RunningSandbox,
    client: stripe.StripeClient,
    make_account: Callable[..., Any],
) -> None:
    """``GET /v1/payouts`` takes ``created`` (a second, or ``gt``/``gte``/``lt``/``lte``
    bounds) as Stripe's API reference documents, newest first."""
    account = make_account()
    client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_bypassPending",
            "confirm": True,
            "transfer_data": {"destination": account.id},
        }
    )
    as_account = sandbox.client(stripe_account=account.id)
    first = as_account.v1.payouts.create(params={"amount": 1_000, "currency": "usd"})
    sandbox.advance(60)
    second = as_account.v1.payouts.create(params={"amount": 500, "currency": "usd"})

    def listed(**created: int) -> list[str]:
        found = as_account.v1.payouts.list(params={"created": created, "limit": 100})  # type: ignore[typeddict-item]
        return [payout.id for payout in found.data]

    assert listed(gte=second.created) == [second.id]
    assert listed(gt=first.created) == [second.id]
    assert listed(lte=first.created) == [first.id]
    assert listed(gte=first.created, lt=second.created + 1) == [second.id, first.id]
    exact = as_account.v1.payouts.list(params={"created": first.created})
    assert [payout.id for payout in exact.data] == [first.id]


def test_a_refund_of_the_refund_fail_card_succeeds_then_fails_and_is_returned(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    """``pm_card_refundFail`` (4000000000005126): the charge succeeds; a refund of it starts
    ``succeeded`` and later fails (``charge.refund.updated``, ``refund.updated``,
    ``refund.failed``), its money back on the balance by a ``refund_failure`` balance
    transaction, as Stripe's testing docs describe."""
    pi = client.v1.payment_intents.create(
        params={
            "amount": 10_000,
            "currency": "usd",
            "payment_method": "pm_card_refundFail",
            "confirm": True,
        }
    )
    assert pi.status == "succeeded"
    refund = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 3_000})
    assert refund.status == "succeeded"
    assert total(client) == 10_000 - fee(10_000) - 3_000
    sandbox.advance(DAY)

    failed = client.v1.refunds.retrieve(
        refund.id, params={"expand": ["failure_balance_transaction"]}
    )
    assert (failed.status, failed.failure_reason) == ("failed", "expired_or_canceled_card")
    returned: Any = failed.failure_balance_transaction
    assert (returned.type, returned.amount, returned.source) == ("refund_failure", 3_000, refund.id)
    assert total(client) == 10_000 - fee(10_000)
    charge = client.v1.charges.retrieve(str(pi.latest_charge))
    assert (charge.amount_refunded, charge.refunded) == (0, False)
    types = [
        event.type
        for event in client.v1.events.list(params={"limit": 100}).data
        if getattr(event.data.object, "id", None) == refund.id
    ]
    assert {"charge.refund.updated", "refund.updated", "refund.failed"} <= set(types)
    # The charge can be refunded again (with another card: here the same one fails again).
    again = client.v1.refunds.create(params={"charge": charge.id})
    assert again.amount == 10_000
