"""The HTTP API on real PostgreSQL and NATS: problems, keys and scopes, idempotency, probes.

Each test gets a fresh migrated database and an app from
``create_app_from_settings`` driven by Litestar's ``AsyncTestClient`` (the app
runs its own lifespan, so its pools live on the client's event loop); test
set-up and assertions use a separate asyncpg connection. Stripe is not needed
here (accounts are inserted as rows); ``test_api_accounts.py`` covers onboarding
against the sandbox.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar, get, post
from litestar.params import JSONBody
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from engine.api.app import create_app, create_app_from_settings
from engine.api.idempotency import request_fingerprint, stored_key
from engine.core.db import migrate
from engine.core.errors import AccountNotReady, ConfigError, RateLimited
from engine.core.plugins import build_plugins, hookimpl
from engine.core.settings import Settings, settings_from_mapping
from engine.services import Services
from engine.worker.heartbeat import Heartbeat

ADMIN_KEY = "mk_testadmin_" + "a" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROBLEM = "application/problem+json"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_settings(
    database_url: str, nats_url: str, stream: str, **sections: Mapping[str, Any]
) -> Settings:
    """Test settings: the bootstrap admin key, a unique NATS stream, no real Stripe."""
    raw: dict[str, Any] = {
        "engine": {"public_url": "http://marketplace.test"},
        "api": {"bootstrap_admin_key": ADMIN_KEY},
        "database": {"url": database_url, "pool_min": 1, "pool_max": 4},
        "nats": {"url": nats_url, "stream": stream},
        "stripe": {
            "secret_key": "sk_test_api",
            "api_base": f"http://127.0.0.1:{_closed_port()}",
            "max_network_retries": 0,
        },
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return settings_from_mapping(raw)


class BoomPlugin:
    """A plugin whose route fails unexpectedly (and whose routes must be protected)."""

    @hookimpl
    def register_routes(self, register: Any) -> None:
        register(boom)
        register(not_ready_yet)
        register(too_busy)


READY: dict[str, bool] = {}


@post("/v1/boom/orders", operation_id="boomOrder", sync_to_thread=False)
def not_ready_yet(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    """Refuses while the seller is onboarding (a state that changes), then takes the order."""
    if not READY.get(str(data.get("seller"))):
        raise AccountNotReady("the seller is still onboarding")
    return {"order": data.get("seller")}


@post("/v1/boom/busy", operation_id="boomBusy", sync_to_thread=False)
def too_busy() -> None:
    """Always asks the client to slow down."""
    raise RateLimited("slow down")


@get("/v1/boom", operation_id="boom", sync_to_thread=False)
def boom() -> None:
    """Fails with an internal detail that must not reach the client."""
    raise RuntimeError("password=hunter2 in /srv/secret.py")


@dataclass
class Api:
    """A running app, its client and a direct database connection."""

    app: Litestar
    client: AsyncTestClient[Litestar]
    db: asyncpg.Connection
    settings: Settings

    async def key(self, scope: str, account_id: str | None = None) -> str:
        """A new key through the admin API."""
        body: dict[str, Any] = {"scope": scope, "label": f"test {scope}"}
        if account_id:
            body["account_id"] = account_id
        response = await self.client.post("/v1/api-keys", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        return str(response.json()["key"])


async def insert_account(db: asyncpg.Connection, account_id: str, role: str = "creator") -> None:
    await db.execute(
        "INSERT INTO marketplace_accounts (stripe_account_id, role, display_name, email, "
        "country, default_currency, status, requirements_due, created_at, updated_at) "
        "VALUES ($1, $2, $3, '', 'US', 'usd', 'onboarding', '[]'::jsonb, now(), now())",
        account_id,
        role,
        f"{role} {account_id}",
    )


@pytest.fixture
async def api(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Api]:
    enabled = [*Settings().plugins.enabled, "boom"]
    settings = make_settings(
        fresh_database_url, nats_url, unique_name.upper(), plugins={"enabled": enabled}
    )
    plugins = build_plugins(settings, extra={"boom": BoomPlugin()})
    await migrate(fresh_database_url, plugins.table_apps())
    app = create_app_from_settings(settings, plugins=plugins)
    db = await asyncpg.connect(fresh_database_url)
    try:
        async with AsyncTestClient(app) as client:
            yield Api(app=app, client=client, db=db, settings=settings)
    finally:
        await db.close()


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"https://marketplace.dev/problems/{code}"
    assert body["title"]
    assert body["detail"]
    assert body["instance"].startswith("/")
    return body


# ------------------------------------------------------------------ probes


async def test_health_is_public_and_always_ok(api: Api) -> None:
    response = await api.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_database_and_nats_answer(api: Api) -> None:
    response = await api.client.get("/ready")
    assert response.status_code == 200, response.text
    # No worker runs here: reported, but not required by default (API instances
    # take webhooks durably while workers restart).
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "nats": "ok", "workers": "unavailable"},
        "reasons": {"workers": "no worker is running"},
    }


async def _ready_with_worker_required(
    database_url: str, nats_url: str, stream: str
) -> tuple[Services, httpx.AsyncClient, Litestar]:
    settings = make_settings(database_url, nats_url, stream, api={"ready_requires_worker": True})
    await migrate(database_url)
    services = await Services.start(settings, plugins=build_plugins(settings))
    app = create_app(services, webhooks=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")
    return services, client, app


async def test_ready_follows_the_worker_when_required(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> None:
    services, client, app = await _ready_with_worker_required(
        fresh_database_url, nats_url, unique_name.upper()
    )
    try:
        async with app.lifespan(), client:
            body = assert_problem(await client.get("/ready"), 503, "not_ready")
            assert body["unavailable"] == ["workers"]
            assert body["detail"] == "workers: no worker is running"

            pulled = time.monotonic()
            beat = Heartbeat(services.db.pool, "w1", lambda: pulled)
            await beat.beat()
            assert (await client.get("/ready")).status_code == 200

            # A worker whose receiver stopped pulling long ago (stuck, or NATS gone).
            stuck = Heartbeat(services.db.pool, "w1", lambda: pulled - 3600)
            await stuck.beat()
            body = assert_problem(await client.get("/ready"), 503, "not_ready")
            assert body["reasons"]["workers"].startswith("worker w1 has not pulled from NATS for")

            # A worker that died: its heartbeat stops.
            await services.db.pool.execute(
                "UPDATE marketplace_workers SET last_seen_at = now() - interval '5 minutes', "
                "last_pull_at = now() - interval '5 minutes'"
            )
            body = assert_problem(await client.get("/ready"), 503, "not_ready")
            assert body["reasons"]["workers"].startswith("worker w1 stopped reporting")

            await beat.beat()
            await beat.stopped()
            body = assert_problem(await client.get("/ready"), 503, "not_ready")
            assert body["reasons"]["workers"] == "no worker is running"
    finally:
        await services.close()


async def test_ready_is_503_naming_the_database_when_it_refuses_connections(api: Api) -> None:
    name = api.settings.database.url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(api.settings.database.url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        response = await api.client.get("/ready")
        body = assert_problem(response, 503, "not_ready")
        assert body["unavailable"] == ["database"]
        assert body["checks"] == {"database": "unavailable", "nats": "ok"}
        assert body["detail"] == "database: unavailable"
        assert (await api.client.get("/health")).status_code == 200
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    api.db = await asyncpg.connect(api.settings.database.url)


async def test_ready_is_503_naming_nats_when_it_is_disconnected(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> None:
    # The stateless factory: the caller owns Services (same event loop, so the
    # test can cut NATS under the running app).
    settings = make_settings(fresh_database_url, nats_url, unique_name.upper())
    await migrate(fresh_database_url)
    services = await Services.start(settings, plugins=build_plugins(settings))
    try:
        app = create_app(services, webhooks=False)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.lifespan(),
            httpx.AsyncClient(transport=transport, base_url="http://api.test") as client,
        ):
            assert (await client.get("/ready")).status_code == 200
            assert services.nats is not None
            await services.nats.close()
            body = assert_problem(await client.get("/ready"), 503, "not_ready")
            assert body["unavailable"] == ["nats"]
            assert (await client.get("/health")).status_code == 200
            # The bootstrap admin key was ensured by the lifespan.
            assert (await client.get("/v1/api-keys", headers=ADMIN)).status_code == 200
    finally:
        await services.close()


# ------------------------------------------------------------------ problems


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b"{", "malformed_body", "body"),
        (b"not json at all", "malformed_body", "body"),
        (b"\xff\xfe\x00", "malformed_body", "body"),
        (b"[]", "validation_error", "body"),
        (b"{}", "validation_error", "scope"),
        (b'{"scope": 7}', "validation_error", "scope"),
        (b'{"scope": "root"}', "validation_error", "scope"),
        (b'{"scope": "service", "label": "' + b"x" * 201 + b'"}', "validation_error", "label"),
        (b'{"scope": "service", "colour": "red"}', "validation_error", "colour"),
        (b'{"scope": "account"}', "invalid_input", "account_id"),
        (b'{"scope": "service", "account_id": "acct_1"}', "invalid_input", "account_id"),
    ],
)
async def test_malformed_body_is_a_problem_naming_the_field(
    api: Api, body: bytes, code: str, field: str
) -> None:
    response = await api.client.post(
        "/v1/api-keys", content=body, headers={**ADMIN, "content-type": "application/json"}
    )
    problem = assert_problem(response, 422 if code == "validation_error" else 400, code)
    fields = [error["field"] for error in problem.get("errors", [])] or [problem.get("field")]
    assert field in fields, problem


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"role": "Landlord!", "display_name": "x"}, "role"),
        ({"role": "creator"}, "display_name"),
        ({"role": "creator", "display_name": ""}, "display_name"),
        ({"role": "creator", "display_name": "x", "email": "not-an-email"}, "email"),
        ({"role": "creator", "display_name": "x", "country": "usa"}, "country"),
        (
            {"role": "creator", "display_name": "x", "default_currency": "dollars"},
            "default_currency",
        ),
    ],
)
async def test_account_validation_names_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    response = await api.client.post("/v1/accounts", json=body, headers=ADMIN)
    problem = assert_problem(response, 422, "validation_error")
    assert [error["field"] for error in problem["errors"]] == [field]
    assert problem["errors"][0]["source"] == "body"


NUL = "a\u0000b"


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "source"),
    [
        (
            "POST",
            "/v1/creator_subscriptions/fans",
            {"external_ref": "r", "email": NUL},
            "email",
            "body",
        ),
        ("POST", "/v1/three_sided_bookings/bookings/1/messages", {"text": NUL}, "text", "body"),
        ("PATCH", "/v1/three_sided_bookings/services/1", {"name": NUL}, "name", "body"),
        ("GET", "/v1/commission_rules/versions?rule_id=%00", None, "rule_id", "query"),
        ("GET", "/v1/commission_rules/versions?rule_id=a%00b", None, "rule_id", "query"),
        ("POST", "/v1/admin/webhooks/dead-letters/evt_%00/replay", None, "event_id", "path"),
        (
            "POST",
            "/v1/commission_rules/explain",
            {"plugin": "x", "amount": 1, "currency": "gbp", "beneficiaries": {NUL: "acct_1"}},
            "beneficiaries",
            "body",
        ),
        ("POST", "/v1/accounts/acct_1/suspend", {"reason": NUL}, "reason", "body"),
    ],
)
async def test_a_nul_character_anywhere_is_a_422_naming_the_field(
    api: Api, *, method: str, path: str, body: Any, field: str, source: str
) -> None:
    # PostgreSQL refuses NUL in text: these answered 500 before the schemas said so.
    response = await api.client.request(method, path, json=body, headers=ADMIN)
    problem = assert_problem(response, 422, "validation_error")
    [error] = problem["errors"]
    assert (error["field"], error["source"]) == (field, source), problem
    assert "NUL" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("PATCH", "/v1/three_sided_bookings/services/1", {"active": 0}, "active"),
        ("PATCH", "/v1/three_sided_bookings/services/1", {"active": "true"}, "active"),
        ("PATCH", "/v1/three_sided_bookings/services/1", {"price": "5000"}, "price"),
        (
            "POST",
            "/v1/creator_subscriptions/subscriptions",
            {"fan_id": "1", "tier_id": 1},
            "fan_id",
        ),
        (
            "POST",
            "/v1/creator_subscriptions/subscriptions",
            {"fan_id": 1.0, "tier_id": 1},
            "fan_id",
        ),
        ("POST", "/v1/api-keys", {"scope": "service", "label": 7}, "label"),
        ("PATCH", "/v1/three_sided_bookings/services/1", {"price": 5000, "colour": 1}, "colour"),
        (
            "POST",
            "/v1/three_sided_bookings/bookings/1/actions/complete",
            {"amount": 7000, "tip": 1},
            "tip",
        ),
        ("POST", "/v1/creator_subscriptions/fans", {"external_ref": "r" * 201}, "external_ref"),
        ("POST", "/v1/three_sided_bookings/bookings/1/messages", {"text": "x" * 2001}, "text"),
    ],
)
async def test_json_bodies_are_strict_and_closed(
    api: Api, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    # JSON has its own types: 0 is not false, "1" not 1; an unknown field is never ignored.
    response = await api.client.request(method, path, json=body, headers=ADMIN)
    problem = assert_problem(response, 422, "validation_error")
    assert [error["field"] for error in problem["errors"]] == [field], problem


async def test_query_integers_still_arrive_as_text(api: Api) -> None:
    response = await api.client.get("/v1/accounts?limit=1", headers=ADMIN)
    assert response.status_code == 200, response.text


async def test_a_role_no_plugin_declared_is_refused(api: Api) -> None:
    body = {"role": "landlord", "display_name": "x"}
    response = await api.client.post("/v1/accounts", json=body, headers=ADMIN)
    problem = assert_problem(response, 400, "unknown_role")
    assert problem["field"] == "role"
    assert "creator" in problem["detail"]


async def test_unknown_currency_is_a_problem_before_stripe_is_called(api: Api) -> None:
    body = {"role": "creator", "display_name": "x", "default_currency": "xyz"}
    response = await api.client.post("/v1/accounts", json=body, headers=ADMIN)
    assert assert_problem(response, 400, "unknown_currency")["field"] == "default_currency"


async def test_malformed_json_on_every_post_route_is_never_a_server_error(api: Api) -> None:
    for path, _ in _routes(api.app, "POST"):
        response = await api.client.post(
            path, content=b'{"a": ', headers={**ADMIN, "content-type": "application/json"}
        )
        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith(PROBLEM), path


async def test_options_lists_every_method_of_the_path(api: Api) -> None:
    # Litestar 2 kept the first handler's methods in Allow (GET, OPTIONS on GET+POST paths).
    schema = (await api.client.get("/schema/openapi.json")).json()
    checked = 0
    for template, item in schema["paths"].items():
        methods = {method.upper() for method in item if method in _HTTP_METHODS}
        path = re.sub(r"\{[^}]+\}", "1", template)
        response = await api.client.options(path)  # public: it only lists methods
        assert response.status_code == 204, (template, response.text)
        allow = {method.strip() for method in response.headers["allow"].split(",")}
        assert allow == methods | {"OPTIONS"}, template
        checked += 1
    assert checked > 50


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head"})


async def test_bad_query_and_path_parameters_are_problems(api: Api) -> None:
    problem = assert_problem(
        await api.client.get("/v1/accounts?limit=1000", headers=ADMIN), 422, "validation_error"
    )
    assert problem["errors"] == [
        {"field": "limit", "message": "Expected `int` <= 100", "source": "query"}
    ]
    problem = assert_problem(
        await api.client.get("/v1/accounts?cursor=garbage", headers=ADMIN), 400, "invalid_input"
    )
    assert problem["field"] == "cursor"
    problem = assert_problem(
        await api.client.get("/v1/accounts/not-an-account", headers=ADMIN),
        422,
        "validation_error",
    )
    assert problem["errors"][0]["field"] == "account_id"
    assert problem["errors"][0]["source"] == "path"


async def test_unknown_route_and_method_are_problems(api: Api) -> None:
    assert_problem(await api.client.get("/v1/nothing-here", headers=ADMIN), 404, "not_found")
    assert_problem(await api.client.get("/nope"), 404, "not_found")
    response = await api.client.put("/v1/accounts", headers=ADMIN)
    assert_problem(response, 405, "method_not_allowed")


async def test_body_over_the_limit_is_413(api: Api) -> None:
    too_big = b'{"scope": "service", "label": "' + b"x" * 1_100_000 + b'"}'
    for headers in (ADMIN, {**ADMIN, "Idempotency-Key": "big-1"}):
        response = await api.client.post(
            "/v1/api-keys", content=too_big, headers={**headers, "content-type": "application/json"}
        )
        assert_problem(response, 413, "payload_too_large")


async def test_unexpected_error_is_500_without_internals(api: Api) -> None:
    response = await api.client.get("/v1/boom", headers=ADMIN)
    problem = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    assert set(problem) == {"type", "title", "status", "detail", "code", "instance"}


async def test_gateway_failure_is_a_problem(api: Api) -> None:
    body = {"role": "creator", "display_name": "Ada"}
    response = await api.client.post("/v1/accounts", json=body, headers=ADMIN)
    assert_problem(response, 502, "gateway_error")


# ------------------------------------------------------------------ authentication


def _sample_parameter(match: re.Match[str]) -> str:
    """A value that matches the path parameter's declared type (so the route is found)."""
    name, kind = match.group(1), match.group(2)
    return "1" if kind == "int" else f"acct_{name}1"


