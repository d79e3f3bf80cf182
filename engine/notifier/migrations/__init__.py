"""Piccolo migrations of the notifier app (none yet: ``0000_tables`` creates the outbox)."""
