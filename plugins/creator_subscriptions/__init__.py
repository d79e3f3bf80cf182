"""The creator_subscriptions plugin (registered through the marketplace.plugins entry point)."""
