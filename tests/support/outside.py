"""What the engine-movement tests share: a plugin with no hooks that the money calls
are made for (``Orders``), one naming movements made outside the engine
(``OutsideOrders``), an onboarded connected account, and a Billing subscription made
with Stripe's API directly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.accounts import AccountService, NewAccount
from engine.core.money import Money
from engine.core.plugins import hookimpl
from engine.testing.stack import Stack

USD = "usd"


class Orders:
    """The business model these tests' money calls are made for (``MoneyScope`` plugin
    ``orders``): enabled, as a plugin making money calls is, with no hooks. A charge
    whose intent names a plugin that is not enabled is posted by the engine as made
    outside it."""


def usd(amount: int) -> Money:
    return Money(amount, USD)


async def connected_account(stack: Stack, role: str) -> str:
    """A connected account made through the engine, onboarded (its events are then known)."""
    service = AccountService(
        stack.services.db.pool, stack.services.gateway, public_url="http://marketplace.test"
    )
    account, _ = await service.create(
        NewAccount(role=role, display_name=role), operation=None, actor="test"
    )
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account.id}/complete_onboarding")
    await stack.settle()
    return account.id


class OutsideOrders:
    """A test plugin naming the business of movements made outside the engine: a charge
    or transfer whose metadata carries ``outside_order``."""

    @hookimpl
    def resolve_movement_meaning(self, stripe_object: Mapping[str, Any]) -> tuple[str, str] | None:
        order = (stripe_object.get("metadata") or {}).get("outside_order")
        return (f"outside:order:{order}", "outside_orders") if order else None


def subscribe_outside(
    client: Any,
    *,
    amount: int,
    card: str = "pm_card_visa",
    clock: str | None = None,
    **params: Any,
) -> tuple[Any, str]:
    """A customer with ``card``, a monthly price of ``amount`` and a subscription to it,
    made with Stripe's API directly (on ``client``'s balance); the subscription and the
    charge that paid its first invoice."""
    customer = client.v1.customers.create(
        params={"email": "outside@example.com", **({"test_clock": clock} if clock else {})}
    )
    card_id = client.v1.payment_methods.attach(card, params={"customer": customer.id}).id
    price = client.v1.prices.create(
        params={
            "currency": USD,
            "unit_amount": amount,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Outside plan"},
        }
    )
    subscription = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "default_payment_method": card_id,
            **params,
        }
    )
    return subscription, invoice_charge(client, str(subscription.latest_invoice))


def invoice_charge(client: Any, invoice_id: str) -> str:
    """The charge that paid an invoice, through its InvoicePayment."""
    payments = client.v1.invoice_payments.list(
        params={"invoice": invoice_id, "expand": ["data.payment.payment_intent"]}
    ).data
    return str(payments[0].payment.payment_intent.latest_charge)
