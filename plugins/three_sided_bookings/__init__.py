"""The three_sided_bookings plugin (registered through the marketplace.plugins entry point)."""
