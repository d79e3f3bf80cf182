"""The commission_rules plugin (registered through the marketplace.plugins entry point)."""