def _routes(app: Litestar, *methods: str) -> list[tuple[str, str]]:
    """(concrete path, method) for every HTTP route, path parameters filled in."""
    wanted = set(methods) or {"GET", "POST", "PUT", "PATCH", "DELETE"}
    found: list[tuple[str, str]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = re.sub(r"\{(\w+)(?::(\w+))?\}", _sample_parameter, route.path)
        found += [(path, method) for method in sorted(route.methods & wanted)]
    return found


def _is_public(path: str) -> bool:
    return path in {"/health", "/ready", "/schema"} or path.startswith(("/schema/", "/webhooks/"))


async def test_every_non_public_route_is_401_without_a_valid_key(api: Api) -> None:
    revoked = await api.key("service")
    revoked_id = revoked.split("_")[1]
    assert (await api.client.delete(f"/v1/api-keys/{revoked_id}", headers=ADMIN)).status_code == 204
    key_id = ADMIN_KEY.split("_")[1]
    bad_credentials: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer mk_unknownkey_" + "b" * 40},
        {"Authorization": f"Bearer mk_{key_id}_wrongsecret"},
        {"X-API-Key": f"mk_{key_id}_wrongsecret"},
        {"Authorization": f"Bearer {revoked}"},
    ]
    routes = _routes(api.app)
    protected = [(path, method) for path, method in routes if not _is_public(path)]
    assert any(path.startswith("/v1/accounts") for path, _ in protected)
    assert ("/v1/boom", "GET") in protected  # plugin routes are protected too
    assert any(path.startswith("/webhooks/") for path, _ in routes)  # and public
    for path, method in protected:
        for headers in bad_credentials:
            response = await api.client.request(method, path, headers=headers)
            problem = assert_problem(response, 401, "authentication_required")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert problem["instance"] == path
    for path, method in routes:
        if _is_public(path):
            response = await api.client.request(method, path)
            assert response.status_code != 401, (method, path)


