"""Billing for the sandbox: products, prices, subscriptions and invoices (an app extension).

`engine.sandbox.app` imports this module when present and calls `install(registry)`.
The resources live in `resources/products.py`, `resources/subscriptions.py` and
`resources/invoices.py`; this module only wires their routes and jobs in.

Renewals, invoice finalisation, payment retries, `cancel_at` and the expiry of
`incomplete` subscriptions are jobs in the clock domain of the subscription's customer
rather than a tick callback: the domain's job heap already is the per-clock index by
due time, and the clock runs due jobs in time order with the clock set to each job's
moment, so twelve renewals in one advance create, finalise and charge twelve invoices
in order, each at its own time, and only the advanced clock's subscriptions move. A
tick callback would see only the end of the advance.
"""

from __future__ import annotations

from engine.sandbox.resources import invoices, products, subscriptions
from engine.sandbox.routing import Registry

__all__ = ["install"]


def install(registry: Registry) -> None:
    """Add the billing routes and jobs to a sandbox app."""
    for route in (*products.ROUTES, *subscriptions.ROUTES, *invoices.ROUTES):
        registry.route(route.method, route.pattern, route.handler, route.params)
    for kind, handler in {**invoices.JOBS, **subscriptions.JOBS}.items():
        registry.job(kind, handler)
    registry.includable("invoice", "payments", invoices.include_payments)
    registry.includable("invoice", "confirmation_secret", invoices.include_confirmation_secret)
    registry.on_payment(invoices.pay_for_intent)
