"""Sign-in pages: paste an API key, follow a one-time login link, sign out.

An admin key opens the admin panel, an account key that account's earnings
page; service keys are refused. A login link shows a confirmation form and is
spent by submitting it, so link scanners do not use it up.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import PathParameter
from litestar.response import Redirect

from engine.core.errors import AuthenticationRequired, Forbidden, NotFound
from engine.dashboard.context import BASE, Page, page_context, session_cookie, verified_form
from engine.dashboard.rendering import redirect
from engine.dashboard.security import (
    Viewer,
    authenticate_key,
    consume_login_link,
    create_session,
    find_login_link,
    revoke_session,
)

__all__ = ["SignInController", "home_path"]

LinkToken = Annotated[str, PathParameter(min_length=20, max_length=100)]


def home_path(viewer: Viewer) -> str:
    """Where a viewer lands after signing in."""
    if viewer.is_admin:
        return f"{BASE}/admin"
    return f"{BASE}/accounts/{viewer.account_id}"


def _signed_in(page: Page, session_id: str, to: str) -> Redirect:
    cookie = session_cookie(page.request, page.services, page.signer.sign(session_id))
    return redirect(to, cookies=[*page.cookies, cookie])


class SignInController(Controller):
    """``/dashboard``, ``/dashboard/sign-in``, ``/dashboard/sign-out``, ``/dashboard/login/...``."""

    path = "/"

    @get("/", name="dashboard:home")
    async def home(self, request: Request[Any, Any, Any]) -> Redirect:
        """Send the viewer to their page, or to sign in."""
        page = await page_context(request)
        if page.viewer is None:
            return redirect(f"{BASE}/sign-in", cookies=page.cookies)
        return redirect(home_path(page.viewer), cookies=page.cookies)

    @get("/sign-in", name="dashboard:sign-in")
    async def sign_in_form(self, request: Request[Any, Any, Any]) -> Response[str] | Redirect:
        """The sign-in form (an API key)."""
        page = await page_context(request)
        if page.viewer is not None:
            return redirect(home_path(page.viewer))
        return page.render("sign_in.html", error="")

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: Request[Any, Any, Any]) -> Response[str] | Redirect:
        """Check the pasted key and start a session."""
        page = await page_context(request)
        form = await verified_form(request, page)
        key = form.get("api_key")
        try:
            kind, key_id, account_id = await authenticate_key(
                page.pool, key if isinstance(key, str) else ""
            )
        except (AuthenticationRequired, Forbidden) as exc:
            return page.render("sign_in.html", status_code=exc.status, error=exc.detail)
        session_id = await create_session(page.pool, kind, account_id=account_id, key_id=key_id)
        viewer = Viewer(kind=kind, session_id=session_id, account_id=account_id, key_id=key_id)
        return _signed_in(page, session_id, home_path(viewer))

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request[Any, Any, Any]) -> Redirect:
        """End the session."""
        page = await page_context(request)
        await verified_form(request, page)
        if page.viewer is not None:
            await revoke_session(page.pool, page.viewer.session_id)
        cookie = session_cookie(request, page.services, None)
        return redirect(f"{BASE}/sign-in", cookies=[cookie])

    @get("/login/{token:str}")
    async def login_link(self, request: Request[Any, Any, Any], token: LinkToken) -> Response[str]:
        """Confirm signing in with a login link."""
        page = await page_context(request)
        account_id = await find_login_link(page.pool, token)
        if account_id is None:
            raise NotFound("this login link was used already or has expired; ask for a new one")
        return page.render("login_link.html", account_id=account_id, token=token)

    @post("/login/{token:str}", status_code=303)
    async def use_login_link(self, request: Request[Any, Any, Any], token: LinkToken) -> Redirect:
        """Spend the link and sign in as its account."""
        page = await page_context(request)
        await verified_form(request, page)
        spent = await consume_login_link(page.pool, token)
        if spent is None:
            raise NotFound("this login link was used already or has expired; ask for a new one")
        account_id, link_id = spent
        session_id = await create_session(
            page.pool, "account", account_id=account_id, login_link=link_id
        )
        return _signed_in(page, session_id, f"{BASE}/accounts/{account_id}")
