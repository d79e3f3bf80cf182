"""Admin API for API keys: create (plaintext shown once), list, revoke."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter

from engine.api.auth import KeyStore, requires_scope
from engine.api.fields import Label, Line
from engine.api.idempotency import IdempotencyKeyHeader
from engine.api.keys import Scope, create_api_key, find_api_key, list_api_keys, revoke_api_key
from engine.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from engine.api.problems import problem_responses
from engine.core.errors import NotFound
from engine.services import Services

__all__ = ["ApiKeyController", "ApiKeyCreated", "ApiKeyInfo", "ApiKeyList", "NewApiKey"]

KeyId = Annotated[str, PathParameter(pattern=r"^[A-Za-z0-9]{1,32}$", description="The key's id")]


class NewApiKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A key to create; ``account`` keys name their connected account."""

    scope: Scope
    account_id: Annotated[Line, msgspec.Meta(min_length=1, max_length=64)] | None = None
    label: Label = ""


class ApiKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A key as listed (never its secret)."""

    key_id: str
    scope: str
    account_id: str | None
    label: str
    created_at: datetime


class ApiKeyCreated(ApiKeyInfo, frozen=True, kw_only=True):
    """A new key; ``key`` (``mk_<key_id>_<secret>``) is shown this once only."""

    key: str


class ApiKeyList(msgspec.Struct, frozen=True, kw_only=True):
    """A page of active keys."""

    data: list[ApiKeyInfo]
    next_cursor: str | None


def _keys(request: Request[Any, Any, Any]) -> KeyStore:
    keys: KeyStore = request.app.state["api_keys"]
    return keys


class ApiKeyController(Controller):
    """API keys (admin keys only)."""

    path = "/v1/api-keys"
    tags = ["api keys"]
    guards = [requires_scope()]

    @post(
        "/",
        operation_id="createApiKey",
        summary="Create an API key",
        responses=problem_responses(400, 401, 403, 409, 413, 422),
    )
    async def create(
        self,
        services: NamedDependency[Services],
        data: JSONBody[NewApiKey],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> ApiKeyCreated:
        """Create a key of a scope; the plaintext ``key`` is in this response only."""
        pool = services.db.pool
        key_id, plaintext = await create_api_key(pool, data.scope, data.account_id, data.label)
        row = await find_api_key(pool, key_id)
        if row is None:  # created a moment ago in the same database
            raise NotFound(f"no API key {key_id!r}")
        return ApiKeyCreated(
            key_id=row.key_id,
            scope=row.scope,
            account_id=row.account_id,
            label=row.label,
            created_at=row.created_at,
            key=plaintext,
        )

    @get(
        "/",
        operation_id="listApiKeys",
        summary="List active API keys",
        responses=problem_responses(400, 401, 403),
    )
    async def list_keys(
        self, services: NamedDependency[Services], limit: Limit = 50, cursor: Cursor = None
    ) -> ApiKeyList:
        """Active keys in creation order, without secrets (cursor pagination)."""
        rows, next_after = await list_api_keys(
            services.db.pool, after_id=decode_cursor(cursor), limit=limit
        )
        return ApiKeyList(
            data=[
                ApiKeyInfo(
                    key_id=row.key_id,
                    scope=row.scope,
                    account_id=row.account_id,
                    label=row.label,
                    created_at=row.created_at,
                )
                for row in rows
            ],
            next_cursor=encode_cursor(next_after),
        )

    @delete(
        "/{key_id:str}",
        operation_id="revokeApiKey",
        summary="Revoke an API key",
        responses=problem_responses(400, 401, 403, 404),
    )
    async def revoke(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], key_id: KeyId
    ) -> None:
        """Revoke a key at once (other API processes stop accepting it within seconds)."""
        if not await revoke_api_key(services.db.pool, key_id):
            raise NotFound(f"no active API key {key_id!r}", key_id=key_id)
        _keys(request).forget(key_id)
