"""The one Stripe API version the engine speaks, named once (no imports: the sandbox uses it too).

It is the version the pinned SDK major is typed for (``stripe.api_version``; a unit
test holds them equal, so upgrading the SDK is a deliberate change of shapes). The
gateway sends it on every call and sets it on every webhook endpoint the engine
creates; the sandbox answers in it; an event of another version is parked at intake.
"""

from __future__ import annotations

from typing import Final

__all__ = ["STRIPE_API_VERSION"]

STRIPE_API_VERSION: Final = "2026-10-28.endive"
