"""Piccolo migrations of the creator_subscriptions app (none yet: ``0000_tables`` creates them)."""
