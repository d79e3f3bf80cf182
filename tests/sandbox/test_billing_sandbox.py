"""Billing in the sandbox through the real SDK: renewals, fees, proration, pause, cancel, dunning.

Amounts are checked against hand computations: proration is `amount * remaining / period`
in seconds, rounded half up; the application fee is `application_fee_percent` of the
invoice total, rounded half up; the processing fee is the sandbox's 2.9% + 30.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import stripe

from engine.sandbox.state import SandboxOptions
from engine.sandbox.testing import RunningSandbox, running_sandbox

DAY = 86_400
HOUR = 3_600
JAN_31_2026 = 1_769_817_600
MAR_1_2026 = 1_772_323_200
APR_1_2026 = MAR_1_2026 + 31 * DAY
MAY_1_2026 = APR_1_2026 + 30 * DAY


def processing_fee(amount: int) -> int:
    """The sandbox's documented processing fee for usd: 2.9% (half up) + 30."""
    return (amount * 290 + 5_000) // 10_000 + 30


def half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def total(client: Any, account: str | None = None) -> int:
    """Available + pending usd of the platform or a connected account."""
    options: Any = {"stripe_account": account} if account else {}
    balance = client.v1.balance.retrieve(options=options)
    return sum(b.amount for b in (*balance.available, *balance.pending) if b.currency == "usd")


def txn_sum(client: Any, account: str | None = None) -> int:
    options: Any = {"stripe_account": account} if account else {}
    txns = client.v1.balance_transactions.list(params={"limit": 100}, options=options)
    assert not txns.has_more
    return sum(t.net for t in txns.data)


def intent_of(client: Any, invoice: str, account: str | None = None) -> Any:
    """The invoice's PaymentIntent, through its InvoicePayment (the current API's way)."""
    options: Any = {"stripe_account": account} if account else {}
    payments = client.v1.invoice_payments.list(
        params={"invoice": invoice, "expand": ["data.payment.payment_intent"]}, options=options
    ).data
    return payments[0].payment.payment_intent if payments else None


def charge_of(client: Any, invoice: str, account: str | None = None) -> Any:
    """The charge that paid the invoice, or None when nothing was charged."""
    intent = intent_of(client, invoice, account)
    if intent is None or not intent.latest_charge:
        return None
    options: Any = {"stripe_account": account} if account else {}
    return client.v1.charges.retrieve(intent.latest_charge, options=options)


def period(subscription: Any) -> tuple[int, int]:
    """The current period, which the subscription's items carry."""
    item = subscription["items"].data[0]
    return item.current_period_start, item.current_period_end


def event_types(client: Any, type_: str) -> list[Any]:
    events = client.v1.events.list(params={"type": type_, "limit": 100}).data
    return list(reversed(events))


class Shop:
    """A test clock, a customer on it with a working card, a product and monthly prices."""

    def __init__(self, client: Any, start: int, card: str = "pm_card_visa"):
        self.client = client
        self.clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": start})
        self.customer = client.v1.customers.create(
            params={"email": "fan@example.com", "test_clock": self.clock.id}
        )
        self.card = self.attach(card)
        self.product = client.v1.products.create(params={"name": "Gold tier"})

    def attach(self, card: str, *, default: bool = True) -> str:
        pm = self.client.v1.payment_methods.attach(card, params={"customer": self.customer.id})
        if default:
            self.client.v1.customers.update(
                self.customer.id, params={"invoice_settings": {"default_payment_method": pm.id}}
            )
        return str(pm.id)

    def price(self, amount: int, interval: str = "month", count: int = 1) -> str:
        price = self.client.v1.prices.create(
            params={
                "product": self.product.id,
                "currency": "usd",
                "unit_amount": amount,
                "recurring": {"interval": interval, "interval_count": count},
            }
        )
        return str(price.id)

    def subscribe(self, price: str, **params: Any) -> Any:
        return self.client.v1.subscriptions.create(
            params={"customer": self.customer.id, "items": [{"price": price}], **params}
        )

    def advance(self, to: int) -> None:
        self.client.v1.test_helpers.test_clocks.advance(self.clock.id, params={"frozen_time": to})

    def invoices(self, subscription: str) -> list[Any]:
        """The subscription's invoices, oldest first."""
        listed = self.client.v1.invoices.list(params={"subscription": subscription, "limit": 100})
        return list(reversed(listed.data))


@pytest.fixture
def destination(make_account: Callable[..., Any]) -> str:
    account: Any = make_account()
    return str(account.id)


