"""Payments and card set-ups that wait for the customer (3D Secure, Strong Customer Authentication).

When a card asks for authentication, Stripe answers with an intent in
``requires_action``: the customer completes it in the browser with the intent's
``client_secret`` (Stripe.js ``handleNextAction``) or by following the
``next_action``'s URL; an invoice can also be paid on its ``hosted_invoice_url``.
``CustomerAction`` is what the engine's and plugins' API responses carry then (and
what a business object in an "action required" state shows); the payment goes on,
driven by webhooks, once the customer has authenticated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from engine.core.errors import PaymentActionRequired

__all__ = ["CustomerAction", "PaymentActionRequired", "customer_action"]


class CustomerAction(msgspec.Struct, frozen=True, kw_only=True):
    """What the customer must do before a payment (or a card's set-up) can go through.

    Attributes:
        status: ``requires_action`` (authenticate), or ``requires_payment_method``
            when the last attempt failed and the customer must confirm again (another
            card, or the same one on-session).
        intent_id: the PaymentIntent (``pi_``) or SetupIntent (``seti_``).
        client_secret: the intent's client secret, for Stripe.js on the customer's side.
        next_action: Stripe's ``next_action`` (``use_stripe_sdk`` or ``redirect_to_url``).
        hosted_invoice_url: for a subscription invoice, the page where the customer pays.
        reason: why the customer is asked (``authentication_required``, a decline code).
    """

    status: str
    intent_id: str
    client_secret: str
    next_action: dict[str, Any] | None = None
    hosted_invoice_url: str | None = None
    reason: str | None = None


def customer_action(
    intent: Mapping[str, Any], *, hosted_invoice_url: str | None = None
) -> CustomerAction | None:
    """The action a Stripe PaymentIntent or SetupIntent waits for, or None if it waits for none.

    An intent in ``requires_action`` waits for the customer's authentication; one in
    ``requires_payment_method`` after a failed attempt (``last_payment_error`` /
    ``last_setup_error``) waits for the customer to confirm again.
    """
    status = str(intent.get("status") or "")
    error = intent.get("last_payment_error") or intent.get("last_setup_error")
    reason = None
    if isinstance(error, Mapping):
        reason = str(error.get("decline_code") or error.get("code") or "") or None
    if status == "requires_action":
        reason = reason or "authentication_required"
    elif not (status == "requires_payment_method" and error):
        return None
    next_action = intent.get("next_action")
    return CustomerAction(
        status=status,
        intent_id=str(intent.get("id") or ""),
        client_secret=str(intent.get("client_secret") or ""),
        next_action=dict(next_action) if isinstance(next_action, Mapping) else None,
        hosted_invoice_url=hosted_invoice_url,
        reason=reason,
    )
