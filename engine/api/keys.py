"""API keys: format, hashing, creation, revocation and the bootstrap admin key.

A key reads ``mk_<key_id>_<secret>``: ``key_id`` (letters and digits) is stored
in clear and finds the row; only the SHA-256 of ``secret`` is stored, compared
in constant time. The plaintext is returned once, at creation.

Scopes:

- ``admin``: everything.
- ``service``: integration clients (create accounts, payments ...), no admin routes.
- ``account``: bound to one connected account (a creator, provider or venue);
  sees only that account's data.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, get_args

from engine.core.errors import ConfigError, InvalidInput
from engine.live_settings import bump

KEYS_SETTING: Final = "engine.api_keys"
"""The live setting that moves when keys stop working (revoked, their account suspended)."""

__all__ = [
    "KEYS_SETTING",
    "KEY_PREFIX",
    "SCOPES",
    "ApiKeyRow",
    "Scope",
    "create_api_key",
    "ensure_api_key",
    "find_api_key",
    "hash_secret",
    "list_api_keys",
    "parse_api_key",
    "revoke_api_key",
    "secret_matches",
]

Scope = Literal["admin", "service", "account"]
SCOPES: Final[tuple[str, ...]] = get_args(Scope)
KEY_PREFIX: Final = "mk_"

_KEY_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_MAX_SECRET = 256

_COLUMNS = "key_id, secret_hash, scope, account_id, label, created_at, revoked_at"


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """One stored key (without its secret)."""

    key_id: str
    secret_hash: str
    scope: str
    account_id: str | None
    label: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_record(cls, record: Any) -> ApiKeyRow:
        """Build from an asyncpg record of ``_COLUMNS``."""
        return cls(
            key_id=record["key_id"],
            secret_hash=record["secret_hash"],
            scope=record["scope"],
            account_id=record["account_id"],
            label=record["label"],
            created_at=record["created_at"],
            revoked_at=record["revoked_at"],
        )


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret (hex SHA-256)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash`` (constant-time comparison)."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def parse_api_key(text: str) -> tuple[str, str] | None:
    """Split ``mk_<key_id>_<secret>`` into ``(key_id, secret)``; ``None`` if malformed."""
    if not text.startswith(KEY_PREFIX):
        return None
    key_id, separator, secret = text[len(KEY_PREFIX) :].partition("_")
    if not separator or not secret or len(secret) > _MAX_SECRET:
        return None
    if not _KEY_ID.fullmatch(key_id):
        return None
    return key_id, secret


def _check_scope(scope: str, account_id: str | None) -> None:
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}", field="scope")
    if scope == "account" and not account_id:
        raise InvalidInput("an account-scoped key needs account_id", field="account_id")
    if scope != "account" and account_id:
        raise InvalidInput("only account-scoped keys take account_id", field="account_id")


async def create_api_key(
    pool: Any, scope: str, account_id: str | None = None, label: str = ""
) -> tuple[str, str]:
    """Create a key; return ``(key_id, plaintext)``. The plaintext is not stored.

    Raises:
        InvalidInput: unknown scope, or ``account_id`` missing/unexpected/unknown.
    """
    _check_scope(scope, account_id)
    async with pool.acquire() as conn:
        if account_id is not None:
            known = await conn.fetchval(
                "SELECT 1 FROM marketplace_accounts WHERE stripe_account_id = $1", account_id
            )
            if not known:
                raise InvalidInput(f"no connected account {account_id!r}", field="account_id")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        await conn.execute(
            "INSERT INTO marketplace_api_keys "
            "(key_id, secret_hash, scope, account_id, label, created_at) "
            "VALUES ($1, $2, $3, $4, $5, now())",
            key_id,
            hash_secret(secret),
            scope,
            account_id,
            label,
        )
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}"


async def ensure_api_key(pool: Any, plaintext: str, *, scope: str = "admin", label: str) -> str:
    """Make sure a key given in configuration exists and is active; return its key_id.

    Used for ``api.bootstrap_admin_key``: the configuration is the source of
    truth, so the row is (re)written with the configured secret and un-revoked.

    Raises:
        ConfigError: the key does not look like ``mk_<key_id>_<secret>``.
    """
    parsed = parse_api_key(plaintext)
    if parsed is None:
        raise ConfigError("api.bootstrap_admin_key", "must look like mk_<key_id>_<secret>")
    key_id, secret = parsed
    await pool.execute(
        "INSERT INTO marketplace_api_keys "
        "(key_id, secret_hash, scope, account_id, label, created_at) "
        "VALUES ($1, $2, $3, NULL, $4, now()) "
        "ON CONFLICT (key_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, "
        "scope = EXCLUDED.scope, account_id = NULL, revoked_at = NULL",
        key_id,
        hash_secret(secret),
        scope,
        label,
    )
    return key_id


async def find_api_key(pool: Any, key_id: str) -> ApiKeyRow | None:
    """The stored key ``key_id`` (revoked or not), or ``None``."""
    record = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM marketplace_api_keys WHERE key_id = $1",  # noqa: S608 - constant columns
        key_id,
    )
    return None if record is None else ApiKeyRow.from_record(record)


async def list_api_keys(
    pool: Any, *, after_id: int = 0, limit: int = 50
) -> tuple[Sequence[ApiKeyRow], int | None]:
    """Active keys in creation order after row ``after_id``; returns ``(rows, next_after_id)``."""
    records = await pool.fetch(
        f"SELECT id, {_COLUMNS} FROM marketplace_api_keys "  # noqa: S608 - constant columns
        "WHERE revoked_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
        after_id,
        limit + 1,
    )
    rows = [ApiKeyRow.from_record(record) for record in records[:limit]]
    next_after = int(records[limit - 1]["id"]) if len(records) > limit else None
    return rows, next_after


async def revoke_api_key(pool: Any, key_id: str) -> bool:
    """Revoke a key; ``False`` when there is no active key ``key_id``.

    Every API process drops its cached keys at once (the ``KEYS_SETTING`` live
    setting moves in the same transaction).
    """
    async with pool.acquire() as conn, conn.transaction():
        revoked = await conn.fetchval(
            "UPDATE marketplace_api_keys SET revoked_at = now() "
            "WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id",
            key_id,
        )
        if revoked is not None:
            await bump(conn, KEYS_SETTING)
    return revoked is not None