def test_application_fee_percent_renews_each_period_with_exact_balances(
    sandbox: RunningSandbox, client: Any, destination: str, webhooks: Any
) -> None:
    endpoint = client.v1.webhook_endpoints.create(
        params={"url": webhooks.url, "enabled_events": ["invoice.paid"]}
    )
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(
        shop.price(2_000),
        transfer_data={"destination": destination},
        application_fee_percent=12.5,
        expand=["latest_invoice.payments.data.payment.payment_intent"],
    )
    assert sub.status == "active"
    assert sub.application_fee_percent == 12.5
    assert sub.transfer_data.destination == destination
    assert period(sub) == (MAR_1_2026, APR_1_2026)
    assert "current_period_start" not in sub
    assert sub.latest_invoice.status == "paid"
    intent = sub.latest_invoice.payments.data[0].payment.payment_intent
    assert intent.status == "succeeded"
    assert intent.transfer_data.destination == destination

    shop.advance(MAY_1_2026 + 2 * HOUR)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert (sub.status, period(sub)[0]) == ("active", MAY_1_2026)
    invoices = shop.invoices(sub.id)
    assert [i.billing_reason for i in invoices] == [
        "subscription_create",
        "subscription_cycle",
        "subscription_cycle",
    ]
    fee = half_up(2_000 * 125, 1_000)  # 12.5% of 2000 = 250
    for invoice in invoices:
        assert (invoice.status, invoice.amount_paid, invoice.amount_remaining) == ("paid", 2_000, 0)
        assert "application_fee_amount" not in invoice
        charge = charge_of(client, invoice.id)
        assert charge.application_fee_amount == fee
        app_fee = client.v1.application_fees.retrieve(charge.application_fee)
        assert (app_fee.amount, app_fee.account) == (fee, destination)
        transfer = client.v1.transfers.retrieve(charge.transfer)
        assert (transfer.amount, transfer.destination) == (2_000, destination)
        payment = client.v1.charges.retrieve(
            transfer.destination_payment,
            options={"stripe_account": destination},
        )
        payment_txn = client.v1.balance_transactions.retrieve(
            payment.balance_transaction,
            options={"stripe_account": destination},
        )
        assert (payment_txn.amount, payment_txn.fee, payment_txn.net) == (2_000, fee, 2_000 - fee)
    # Each service period is on the lines; the invoice's own period is the one that ended.
    assert [i.lines.data[0].period.start for i in invoices] == [
        MAR_1_2026,
        APR_1_2026,
        MAY_1_2026,
    ]
    assert (invoices[1].period_start, invoices[1].period_end) == (MAR_1_2026, APR_1_2026)
    assert invoices[1].status_transitions.paid_at == APR_1_2026 + HOUR

    assert total(client) == 3 * (fee - processing_fee(2_000))
    assert total(client, destination) == 3 * (2_000 - fee)
    assert txn_sum(client) == total(client)
    assert txn_sum(client, destination) == total(client, destination)
    assert len(event_types(client, "invoice.paid")) == 3
    assert len(event_types(client, "application_fee.created")) == 3
    assert len(event_types(client, "transfer.created")) == 3

    webhooks.wait_for(lambda requests: len(requests) == 3)
    delivered = [
        stripe.Webhook.construct_event(r.body, r.headers["stripe-signature"], endpoint.secret)
        for r in webhooks.requests
    ]
    assert sorted(e.data.object.id for e in delivered) == sorted(i.id for i in invoices)


def test_twelve_monthly_renewals_in_one_advance(client: Any, destination: str) -> None:
    shop = Shop(client, JAN_31_2026)
    sub = shop.subscribe(
        shop.price(1_000), transfer_data={"destination": destination}, application_fee_percent=10
    )
    shop.advance(JAN_31_2026 + 366 * DAY)
    invoices = shop.invoices(sub.id)
    assert len(invoices) == 13
    assert all(i.status == "paid" for i in invoices)
    # Anchored on the 31st: clamped to each month's last day, back to the 31st when it can.
    starts = [i.lines.data[0].period.start for i in invoices]
    days = [stripe_day(t) for t in starts]
    assert days == [
        "2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30",
        "2026-07-31", "2026-08-31", "2026-09-30", "2026-10-31", "2026-11-30", "2026-12-31",
        "2027-01-31",
    ]  # fmt: skip
    assert [i.created for i in invoices] == starts
    assert [i.status_transitions.paid_at for i in invoices[1:]] == [s + HOUR for s in starts[1:]]
    assert [i.number for i in invoices] == sorted(i.number for i in invoices)
    assert all(charge_of(client, i.id).application_fee_amount == 100 for i in invoices)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert period(sub)[0] == starts[-1]
    assert total(client, destination) == 13 * 900


def stripe_day(timestamp: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.UTC).date().isoformat()


