"""Plugins shipped with the engine; each registers through the marketplace.plugins entry point group."""