async def test_x_api_key_header_and_bearer_both_authenticate(api: Api) -> None:
    assert (await api.client.get("/v1/accounts", headers={"X-API-Key": ADMIN_KEY})).is_success
    assert (await api.client.get("/v1/accounts", headers=ADMIN)).is_success


async def test_revoked_key_is_refused_at_once(api: Api) -> None:
    key = await api.key("service")
    headers = {"Authorization": f"Bearer {key}"}
    assert (await api.client.get("/v1/accounts", headers=headers)).status_code == 200
    key_id = key.split("_")[1]
    assert (await api.client.delete(f"/v1/api-keys/{key_id}", headers=ADMIN)).status_code == 204
    assert_problem(
        await api.client.get("/v1/accounts", headers=headers), 401, "authentication_required"
    )
    assert_problem(
        await api.client.delete(f"/v1/api-keys/{key_id}", headers=ADMIN), 404, "not_found"
    )


async def test_keys_are_stored_hashed(api: Api) -> None:
    key = await api.key("service")
    key_id, secret = key.split("_", 2)[1:]
    row = await api.db.fetchrow(
        "SELECT secret_hash, scope FROM marketplace_api_keys WHERE key_id = $1", key_id
    )
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["scope"] == "service"
    dump = await api.db.fetchval("SELECT string_agg(t::text, ' ') FROM marketplace_api_keys t")
    assert secret not in dump