def test_upgrade_mid_period_with_always_invoice(client: Any, destination: str) -> None:
    shop = Shop(client, MAR_1_2026)
    basic, premium = shop.price(1_000), shop.price(3_000)
    sub = shop.subscribe(
        basic, transfer_data={"destination": destination}, application_fee_percent=10
    )
    shop.advance(MAR_1_2026 + 10 * DAY)
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "price": premium}],
            "proration_behavior": "always_invoice",
        },
    )
    # 21 of March's 31 days remain.
    credit = half_up(1_000 * 21, 31)  # 677
    debit = half_up(3_000 * 21, 31)  # 2032
    assert (credit, debit) == (677, 2_032)
    assert updated["items"].data[0].price.id == premium
    invoice = client.v1.invoices.retrieve(updated.latest_invoice)
    assert invoice.billing_reason == "subscription_update"
    assert [line.amount for line in invoice.lines.data] == [-credit, debit]
    assert [line.parent.subscription_item_details.proration for line in invoice.lines.data] == [
        True,
        True,
    ]
    assert invoice.lines.data[0].description == "Unused time on Gold tier after 11 Mar 2026"
    assert invoice.lines.data[1].description == "Remaining time on Gold tier after 11 Mar 2026"
    assert (invoice.status, invoice.total, invoice.amount_paid) == ("paid", debit - credit, 1_355)
    assert charge_of(client, invoice.id).application_fee_amount == 136  # 10% of 1355, half up
    assert len(client.v1.invoice_items.list(params={"pending": True}).data) == 0

    shop.advance(APR_1_2026 + 2 * HOUR)
    renewal = shop.invoices(sub.id)[-1]
    assert renewal.billing_reason == "subscription_cycle"
    assert [line.amount for line in renewal.lines.data] == [3_000]
    assert renewal.amount_paid == 3_000


def test_downgrade_with_create_prorations_lands_on_next_invoice(
    client: Any, destination: str
) -> None:
    shop = Shop(client, MAR_1_2026)
    basic, premium = shop.price(1_000), shop.price(3_000)
    sub = shop.subscribe(
        premium, transfer_data={"destination": destination}, application_fee_percent=10
    )
    changed_at = MAR_1_2026 + 10 * DAY + 12 * HOUR
    shop.advance(changed_at)
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item.id, "price": basic}]}
    )
    assert updated.latest_invoice == sub.latest_invoice  # nothing invoiced yet
    remaining, period = APR_1_2026 - changed_at, APR_1_2026 - MAR_1_2026
    credit = half_up(3_000 * remaining, period)
    debit = half_up(1_000 * remaining, period)
    assert (credit, debit) == (1_984, 661)
    pending = client.v1.invoice_items.list(params={"pending": True}).data
    assert sorted(ii.amount for ii in pending) == [-credit, debit]
    assert all(ii.proration for ii in pending)

    shop.advance(APR_1_2026 + 2 * HOUR)
    april = shop.invoices(sub.id)[-1]
    assert sorted(line.amount for line in april.lines.data) == [-credit, debit, 1_000]
    assert april.total == 1_000 + debit - credit == -323
    # A negative total becomes credit on the customer's balance; nothing is charged.
    assert (april.status, april.amount_due, april.amount_paid) == ("paid", 0, 0)
    assert charge_of(client, april.id) is None
    assert april.ending_balance == -323
    assert client.v1.customers.retrieve(shop.customer.id).balance == -323
    assert client.v1.invoice_items.list(params={"pending": True}).data == []

    shop.advance(MAY_1_2026 + 2 * HOUR)
    may = shop.invoices(sub.id)[-1]
    assert (may.total, may.starting_balance, may.amount_due, may.amount_paid) == (
        1_000,
        -323,
        677,
        677,
    )
    assert charge_of(client, may.id).application_fee_amount == 100
    assert client.v1.customers.retrieve(shop.customer.id).balance == 0


def test_pause_collection_void_skips_charges_and_resume_charges_again(
    client: Any, destination: str
) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(
        shop.price(1_500), transfer_data={"destination": destination}, application_fee_percent=20
    )
    paused = client.v1.subscriptions.update(
        sub.id, params={"pause_collection": {"behavior": "void"}}
    )
    assert paused.pause_collection.behavior == "void"
    assert paused.status == "active"
    shop.advance(MAY_1_2026 + 2 * HOUR)
    invoices = shop.invoices(sub.id)
    assert [i.status for i in invoices] == ["paid", "void", "void"]
    assert len(client.v1.charges.list(params={"customer": shop.customer.id}).data) == 1
    assert len(event_types(client, "invoice.voided")) == 2

    resumed = client.v1.subscriptions.update(sub.id, params={"pause_collection": ""})
    assert resumed.pause_collection is None
    shop.advance(MAY_1_2026 + 31 * DAY + 2 * HOUR)
    assert shop.invoices(sub.id)[-1].status == "paid"
    assert len(client.v1.charges.list(params={"customer": shop.customer.id}).data) == 2
    assert total(client, destination) == 2 * (1_500 - 300)


