"""The Litestar app factory: controllers, auth, idempotency, problems, OpenAPI, plugin routes.

``create_app(services)`` builds a stateless app around services the caller
opened (and closes): any number of these can serve behind a load balancer.
``create_app_from_settings(settings)`` opens and closes the services in the
app's own lifespan, for ``uvicorn --factory`` style serving and tests.

Request flow: ``AuthMiddleware`` (API key -> ``Principal``) ->
``IdempotencyMiddleware`` (POSTs with ``Idempotency-Key``) -> guards ->
``strict_request`` (bodies decoded strictly, no NUL) -> handler. Every error
leaves as an RFC 9457 problem (``engine.api.problems``).
OpenAPI is served at ``/schema`` (``/schema/openapi.json``, ``/schema/swagger``).

When NATS is configured the app also serves the Stripe webhook intake
(``/webhooks/stripe``, ``/webhooks/stripe/connect``) and the webhook admin API,
starting the intake's publisher in its lifespan.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, get_args, get_type_hints

import msgspec
from litestar import Controller, Litestar, Router
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute
from litestar.types import ControllerRouterHandler

from engine.api.accounts import AccountController
from engine.api.api_keys import ApiKeyController
from engine.api.auth import AuthMiddleware, KeyStore
from engine.api.deps import SERVICES_STATE_KEY, dependencies, services_from_state
from engine.api.health import METRICS_STATE_KEY, HealthController, MetricsController
from engine.api.idempotency import IDEMPOTENCY_HEADER, MAX_KEY_LENGTH, IdempotencyMiddleware
from engine.api.keys import KEYS_SETTING, ensure_api_key, parse_api_key
from engine.api.ledger import AccountLedgerController, FinanceController
from engine.api.problems import PROBLEM_MEDIA_TYPE, exception_handlers, problem_responses
from engine.api.reconciliation import ReconciliationController, stop_runs_at_shutdown
from engine.api.strict import strict_request
from engine.core.errors import ConfigError, PluginError
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import Settings
from engine.observability import Metrics
from engine.services import Services

__all__ = ["API_VERSION", "create_app", "create_app_from_settings"]

log = logging.getLogger(__name__)

API_VERSION: Final = "1.0.0"
KEYS_STATE_KEY: Final = "api_keys"
WEBHOOKS_STATE_KEY: Final = "webhooks"
WEBHOOK_INTAKE_STATE_KEY: Final = "webhook_intake"

_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearerApiKey": []}, {"headerApiKey": []}]

_PROBLEM_REF: Final = "#/components/schemas/Problem"

Lifespan = Callable[[Litestar], contextlib.AbstractAsyncContextManager[None]]


def create_app(
    services: Services, *, webhooks: bool | None = None, debug: bool = False
) -> Litestar:
    """The API around already started ``services`` (the caller closes them).

    Args:
        services: the opened service container.
        webhooks: serve the Stripe webhook intake and its admin API; by
            default when ``nats.url`` is configured (the intake publishes there).
        debug: Litestar's debug mode (never in production: tracebacks in logs only).
    """
    return _build(
        services.settings,
        services.plugins,
        state={SERVICES_STATE_KEY: services},
        lifespan=[],
        webhooks=webhooks,
        debug=debug,
    )


def create_app_from_settings(
    settings: Settings,
    *,
    plugins: Plugins | None = None,
    webhooks: bool | None = None,
    debug: bool = False,
) -> Litestar:
    """The API that opens ``Services`` at start-up and closes them at shutdown."""
    plugins = plugins or build_plugins(settings)

    @contextlib.asynccontextmanager
    async def run_services(app: Litestar) -> AsyncIterator[None]:
        services = await Services.start(settings, plugins=plugins)
        app.state[SERVICES_STATE_KEY] = services
        try:
            yield
        finally:
            del app.state[SERVICES_STATE_KEY]
            await services.close()

    return _build(
        settings, plugins, state={}, lifespan=[run_services], webhooks=webhooks, debug=debug
    )


def _build(
    settings: Settings,
    plugins: Plugins,
    *,
    state: dict[str, Any],
    lifespan: list[Lifespan],
    webhooks: bool | None,
    debug: bool,
) -> Litestar:
    bootstrap = settings.api.bootstrap_admin_key
    if bootstrap and parse_api_key(bootstrap) is None:
        raise ConfigError("api.bootstrap_admin_key", "must look like mk_<key_id>_<secret>")
    keys = KeyStore()
    metrics = Metrics()
    app_state = State({**state, KEYS_STATE_KEY: keys, METRICS_STATE_KEY: metrics})

    def pool() -> Any:
        return services_from_state(app_state).db.pool

    route_handlers: list[ControllerRouterHandler] = [
        HealthController,
        MetricsController,
        ApiKeyController,
        AccountController,
        AccountLedgerController,
        FinanceController,
        ReconciliationController,
    ]
    lifespans: list[Lifespan] = [
        *lifespan,
        _bootstrap_key(settings),
        _count_ledger(metrics),
        stop_runs_at_shutdown,
    ]
    if settings.nats.url if webhooks is None else webhooks:
        route_handlers += _webhook_handlers()
        lifespans.append(_run_webhooks(metrics))
    route_handlers += _plugin_handlers(plugins)
    route_handlers.append(_dashboard(app_state, settings, debug=debug))

    app = Litestar(
        route_handlers=route_handlers,
        middleware=[
            AuthMiddleware(keys, pool),
            IdempotencyMiddleware(
                pool,
                ttl_hours=settings.api.idempotency_ttl_hours,
                max_body_bytes=settings.api.max_body_bytes,
            ),
        ],
        dependencies=dependencies(),
        # JSON bodies decoded strictly and NUL refused everywhere, before any handler.
        before_request=strict_request,
        exception_handlers=exception_handlers(),
        lifespan=lifespans,
        openapi_config=_openapi_config(),
        request_max_body_size=settings.api.max_body_bytes,
        state=app_state,
        debug=debug,
        # The process's logging is configured once (engine.observability), with the
        # event/account context on every line; Litestar must not install its own.
        logging_config=None,
    )
    _complete_openapi(app)
    _rebind_options_handlers(app)
    return app


def _rebind_options_handlers(app: Litestar) -> None:
    """Make every automatic ``OPTIONS`` answer list all the methods of its path.

    Litestar 2 (issue litestar-org/litestar#4169, fixed only in v3) creates a
    path's ``OPTIONS`` handler with the path's first handler; registering the
    path's other methods builds a new route that keeps that handler, whose
    ``Allow`` still reads the first route's methods (``GET, OPTIONS`` on a path
    that also takes ``POST``). Each such handler is pointed at the route that
    serves it, so ``Allow`` is the route's real method set.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        handler = route.route_handler_map.get("OPTIONS", (None, None))[0]
        fn: Any = getattr(handler, "fn", None)
        if getattr(fn, "__name__", "") != "options_handler" or not fn.__closure__:
            continue  # an OPTIONS handler a route declared itself
        for cell in fn.__closure__:
            if isinstance(cell.cell_contents, HTTPRoute) and cell.cell_contents is not route:
                cell.cell_contents = route