async def test_wrong_scope_is_403(api: Api) -> None:
    await insert_account(api.db, "acct_scope1")
    service = {"Authorization": f"Bearer {await api.key('service')}"}
    account = {"Authorization": f"Bearer {await api.key('account', 'acct_scope1')}"}
    assert_problem(
        await api.client.post("/v1/api-keys", json={"scope": "admin"}, headers=service),
        403,
        "forbidden",
    )
    assert_problem(await api.client.get("/v1/api-keys", headers=account), 403, "forbidden")
    for action in ("suspend", "resume"):
        for headers in (service, account):
            response = await api.client.post(f"/v1/accounts/acct_scope1/{action}", headers=headers)
            assert_problem(response, 403, "forbidden")
    body = {"role": "creator", "display_name": "Mallory"}
    assert_problem(
        await api.client.post("/v1/accounts", json=body, headers=account), 403, "forbidden"
    )


async def test_creator_key_cannot_see_another_account(api: Api) -> None:
    await insert_account(api.db, "acct_alice", "creator")
    await insert_account(api.db, "acct_bob", "creator")
    alice = {"Authorization": f"Bearer {await api.key('account', 'acct_alice')}"}

    own = await api.client.get("/v1/accounts/acct_alice", headers=alice)
    assert own.status_code == 200
    assert own.json()["id"] == "acct_alice"
    listed = await api.client.get("/v1/accounts", headers=alice)
    assert [account["id"] for account in listed.json()["data"]] == ["acct_alice"]

    missing = await api.client.get("/v1/accounts/acct_nobody", headers=alice)
    other = await api.client.get("/v1/accounts/acct_bob", headers=alice)
    assert_problem(other, 404, "not_found")
    assert other.json()["detail"] == missing.json()["detail"].replace("acct_nobody", "acct_bob")
    for action in ("refresh", "onboarding-link"):
        response = await api.client.post(f"/v1/accounts/acct_bob/{action}", headers=alice)
        assert_problem(response, 404, "not_found")

    everyone = await api.client.get("/v1/accounts", headers=ADMIN)
    assert {account["id"] for account in everyone.json()["data"]} == {"acct_alice", "acct_bob"}


