"""Plugins shipped with the engine, each registered through the marketplace.plugins group."""