def _plugin_handlers(plugins: Plugins) -> list[ControllerRouterHandler]:
    """The plugins' routes; anything but a controller, route handler or router stops the app."""
    handlers: list[ControllerRouterHandler] = []
    for item in plugins.routes():
        is_controller = isinstance(item, type) and issubclass(item, Controller)
        if is_controller or isinstance(item, BaseRouteHandler | Router):
            handlers.append(item)
        else:
            raise PluginError(
                "register_routes",
                f"register() expects a Litestar controller class or route handler, got {item!r}",
            )
    return handlers


def _dashboard(state: State, settings: Settings, *, debug: bool) -> ControllerRouterHandler:
    """The creator earnings pages and the admin finance panel, mounted at ``/dashboard``."""
    # Imported here: the dashboard imports this package's deps module.
    from engine.dashboard.routes import dashboard_mount

    return dashboard_mount(state, max_body_bytes=settings.api.max_body_bytes, debug=debug)


def _webhook_handlers() -> list[ControllerRouterHandler]:
    # Imported here: the webhook package imports this package's auth module.
    from engine.webhooks.admin import WebhookAdminController
    from engine.webhooks.intake import webhook_routes

    return [*webhook_routes(), WebhookAdminController]


def _count_ledger(metrics: Metrics) -> Lifespan:
    """Count the postings the ledger refuses in this process (``/metrics``)."""

    @contextlib.asynccontextmanager
    async def observe(app: Litestar) -> AsyncIterator[None]:
        services_from_state(app.state).ledger.observe_conflicts(metrics.ledger_conflict)
        yield

    return observe


def _bootstrap_key(settings: Settings) -> Lifespan:
    """Ensure ``api.bootstrap_admin_key`` (what ``marketplace up`` prints) exists, and keep
    the key cache in step with every process: a key revoked or an account suspended
    anywhere stops working here at once."""

    @contextlib.asynccontextmanager
    async def ensure(app: Litestar) -> AsyncIterator[None]:
        services = services_from_state(app.state)
        keys: KeyStore = app.state[KEYS_STATE_KEY]

        async def forget_all(version: int) -> None:
            del version
            keys.clear()

        services.live.watch(KEYS_SETTING, forget_all)
        if settings.api.bootstrap_admin_key:
            key_id = await ensure_api_key(
                services.db.pool, settings.api.bootstrap_admin_key, label="bootstrap admin key"
            )
            keys.forget(key_id)
        yield

    return ensure


def _run_webhooks(metrics: Metrics) -> Lifespan:
    @contextlib.asynccontextmanager
    async def run(app: Litestar) -> AsyncIterator[None]:
        from engine.webhooks.service import WebhookService

        service = await WebhookService.start(services_from_state(app.state), metrics)
        app.state[WEBHOOKS_STATE_KEY] = service
        app.state[WEBHOOK_INTAKE_STATE_KEY] = service.intake
        try:
            yield
        finally:
            await service.close()

    return run


