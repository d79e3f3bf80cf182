"""Payments services shared by business models: pricing through the hooks, payment records."""