def test_pause_collection_keep_as_draft_and_mark_uncollectible(
    client: Any,
) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(shop.price(1_000))
    client.v1.subscriptions.update(
        sub.id, params={"pause_collection": {"behavior": "keep_as_draft"}}
    )
    shop.advance(APR_1_2026 + 2 * HOUR)
    client.v1.subscriptions.update(
        sub.id, params={"pause_collection": {"behavior": "mark_uncollectible"}}
    )
    shop.advance(MAY_1_2026 + 2 * HOUR)
    assert [i.status for i in shop.invoices(sub.id)] == ["paid", "draft", "uncollectible"]
    draft = shop.invoices(sub.id)[1]
    paid = client.v1.invoices.pay(draft.id)
    assert (paid.status, paid.amount_paid) == ("paid", 1_000)


def test_cancel_at_period_end(client: Any) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(shop.price(1_000))
    shop.advance(MAR_1_2026 + 5 * DAY)
    pending = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    assert (pending.status, pending.cancel_at_period_end) == ("active", True)
    assert pending.cancel_at == APR_1_2026
    assert pending.canceled_at == MAR_1_2026 + 5 * DAY
    shop.advance(APR_1_2026 + 2 * HOUR)
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.ended_at) == ("canceled", APR_1_2026)
    assert len(shop.invoices(sub.id)) == 1
    deleted = event_types(client, "customer.subscription.deleted")
    assert [e.data.object.id for e in deleted] == [sub.id]
    assert client.v1.subscriptions.list(params={"customer": shop.customer.id}).data == []
    listed = client.v1.subscriptions.list(params={"customer": shop.customer.id, "status": "all"})
    assert [s.id for s in listed.data] == [sub.id]


def test_cancel_now_with_prorated_credit(client: Any) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(shop.price(1_000))
    shop.advance(MAR_1_2026 + 10 * DAY)
    canceled = client.v1.subscriptions.cancel(sub.id, params={"prorate": True, "invoice_now": True})
    assert (canceled.status, canceled.canceled_at) == ("canceled", MAR_1_2026 + 10 * DAY)
    assert canceled.cancellation_details.reason == "cancellation_requested"
    final = shop.invoices(sub.id)[-1]
    assert [line.amount for line in final.lines.data] == [-half_up(1_000 * 21, 31)]
    assert (final.status, final.amount_due) == ("paid", 0)
    assert client.v1.customers.retrieve(shop.customer.id).balance == -677
    shop.advance(APR_1_2026 + 2 * HOUR)
    assert len(shop.invoices(sub.id)) == 2

    plain = shop.subscribe(shop.price(1_000))
    gone = client.v1.subscriptions.cancel(plain.id)
    assert gone.status == "canceled"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.cancel(plain.id)


def test_failed_renewals_go_past_due_retry_then_cancel(client: Any, destination: str) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(
        shop.price(2_000), transfer_data={"destination": destination}, application_fee_percent=10
    )
    shop.attach("pm_card_chargeCustomerFail")  # attaches fine; every charge fails
    first_attempt = APR_1_2026 + HOUR
    shop.advance(first_attempt + 1)
    sub = client.v1.subscriptions.retrieve(sub.id)
    renewal = shop.invoices(sub.id)[-1]
    assert sub.status == "past_due"
    assert (renewal.status, renewal.attempt_count) == ("open", 1)
    assert renewal.next_payment_attempt == first_attempt + 3 * DAY
    intent = intent_of(client, renewal.id)
    assert intent.last_payment_error.decline_code == "generic_decline"
    assert client.v1.customers.retrieve(shop.customer.id).delinquent is True

    shop.advance(first_attempt + 3 * DAY + 1)
    assert client.v1.invoices.retrieve(renewal.id).attempt_count == 2
    shop.advance(first_attempt + 8 * DAY + 1)
    assert client.v1.invoices.retrieve(renewal.id).attempt_count == 3
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    shop.advance(first_attempt + 15 * DAY + 1)
    renewal = client.v1.invoices.retrieve(renewal.id)
    assert (renewal.attempt_count, renewal.status, renewal.next_payment_attempt) == (
        4,
        "open",
        None,
    )
    assert intent_of(client, renewal.id).id == intent.id  # retries re-confirm the same intent
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "canceled"
    assert sub.cancellation_details.reason == "payment_failed"
    assert len(event_types(client, "invoice.payment_failed")) == 4
    assert len(event_types(client, "customer.subscription.deleted")) == 1
    assert len(event_types(client, "charge.failed")) == 4
    # Only the first invoice moved money.
    assert total(client, destination) == 2_000 - 200
    assert total(client) == 200 - processing_fee(2_000)
    assert txn_sum(client) == total(client)


