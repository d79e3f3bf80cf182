"""Register the engine's two webhook endpoints with Stripe (or the sandbox).

Uses Stripe's own ``/v1/webhook_endpoints`` API: one endpoint for platform
events and one with ``connect=true`` for connected accounts' events. Stripe
returns a signing secret only when an endpoint is created, so existing
endpoints at the same URLs are replaced.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from engine.gateway import StripeGateway, idempotency_key

__all__ = ["EndpointSecrets", "register_webhook_endpoints"]

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
            params={"url": url, "enabled_events": ["*"], "connect": connect},
            idempotency_key=idempotency_key(
                "webhook_endpoint", url, "create", secrets.token_hex(8)
            ),
        )
        created_secrets[connect] = str(created["secret"])
    return EndpointSecrets(platform=created_secrets[False], connect=created_secrets[True])
