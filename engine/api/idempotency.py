"""``Idempotency-Key`` on every authenticated POST: replay, reuse detection, in-flight guard.

Keys are scoped per API key. The first request with a key claims a row in
``marketplace_idempotency`` (``INSERT ... ON CONFLICT DO NOTHING``), runs, and
stores its response when it is the request's own final outcome: a 2xx, or a
4xx that the same request would get again. Never a 408 or 429, a 5xx, or an
error that says it is not final (``MarketplaceError.final``: an account not
ready yet, a Stripe failure, a balance not yet available); the claim is then
released and a retry with the key runs again. Later requests with that key:

- same method, path, query and body -> the stored response, byte for byte,
  with ``Idempotent-Replayed: true``;
- anything else -> ``422 idempotency_key_reused``;
- while the first is still running -> ``409 idempotency_request_in_progress``.

A 5xx (or a crash) releases the claim so the client can retry. A response is
replayed for ``api.idempotency_ttl_hours`` (>= 24); after that the same request
with the key runs again as a new request, while the key stays bound to its
request for ``FINGERPRINT_DAYS``: reused with another request in that time, it
is always ``422 idempotency_key_reused``. A claim left by a process that died
mid-request is taken over after ``STALE_CLAIM_SECONDS``. Keys are stored as a
SHA-256 digest with the API key's id, so any key up to ``MAX_KEY_LENGTH`` fits.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.params import HeaderParameter
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from engine.api.auth import Principal
from engine.api.problems import NOT_FINAL_SCOPE_KEY
from engine.core.errors import Conflict, IdempotencyConflict, InvalidInput

__all__ = [
    "FINGERPRINT_DAYS",
    "IDEMPOTENCY_HEADER",
    "MAX_KEY_LENGTH",
    "REPLAYED_HEADER",
    "STALE_CLAIM_SECONDS",
    "IdempotencyInProgress",
    "IdempotencyKeyHeader",
    "IdempotencyMiddleware",
    "request_fingerprint",
    "stored_key",
]

IDEMPOTENCY_HEADER: Final = "idempotency-key"

REPLAYED_HEADER: Final = "idempotent-replayed"
MAX_KEY_LENGTH: Final = 255
STALE_CLAIM_SECONDS: Final = 300
FINGERPRINT_DAYS: Final = 30
PURGE_INTERVAL_SECONDS: Final = 60.0

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        required=False,
        description=(
            "Makes the POST safe to retry: the same key with the same request replays the "
            "first response (header `Idempotent-Replayed: true`) for at least 24 hours, then "
            "runs as a new request; with another request it is refused (422) for 30 days. "
            "Only final outcomes are replayed: a 2xx or a 4xx the request would get again, "
            "never a 429, a 5xx or a state that may change (e.g. an account still "
            "onboarding). While the first request runs, the same key gets 409. Scoped to "
            "the API key."
        ),
    ),
]
"""Declare this on a POST handler so the header is documented (the middleware enforces it)."""


class IdempotencyInProgress(Conflict):
    """A request with the same ``Idempotency-Key`` is still being processed."""

    code = "idempotency_request_in_progress"
    title = "Request in progress"


@dataclass(slots=True)
class _Recorder:
    """Forwards the response to the client and keeps a copy of it."""

    send: Send
    status: int = 0
    content_type: str = ""
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-type":
                    self.content_type = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            self.chunks.append(bytes(message.get("body", b"")))
            self.complete = not message.get("more_body", False)
        await self.send(message)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class IdempotencyMiddleware(ASGIMiddleware):
    """Honour ``Idempotency-Key`` on authenticated POSTs (install after ``AuthMiddleware``).

    Args:
        pool: returns the asyncpg pool.
        ttl_hours: how long a stored response is replayed (>= 24).
        max_body_bytes: bodies larger than this are not buffered here; they
            pass through untouched and Litestar answers 413.
    """

    scopes = (ScopeType.HTTP,)
    # Stripe's deliveries are deduplicated by event id in the inbox, not by this header.
    exclude_path_pattern = ("^/webhooks/",)

    def __init__(self, pool: Callable[[], Any], *, ttl_hours: int, max_body_bytes: int) -> None:
        self._pool = pool
        self._ttl_seconds = ttl_hours * 3600
        self._max_body = max_body_bytes
        self._last_purge = 0.0

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Replay, refuse, or run the request and remember its response."""
        principal = scope.get("auth")
        key = _header(scope, b"idempotency-key")
        if scope.get("method") != "POST" or key is None or not isinstance(principal, Principal):
            await next_app(scope, receive, send)
            return
        _check_key(key)
        body, complete = await self._read_body(receive)
        replay_receive = _replaying(body, complete, receive)
        if not complete:  # over the limit: let Litestar refuse it with 413
            await next_app(scope, replay_receive, send)
            return
        scope_key = stored_key(principal.key_id, key)
        request_hash = request_fingerprint(
            str(scope.get("method", "")),
            str(scope.get("path", "")),
            bytes(scope.get("query_string", b"")),
            body,
        )
        pool = self._pool()
        await self._purge_expired(pool)
        record_id = await self._claim(pool, scope_key, request_hash)
        if record_id is None:
            await self._answer_existing(pool, scope_key, request_hash, send)
            return
        recorder = _Recorder(send)
        try:
            await next_app(scope, replay_receive, recorder)
        except BaseException:
            await pool.execute("DELETE FROM marketplace_idempotency WHERE id = $1", record_id)
            raise
        final = not scope.get(NOT_FINAL_SCOPE_KEY, False)
        await self._store(pool, record_id, recorder, final=final)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True
            chunk = bytes(message.get("body", b""))
            chunks.append(chunk)
            size += len(chunk)
            if size > self._max_body:
                return b"".join(chunks), False
            if not message.get("more_body", False):
                return b"".join(chunks), True

    async def _purge_expired(self, pool: Any) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_SECONDS:
            return
        self._last_purge = now
        # Expired responses are never replayed; their keys stay bound to their
        # request for FINGERPRINT_DAYS, then go.
        await pool.execute(
            "DELETE FROM marketplace_idempotency "
            "WHERE created_at < now() - make_interval(secs => $1)",
            float(max(self._ttl_seconds, FINGERPRINT_DAYS * 86_400)),
        )
        await pool.execute(
            "UPDATE marketplace_idempotency SET response_body = '' "
            "WHERE created_at < now() - make_interval(secs => $1) AND response_body <> ''",
            float(self._ttl_seconds),
        )

    async def _claim(self, pool: Any, scope_key: str, request_hash: str) -> int | None:
        """Insert an in-flight record; take over an expired or abandoned one."""
        async with pool.acquire() as conn:
            record_id = await conn.fetchval(
                "INSERT INTO marketplace_idempotency "
                "(scope_key, request_hash, status_code, response_body, content_type, created_at) "
                "VALUES ($1, $2, 0, '', '', now()) "
                "ON CONFLICT (scope_key) DO UPDATE SET "
                "request_hash = EXCLUDED.request_hash, status_code = 0, response_body = '', "
                "content_type = '', created_at = now() "
                "WHERE marketplace_idempotency.request_hash = EXCLUDED.request_hash AND ("
                "marketplace_idempotency.created_at < now() - make_interval(secs => $3) "
                "OR (marketplace_idempotency.status_code = 0 "
                "AND marketplace_idempotency.created_at < now() - make_interval(secs => $4))) "
                "RETURNING id",
                scope_key,
                request_hash,
                float(self._ttl_seconds),
                float(STALE_CLAIM_SECONDS),
            )
        return None if record_id is None else int(record_id)

    async def _answer_existing(
        self, pool: Any, scope_key: str, request_hash: str, send: Send
    ) -> None:
        record = await pool.fetchrow(
            "SELECT request_hash, status_code, response_body, content_type "
            "FROM marketplace_idempotency WHERE scope_key = $1",
            scope_key,
        )
        if record is None:  # released (5xx) between our claim and this read
            raise IdempotencyInProgress(
                "a request with this Idempotency-Key just failed; retry it",
            )
        if record["request_hash"] != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request "
                "(method, path or body); use a new key for a new request"
            )
        if record["status_code"] == 0:
            raise IdempotencyInProgress(
                "a request with this Idempotency-Key is still in progress; retry later"
            )
        body = str(record["response_body"]).encode("utf-8")
        content_type = str(record["content_type"] or "application/json")
        await send(
            {
                "type": "http.response.start",
                "status": int(record["status_code"]),
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                    (REPLAYED_HEADER.encode(), b"true"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _store(self, pool: Any, record_id: int, recorder: _Recorder, *, final: bool) -> None:
        body = b"".join(recorder.chunks)
        storable = recorder.complete and final and _final_status(recorder.status)
        try:
            text = body.decode("utf-8") if storable else ""
        except UnicodeDecodeError:  # only text bodies are kept; a binary answer is not replayed
            storable = False
            text = ""
        if not storable:
            await pool.execute("DELETE FROM marketplace_idempotency WHERE id = $1", record_id)
            return
        await pool.execute(
            "UPDATE marketplace_idempotency "
            "SET status_code = $2, response_body = $3, content_type = $4 WHERE id = $1",
            record_id,
            recorder.status,
            text,
            recorder.content_type,
        )


def stored_key(key_id: str, key: str) -> str:
    """How a client's key is stored: its digest, scoped to the API key (fixed length)."""
    return f"{key_id}:{hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def _final_status(status: int) -> bool:
    """Statuses that are a request's outcome: 2xx, and 4xx but 408 and 429 (try again)."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in {408, 429})


def _check_key(key: str) -> None:
    if not key.strip() or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters",
            field="Idempotency-Key",
        )


def request_fingerprint(method: str, path: str, query_string: bytes, body: bytes) -> str:
    """What makes two requests "the same" for an Idempotency-Key (hex SHA-256)."""
    digest = hashlib.sha256()
    digest.update(f"{method}\n{path}?".encode())
    digest.update(query_string)
    digest.update(b"\n")
    digest.update(body)
    return digest.hexdigest()


def _replaying(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A ``receive`` that hands the buffered body on first, then defers to the real one."""
    sent = False

    async def replay() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay
