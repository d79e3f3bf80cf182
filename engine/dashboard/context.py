"""Per-request context of a dashboard page: services, viewer, CSRF token, cookies to set.

``page_context(request)`` reads the session cookie (or sets a pre-session
cookie for the sign-in forms) and gives handlers what they need;
``verified_form(request, page)`` reads a POSTed form and refuses it unless its
CSRF token is right and any ``Origin`` header names this host. The per-app
``DashboardState`` (templates, signing key, a running reconciliation) lives in
``app.state["dashboard"]``, made on first use.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

from jinja2 import Environment
from litestar import Request, Response
from litestar.datastructures import Cookie, FormMultiDict

from engine.api.deps import services_from_state
from engine.core.errors import AuthenticationRequired, Forbidden, NotFound
from engine.dashboard.rendering import build_environment, render_page
from engine.dashboard.security import (
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    SESSION_HOURS,
    Signer,
    Viewer,
    load_signer,
    resolve_session,
)
from engine.services import Services

__all__ = [
    "BALANCE_TTL",
    "BASE",
    "STATE_KEY",
    "DashboardState",
    "Page",
    "dashboard_state",
    "page_context",
    "session_cookie",
    "verified_form",
]

BASE: Final = "/dashboard"
STATE_KEY: Final = "dashboard"
BALANCE_TTL: Final = 20.0
"""Seconds a Stripe balance is shown before it is asked for again (Stripe is rate-limited)."""
_MAX_CACHED_BALANCES: Final = 5000
_SESSION_SECONDS: Final = SESSION_HOURS * 3600


@dataclass
class DashboardState:
    """What the dashboards keep per app: templates, the signing key, background runs."""

    templates: Environment = field(default_factory=build_environment)
    signer: Signer | None = None
    reconciliation: asyncio.Task[Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    balances: dict[str, tuple[float, datetime, Any]] = field(default_factory=dict)
    """Stripe balances by account: ``(monotonic expiry, fetched at, balance)``."""

    def cached_balance(self, account_id: str) -> tuple[datetime, Any] | None:
        """A Stripe balance fetched less than ``BALANCE_TTL`` seconds ago."""
        entry = self.balances.get(account_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1], entry[2]

    def keep_balance(self, account_id: str, balance: Any) -> datetime:
        """Remember a balance just fetched; return when it was fetched."""
        if len(self.balances) >= _MAX_CACHED_BALANCES:
            self.balances.clear()
        fetched = datetime.now(UTC)
        self.balances[account_id] = (time.monotonic() + BALANCE_TTL, fetched, balance)
        return fetched

    async def signing(self, pool: Any) -> Signer:
        """The signer, loaded once per process."""
        if self.signer is None:
            async with self.lock:
                if self.signer is None:
                    self.signer = await load_signer(pool)
        return self.signer


def dashboard_state(request: Request[Any, Any, Any]) -> DashboardState:
    """The app's dashboard state (made on first use)."""
    state = request.app.state
    current = state.get(STATE_KEY)
    if not isinstance(current, DashboardState):
        current = DashboardState()
        state[STATE_KEY] = current
    return current


def _secure(request: Request[Any, Any, Any], services: Services) -> bool:
    public = services.settings.engine.public_url
    scheme = urlsplit(public).scheme if public else request.url.scheme
    return scheme == "https"


def session_cookie(
    request: Request[Any, Any, Any], services: Services, value: str | None
) -> Cookie:
    """The session cookie carrying ``value`` (signed), or one that deletes it (``None``)."""
    return Cookie(
        key=SESSION_COOKIE,
        value=value or "",
        path=BASE,
        httponly=True,
        samesite="lax",
        secure=_secure(request, services),
        max_age=_SESSION_SECONDS if value else 0,
    )


@dataclass
class Page:
    """One request's page context."""

    request: Request[Any, Any, Any]
    services: Services
    state: DashboardState
    signer: Signer
    viewer: Viewer | None
    csrf_binding: str
    cookies: list[Cookie] = field(default_factory=list)

    @property
    def csrf_token(self) -> str:
        """The token every form on the page carries."""
        return self.signer.csrf_token(self.csrf_binding)

    @property
    def pool(self) -> Any:
        """The database pool."""
        return self.services.db.pool

    def require_viewer(self) -> Viewer:
        """The signed-in viewer (else the sign-in page)."""
        if self.viewer is None:
            raise AuthenticationRequired("sign in to see this page")
        return self.viewer

    def require_admin(self) -> Viewer:
        """The signed-in admin (an account's holder gets 403)."""
        viewer = self.require_viewer()
        if not viewer.is_admin:
            raise Forbidden("only admins can see the finance panel")
        return viewer

    def require_account(self, account_id: str) -> Viewer:
        """A viewer allowed to see ``account_id`` (another account's page is a 404)."""
        viewer = self.require_viewer()
        if not viewer.can_see(account_id):
            raise NotFound(f"no connected account {account_id!r}")
        return viewer

    def render(self, template: str, status_code: int = 200, **context: Any) -> Response[str]:
        """Render ``template`` with the viewer and CSRF token in its context."""
        return render_page(
            self.state.templates,
            template,
            {"viewer": self.viewer, "csrf_token": self.csrf_token, "base": BASE, **context},
            status_code=status_code,
            cookies=self.cookies,
        )


async def page_context(request: Request[Any, Any, Any]) -> Page:
    """Resolve the viewer from the session cookie; bind CSRF tokens to the session."""
    services = services_from_state(request.app.state)
    state = dashboard_state(request)
    signer = await state.signing(services.db.pool)
    session_id = signer.unsign(request.cookies.get(SESSION_COOKIE))
    viewer = await resolve_session(services.db.pool, session_id)
    cookies: list[Cookie] = []
    if viewer is not None:
        binding = f"session:{viewer.session_id}"
    else:
        nonce = signer.unsign(request.cookies.get(PRESESSION_COOKIE))
        if nonce is None:
            nonce = secrets.token_urlsafe(24)
            cookies.append(
                Cookie(
                    key=PRESESSION_COOKIE,
                    value=signer.sign(nonce),
                    path=BASE,
                    httponly=True,
                    samesite="lax",
                    secure=_secure(request, services),
                )
            )
        binding = f"pre:{nonce}"
        if session_id is not None:
            cookies.append(session_cookie(request, services, None))  # expired or revoked
    return Page(request, services, state, signer, viewer, binding, cookies)


def _same_origin(request: Request[Any, Any, Any]) -> bool:
    """Whether a named ``Origin`` is this host (absent or ``null`` leaves it to the token)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def verified_form(request: Request[Any, Any, Any], page: Page) -> FormMultiDict:
    """The POSTed form, if its CSRF token and origin are right.

    Raises:
        Forbidden: a missing or wrong token (an old tab after sign-out, or a
            forged cross-site form), or a form posted from another origin.
    """
    form = await request.form()
    token = form.get("csrf_token")
    if not _same_origin(request) or not page.signer.csrf_valid(
        page.csrf_binding, token if isinstance(token, str) else None
    ):
        raise Forbidden("this form has expired or did not come from this site; reload and retry")
    return form
