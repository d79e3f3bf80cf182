"""Register the engine's two webhook endpoints with Stripe (or the sandbox).

Uses Stripe's own ``/v1/webhook_endpoints`` API: one endpoint for platform
events and one with ``connect=true`` for connected accounts' events. Stripe
returns a signing secret only when an endpoint is created, so existing
endpoints at the same URLs are replaced. Both are pinned to the engine's API
version (``api_version``): an endpoint renders its events in its own version,
the account's default when none was given, and the engine only handles its own.
``warn_about_endpoint_versions`` (run at start-up) logs every endpoint that
renders another version.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from engine.gateway import StripeGateway, idempotency_key
from engine.stripe_version import STRIPE_API_VERSION

__all__ = [
    "FIX_COMMAND",
    "EndpointSecrets",
    "foreign_endpoints",
    "register_webhook_endpoints",
    "warn_about_endpoint_versions",
]

log = logging.getLogger(__name__)

FIX_COMMAND = "marketplace stripe-setup-webhooks --url <public URL of this API>"
"""Re-creates the engine's endpoints in its API version (named by warnings and parked events)."""

PLATFORM_PATH = "/webhooks/stripe"
CONNECT_PATH = "/webhooks/stripe/connect"


@dataclass(frozen=True, slots=True)
class EndpointSecrets:
    """The signing secrets of the two endpoints, to store in ``[stripe]``."""

    platform: str
    connect: str


async def register_webhook_endpoints(gateway: StripeGateway, base_url: str) -> EndpointSecrets:
    """Create (or replace) both endpoints for ``base_url``; return their secrets."""
    base = base_url.rstrip("/")
    wanted = {f"{base}{PLATFORM_PATH}": False, f"{base}{CONNECT_PATH}": True}
    for endpoint in await gateway.list_all("webhook_endpoints"):
        if endpoint.get("url") in wanted:
            await gateway.call(
                "webhook_endpoints",
                "delete",
                str(endpoint["id"]),
                idempotency_key=idempotency_key("webhook_endpoint", endpoint["id"], "delete"),
            )
    created_secrets: dict[bool, str] = {}
    for url, connect in wanted.items():
        created = await gateway.call(
            "webhook_endpoints",
            "create",
            params={
                "url": url,
                "enabled_events": ["*"],
                "connect": connect,
                "api_version": STRIPE_API_VERSION,
            },
            idempotency_key=idempotency_key(
                "webhook_endpoint", url, "create", secrets.token_hex(8)
            ),
        )
        created_secrets[connect] = str(created["secret"])
    return EndpointSecrets(platform=created_secrets[False], connect=created_secrets[True])


def foreign_endpoints(endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The enabled endpoints that render events in another API version than the engine's.

    An endpoint without ``api_version`` follows the account's default version,
    which the engine cannot see, so it counts as foreign too.
    """
    return [
        endpoint
        for endpoint in endpoints
        if endpoint.get("status", "enabled") == "enabled"
        and endpoint.get("api_version") != STRIPE_API_VERSION
    ]


async def warn_about_endpoint_versions(gateway: StripeGateway) -> list[dict[str, Any]]:
    """List the account's webhook endpoints; log a warning for each of another version.

    Returns the foreign endpoints. Never raises: an unreachable Stripe is logged and
    start-up goes on (the check is advice, the parking of foreign events is the guard).
    """
    try:
        endpoints = await gateway.list_all("webhook_endpoints")
    except Exception as exc:  # advice only: start-up must not depend on it
        log.warning("could not list Stripe webhook endpoints to check their API version: %s", exc)
        return []
    foreign = foreign_endpoints(endpoints)
    for endpoint in foreign:
        version = endpoint.get("api_version") or "the account's default version"
        log.warning(
            "Stripe webhook endpoint %s (%s) renders events in %s, but this engine speaks %s: "
            "its events will be parked, not handled. Fix: %s",
            endpoint.get("id"),
            endpoint.get("url"),
            version,
            STRIPE_API_VERSION,
            FIX_COMMAND,
        )
    return foreign
