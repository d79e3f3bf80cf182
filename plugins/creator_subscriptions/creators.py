"""Creators: onboarding through the engine's account service, and who may sell.

A creator is a ``creator``-role Express connected account (created, linked and
tracked by ``engine.accounts``) plus a public handle. They can set up tiers at
once, but nothing is sold for them until ``account.updated`` says charges are
enabled (the core handler mirrors that into ``marketplace_accounts``); until
then every sale answers ``409 account_not_ready``.
"""

from __future__ import annotations

import asyncpg

from engine.accounts import AccountService, NewAccount
from engine.accounts.queries import accounts_needing_attention
from engine.core.errors import Conflict
from plugins.creator_subscriptions.env import (
    CREATOR_SELECT,
    CreatorRow,
    Env,
    creator_by_account,
    creators_of,
)
from plugins.creator_subscriptions.schemas import CreatorView, NewCreator, OnboardingView

__all__ = ["creator_view", "get_creator", "list_creators", "onboard_creator", "onboarding_link"]


def creator_view(creator: CreatorRow) -> CreatorView:
    """The API view of a creator."""
    return CreatorView(
        id=creator.id,
        account_id=creator.account_id,
        handle=creator.handle,
        display_name=creator.display_name,
        default_currency=creator.default_currency,
        status=creator.status,
        charges_enabled=creator.charges_enabled,
        payouts_enabled=creator.payouts_enabled,
        payout_failure_code=creator.payout_failure_code,
    )


def account_service(env: Env) -> AccountService:
    """The engine's account service on the plugin's pool and gateway."""
    return AccountService(env.pool, env.gateway, public_url=env.public_url)


async def onboard_creator(
    env: Env, new: NewCreator, *, operation: str | None, actor: str
) -> OnboardingView:
    """Create the creator's Express account (engine accounts service) and onboarding link.

    Args:
        env: the plugin's environment.
        new: handle, name and account details.
        operation: names the business operation (from the request's
            Idempotency-Key), so a retried request creates one Stripe account.
        actor: who asked, for the audit log.

    Raises:
        Conflict: the handle is taken by another creator.
    """
    async with env.pool.acquire() as conn:
        taken = await conn.fetchval(
            "SELECT account_id FROM creator_subscriptions_creators WHERE handle = $1", new.handle
        )
    if taken is not None and operation is None:
        raise Conflict(f"handle {new.handle!r} is taken", field="handle")
    account, link = await account_service(env).create(
        NewAccount(
            role="creator",
            display_name=new.display_name,
            email=new.email,
            country=new.country,
            default_currency=new.default_currency,
        ),
        operation=operation,
        actor=actor,
    )
    async with env.pool.acquire() as conn:
        try:
            await conn.execute(
                """
                INSERT INTO creator_subscriptions_creators
                    (account_id, handle, display_name, default_currency, created_at)
                VALUES ($1, $2, $3, $4, now())
                ON CONFLICT (account_id) DO NOTHING
                """,
                account.id,
                new.handle,
                new.display_name,
                account.default_currency,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"handle {new.handle!r} is taken", field="handle") from None
        creator = await creator_by_account(conn, account.id)
    if creator.handle != new.handle:
        raise Conflict(f"handle {new.handle!r} is taken", field="handle")
    return OnboardingView(
        creator=creator_view(creator), onboarding_url=link.url, expires_at=link.expires_at
    )


async def onboarding_link(env: Env, account_id: str, *, operation: str | None) -> OnboardingView:
    """A fresh onboarding link for a creator whose link expired."""
    async with env.pool.acquire() as conn:
        creator = await creator_by_account(conn, account_id)
    link = await account_service(env).onboarding_link(account_id, operation=operation)
    return OnboardingView(
        creator=creator_view(creator), onboarding_url=link.url, expires_at=link.expires_at
    )


async def get_creator(env: Env, account_id: str) -> CreatorView:
    """One creator and whether they can sell."""
    async with env.pool.acquire() as conn:
        return creator_view(await creator_by_account(conn, account_id))


async def list_creators(
    env: Env, *, after: int, limit: int, payout_failed: bool | None = None
) -> tuple[list[CreatorView], int | None]:
    """Creators in creation order after our id ``after``, and the next page's ``after``.

    ``payout_failed`` keeps only creators whose last payout failed (or only
    those whose did not): what an operator checks first.
    """
    async with env.pool.acquire() as conn:
        failing = (
            []
            if payout_failed is None
            else [
                account.id
                for account in await accounts_needing_attention(conn, payout_failed_only=True)
            ]
        )
        rows = await conn.fetch(
            CREATOR_SELECT
            + """
            WHERE c.id > $1
              AND ($2::boolean IS NULL OR (c.account_id = ANY($3::text[])) = $2)
            ORDER BY c.id LIMIT $4
            """,
            after,
            payout_failed,
            failing,
            limit + 1,
        )
        creators = await creators_of(conn, rows[:limit])
    next_after = creators[-1].id if len(rows) > limit else None
    return [creator_view(creator) for creator in creators], next_after
