"""Events for the webhook pipeline tests, built with the testing kit's ``stripe_event``."""

from __future__ import annotations

from typing import Any

from engine.testing.events import signed, stripe_event

__all__ = ["event", "signed"]


def event(
    account: str | None,
    seq: int,
    *,
    event_type: str = "test.recorded",
    obj: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A ``test.recorded`` event carrying a per-account sequence number (``metadata.seq``)."""
    return stripe_event(
        event_type,
        obj or {"id": f"obj_{seq}", "object": "test", "metadata": {"seq": seq}},
        account=account,
        event_id=event_id,
    )
