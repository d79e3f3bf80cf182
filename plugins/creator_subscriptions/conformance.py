"""What the conformance check runs creator_subscriptions with: its orders and real events.

``marketplace conformance creator_subscriptions`` finds ``conformance()`` here.
The sample events are real Stripe objects from the check's sandbox for rows
created in the check's transaction: a subscription (created, its first invoice
paid: the ledger posting, the invoice row), a tip (its PaymentIntent
succeeded), the creator's ``account.updated``, and another plugin's
subscription, which the handlers must ignore. Each is handled twice and the
state must not change the second time.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from engine.payments.records import meaning_metadata
from engine.sandbox.testing import verified_account_params
from engine.testing.conformance import ConformanceSpec, SampleContext
from engine.testing.events import stripe_event
from engine.testing.strategies import orders
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.one_time import PAYMENT_METADATA
from plugins.creator_subscriptions.subscriptions import SUBSCRIPTION_METADATA
from plugins.creator_subscriptions.tiers import TIER_METADATA

__all__ = ["conformance", "sample_events"]


async def _rows(ctx: SampleContext, account_id: str, price: Any, customer: Any) -> dict[str, Any]:
    conn = ctx.conn
    creator = await conn.fetchval(
        "INSERT INTO creator_subscriptions_creators (account_id, handle, display_name, "
        "default_currency, created_at) VALUES ($1, 'conformance', 'Conformance', 'usd', now()) "
        "RETURNING id",
        account_id,
    )
    tier = await conn.fetchval(
        "INSERT INTO creator_subscriptions_tiers (creator, account_id, name, amount, currency, "
        "interval, stripe_product_id, stripe_price_id, created_at, updated_at) "
        "VALUES ($1, $2, 'Gold', 1500, 'usd', 'month', $3, $4, now(), now()) RETURNING id",
        creator,
        account_id,
        price["product"],
        price["id"],
    )
    fan = await conn.fetchval(
        "INSERT INTO creator_subscriptions_fans (external_ref, stripe_customer_id, "
        "default_payment_method, created_at) VALUES ('conformance-fan', $1, $2, now()) "
        "RETURNING id",
        customer["id"],
        customer["invoice_settings"]["default_payment_method"],
    )
    subscription = await conn.fetchval(
        "INSERT INTO creator_subscriptions_subscriptions (fan, creator, tier, account_id, "
        "customer_id, currency, status, application_fee_percent, rule_id, meaning_marked, "
        "created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, 'usd', 'pending', 10, 'default', true, now(), now()) "
        "RETURNING id",
        fan,
        creator,
        tier,
        account_id,
        customer["id"],
    )
    payment = await conn.fetchval(
        "INSERT INTO creator_subscriptions_payments (kind, fan, creator, account_id, amount, "
        "currency, application_fee, creator_earnings, rule_id, status, created_at, updated_at) "
        "VALUES ('tip', $1, $2, $3, 700, 'usd', 70, 630, 'default', 'pending', now(), now()) "
        "RETURNING id",
        fan,
        creator,
        account_id,
    )
    return {"tier": tier, "subscription": subscription, "payment": payment}


async def sample_events(ctx: SampleContext) -> list[dict[str, Any]]:
    """A paid subscription, a tip, the creator's account update, and a foreign subscription."""
    stripe = ctx.stripe
    account = stripe.v1.accounts.create(params=verified_account_params())
    account_id = str(account["id"])
    product = stripe.v1.products.create(params={"name": "Conformance: Gold"})
    price = stripe.v1.prices.create(
        params={
            "product": product["id"],
            "unit_amount": 1500,
            "currency": "usd",
            "recurring": {"interval": "month"},
        }
    )
    customer = stripe.v1.customers.create(params={"email": "fan@example.com"})
    card = stripe.v1.payment_methods.attach("pm_card_visa", params={"customer": customer["id"]})
    customer = stripe.v1.customers.update(
        customer["id"], params={"invoice_settings": {"default_payment_method": card["id"]}}
    )
    rows = await _rows(ctx, account_id, price, customer)
    metadata = {
        **meaning_metadata(PLUGIN, f"{PLUGIN}:subscription:{rows['subscription']}"),
        "plugin": PLUGIN,
        SUBSCRIPTION_METADATA: str(rows["subscription"]),
        TIER_METADATA: str(rows["tier"]),
        "creator_account": account_id,
    }
    subscription = stripe.v1.subscriptions.create(
        params={
            "customer": customer["id"],
            "items": [{"price": price["id"]}],
            "transfer_data": {"destination": account_id},
            "application_fee_percent": "10",
            "metadata": metadata,
        }
    )
    invoice = stripe.v1.invoices.retrieve(subscription["latest_invoice"])
    intent = stripe.v1.payment_intents.create(
        params={
            "amount": 700,
            "currency": "usd",
            "customer": customer["id"],
            "payment_method": card["id"],
            "confirm": True,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "transfer_data": {"destination": account_id},
            "application_fee_amount": 70,
            "metadata": {"plugin": PLUGIN, PAYMENT_METADATA: str(rows["payment"])},
        }
    )
    foreign = {
        **subscription.to_dict(),
        "id": "sub_not_a_creator_subscription",
        "metadata": {"plugin": "other"},
    }
    return [
        stripe_event("customer.subscription.created", subscription.to_dict()),
        stripe_event("invoice.paid", invoice.to_dict()),
        stripe_event("invoice.payment_succeeded", invoice.to_dict()),
        stripe_event("payment_intent.succeeded", intent.to_dict()),
        stripe_event("account.updated", account.to_dict(), account=account_id),
        stripe_event("customer.subscription.updated", foreign),
    ]


def conformance() -> ConformanceSpec:
    """Subscription, tip and pay-per-view orders for a creator; real paid objects as events."""
    return ConformanceSpec(
        orders=orders(
            PLUGIN,
            kinds=["subscription", "tip", "ppv"],
            roles=["creator"],
            attributes=st.fixed_dictionaries(
                {}, optional={"tier": st.sampled_from(["Silver", "Gold"])}
            ),
        ),
        events=sample_events,
    )
