"""Stripe webhook handlers of course_sales (run by the engine's worker, one event at a time).

Each runs inside the event's database transaction (the context's ``conn``) and
ignores objects that are not course sales: every plugin sees every event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core.contributions import HandlerContext, StripeEvent
from engine.core.orders import LifecycleEvent
from engine.services import Services

from course_sales.config import PLUGIN
from course_sales.services import get_enrollment, settle_enrollment

__all__ = ["PAID", "on_payment_intent_succeeded"]

PAID = f"{PLUGIN}.enrollment.paid"
"""The lifecycle event announced when an enrollment is paid and its shares transferred."""


async def on_payment_intent_succeeded(event: StripeEvent, ctx: HandlerContext) -> None:
    """Settle the enrollment a succeeded PaymentIntent paid for (idempotent)."""
    payment_intent: Mapping[str, Any] = event["data"]["object"]
    metadata = payment_intent.get("metadata") or {}
    if metadata.get("plugin") != PLUGIN or not str(metadata.get("enrollment", "")).isdigit():
        return
    services: Services = ctx.services
    enrollment = await get_enrollment(ctx.conn, int(metadata["enrollment"]), lock=True)
    if enrollment is None:
        return
    paid = await settle_enrollment(ctx.conn, services, enrollment, payment_intent)
    if not paid:
        return
    instructor = next((t.destination for t in paid if t.role == "instructor"), None)
    notice = LifecycleEvent(
        PAID,
        subject_id=enrollment.reference,
        account_id=instructor,
        data={
            "amount": enrollment.price.amount,
            "currency": enrollment.price.currency,
            "transfers": {t.role: t.amount.amount for t in paid},
        },
    )
    # Broadcast only once the settlement has committed.
    ctx.after_commit(lambda: services.plugins.notify_lifecycle(notice))
