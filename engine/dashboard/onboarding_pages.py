"""The pages Stripe's hosted onboarding sends an account holder back to.

``/dashboard/onboarding/<acct>/return``: the holder finished (or left) the
onboarding flow. Stripe does not say which, so the page re-reads the account
from Stripe, stores its status and says what happened and what comes next:
ready to be paid, details under review, or details still missing (with a
button that continues onboarding).

``/dashboard/onboarding/<acct>/refresh``: the link expired or was already used.
As Stripe asks, a new onboarding link is made and the browser is sent to it.

Both need the token the engine put in the link's addresses
(``engine.accounts.onboarding``); without it they show a plain "not valid" page.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect

from engine.accounts.onboarding import PAGES_PATH, token_valid
from engine.accounts.service import AccountService
from engine.dashboard.context import BASE, Page, page_context
from engine.dashboard.rendering import redirect

__all__ = ["OnboardingPagesController"]

AccountId = Annotated[str, PathParameter(min_length=5, max_length=64, pattern=r"^acct_\w+$")]
Token = Annotated[str | None, QueryParameter(required=False, max_length=200)]


def _service(page: Page) -> AccountService:
    return AccountService(
        page.pool, page.services.gateway, public_url=page.services.settings.engine.public_url
    )


def _not_valid(page: Page) -> Response[str]:
    return page.render(
        "error.html",
        status_code=404,
        title="This onboarding link is not valid",
        detail=(
            "It may have expired or been copied incompletely. Ask the platform for a new "
            "onboarding link."
        ),
    )


class OnboardingPagesController(Controller):
    """``/dashboard/onboarding/<acct>/return`` and ``/refresh`` (public, token-checked)."""

    path = PAGES_PATH.removeprefix(BASE)

    @get("/{account_id:str}/return", name="dashboard:onboarding-return")
    async def returned(
        self, request: Request[Any, Any, Any], account_id: AccountId, token: Token = None
    ) -> Response[str]:
        """Where Stripe sends the holder after onboarding: what happened, what comes next."""
        page = await page_context(request)
        if not token_valid(page.signer, account_id, token):
            return _not_valid(page)
        account = await _service(page).refresh(account_id)
        if account.charges_enabled and account.payouts_enabled:
            outcome = "ready"
        elif account.details_submitted:
            outcome = "in_review"
        else:
            outcome = "incomplete"
        return page.render(
            "onboarding_return.html",
            account=account,
            outcome=outcome,
            continue_url=f"{PAGES_PATH}/{account_id}/refresh?token={token}",
        )

    @get("/{account_id:str}/refresh", name="dashboard:onboarding-refresh")
    async def refresh(
        self, request: Request[Any, Any, Any], account_id: AccountId, token: Token = None
    ) -> Response[str] | Redirect:
        """An expired or used link: make a new one and send the holder on to it."""
        page = await page_context(request)
        if not token_valid(page.signer, account_id, token):
            return _not_valid(page)
        link = await _service(page).onboarding_link(account_id, operation=None)
        return redirect(link.url, cookies=page.cookies)