def test_past_due_recovers_when_the_card_is_replaced(client: Any) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(shop.price(2_000))
    shop.attach("pm_card_chargeCustomerFail")
    shop.advance(APR_1_2026 + 2 * HOUR)
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    shop.attach("pm_card_mastercard")
    shop.advance(APR_1_2026 + HOUR + 3 * DAY + 1)
    sub = client.v1.subscriptions.retrieve(sub.id)
    assert sub.status == "active"
    renewal = shop.invoices(sub.id)[-1]
    assert (renewal.status, renewal.attempt_count, renewal.amount_paid) == ("paid", 2, 2_000)
    assert client.v1.customers.retrieve(shop.customer.id).delinquent is False


def test_first_payment_failure_is_incomplete_then_expires(client: Any) -> None:
    shop = Shop(client, MAR_1_2026, card="pm_card_chargeCustomerFail")
    price = shop.price(1_000)
    sub = shop.subscribe(price, expand=["latest_invoice"])
    assert sub.status == "incomplete"
    assert sub.latest_invoice.status == "open"
    assert intent_of(client, sub.latest_invoice.id).status == "requires_payment_method"
    with pytest.raises(stripe.CardError) as declined:
        shop.subscribe(price, payment_behavior="error_if_incomplete")
    assert declined.value.code == "card_declined"
    listed = client.v1.subscriptions.list(params={"customer": shop.customer.id, "status": "all"})
    assert [s.id for s in listed.data] == [sub.id]
    shop.advance(MAR_1_2026 + 23 * HOUR + 1)
    expired = client.v1.subscriptions.retrieve(sub.id)
    assert expired.status == "incomplete_expired"
    assert client.v1.invoices.retrieve(expired.latest_invoice).status == "void"


def test_default_incomplete_activates_when_the_intent_is_confirmed(
    client: Any,
) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(
        shop.price(1_000),
        payment_behavior="default_incomplete",
        expand=["latest_invoice.confirmation_secret"],
    )
    assert sub.status == "incomplete"
    secret = sub.latest_invoice.confirmation_secret
    assert secret.type == "payment_intent"
    intent = intent_of(client, sub.latest_invoice.id)
    assert secret.client_secret == intent.client_secret
    assert intent.status == "requires_confirmation"
    client.v1.payment_intents.confirm(intent.id)
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
    assert client.v1.invoices.retrieve(sub.latest_invoice.id).status == "paid"


def test_global_clock_and_test_clocks_renew_separately(
    sandbox: RunningSandbox, client: Any
) -> None:
    shop = Shop(client, MAR_1_2026)
    on_clock = shop.subscribe(shop.price(1_000))
    customer = client.v1.customers.create(params={"email": "global@example.com"})
    pm = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    on_global = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": shop.price(500, "week")}],
            "default_payment_method": pm.id,
        }
    )
    assert on_global.test_clock is None
    assert on_clock.test_clock == shop.clock.id
    sandbox.advance(8 * DAY)
    global_invoices = client.v1.invoices.list(params={"subscription": on_global.id}).data
    assert [i.status for i in global_invoices] == ["paid", "paid"]
    assert len(shop.invoices(on_clock.id)) == 1
    shop.advance(APR_1_2026 + 2 * HOUR)
    assert len(shop.invoices(on_clock.id)) == 2
    assert len(client.v1.invoices.list(params={"subscription": on_global.id}).data) == 2


def test_direct_subscription_on_a_connected_account(
    sandbox: RunningSandbox, client: Any, destination: str
) -> None:
    direct = sandbox.client(stripe_account=destination)
    customer = direct.v1.customers.create(params={"email": "direct@example.com"})
    pm = direct.v1.payment_methods.attach("pm_card_visa", params={"customer": customer.id})
    price = direct.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 4_000,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Direct tier"},
        }
    )
    sub = direct.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "default_payment_method": pm.id,
            "application_fee_percent": 5,
        }
    )
    invoice = direct.v1.invoices.retrieve(sub.latest_invoice)
    assert invoice.status == "paid"
    assert charge_of(direct, invoice.id).application_fee_amount == 200
    assert total(client) == 200
    assert total(client, destination) == 4_000 - processing_fee(4_000) - 200
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.retrieve(sub.id)  # lives on the connected account


