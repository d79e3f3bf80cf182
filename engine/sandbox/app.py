"""The ASGI app: authentication, routing, idempotency, errors, expansion, persistence.

A small raw ASGI app (no framework) because every request of every end-to-end
suite goes through it: the hot path is decode form -> handler -> encode JSON.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import logging
import pickle
import random
import re
import string
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from engine.sandbox import control, schema
from engine.sandbox.clock import PAYOUT_RUN, run_due
from engine.sandbox.errors import StripeError, authentication, unrecognized_url
from engine.sandbox.events import WebhookDispatcher
from engine.sandbox.ledger import make_available
from engine.sandbox.objects import API_VERSION
from engine.sandbox.resources import (
    accounts,
    customers,
    events,
    files,
    payments,
    payouts,
    persons,
    setup_intents,
    test_clocks,
    transfers,
)
from engine.sandbox.routing import Registry, Route, Router
from engine.sandbox.state import IdempotentResult, SandboxState, Store
from engine.sandbox.wire import Call, expand, parse_form, parse_multipart

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("engine.sandbox")

ROUTES: tuple[Route, ...] = (
    *accounts.ROUTES,
    *customers.ROUTES,
    *payments.ROUTES,
    *setup_intents.ROUTES,
    *persons.ROUTES,
    *files.ROUTES,
    *transfers.ROUTES,
    *payouts.ROUTES,
    *events.ROUTES,
    *test_clocks.ROUTES,
)
JOBS = {
    "txn_available": make_available,
    "auth_expiry": payments.expire_authorisation,
    "dispute_decision": payments.decide_dispute,
    payments.REFUND_FAIL_JOB: payments.fail_refund,
    "payout_process": payouts.process_payout,
    "payout_paid": payouts.payout_paid,
    PAYOUT_RUN: payouts.run_schedules,
}
EXTENSIONS = ("engine.sandbox.billing",)
"""Optional modules with `install(registry)`, loaded when present (billing lands later)."""

_ID_CHARS = string.ascii_letters + string.digits
_JSON = b"application/json"
_CONTENTS = re.compile(r"^/v1/files/file_[A-Za-z0-9]+/contents$")
_VERSION = API_VERSION.encode()


REQUEST_LOG_SIZE = 5000
"""API requests ``GET /_sandbox/requests`` remembers."""


@dataclass(slots=True)
class Hold:
    """Requests to one API path held back until ``released`` is set."""

    released: asyncio.Event
    waiting: int = 0


@dataclass(slots=True)
class Request:
    """One HTTP request as read from ASGI."""

    scope: Scope
    method: str
    path: str
    body: bytes
    headers: dict[bytes, bytes]
    query: str
    request_id: str

    @property
    def fingerprint(self) -> str:
        """What must match for an idempotent replay: endpoint and exact parameters."""
        return f"{self.method} {self.path}\n" + self.body.decode("latin-1")


class SandboxApp:
    """ASGI callable serving Stripe's API from a `SandboxState`."""

    def __init__(self, state: SandboxState, persist_path: Path | None = None) -> None:
        self.state = state
        self.router = Router()
        for route in ROUTES:
            self.router.add(route)
        state.job_handlers.update(JOBS)
        self.registry = Registry(state, self.router)
        self._load_extensions()
        self.dispatcher = WebhookDispatcher(state)
        self.persist_path = persist_path
        self._saver: asyncio.Task[None] | None = None
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        """The latest API requests, oldest first (Stripe's dashboard keeps a request log too):
        what a test reads through ``GET /_sandbox/requests`` to see what the engine asked."""
        self._request_seq = 0
        self._listed: int | None = None
        self.holds: dict[str, Hold] = {}
        """API paths whose requests wait, before they are served, until released
        (``/_sandbox/holds``): Stripe answering slowly, at the moment a test chooses."""
        if persist_path is not None and persist_path.exists():
            self._load(persist_path)

    # -- extensions and persistence ------------------------------------------------------

    def _load_extensions(self) -> None:
        for name in EXTENSIONS:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
                continue
            install = getattr(module, "install", None)
            if callable(install):
                install(self.registry)

    def _load(self, path: Path) -> None:
        with path.open("rb") as handle:
            # The file is one this sandbox wrote itself (a local dev convenience).
            store = pickle.load(handle)  # noqa: S301
        if not isinstance(store, Store):
            return
        if store.api_version != API_VERSION:
            # Objects saved in another API version's shapes would be served as they are.
            log.warning(
                "sandbox state in %s was saved in Stripe API version %s, not %s: starting afresh",
                path,
                store.api_version or "an older one",
                API_VERSION,
            )
            return
        self.state.load(store)

    def save(self) -> None:
        """Write the state to `persist_path` (atomically)."""
        if self.persist_path is None:
            return
        tmp = self.persist_path.with_suffix(self.persist_path.suffix + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            pickle.dump(self.state.store, handle, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(self.persist_path)
        self.state.dirty = False

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.state.dirty:
                self.save()

    def after_change(self) -> None:
        """Run newly due jobs and start webhook deliveries (call in the event loop)."""
        run_due(self.state)
        self.dispatcher.pump()

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.persist_path is not None:
                    self._saver = asyncio.get_running_loop().create_task(self._save_periodically())
                self.dispatcher.pump()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._saver is not None:
                    self._saver.cancel()
                self.save()
                await self.dispatcher.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = Request(
            scope=scope,
            method=scope["method"],
            path=scope["path"],
            body=body,
            headers=dict(scope["headers"]),
            query=scope.get("query_string", b"").decode("latin-1"),
            request_id="req_" + "".join(random.choices(_ID_CHARS, k=14)),
        )
        if request.path.startswith("/_sandbox"):
            await self._control(request, send)
            return
        hold = self.holds.get(request.path)
        if hold is not None:
            hold.waiting += 1
            try:
                await hold.released.wait()
            finally:
                hold.waiting -= 1
        extra: list[tuple[bytes, bytes]] = []
        content_type = _JSON
        try:
            if request.method == "GET" and _CONTENTS.match(request.path):
                status, payload, content_type = self._file_contents(request)
            else:
                status, payload, extra = self._api(request)
        except StripeError as err:
            status, payload = err.status, msgspec.json.encode(err.body(request.request_id))
            content_type = _JSON
        response_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(payload)).encode()),
            (b"request-id", request.request_id.encode()),
            (b"stripe-version", _VERSION),
            *extra,
        ]
        self._log_request(request, status)
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": payload})
        self.dispatcher.pump()

    def hold(self, path: str) -> Hold:
        """Hold the API requests to ``path`` (exact) until ``release_holds``."""
        return self.holds.setdefault(path, Hold(asyncio.Event()))

    def release_holds(self, path: str | None = None) -> None:
        """Let the requests held on ``path`` (every path when None) through; hold no more."""
        for held in [path] if path is not None else list(self.holds):
            found = self.holds.pop(held, None)
            if found is not None:
                found.released.set()

    def _log_request(self, request: Request, status: int) -> None:
        self._request_seq += 1
        account = request.headers.get(b"stripe-account", b"").decode("latin-1")
        self.requests.append(
            {
                "seq": self._request_seq,
                "id": request.request_id,
                "method": request.method,
                "path": request.path,
                "query": request.query,
                "account": account or None,
                "status": status,
                "listed": self._listed,
            }
        )
        self._listed = None

    def _api(self, request: Request) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        state = self.state
        method, path, headers = request.method, request.path, request.headers
        _authenticate(headers.get(b"authorization", b"").decode("latin-1"))
        _check_version(headers.get(b"stripe-version"))
        account, connected = self._account(headers)
        if state.faults:
            raise _fault(state.faults.pop(0))
        found = self.router.match(method, path)
        if found is None:
            raise unrecognized_url(method, path)
        route, args = found
        key = headers.get(b"idempotency-key", b"").decode() or None
        extra: list[tuple[bytes, bytes]] = []
        idem_slot = None
        if key is not None and method == "POST":
            extra.append((b"idempotency-key", key.encode()))
            idem_slot = (account, key)
            stored = state.store.idempotency.get(idem_slot)
            if stored is not None:
                if stored.fingerprint != request.fingerprint:
                    raise StripeError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with. Try using a key other than "
                        f"'{key}' if you meant to execute a different request.",
                        type_="idempotency_error",
                        store_idempotent=False,
                    )
                extra.append((b"idempotent-replayed", b"true"))
                return stored.status, stored.body, extra
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if method == "POST" and content_type.startswith("multipart/form-data"):
            params = parse_multipart(request.body, content_type)
        else:
            raw = request.query if method in ("GET", "DELETE") else request.body.decode("latin-1")
            params = parse_form(raw)
        run_due(state)
        state.current_request = (request.request_id, key)
        try:
            schema.validate(params, route.params)
            expansions = [str(e) for e in _as_list(params.pop("expand", None))]
            base_url = _base_url(request.scope, headers)
            state.base_url = base_url
            call = Call(
                state=state,
                method=method,
                path=path,
                account=account,
                params=params,
                args=args,
                base_url=base_url,
                request_id=request.request_id,
                idempotency_key=key,
                connected=connected,
            )
            result = route.handler(call)
            if isinstance(result, dict) and result.get("object") == "list":
                self._listed = len(result.get("data") or ())
            if expansions:
                result = expand(state, result, expansions)
            status, payload = call.status, msgspec.json.encode(result)
        except StripeError as err:
            if idem_slot is not None and err.store_idempotent:
                error_body = msgspec.json.encode(err.body(request.request_id))
                self._remember(idem_slot, request, err.status, error_body)
            raise
        finally:
            state.current_request = (None, None)
        if method != "GET":
            state.dirty = True
        if idem_slot is not None:
            self._remember(idem_slot, request, status, payload)
        run_due(state)
        return status, payload, extra

    def _file_contents(self, request: Request) -> tuple[int, bytes, bytes]:
        """`GET /v1/files/{id}/contents`: an uploaded file's bytes (Stripe's files host)."""
        _authenticate(request.headers.get(b"authorization", b"").decode("latin-1"))
        account, _ = self._account(request.headers)
        file_id = request.path.split("/")[3]
        content, kind = files.file_contents(self.state, account, file_id)
        return 200, content, kind.encode()

    def _remember(
        self, slot: tuple[str, str], request: Request, status: int, payload: bytes
    ) -> None:
        store = self.state.store.idempotency
        store[slot] = IdempotentResult(
            request.method, request.path, request.fingerprint, status, payload
        )
        while len(store) > self.state.options.idempotency_capacity:
            store.popitem(last=False)

    def _account(self, headers: dict[bytes, bytes]) -> tuple[str, bool]:
        state = self.state
        raw = headers.get(b"stripe-account")
        if not raw:
            return state.platform_id, False
        account_id = raw.decode("latin-1").strip()
        if account_id == state.platform_id:
            return account_id, False
        if (
            state.store.kind.get(account_id) != "account"
            or account_id not in state.objects
            or state.owner_of(account_id) != state.platform_id
        ):
            raise StripeError(
                403,
                "The provided key does not have access to account "
                f"'{account_id}' (or that account does not exist). Application access may "
                "have been revoked.",
                code="account_invalid",
                store_idempotent=False,
            )
        return account_id, True

    async def _control(self, request: Request, send: Send) -> None:
        try:
            response = await control.handle(
                self,
                request.method,
                request.path,
                request.body,
                request.headers.get(b"content-type", b"").decode(),
                request.query,
            )
        except StripeError as err:
            response = control.ControlResponse(
                err.status, msgspec.json.encode(err.body(request.request_id))
            )
        extra = [(b"location", response.location.encode())] if response.location else []
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.content_type),
                    (b"content-length", str(len(response.body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})
        self.dispatcher.pump()


def _fault(status: int) -> StripeError:
    if status == 429:
        return StripeError(
            429,
            "Too many requests hit the API too quickly. We recommend an exponential backoff "
            "of your requests.",
            code="rate_limit",
            store_idempotent=False,
        )
    return StripeError(
        status,
        "Something went wrong on Stripe's end (sandbox fault injection).",
        type_="api_error",
        store_idempotent=False,
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _authenticate(header: str) -> None:
    scheme, _, credentials = header.partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = credentials.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(credentials).decode().partition(":")[0]
        except ValueError:
            key = ""
    if not key.startswith(("sk_test_", "rk_test_")) or len(key) <= len("sk_test_"):
        raise authentication(key)


def _check_version(header: bytes | None) -> None:
    """A request in another API version would expect other shapes: refuse it (400)."""
    if header is None or header == _VERSION:
        return
    asked = header.decode("latin-1").strip()
    raise StripeError(
        400,
        f"This sandbox speaks Stripe API version {API_VERSION} only; the request asked for "
        f"Stripe-Version {asked}. Use the stripe SDK whose api_version is {API_VERSION}, "
        "or send that version.",
        param="Stripe-Version",
        code="api_version_unsupported",
        store_idempotent=False,
    )


def _base_url(scope: Scope, headers: dict[bytes, bytes]) -> str:
    host = headers.get(b"host", b"").decode("latin-1")
    if not host and scope.get("server"):
        server_host, server_port = scope["server"]
        host = f"{server_host}:{server_port}"
    return f"{scope.get('scheme', 'http')}://{host}"


def create_app(
    *, state: SandboxState | None = None, persist_path: Path | None = None
) -> SandboxApp:
    """The sandbox as an ASGI app (a fresh `SandboxState` unless one is given)."""
    return SandboxApp(state or SandboxState(), persist_path)
