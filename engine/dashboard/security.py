"""Sign-in for the dashboards: signed session cookies, CSRF tokens, one-time login links.

- **Sessions** are rows in ``marketplace_dashboard_sessions``. The cookie holds
  ``<session id>.<HMAC-SHA256 of it>`` (HttpOnly, SameSite=Lax, path
  ``/dashboard``); the table stores only the id's SHA-256, so neither a leaked
  table nor a forged cookie opens a session. A session made from an API key
  ends when the key is revoked; every session ends after ``SESSION_HOURS`` or
  at sign-out.
- **CSRF**: every form carries a token derived from the session (or, before
  sign-in, from a random pre-session cookie) with the same HMAC key; a POST
  is refused unless the token matches and any ``Origin`` header names this host.
  Cross-site pages can neither read the cookies nor compute the token.
- **Login links**: an admin makes a link for one connected account; it works
  once, within ``LINK_HOURS``, and is stored as a hash. Opening it shows a
  confirmation form (so mail scanners that follow links do not spend it).

The signing key is ``engine.signing``'s: one random secret in
``marketplace_dashboard_secrets``, made by whichever API process needs it
first and shared by all of them.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from engine.api.keys import find_api_key, parse_api_key, secret_matches
from engine.core.errors import AuthenticationRequired, Forbidden
from engine.signing import Signer, load_signer

__all__ = [
    "LINK_HOURS",
    "PRESESSION_COOKIE",
    "SESSION_COOKIE",
    "SESSION_HOURS",
    "Signer",
    "Viewer",
    "authenticate_key",
    "consume_login_link",
    "create_login_link",
    "create_session",
    "find_login_link",
    "load_signer",
    "resolve_session",
    "revoke_session",
]

SESSION_COOKIE: Final = "mp_dashboard"
PRESESSION_COOKIE: Final = "mp_presession"
SESSION_HOURS: Final = 12
LINK_HOURS: Final = 24

Kind = Literal["admin", "account"]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking at a page: an admin, or one connected account's holder.

    Attributes:
        session_id: the session's id (what CSRF tokens are bound to).
        key_id: the API key signed in with, if any (``None`` for a login link).
    """

    kind: Kind
    session_id: str
    account_id: str | None = None
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the viewer may see every account and the admin panel."""
        return self.kind == "admin"

    @property
    def actor(self) -> str:
        """How the audit log names this viewer."""
        if self.key_id:
            return f"api_key:{self.key_id}"
        return f"dashboard:{self.account_id}"

    def can_see(self, account_id: str) -> bool:
        """Whether the viewer may open ``account_id``'s pages."""
        return self.is_admin or self.account_id == account_id


async def authenticate_key(pool: Any, plaintext: str) -> tuple[Kind, str, str | None]:
    """Check a pasted API key; return ``(kind, key_id, account_id)``.

    Raises:
        AuthenticationRequired: malformed, unknown, revoked or a wrong secret.
        Forbidden: a service key (integration clients have no dashboard).
    """
    parsed = parse_api_key(plaintext.strip())
    if parsed is None:
        raise AuthenticationRequired("that does not look like an API key (mk_<id>_<secret>)")
    key_id, secret = parsed
    row = await find_api_key(pool, key_id)
    if row is None or row.revoked_at is not None or not secret_matches(secret, row.secret_hash):
        raise AuthenticationRequired("the API key is unknown or revoked")
    if row.scope == "admin":
        return "admin", key_id, None
    if row.scope == "account" and row.account_id:
        return "account", key_id, row.account_id
    raise Forbidden("service keys cannot sign in to the dashboards; use an admin or account key")


async def create_session(
    pool: Any,
    kind: Kind,
    *,
    account_id: str | None = None,
    key_id: str | None = None,
    login_link: str | None = None,
) -> str:
    """Start a session; return its id (the caller signs it into the cookie)."""
    session_id = secrets.token_urlsafe(32)
    await pool.execute(
        """
        INSERT INTO marketplace_dashboard_sessions
            (session_hash, kind, account_id, key_id, login_link, created_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, now(), now() + make_interval(hours => $6))
        """,
        _digest(session_id),
        kind,
        account_id,
        key_id,
        login_link,
        SESSION_HOURS,
    )
    return session_id


async def resolve_session(pool: Any, session_id: str | None) -> Viewer | None:
    """The viewer of a live session.

    Not expired, not signed out, its key not revoked, and (for an account's
    holder) the account still there and not suspended: checked on every page.
    """
    if not session_id:
        return None
    row = await pool.fetchrow(
        """
        SELECT s.kind, s.account_id, s.key_id
        FROM marketplace_dashboard_sessions s
        LEFT JOIN marketplace_api_keys k ON k.key_id = s.key_id
        LEFT JOIN marketplace_accounts a ON a.stripe_account_id = s.account_id
        WHERE s.session_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
          AND (s.key_id IS NULL OR (k.key_id IS NOT NULL AND k.revoked_at IS NULL))
          -- an account's holder is signed out once it is suspended or gone
          AND (s.account_id IS NULL OR (a.stripe_account_id IS NOT NULL AND NOT a.suspended))
        """,
        _digest(session_id),
    )
    if row is None:
        return None
    return Viewer(
        kind=row["kind"], session_id=session_id, account_id=row["account_id"], key_id=row["key_id"]
    )


async def revoke_session(pool: Any, session_id: str) -> None:
    """End a session (sign-out)."""
    await pool.execute(
        "UPDATE marketplace_dashboard_sessions SET revoked_at = now() "
        "WHERE session_hash = $1 AND revoked_at IS NULL",
        _digest(session_id),
    )


async def create_login_link(pool: Any, account_id: str, *, created_by: str) -> tuple[str, datetime]:
    """A one-time sign-in token for ``account_id``; return it and when it expires."""
    token = secrets.token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(hours=LINK_HOURS)
    await pool.execute(
        """
        INSERT INTO marketplace_dashboard_login_links
            (token_hash, account_id, created_by, created_at, expires_at)
        VALUES ($1, $2, $3, now(), $4)
        """,
        _digest(token),
        account_id,
        created_by,
        expires,
    )
    return token, expires


async def find_login_link(pool: Any, token: str) -> str | None:
    """The account an unused, unexpired link signs in to, or ``None``."""
    account: str | None = await pool.fetchval(
        "SELECT account_id FROM marketplace_dashboard_login_links "
        "WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()",
        _digest(token),
    )
    return account


async def consume_login_link(pool: Any, token: str) -> tuple[str, str] | None:
    """Spend a link (once, atomically); return ``(account_id, link id)`` or ``None``."""
    row = await pool.fetchrow(
        "UPDATE marketplace_dashboard_login_links SET used_at = now() "
        "WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() "
        "RETURNING id, account_id",
        _digest(token),
    )
    if row is None:
        return None
    return str(row["account_id"]), str(row["id"])