def test_products_and_prices(client: Any) -> None:
    product = client.v1.products.create(params={"name": "Tips", "metadata": {"kind": "tip"}})
    assert (product.active, product.metadata["kind"]) == (True, "tip")
    one_off = client.v1.prices.create(
        params={"product": product.id, "currency": "USD", "unit_amount": 500}
    )
    yearly = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 10_000,
            "recurring": {"interval": "year"},
            "lookup_key": "tips-yearly",
        }
    )
    quarterly = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 2_700,
            "recurring": {"interval": "month", "interval_count": 3},
        }
    )
    assert (one_off.type, one_off.recurring, one_off.currency) == ("one_time", None, "usd")
    assert (yearly.type, yearly.recurring.interval) == ("recurring", "year")
    assert quarterly.recurring.interval_count == 3
    archived = client.v1.prices.update(one_off.id, params={"active": False})
    assert archived.active is False
    listed = client.v1.prices.list(params={"product": product.id, "active": True})
    assert [p.id for p in listed.data] == [quarterly.id, yearly.id]
    recurring = client.v1.prices.list(params={"type": "recurring"})
    assert {p.id for p in recurring.data} == {quarterly.id, yearly.id}
    by_key = client.v1.prices.list(params={"lookup_keys": ["tips-yearly"]})
    assert [p.id for p in by_key.data] == [yearly.id]
    monthly = client.v1.prices.list(params={"recurring": {"interval": "month"}})
    assert [p.id for p in monthly.data] == [quarterly.id]
    inline = client.v1.prices.create(
        params={"currency": "usd", "unit_amount": 900, "product_data": {"name": "Inline"}}
    )
    assert client.v1.products.retrieve(inline.product).name == "Inline"
    updated = client.v1.products.update(
        product.id, params={"default_price": yearly.id, "active": False}
    )
    assert (updated.default_price, updated.active) == (yearly.id, False)
    assert [p.id for p in client.v1.products.list(params={"active": False}).data] == [product.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.products.delete(product.id)  # it has prices
    empty = client.v1.products.create(params={"name": "Empty"})
    assert client.v1.products.delete(empty.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.prices.create(params={"currency": "usd", "unit_amount": 1, "nope": 1})
    assert unknown.value.code == "parameter_unknown"
    with_default = client.v1.products.create(
        params={"name": "Bundle", "default_price_data": {"currency": "usd", "unit_amount": 700}}
    )
    default_price = client.v1.prices.retrieve(with_default.default_price)
    assert (default_price.unit_amount, default_price.product) == (700, with_default.id)


def test_subscription_validation(client: Any, destination: str) -> None:
    shop = Shop(client, MAR_1_2026)
    monthly, yearly = shop.price(1_000), shop.price(10_000, "year")
    one_off = client.v1.prices.create(
        params={"product": shop.product.id, "currency": "usd", "unit_amount": 500}
    )
    with pytest.raises(stripe.InvalidRequestError):
        shop.subscribe(one_off.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.create(
            params={
                "customer": shop.customer.id,
                "items": [{"price": monthly}, {"price": yearly}],
            }
        )
    with pytest.raises(stripe.InvalidRequestError):
        shop.subscribe(monthly, application_fee_percent=10)  # no destination, not direct
    with pytest.raises(stripe.InvalidRequestError):
        shop.subscribe(
            monthly,
            transfer_data={"destination": destination},
            application_fee_percent=100.5,
        )
    other = client.v1.payment_methods.attach(
        "pm_card_visa", params={"customer": client.v1.customers.create().id}
    )
    with pytest.raises(stripe.InvalidRequestError):
        shop.subscribe(monthly, default_payment_method=other.id)
    assert client.v1.subscriptions.list(params={"status": "all"}).data == []


def test_interval_change_restarts_the_period(client: Any) -> None:
    shop = Shop(client, MAR_1_2026)
    monthly, yearly = shop.price(1_000), shop.price(10_000, "year")
    sub = shop.subscribe(monthly)
    shop.advance(MAR_1_2026 + 10 * DAY)
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": item.id, "price": yearly}]}
    )
    now = MAR_1_2026 + 10 * DAY
    assert (period(updated)[0], updated.billing_cycle_anchor) == (now, now)
    assert period(updated)[1] == now + 365 * DAY
    invoice = client.v1.invoices.retrieve(updated.latest_invoice)
    assert sorted(line.amount for line in invoice.lines.data) == [-677, 10_000]
    assert (invoice.status, invoice.amount_paid) == ("paid", 9_323)


def test_subscription_and_invoice_lists_and_items(client: Any) -> None:
    shop = Shop(client, MAR_1_2026)
    price = shop.price(1_000)
    first = shop.subscribe(price, metadata={"creator": "c1"})
    second = client.v1.subscriptions.create(
        params={"customer": shop.customer.id, "items": [{"price": price, "quantity": 3}]}
    )
    assert second["items"].data[0].quantity == 3
    assert client.v1.invoices.retrieve(second.latest_invoice).amount_paid == 3_000
    assert first.metadata["creator"] == "c1"
    listed = client.v1.subscriptions.list(params={"price": price})
    assert [s.id for s in listed.data] == [second.id, first.id]
    by_clock = client.v1.subscriptions.list(params={"test_clock": shop.clock.id, "limit": 1})
    assert by_clock.has_more
    assert by_clock.data[0].id == second.id
    items = client.v1.subscription_items.list(params={"subscription": first.id})
    assert [i.id for i in items.data] == [first["items"].data[0].id]
    invoices = client.v1.invoices.list(params={"customer": shop.customer.id, "status": "paid"})
    assert len(invoices.data) == 2
    lines = client.v1.invoices.line_items.list(first.latest_invoice)
    assert [line.amount for line in lines.data] == [1_000]
    created = event_types(client, "customer.subscription.created")
    assert [e.data.object.status for e in created] == ["active", "active"]


def test_transfer_amount_percent_sends_a_share_of_each_invoice(
    client: Any, destination: str
) -> None:
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(
        shop.price(1_999), transfer_data={"destination": destination, "amount_percent": 80}
    )
    assert sub.transfer_data.amount_percent == 80
    invoice = client.v1.invoices.retrieve(sub.latest_invoice)
    share = half_up(1_999 * 80, 100)  # 1599.2 -> 1599
    charge = charge_of(client, invoice.id)
    assert charge.application_fee_amount is None
    transfer = client.v1.transfers.retrieve(charge.transfer)
    assert transfer.amount == share
    assert total(client, destination) == share
    assert total(client) == 1_999 - processing_fee(1_999) - share


def test_dunning_options_mark_unpaid_and_finalize_at_once() -> None:
    options = SandboxOptions(
        invoice_finalize_delay=0, invoice_retry_days=(1,), invoice_retries_exhausted="unpaid"
    )
    with running_sandbox(options=options) as sandbox:
        client: Any = sandbox.client()
        shop = Shop(client, MAR_1_2026)
        sub = shop.subscribe(shop.price(1_000))
        shop.attach("pm_card_chargeCustomerFail")
        shop.advance(APR_1_2026)  # no draft hour: charged at the period's end
        renewal = shop.invoices(sub.id)[-1]
        assert (renewal.status, renewal.attempt_count) == ("open", 1)
        assert renewal.next_payment_attempt == APR_1_2026 + DAY
        shop.advance(APR_1_2026 + DAY)
        assert client.v1.subscriptions.retrieve(sub.id).status == "unpaid"
        shop.advance(MAY_1_2026 + HOUR)
        latest = shop.invoices(sub.id)[-1]
        assert (latest.status, latest.auto_advance) == ("draft", False)  # unpaid: left as drafts
        paid = client.v1.invoices.pay(renewal.id, params={"payment_method": shop.card})
        assert paid.status == "paid"
        assert client.v1.subscriptions.retrieve(sub.id).status == "unpaid"  # latest is unpaid


def test_item_metadata_and_quantity_change(client: Any) -> None:
    shop = Shop(client, MAR_1_2026)
    price = shop.price(1_000)
    sub = client.v1.subscriptions.create(
        params={
            "customer": shop.customer.id,
            "items": [{"price": price, "metadata": {"seat": "team"}}],
        }
    )
    item = sub["items"].data[0]
    assert item.metadata["seat"] == "team"
    shop.advance(MAR_1_2026 + 10 * DAY)
    updated = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "quantity": 2, "metadata": {"seats": "2"}}],
            "proration_behavior": "always_invoice",
        },
    )
    item = updated["items"].data[0]
    assert (item.quantity, item.metadata.to_dict()) == (2, {"seat": "team", "seats": "2"})
    invoice = client.v1.invoices.retrieve(updated.latest_invoice)
    assert [line.amount for line in invoice.lines.data] == [-677, 1_355]
    assert invoice.lines.data[1].description == "Remaining time on 2 × Gold tier after 11 Mar 2026"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(
            sub.id, params={"items": [{"id": item.id, "deleted": True}]}
        )  # a subscription keeps at least one item
    assert client.v1.subscriptions.retrieve(sub.id)["items"].data[0].quantity == 2