async def test_accounts_filter_by_role(api: Api) -> None:
    await insert_account(api.db, "acct_spa", "venue")
    await insert_account(api.db, "acct_therapist", "provider")
    await insert_account(api.db, "acct_hotel", "venue")
    venues = await api.client.get("/v1/accounts", params={"role": "venue"}, headers=ADMIN)
    assert [account["id"] for account in venues.json()["data"]] == ["acct_spa", "acct_hotel"]
    therapist = {"Authorization": f"Bearer {await api.key('account', 'acct_therapist')}"}
    own = await api.client.get("/v1/accounts", params={"role": "venue"}, headers=therapist)
    assert own.json()["data"] == []
    problem = assert_problem(
        await api.client.get("/v1/accounts", params={"role": "Landlord!"}, headers=ADMIN),
        422,
        "validation_error",
    )
    assert problem["errors"][0]["field"] == "role"


def test_malformed_bootstrap_key_stops_start_up_naming_the_key() -> None:
    settings = settings_from_mapping(
        {"api": {"bootstrap_admin_key": "admin"}, "database": {"url": "postgresql://x/y"}}
    )
    with pytest.raises(ConfigError, match=r"api\.bootstrap_admin_key"):
        create_app_from_settings(settings, plugins=build_plugins(settings))


# ------------------------------------------------------------------ api keys


