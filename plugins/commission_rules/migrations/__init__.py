"""Piccolo migrations of the commission_rules app, applied in name order after its tables exist."""
