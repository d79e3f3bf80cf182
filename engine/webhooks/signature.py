"""Stripe's webhook signature scheme, verified on the raw body.

``Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is the
hex HMAC-SHA256 of ``"<t>.<raw body>"`` under an endpoint signing secret. Several
secrets may be configured while one is being rotated; any match is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

from engine.core.errors import InvalidInput

__all__ = ["SignatureError", "sign", "verify"]


class SignatureError(InvalidInput):
    """The payload is not signed by any of the endpoint's secrets, or is too old."""

    code = "invalid_signature"
    status = 400
    title = "Invalid webhook signature"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header value for ``payload`` (tests and the sandbox)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256)
    return f"t={stamp},v1={digest.hexdigest()}"


def _parse(header: str) -> tuple[int, list[str]]:
    stamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                stamp = int(value)
            except ValueError:
                raise SignatureError("Stripe-Signature has a non-numeric timestamp") from None
        elif key == "v1":
            signatures.append(value)
    if stamp is None or not signatures:
        raise SignatureError("Stripe-Signature lacks a timestamp or a v1 signature")
    return stamp, signatures


def verify(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    tolerance: int = 300,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``payload``; return the signed timestamp.

    Raises:
        SignatureError: no header, no secret configured, a stale or future
            timestamp beyond ``tolerance`` seconds, or no matching signature.
    """
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    if not secrets:
        raise SignatureError("no signing secret is configured for this endpoint")
    stamp, signatures = _parse(header)
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        raise SignatureError(f"timestamp outside the {tolerance} s tolerance")
    signed = f"{stamp}.".encode() + payload
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return stamp
    raise SignatureError("no signature matches the endpoint's secrets")
