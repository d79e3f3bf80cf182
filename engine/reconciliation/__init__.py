"""Reconciliation: Stripe's balance transactions matched against the engine's ledger.

``run_reconciliation(services)`` (in ``engine.reconciliation.service``, also
importable from here) fetches the balance transactions of the platform and of
every connected account, matches each to ledger entries and records the result
per item. ``marketplace reconcile`` runs it from the command line.

This package's ``tables`` module is imported by the core's migrations, so the
package itself imports nothing heavy: the service is loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_reconciliation"]


def __getattr__(name: str) -> Any:
    if name == "run_reconciliation":
        from engine.reconciliation.service import run_reconciliation

        return run_reconciliation
    raise AttributeError(name)
