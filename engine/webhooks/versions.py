"""Events rendered in another Stripe API version than the engine's: recognised, never handled.

A webhook endpoint renders its events in its own ``api_version`` (the account's
default when it was created without one). The engine reads one version's shapes
(``engine.gateway.STRIPE_API_VERSION``), so an event of another version is stored
dead with a reason naming both versions and the fix, at intake; a replayed one is
checked again before any handler sees it (``ForeignApiVersion`` is permanent: dead
at once, never retried, and the account's other events keep flowing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.stripe_version import STRIPE_API_VERSION
from engine.webhooks.setup import FIX_COMMAND

__all__ = ["ForeignApiVersion", "ensure_engine_version", "foreign_version_reason"]


def foreign_version_reason(event: Mapping[str, Any]) -> str | None:
    """Why ``event`` must not be handled, or None when it has the engine's API version."""
    version = event.get("api_version")
    if version == STRIPE_API_VERSION:
        return None
    return (
        f"event {event.get('id')} has Stripe API version {version or 'none'}, but this engine "
        f"speaks {STRIPE_API_VERSION}: its webhook endpoint renders another version. "
        f"Re-create the endpoints with `{FIX_COMMAND}`, then replay events sent in "
        f"{STRIPE_API_VERSION}; this one keeps the shapes of {version or 'no version'}."
    )


class ForeignApiVersion(Exception):
    """A (replayed) event of another API version reached the worker; it stays dead."""

    permanent = True
    """Tells the mailbox to dead-letter the event at once, without retries or parking."""


def ensure_engine_version(event: Mapping[str, Any]) -> None:
    """Raise ``ForeignApiVersion`` unless ``event`` has the engine's API version."""
    reason = foreign_version_reason(event)
    if reason is not None:
        raise ForeignApiVersion(reason)