def test_an_invoice_keeps_its_subscriptions_metadata_as_of_finalization(client: Any) -> None:
    """``parent.subscription_details.metadata``: "defined as subscription metadata when an
    invoice is created. Becomes an immutable snapshot of the subscription metadata at the
    time of invoice finalization" (Stripe's API reference). A renewal changed while it is
    a draft carries the subscription's metadata as it was when finalised, and a later
    change leaves a finalised invoice alone."""
    shop = Shop(client, MAR_1_2026)
    sub = shop.subscribe(shop.price(1_000), metadata={"owner": "first"})
    shop.advance(APR_1_2026 + 60)  # the renewal is a draft for an hour
    [_, draft] = shop.invoices(sub.id)
    assert draft.status == "draft"
    client.v1.subscriptions.update(sub.id, params={"metadata": {"owner": "second"}})
    shop.advance(APR_1_2026 + 2 * HOUR)
    [first, renewal] = shop.invoices(sub.id)
    assert renewal.status == "paid"
    assert renewal.parent.subscription_details.metadata.to_dict() == {"owner": "second"}
    assert first.parent.subscription_details.metadata.to_dict() == {"owner": "first"}
    client.v1.subscriptions.update(sub.id, params={"metadata": {"owner": "third"}})
    [first, renewal] = shop.invoices(sub.id)
    assert renewal.parent.subscription_details.metadata.to_dict() == {"owner": "second"}


