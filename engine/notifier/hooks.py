"""Hook implementations of the notifier plugin (filled in by its own module set)."""
