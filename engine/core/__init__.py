"""The domain: money, splits, ledger, hookspecs, plugin manager and settings (no I/O frameworks)."""
