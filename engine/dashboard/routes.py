"""The dashboards as their own ASGI app, mounted by the API app at ``/dashboard``.

A separate Litestar app rather than more API routes: its pages authenticate
with the dashboard session, not an API key, answer errors with HTML pages
rather than RFC 9457 problems, and stay out of the API's OpenAPI schema, so
none of the API's route-wide rules (every route needs a key, every error is a
problem) has an exception to make. The mount is public to the API's key
middleware; the app shares the API app's ``state`` (its services, its webhook
service for replays). A page that needs a session sends the browser to sign in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from litestar import Litestar, Request, Response, asgi, get
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.handlers import ASGIRouteHandler
from litestar.types import Receive, Scope, Send

from engine.core.errors import AuthenticationRequired, MarketplaceError
from engine.dashboard.account_pages import AccountPagesController
from engine.dashboard.admin_pages import AdminPagesController
from engine.dashboard.auth_pages import SignInController
from engine.dashboard.context import BASE, dashboard_state
from engine.dashboard.onboarding_pages import OnboardingPagesController
from engine.dashboard.rendering import redirect, render_page

__all__ = ["dashboard_app", "dashboard_mount"]

log = logging.getLogger(__name__)

STYLESHEET: Final = Path(__file__).parent / "static" / "dashboard.css"


@get("/static/dashboard.css", media_type="text/css", name="dashboard:css")
async def stylesheet() -> Response[bytes]:
    """The dashboards' only stylesheet."""
    return Response(
        content=STYLESHEET.read_bytes(),
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def _error_page(
    request: Request[Any, Any, Any], status: int, title: str, detail: str
) -> Response[Any]:
    return render_page(
        dashboard_state(request).templates,
        "error.html",
        {"viewer": None, "csrf_token": "", "base": BASE, "title": title, "detail": detail},
        status_code=status,
    )


def _on_domain_error(request: Request[Any, Any, Any], exc: MarketplaceError) -> Response[Any]:
    if isinstance(exc, AuthenticationRequired):
        return redirect(f"{BASE}/sign-in")
    return _error_page(request, exc.status, exc.title, exc.detail)


def _on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _error_page(request, exc.status_code, "Request failed", str(exc.detail))


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("dashboard page failed", exc_info=exc)
    return _error_page(request, 500, "Something went wrong", "The page could not be shown.")


def dashboard_app(
    state: State, *, max_body_bytes: int = 1_048_576, debug: bool = False
) -> Litestar:
    """The dashboards' app; ``state`` is the API app's (services live there)."""
    return Litestar(
        route_handlers=[
            SignInController,
            AccountPagesController,
            AdminPagesController,
            OnboardingPagesController,
            stylesheet,
        ],
        exception_handlers={
            MarketplaceError: _on_domain_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        state=state,
        openapi_config=None,
        request_max_body_size=max_body_bytes,
        logging_config=None,
        debug=debug,
    )


def dashboard_mount(
    state: State, *, max_body_bytes: int = 1_048_576, debug: bool = False
) -> ASGIRouteHandler:
    """The handler that mounts ``dashboard_app`` at ``/dashboard`` in the API app."""
    app = dashboard_app(state, max_body_bytes=max_body_bytes, debug=debug)

    @asgi(BASE, is_mount=True, copy_scope=True, opt={"public": True})
    async def dashboard(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)

    return dashboard
