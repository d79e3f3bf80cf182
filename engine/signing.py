"""The engine's signing key: HMACs for dashboard cookies, CSRF tokens and onboarding links.

One random secret in ``marketplace_dashboard_secrets``, made by whichever API
process needs it first and shared by all of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

__all__ = ["Signer", "load_signer"]


class Signer:
    """HMAC-SHA256 with the dashboards' secret: cookie signatures and CSRF tokens."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def mac(self, purpose: str, value: str) -> str:
        """A URL-safe MAC of ``value`` for ``purpose`` (purposes never share MACs)."""
        digest = hmac.new(self._secret, f"{purpose}|{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, value: str) -> str:
        """``value.mac`` for a cookie."""
        return f"{value}.{self.mac('cookie', value)}"

    def unsign(self, signed: str | None) -> str | None:
        """The value of a signed cookie, or ``None`` if it is missing or forged."""
        if not signed or "." not in signed:
            return None
        value, _, mac = signed.rpartition(".")
        if not value or not hmac.compare_digest(mac, self.mac("cookie", value)):
            return None
        return value

    def csrf_token(self, binding: str) -> str:
        """The form token for a session id (or a pre-session nonce)."""
        return self.mac("csrf", binding)

    def csrf_valid(self, binding: str | None, token: str | None) -> bool:
        """Whether ``token`` is the form token for ``binding``."""
        if not binding or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(binding))


async def load_signer(pool: Any) -> Signer:
    """The shared secret (made on first use) as a ``Signer``."""
    row = await pool.fetchval(
        "SELECT secret FROM marketplace_dashboard_secrets WHERE name = 'signing'"
    )
    if row is None:
        await pool.execute(
            "INSERT INTO marketplace_dashboard_secrets (name, secret, created_at) "
            "VALUES ('signing', $1, now()) ON CONFLICT (name) DO NOTHING",
            secrets.token_urlsafe(48),
        )
        row = await pool.fetchval(
            "SELECT secret FROM marketplace_dashboard_secrets WHERE name = 'signing'"
        )
    return Signer(str(row).encode("utf-8"))
