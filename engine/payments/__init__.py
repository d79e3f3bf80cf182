"""Payments services shared by business models: pricing through the hooks, payment records,
and the money calls (``movements``: charge, capture, release, refund, transfer, reverse)."""

from engine.payments import movements

__all__ = ["movements"]