async def test_api_key_admin_lifecycle_and_cursor_pagination(api: Api) -> None:
    await insert_account(api.db, "acct_keys")
    created = await api.client.post(
        "/v1/api-keys",
        json={"scope": "account", "account_id": "acct_keys", "label": "venue"},
        headers=ADMIN,
    )
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(f"mk_{body['key_id']}_")
    assert (body["scope"], body["account_id"], body["label"]) == ("account", "acct_keys", "venue")
    for _ in range(3):
        await api.key("service")

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.client.get("/v1/api-keys", params=params, headers=ADMIN)).json()
        assert len(page["data"]) <= 2
        assert all("key" not in item and "secret_hash" not in item for item in page["data"])
        seen += [item["key_id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5  # bootstrap admin + 4 created
    assert body["key_id"] in seen


async def test_bootstrap_admin_key_is_restored_at_start(api: Api) -> None:
    key_id = ADMIN_KEY.split("_")[1]
    row = await api.db.fetchrow(
        "SELECT scope, revoked_at FROM marketplace_api_keys WHERE key_id = $1", key_id
    )
    assert row["scope"] == "admin"
    assert row["revoked_at"] is None


# ------------------------------------------------------------------ idempotency


async def test_idempotent_replay_is_byte_identical(api: Api) -> None:
    headers = {**ADMIN, "Idempotency-Key": "create-key-1"}
    first = await api.client.post("/v1/api-keys", json={"scope": "service"}, headers=headers)
    second = await api.client.post("/v1/api-keys", json={"scope": "service"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["content-type"] == first.headers["content-type"]
    count = await api.db.fetchval(
        "SELECT count(*) FROM marketplace_api_keys WHERE scope = 'service'"
    )
    assert count == 1


async def test_same_key_with_a_different_body_is_422(api: Api) -> None:
    headers = {**ADMIN, "Idempotency-Key": "create-key-2"}
    first = await api.client.post("/v1/api-keys", json={"scope": "service"}, headers=headers)
    assert first.status_code == 201
    reused = await api.client.post(
        "/v1/api-keys", json={"scope": "service", "label": "other"}, headers=headers
    )
    assert_problem(reused, 422, "idempotency_key_reused")
    elsewhere = await api.client.post(
        "/v1/accounts/acct_x1/suspend", json={"scope": "service"}, headers=headers
    )
    assert_problem(elsewhere, 422, "idempotency_key_reused")


async def test_idempotency_keys_are_scoped_per_api_key(api: Api) -> None:
    other_admin = {"Authorization": f"Bearer {await api.key('admin')}"}
    body = {"scope": "service"}
    first = await api.client.post(
        "/v1/api-keys", json=body, headers={**ADMIN, "Idempotency-Key": "shared"}
    )
    second = await api.client.post(
        "/v1/api-keys", json=body, headers={**other_admin, "Idempotency-Key": "shared"}
    )
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in second.headers
    assert first.json()["key_id"] != second.json()["key_id"]


async def test_client_errors_are_replayed_too(api: Api) -> None:
    headers = {**ADMIN, "Idempotency-Key": "bad-1"}
    first = await api.client.post("/v1/api-keys", json={"scope": "root"}, headers=headers)
    second = await api.client.post("/v1/api-keys", json={"scope": "root"}, headers=headers)
    assert first.status_code == second.status_code == 422
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"


async def test_server_errors_are_not_stored(api: Api) -> None:
    headers = {**ADMIN, "Idempotency-Key": "stripe-down"}
    body = {"role": "creator", "display_name": "Ada"}
    for _ in range(2):
        response = await api.client.post("/v1/accounts", json=body, headers=headers)
        assert_problem(response, 502, "gateway_error")
        assert "idempotent-replayed" not in response.headers
    assert await api.db.fetchval("SELECT count(*) FROM marketplace_idempotency") == 0


async def test_outcomes_that_are_not_final_are_not_stored(api: Api) -> None:
    headers = {**ADMIN, "Idempotency-Key": "order-1"}
    seller = secrets.token_hex(4)
    first = await api.client.post("/v1/boom/orders", json={"seller": seller}, headers=headers)
    assert_problem(first, 409, "account_not_ready")
    READY[seller] = True  # onboarding completes: the same request now succeeds
    retried = await api.client.post("/v1/boom/orders", json={"seller": seller}, headers=headers)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    again = await api.client.post("/v1/boom/orders", json={"seller": seller}, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"

    busy = {**ADMIN, "Idempotency-Key": "busy-1"}
    for _ in range(2):
        response = await api.client.post("/v1/boom/busy", headers=busy)
        assert_problem(response, 429, "rate_limited")
        assert "idempotent-replayed" not in response.headers
    stored = await api.db.fetchval(
        "SELECT count(*) FROM marketplace_idempotency WHERE scope_key LIKE '%busy-1'"
    )
    assert stored == 0


async def test_concurrent_duplicate_in_flight_is_409(api: Api) -> None:
    body = b'{"scope":"service"}'
    key_id = ADMIN_KEY.split("_")[1]
    await api.db.execute(
        "INSERT INTO marketplace_idempotency (scope_key, request_hash, status_code, "
        "response_body, content_type, created_at) VALUES ($1, $2, 0, '', '', now())",
        stored_key(key_id, "in-flight"),
        request_fingerprint("POST", "/v1/api-keys", b"", body),
    )
    response = await api.client.post(
        "/v1/api-keys",
        content=body,
        headers={**ADMIN, "Idempotency-Key": "in-flight", "content-type": "application/json"},
    )
    assert_problem(response, 409, "idempotency_request_in_progress")


async def test_expired_and_abandoned_records_are_taken_over_by_the_same_request(
    api: Api,
) -> None:
    key_id = ADMIN_KEY.split("_")[1]
    body = b'{"scope":"service"}'
    same = request_fingerprint("POST", "/v1/api-keys", b"", body)
    for name, status, age, request_hash, expected in (
        ("expired", 201, timedelta(hours=25), same, 201),
        ("abandoned", 0, timedelta(minutes=10), same, 201),
        # A key stays bound to its request after its response expired: another
        # request with it is refused, never run as if new, never given the old answer.
        ("expired-other", 201, timedelta(days=3), "other", 422),
        ("abandoned-other", 0, timedelta(minutes=10), "other", 422),
    ):
        await api.db.execute(
            "INSERT INTO marketplace_idempotency (scope_key, request_hash, status_code, "
            "response_body, content_type, created_at) VALUES ($1, $2, $3, '{}', "
            "'application/json', now() - $4::interval)",
            stored_key(key_id, name),
            request_hash,
            status,
            age,
        )
        response = await api.client.post(
            "/v1/api-keys",
            content=body,
            headers={**ADMIN, "Idempotency-Key": name, "content-type": "application/json"},
        )
        assert response.status_code == expected, (name, response.text)
        assert "idempotent-replayed" not in response.headers
        if expected == 422:
            assert_problem(response, 422, "idempotency_key_reused")


async def test_a_key_of_any_allowed_length_is_stored(api: Api) -> None:
    for length in (1, 238, 239, 255):
        headers = {**ADMIN, "Idempotency-Key": "k" * length}
        first = await api.client.post("/v1/api-keys", json={"scope": "service"}, headers=headers)
        assert first.status_code == 201, (length, first.text)
        again = await api.client.post("/v1/api-keys", json={"scope": "service"}, headers=headers)
        assert again.headers["idempotent-replayed"] == "true"


async def test_invalid_idempotency_key_is_a_problem(api: Api) -> None:
    response = await api.client.post(
        "/v1/api-keys", json={"scope": "service"}, headers={**ADMIN, "Idempotency-Key": "k" * 300}
    )
    problem = assert_problem(response, 400, "invalid_input")
    assert problem["field"] == "Idempotency-Key"


async def test_openapi_documents_every_operation(api: Api) -> None:
    response = await api.client.get("/schema/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert (await api.client.get("/schema/swagger")).status_code == 200
    operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]
    ids = [operation["operationId"] for _, _, operation in operations]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations:
        assert operation.get("tags") or path.startswith("/v1/boom"), (method, path)
        assert "default" in operation["responses"], (method, path)
        if _is_public(path):
            assert operation.get("security") == [], (method, path)
        else:
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
            if method == "post":
                headers = [
                    p["name"] for p in operation.get("parameters", []) if p["in"] == "header"
                ]
                assert "Idempotency-Key" in headers, path
    assert "422" in schema["paths"]["/v1/accounts"]["post"]["responses"]


async def test_a_not_ready_answer_is_logged_as_a_warning_not_an_error(
    fresh_database_url: str, nats_url: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``/ready``'s 503 is its normal answer while a dependency is missing (``make up``
    asks it every 0.1 s while the worker starts): a warning naming what is missing, not
    an ERROR line; the failures behind it are logged where they happen."""
    services, client, app = await _ready_with_worker_required(
        fresh_database_url, nats_url, unique_name.upper()
    )
    try:
        async with app.lifespan(), client:
            with caplog.at_level(logging.INFO, logger="engine.api.problems"):
                assert_problem(await client.get("/ready"), 503, "not_ready")
    finally:
        await services.close()
    logged = [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name == "engine.api.problems"
    ]
    assert logged == [(logging.WARNING, "not_ready on /ready: workers: no worker is running")]
