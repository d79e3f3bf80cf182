"""The ``/dashboard`` router the API app mounts: pages, the stylesheet, HTML error pages.

The routes are public to the API's key middleware (``opt={"public": True}``):
pages authenticate with the dashboard session instead, and are left out of the
OpenAPI schema. Errors become HTML pages here (an API client gets RFC 9457
problems elsewhere); a page that needs a session sends the browser to sign in.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from litestar import Request, Response, Router, get
from litestar.exceptions import HTTPException

from engine.core.errors import AuthenticationRequired, MarketplaceError
from engine.dashboard.account_pages import AccountPagesController
from engine.dashboard.admin_pages import AdminPagesController
from engine.dashboard.auth_pages import SignInController
from engine.dashboard.context import BASE, dashboard_state
from engine.dashboard.rendering import redirect, render_page

__all__ = ["dashboard_router"]

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


def dashboard_router() -> Router:
    """Every dashboard route under ``/dashboard``."""
    return Router(
        path=BASE,
        route_handlers=[
            SignInController,
            AccountPagesController,
            AdminPagesController,
            stylesheet,
        ],
        opt={"public": True},
        include_in_schema=False,
        exception_handlers={
            MarketplaceError: _on_domain_error,
            HTTPException: _on_http_error,
            Exception: _on_unexpected,
        },
        tags=["dashboard"],
    )
