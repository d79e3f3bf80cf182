"""Authentication and authorisation: who is calling (a ``Principal``) and what it may do.

``AuthMiddleware`` resolves the API key once per request (``Authorization:
Bearer mk_...`` or ``X-API-Key: mk_...``) and puts the ``Principal`` in
``scope["auth"]``; every route is protected unless it is public (``/health``,
``/ready``, ``/schema*``, ``/webhooks/*``, or a handler with ``opt={"public":
True}``). Guards (``requires_scope``) check the scope per controller or route;
handlers call ``principal.ensure_visible(account_id)`` so an account-scoped key
asking about another account gets the same 404 as for a missing one.

Valid keys are cached in-process for ``KeyStore.ttl`` seconds so the hot path
costs one hash and a dict lookup; revocation through the API evicts at once in
this process, and other processes see it within the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from engine.api.keys import KEYS_SETTING, find_api_key, parse_api_key, secret_matches
from engine.core.errors import AuthenticationRequired, Forbidden, NotFound

__all__ = [
    "KEYS_SETTING",
    "PUBLIC_OPT",
    "AuthMiddleware",
    "KeyStore",
    "Principal",
    "is_public",
    "principal_of",
    "requires_scope",
]

PUBLIC_OPT: Final = "public"
"""Handler ``opt`` key that makes a route public (no API key)."""

_PUBLIC_PATHS: Final = frozenset({"/health", "/ready"})
_PUBLIC_PREFIXES: Final = ("/schema/", "/webhooks/")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key's id, scope and (for ``account`` keys) its account."""

    key_id: str
    scope: str
    account_id: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"api_key:{self.key_id}"

    def can_see(self, account_id: str) -> bool:
        """Whether this key may read or act on ``account_id``'s data."""
        return self.scope != "account" or self.account_id == account_id

    def ensure_visible(
        self, account_id: str, *, what: str = "connected account", ref: int | str | None = None
    ) -> None:
        """Raise ``NotFound`` (not Forbidden: no existence leak) for another account's data.

        ``ref`` is the id the caller asked for (a tier's, a payment's): the
        problem then reads ``no tier 42`` exactly as for a tier that does not
        exist, never naming the account that owns it.
        """
        if not self.can_see(account_id):
            raise NotFound(f"no {what} {account_id!r}" if ref is None else f"no {what} {ref}")


def is_public(scope: Scope) -> bool:
    """Whether the request needs no API key."""
    if scope.get("method") == "OPTIONS":
        return True  # CORS preflights carry no credentials; they expose nothing
    handler = scope.get("route_handler")
    if handler is not None and handler.opt.get(PUBLIC_OPT):
        return True
    path = str(scope.get("path") or "")
    return path in _PUBLIC_PATHS or path == "/schema" or path.startswith(_PUBLIC_PREFIXES)


def _presented_key(scope: Scope) -> str | None:
    authorization = x_api_key = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            x_api_key = value.decode("latin-1")
    if authorization:
        kind, _, token = authorization.strip().partition(" ")
        if kind.lower() == "bearer" and token.strip():
            return token.strip()
        return ""
    if x_api_key is not None:
        return x_api_key.strip()
    return None


@dataclass(slots=True)
class _Cached:
    expires: float
    secret_hash: str
    principal: Principal | None  # None: no such key, revoked, or its account cannot use it
    refusal: str = "the API key is unknown or revoked"


class KeyStore:
    """Looks keys up in PostgreSQL, with a short in-process cache.

    Args:
        ttl: seconds a looked-up key (valid, revoked or unknown) is trusted.
        max_entries: cache size; the cache is cleared when it is full.
    """

    def __init__(self, *, ttl: float = 10.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self._max_entries = max_entries
        self._cache: dict[str, _Cached] = {}

    async def authenticate(self, pool: Any, token: str | None) -> Principal:
        """The principal for a presented key.

        Raises:
            AuthenticationRequired: no key, a malformed one, unknown, revoked or wrong secret.
        """
        if token is None:
            raise AuthenticationRequired(
                "this route needs an API key: 'Authorization: Bearer mk_...' or 'X-API-Key'"
            )
        parsed = parse_api_key(token)
        if parsed is None:
            raise AuthenticationRequired("the API key is malformed (expected mk_<id>_<secret>)")
        key_id, secret = parsed
        entry = await self._lookup(pool, key_id)
        if entry.principal is None or not secret_matches(secret, entry.secret_hash):
            raise AuthenticationRequired(
                entry.refusal if entry.secret_hash else "the API key is unknown or revoked"
            )
        return entry.principal

    async def _lookup(self, pool: Any, key_id: str) -> _Cached:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires > now:
            return cached
        row = await find_api_key(pool, key_id)
        if row is None or row.revoked_at is not None:
            entry = _Cached(now + self.ttl, "", None)
        elif row.account_id is not None and not await _account_may_sign_in(pool, row.account_id):
            refusal = f"the API key's account {row.account_id} is suspended or closed"
            entry = _Cached(now + self.ttl, row.secret_hash, None, refusal)
        else:
            principal = Principal(key_id=row.key_id, scope=row.scope, account_id=row.account_id)
            entry = _Cached(now + self.ttl, row.secret_hash, principal)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[key_id] = entry
        return entry

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after revoking or re-creating it)."""
        self._cache.pop(key_id, None)

    def clear(self) -> None:
        """Forget every cached key (``KEYS_SETTING`` moved: some key stopped working)."""
        self._cache.clear()


async def _account_may_sign_in(pool: Any, account_id: str) -> bool:
    """An account's keys work while the account exists and is not suspended."""
    suspended = await pool.fetchval(
        "SELECT suspended FROM marketplace_accounts WHERE stripe_account_id = $1", account_id
    )
    return suspended is False


class AuthMiddleware(ASGIMiddleware):
    """Resolve the API key of every non-public HTTP request into ``scope["auth"]``.

    Args:
        keys: the key store.
        pool: returns the asyncpg pool (looked up per request: the services
            may start after the app is built).
    """

    scopes = (ScopeType.HTTP,)
    # Webhook intake authenticates by signature; skip the middleware on its hot path.
    exclude_path_pattern = ("^/webhooks/",)

    def __init__(self, keys: KeyStore, pool: Callable[[], Any]) -> None:
        self._keys = keys
        self._pool = pool

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Authenticate, or let the exception handlers answer 401."""
        if not is_public(scope):
            principal = await self._keys.authenticate(self._pool(), _presented_key(scope))
            scope["auth"] = principal
            scope["user"] = principal
        await next_app(scope, receive, send)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The authenticated caller (set by ``AuthMiddleware``)."""
    principal = connection.scope.get("auth")
    if not isinstance(principal, Principal):
        raise AuthenticationRequired("this route needs an API key")
    return principal


def requires_scope(
    *scopes: str,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A guard that admits keys of the given scopes (``admin`` always passes)."""
    allowed = frozenset({"admin", *scopes})

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.scope.get("method") == "OPTIONS":
            # Public like every OPTIONS (``is_public``): it only lists the path's methods,
            # but a controller's guards apply to the OPTIONS handler Litestar adds to it.
            return
        principal = principal_of(connection)
        if principal.scope not in allowed:
            raise Forbidden(
                f"a {principal.scope!r} key cannot do this (needs {' or '.join(sorted(allowed))})",
                scope=principal.scope,
            )

    guard.__name__ = f"requires_scope_{'_'.join(sorted(allowed))}"
    return guard
