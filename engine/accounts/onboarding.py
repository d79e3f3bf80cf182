"""Where Stripe's hosted onboarding sends an account holder back, and the proof they came from it.

An account link carries two addresses on the engine's public URL
(``engine.public_url``): the return page (the holder finished or left the
flow) and the refresh page (the link expired or was used; Stripe expects a new
link to be made there). Both carry a token, an HMAC of the account id and an
expiry under the engine's signing key, so only someone sent there by a link the
engine made can open them: the refresh page hands out a fresh onboarding link,
which can change the account's bank details.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from urllib.parse import quote

from engine.signing import Signer

__all__ = ["PAGES_PATH", "TOKEN_DAYS", "OnboardingUrls", "onboarding_urls", "token_valid"]

PAGES_PATH = "/dashboard/onboarding"
"""Where the pages are served, under the public URL."""
TOKEN_DAYS = 30
"""How long the return and refresh addresses of a link keep working."""

_PURPOSE = "onboarding"


@dataclass(frozen=True, slots=True)
class OnboardingUrls:
    """The ``return_url`` and ``refresh_url`` of one account link."""

    return_url: str
    refresh_url: str


def _token(signer: Signer, account_id: str, expires: int) -> str:
    return f"{expires}.{signer.mac(_PURPOSE, f'{account_id}|{expires}')}"


def onboarding_urls(
    public_url: str, account_id: str, signer: Signer, *, now: float | None = None
) -> OnboardingUrls:
    """The two addresses for a new account link of ``account_id``.

    The expiry is rounded up to a whole day, so a request retried with its
    idempotency key sends Stripe the same addresses.
    """
    today = int(now if now is not None else time.time()) // 86_400
    expires = (today + TOKEN_DAYS + 1) * 86_400
    base = f"{public_url.rstrip('/')}{PAGES_PATH}/{quote(account_id, safe='')}"
    query = f"?token={quote(_token(signer, account_id, expires), safe='')}"
    return OnboardingUrls(return_url=f"{base}/return{query}", refresh_url=f"{base}/refresh{query}")


def token_valid(
    signer: Signer, account_id: str, token: str | None, *, now: float | None = None
) -> bool:
    """Whether ``token`` was made for ``account_id`` by this engine and has not expired."""
    if not token or "." not in token:
        return False
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit():
        return False
    expires = int(expires_text)
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(mac, signer.mac(_PURPOSE, f"{account_id}|{expires}"))
