"""``/v1/accounts``: connected-account onboarding, status and suspension.

Admin and service keys create accounts and see every one; an account-scoped
key sees only its own account (any other id is a 404, exactly like a missing
one). Suspend and resume are for admins.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.accounts import Account, AccountService, NewAccount, OnboardingLink
from engine.accounts.models import DashboardLink, PayoutRetry
from engine.api.auth import Principal, requires_scope
from engine.api.fields import Note
from engine.api.idempotency import IdempotencyKeyHeader
from engine.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from engine.api.problems import problem_responses
from engine.services import Services

__all__ = ["AccountController", "AccountCreated", "AccountList", "SuspendAccount"]

AccountId = Annotated[
    str,
    PathParameter(
        pattern=r"^acct_[A-Za-z0-9]{1,60}$",
        description="Stripe's connected account id",
        examples=None,
    ),
]

PayoutId = Annotated[
    str,
    PathParameter(
        pattern=r"^po_[A-Za-z0-9]{1,60}$", description="Stripe's payout id", examples=None
    ),
]

_READ_ERRORS = (400, 401, 403, 404)
_WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 422, 502)


class AccountCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The new account and the link its holder follows to finish onboarding at Stripe."""

    account: Account
    onboarding_link: OnboardingLink


class AccountList(msgspec.Struct, frozen=True, kw_only=True):
    """A page of accounts; pass ``next_cursor`` as ``cursor`` for the next one."""

    data: list[Account]
    next_cursor: str | None


class SuspendAccount(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why the account is suspended (kept in the audit log)."""

    reason: Note = ""


def _operation(principal: NamedDependency[Principal], idempotency_key: str | None) -> str | None:
    """Names the business operation for Stripe, so a retried request creates one account."""
    return None if idempotency_key is None else f"{principal.key_id}:{idempotency_key}"


class AccountController(Controller):
    """Connected accounts of creators, providers and venues."""

    path = "/v1/accounts"
    tags = ["accounts"]

    @post(
        "/",
        operation_id="createAccount",
        summary="Create a connected account and its onboarding link",
        guards=[requires_scope("service")],
        responses=problem_responses(*_WRITE_ERRORS),
    )
    async def create_account(
        self,
        data: JSONBody[NewAccount],
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> AccountCreated:
        """Create a Stripe Express account for a creator, provider or venue.

        The response carries the Stripe-hosted onboarding link; the account is
        ``onboarding`` until Stripe enables charges and payouts.
        """
        account, link = await account_service.create(
            data, operation=_operation(principal, idempotency_key), actor=principal.actor
        )
        return AccountCreated(account=account, onboarding_link=link)

    @get(
        "/",
        operation_id="listAccounts",
        summary="List connected accounts",
        responses=problem_responses(400, 401, 403),
    )
    async def list_accounts(
        self,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        limit: Limit = 20,
        cursor: Cursor = None,
        role: Annotated[
            str | None,
            QueryParameter(
                required=False,
                pattern=r"^[a-z][a-z0-9_]{0,31}$",
                description="Only accounts of this role",
            ),
        ] = None,
    ) -> AccountList:
        """Every account for admin and service keys; only its own for an account key."""
        after = decode_cursor(cursor)
        if principal.scope == "account":
            own = await account_service.get(principal.account_id or "")
            visible = not after and (role is None or own.role == role)
            return AccountList(data=[own] if visible else [], next_cursor=None)
        page = await account_service.list_accounts(after=after, limit=limit, role=role)
        return AccountList(data=page.accounts, next_cursor=encode_cursor(page.next_after))

    @get(
        "/{account_id:str}",
        operation_id="getAccount",
        summary="Get a connected account",
        responses=problem_responses(*_READ_ERRORS),
    )
    async def get_account(
        self,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
    ) -> Account:
        """The account's status as last seen from Stripe (see ``refresh``)."""
        principal.ensure_visible(account_id)
        return await account_service.get(account_id)

    @post(
        "/{account_id:str}/onboarding-link",
        operation_id="createOnboardingLink",
        summary="Create a new onboarding link",
        responses=problem_responses(*_WRITE_ERRORS),
    )
    async def create_onboarding_link(
        self,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> OnboardingLink:
        """A fresh single-use link (links expire; the holder may need another)."""
        principal.ensure_visible(account_id)
        return await account_service.onboarding_link(
            account_id, operation=_operation(principal, idempotency_key)
        )

    @post(
        "/{account_id:str}/dashboard-link",
        operation_id="createDashboardLink",
        summary="Create a link to the account's Stripe Express Dashboard",
        responses=problem_responses(*_WRITE_ERRORS),
    )
    async def create_dashboard_link(
        self,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> DashboardLink:
        """Where the account's holder changes the bank account payouts go to and sees its
        payouts (Stripe lets an Express account's holder, not the platform, manage them).
        ``409 account_not_ready`` until onboarding is finished. The account's own key or
        an admin/service key."""
        principal.ensure_visible(account_id)
        return await account_service.dashboard_link(
            account_id, operation=_operation(principal, idempotency_key)
        )

    @post(
        "/{account_id:str}/payouts/{payout_id:str}/retry",
        operation_id="retryPayout",
        summary="Send a failed payout again",
        responses=problem_responses(*_WRITE_ERRORS),
    )
    async def retry_payout(
        self,
        account_id: AccountId,
        payout_id: PayoutId,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> PayoutRetry:
        """A manual payout of the failed payout's amount, once the bank account works.

        ``409 account_restricted`` while payouts are disabled (change the bank account
        first), ``409 conflict`` for a payout that did not fail or an account paid out
        automatically (Stripe then pays the returned funds with its next payout). Retrying
        twice makes one payout."""
        principal.ensure_visible(account_id)
        return await account_service.retry_payout(account_id, payout_id)

    @post(
        "/{account_id:str}/refresh",
        operation_id="refreshAccount",
        summary="Re-read the account's status from Stripe",
        status_code=200,
        responses=problem_responses(*_WRITE_ERRORS),
    )
    async def refresh_account(
        self,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Account:
        """Fetch charges/payouts enabled, details submitted and requirements now."""
        principal.ensure_visible(account_id)
        return await account_service.refresh(account_id)

    @post(
        "/{account_id:str}/suspend",
        operation_id="suspendAccount",
        summary="Suspend an account (admin)",
        status_code=200,
        guards=[requires_scope()],
        responses=problem_responses(*_WRITE_ERRORS),
    )
    async def suspend_account(
        self,
        *,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        services: NamedDependency[Services],
        data: JSONBody[SuspendAccount | None] = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Account:
        """Stop charging for and paying out to the account until it is resumed.

        Its API keys and dashboard sessions stop working at once, in every process.
        """
        reason = data.reason if data is not None else ""
        account = await account_service.suspend(account_id, actor=principal.actor, reason=reason)
        await services.live.check()  # this process at once; the others on the notification
        return account

    @post(
        "/{account_id:str}/resume",
        operation_id="resumeAccount",
        summary="Resume a suspended account (admin)",
        status_code=200,
        guards=[requires_scope()],
        responses=problem_responses(*_WRITE_ERRORS),
    )
    async def resume_account(
        self,
        account_id: AccountId,
        principal: NamedDependency[Principal],
        account_service: NamedDependency[AccountService],
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Account:
        """Lift the suspension; the status returns to what Stripe last reported."""
        account = await account_service.resume(account_id, actor=principal.actor)
        await services.live.check()
        return account
