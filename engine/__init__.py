"""Marketplace engine: a plugin-based payments engine for multi-party marketplaces."""