def _openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Marketplace engine API",
        version=API_VERSION,
        description=(
            "Payments for multi-party marketplaces. Authenticate with an API key "
            "(`Authorization: Bearer mk_<key_id>_<secret>` or `X-API-Key`). Errors are "
            "RFC 9457 problems (`application/problem+json`) with a stable `code`. "
            "POSTs accept `Idempotency-Key`."
        ),
        path="/schema",
        render_plugins=[SwaggerRenderPlugin()],
        components=Components(
            security_schemes={
                "bearerApiKey": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="mk_<key_id>_<secret>",
                    description="An API key as a bearer token",
                ),
                "headerApiKey": SecurityScheme(
                    type="apiKey",
                    name="X-API-Key",
                    security_scheme_in="header",
                    description="The same API key in the X-API-Key header",
                ),
            }
        ),
        security=_SECURITY,
        use_handler_docstrings=True,
    )


def _problem_response(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={
            PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=Reference("#/components/schemas/Problem"))
        },
    )


def _complete_openapi(app: Litestar) -> None:
    """Mark public operations as such and give every operation its problem responses.

    Request bodies that refuse unknown fields get ``additionalProperties:
    false``. Plugin and webhook routes declare only their success responses; here each
    operation's error responses become problems, and it gets ``401``/``403``
    (unless public) and a ``default`` problem, so the published schema
    describes every response the API can send.
    """
    schema: OpenAPI = app.openapi_schema
    if (
        not schema.components
        or not schema.components.schemas
        or ("Problem" not in schema.components.schemas)
    ):
        raise RuntimeError("the Problem schema is missing from the OpenAPI components")
    closed = {struct.__name__ for struct in _closed_request_structs(app)}
    for name, component in schema.components.schemas.items():
        if name in closed and isinstance(component, Schema):
            component.additional_properties = False
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or not schema.paths:
            continue
        path_item = schema.paths.get(route.path_format)
        if path_item is None:
            continue
        for handler in route.route_handlers:
            public = bool(handler.opt.get("public"))
            for method in handler.http_methods:
                operation = getattr(path_item, method.lower(), None)
                if isinstance(operation, Operation):
                    _complete_operation(operation, public=public)
                    if method == "POST" and not public:
                        _document_idempotency_key(operation)


def _document_idempotency_key(operation: Operation) -> None:
    """Every authenticated POST honours ``Idempotency-Key``; plugin routes say so too."""
    parameters = operation.parameters if operation.parameters is not None else []
    operation.parameters = parameters
    names = {getattr(parameter, "name", "").lower() for parameter in parameters}
    if IDEMPOTENCY_HEADER not in names:
        parameters.append(
            Parameter(
                name="Idempotency-Key",
                param_in="header",
                required=False,
                description="Makes the POST safe to retry (see the engine's API guide).",
                schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_KEY_LENGTH),
            )
        )


def _closed_request_structs(app: Litestar) -> set[type[msgspec.Struct]]:
    """Request bodies that refuse unknown fields (the schema must say so too)."""
    found: set[type[msgspec.Struct]] = set()
    pending: list[Any] = []
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                field = handler.parsed_data_field
                if field is not None:
                    pending.append(field.annotation)
    seen: set[type[msgspec.Struct]] = set()
    while pending:
        annotation = pending.pop()
        pending += get_args(annotation)
        if not isinstance(annotation, type) or not issubclass(annotation, msgspec.Struct):
            continue
        if annotation in seen:
            continue
        seen.add(annotation)
        # Structs inside a body (a booking's customer, a rule set's rules) are request schemas too.
        pending += get_type_hints(annotation).values()
        if annotation.__struct_config__.forbid_unknown_fields:
            found.add(annotation)
    return found


def _complete_operation(operation: Operation, *, public: bool) -> None:
    responses = operation.responses if operation.responses is not None else {}
    operation.responses = responses
    for status, response in list(responses.items()):
        # Litestar documents the validation errors of handlers that do not
        # declare their own as plain JSON; every error here is a problem.
        if status[:1] in {"4", "5"} and isinstance(response, OpenAPIResponse):
            content = response.content or {}
            if PROBLEM_MEDIA_TYPE not in content:
                responses[status] = _problem_response(response.description)
    takes_input = operation.request_body is not None or any(
        getattr(parameter, "param_in", None) in {"path", "query"}
        for parameter in operation.parameters or []
    )
    if takes_input and "422" not in responses:
        responses["422"] = _problem_response(problem_responses(422)[422].description)
    if public:
        operation.security = []
    else:
        responses.setdefault("401", _problem_response("No valid API key"))
        responses.setdefault("403", _problem_response("The key's scope does not allow this"))
    responses.setdefault("default", _problem_response("Any other error, as a problem"))