def test_a_one_off_invoice_is_drafted_finalised_with_its_intent_and_paid(
    client: Any, destination: str
) -> None:
    """`POST /v1/invoices` and `/v1/invoiceitems`: a draft for the customer (no
    auto-advance, pending items left out), items added to it by `invoice=`, finalised
    with its PaymentIntent waiting, then paid: a destination charge of the total with
    the invoice's `application_fee_amount`, as Stripe makes it."""
    shop = Shop(client, MAR_1_2026)
    customer = shop.customer.id
    pending = client.v1.invoice_items.create(
        params={"customer": customer, "amount": 500, "currency": "usd"}
    )
    assert (pending.invoice, pending.amount) == (None, 500)
    invoice = client.v1.invoices.create(
        params={
            "customer": customer,
            "transfer_data": {"destination": destination},
            "application_fee_amount": 300,
            "metadata": {"order": "o-1"},
        }
    )
    assert (invoice.status, invoice.auto_advance, invoice.billing_reason) == (
        "draft",
        False,
        "manual",
    )
    assert invoice.parent is None
    assert invoice.metadata["order"] == "o-1"
    assert invoice.lines.data == []  # pending items are excluded unless asked for
    one_time = client.v1.prices.create(
        params={"product": shop.product.id, "currency": "usd", "unit_amount": 750}
    )
    client.v1.invoice_items.create(
        params={"customer": customer, "invoice": invoice.id, "amount": 1_500, "currency": "usd"}
    )
    item = client.v1.invoice_items.create(
        params={
            "customer": customer,
            "invoice": invoice.id,
            "pricing": {"price": one_time.id},
            "quantity": 2,
        }
    )
    assert (item.invoice, item.amount) == (invoice.id, 1_500)
    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.amount_due, len(draft.lines.data)) == (3_000, 2)
    assert draft.lines.data[0].parent.type == "invoice_item_details"

    finalized = client.v1.invoices.finalize_invoice(invoice.id)
    assert finalized.status == "open"
    intent = intent_of(client, invoice.id)
    assert (intent.amount, intent.status) == (3_000, "requires_confirmation")
    assert intent.application_fee_amount == 300
    assert intent.transfer_data.destination == destination
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.create(
            params={"customer": customer, "invoice": invoice.id, "amount": 1, "currency": "usd"}
        )

    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_paid) == ("paid", 3_000)
    assert intent_of(client, invoice.id).id == intent.id
    charge = charge_of(client, invoice.id)
    assert (charge.amount, charge.application_fee_amount) == (3_000, 300)
    assert total(client, destination) == 3_000 - 300
    assert total(client) == 300 - processing_fee(3_000)
    for announced in ("invoice.created", "invoice.finalized", "invoice.paid"):
        assert invoice.id in [e.data.object.id for e in event_types(client, announced)]
    assert len(event_types(client, "invoiceitem.created")) == 3

    # The pending item waits for an invoice that includes it.
    later = client.v1.invoices.create(
        params={"customer": customer, "pending_invoice_items_behavior": "include"}
    )
    assert [line.amount for line in later.lines.data] == [500]
    assert client.v1.invoice_items.retrieve(pending.id).invoice == later.id


def test_a_one_off_invoice_with_auto_advance_is_finalised_and_charged_an_hour_later(
    client: Any,
) -> None:
    shop = Shop(client, MAR_1_2026)
    invoice = client.v1.invoices.create(params={"customer": shop.customer.id, "auto_advance": True})
    client.v1.invoice_items.create(
        params={"customer": shop.customer.id, "invoice": invoice.id, "amount": 2_000}
    )
    assert invoice.automatically_finalizes_at == MAR_1_2026 + HOUR
    shop.advance(MAR_1_2026 + HOUR - 1)
    assert client.v1.invoices.retrieve(invoice.id).status == "draft"
    shop.advance(MAR_1_2026 + HOUR)
    paid = client.v1.invoices.retrieve(invoice.id)
    assert (paid.status, paid.amount_paid) == ("paid", 2_000)
    assert total(client) == 2_000 - processing_fee(2_000)


def test_one_off_invoice_validation(client: Any, destination: str) -> None:
    shop = Shop(client, MAR_1_2026)
    customer = shop.customer.id
    for params in (
        {"collection_method": "send_invoice", "days_until_due": 30},
        {"application_fee_amount": 100},  # no connected account to take it from
        {"transfer_data": {"destination": "acct_missing"}},
        {"pending_invoice_items_behavior": "sometimes"},
    ):
        with pytest.raises(stripe.InvalidRequestError):
            client.v1.invoices.create(params={"customer": customer, **params})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.create(params={"customer": customer})  # no amount, no price
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.create(params={"customer": customer, "amount": 100})  # currency
    sub = shop.subscribe(shop.price(1_000))
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.create(
            params={"customer": customer, "invoice": sub.latest_invoice, "amount": 1}
        )
