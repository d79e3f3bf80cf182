"""Connected-account onboarding: create Express accounts, links, status, suspension.

The business logic behind ``/v1/accounts`` (no HTTP here): the Stripe gateway
creates the account and its onboarding links; ``marketplace_accounts`` keeps
our copy of its status; every create, suspend and resume is audited.

Status (``account_status``) is derived from what Stripe says: ``active`` when
charges and payouts are enabled, ``restricted`` when Stripe rejected or paused
it or the details were submitted but it is not enabled, else ``onboarding``;
the operator's ``suspended`` flag overrides all three. ``apply_stripe_account`` is
order-insensitive: each snapshot carries a marker (the event's ``created``
time), and a snapshot older than the one already applied changes nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Mapping
from typing import Any, Final, Protocol

from engine.accounts.models import (
    Account,
    AccountPage,
    DashboardLink,
    NewAccount,
    OnboardingLink,
    PayoutRetry,
)
from engine.accounts.onboarding import onboarding_urls
from engine.api.keys import KEYS_SETTING
from engine.core.errors import (
    AccountNotReady,
    AccountRestricted,
    Conflict,
    InvalidInput,
    NotFound,
    UnknownCurrency,
)
from engine.core.money import is_known_currency, normalize_currency
from engine.core.plugins import CORE_ACCOUNT_ROLES
from engine.gateway import StripeGateway, idempotency_key
from engine.live_settings import bump
from engine.signing import load_signer

__all__ = [
    "ACCOUNT_COLUMNS",
    "AccountService",
    "Executor",
    "UnknownRole",
    "account_from_row",
    "account_status",
    "apply_stripe_account",
    "bank_errored",
]

ACCOUNT_COLUMNS: Final = (
    "id, stripe_account_id, role, display_name, email, country, default_currency, status, "
    "charges_enabled, payouts_enabled, details_submitted, requirements_due, "
    "payout_failure_code, suspended, created_at, updated_at"
)

# Stripe disabled reasons that are not "the holder has not finished onboarding".
_RESTRICTING_REASONS: Final = frozenset({"under_review", "platform_paused", "listed", "other"})

# The same rule as account_status(), over the stored flags (used on resume).
_STORED_STATUS_SQL: Final = (
    "CASE WHEN charges_enabled AND payouts_enabled THEN 'active' "
    "WHEN details_submitted THEN 'restricted' ELSE 'onboarding' END"
)


class Executor(Protocol):
    """An asyncpg pool or connection: what the functions here query through."""

    async def fetchrow(self, query: str, *args: object) -> Any:
        """One row or ``None``."""

    async def fetch(self, query: str, *args: object) -> Any:
        """All rows."""

    async def execute(self, query: str, *args: object) -> Any:
        """A statement's status."""


def bank_errored(stripe_account: Mapping[str, Any]) -> bool:
    """Whether Stripe stopped the account's payouts: a bank account a payout failed to
    (``status: errored``) is still on it. Replacing it is what lifts the stop."""
    banks = (stripe_account.get("external_accounts") or {}).get("data") or []
    return any(bank.get("status") == "errored" for bank in banks)


def account_status(stripe_account: Mapping[str, Any]) -> str:
    """Our status for a Stripe account object: ``active``, ``restricted`` or ``onboarding``.

    ``active``: charges and payouts enabled. ``restricted``: Stripe rejected or
    paused the account, something is past due, or the holder submitted their
    details and Stripe still does not enable it (under review). Otherwise
    ``onboarding``: a new account's ``disabled_reason`` already reads
    ``requirements.past_due`` (with nothing in ``past_due``) until its holder
    finishes, which is not a restriction.
    """
    requirements = stripe_account.get("requirements") or {}
    if stripe_account.get("charges_enabled") and stripe_account.get("payouts_enabled"):
        return "active"
    reason = str(requirements.get("disabled_reason") or "")
    if reason.startswith("rejected") or reason in _RESTRICTING_REASONS:
        return "restricted"
    if requirements.get("past_due"):
        return "restricted"
    if stripe_account.get("details_submitted"):
        return "restricted"
    return "onboarding"


def _due(stripe_account: Mapping[str, Any]) -> list[str]:
    requirements = stripe_account.get("requirements") or {}
    return [str(item) for item in requirements.get("currently_due") or []]


def account_from_row(row: Mapping[str, Any]) -> Account:
    """Build the ``Account`` view from a ``marketplace_accounts`` row (``ACCOUNT_COLUMNS``)."""
    due = row["requirements_due"]
    if isinstance(due, str):
        due = json.loads(due)
    return Account(
        id=row["stripe_account_id"],
        role=row["role"],
        display_name=row["display_name"],
        email=row["email"],
        country=row["country"],
        default_currency=row["default_currency"],
        status=row["status"],
        charges_enabled=row["charges_enabled"],
        payouts_enabled=row["payouts_enabled"],
        details_submitted=row["details_submitted"],
        requirements_due=[str(item) for item in due or []],
        payout_failure_code=row["payout_failure_code"],
        suspended=row["suspended"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def apply_stripe_account(
    db: Executor, stripe_account: Mapping[str, Any], *, observed_at: int | None = None
) -> Account | None:
    """Update our row from a Stripe account object; return it, or ``None`` if unchanged.

    Args:
        db: an asyncpg pool or connection (a connection joins its transaction).
        stripe_account: Stripe's account object (from an event or a retrieve).
        observed_at: when Stripe produced this snapshot (an event's ``created``).
            A snapshot older than the last one applied is ignored, so events
            may arrive in any order. ``None`` means "read from Stripe just now":
            always applied, and older events arriving later are then ignored.

    Returns ``None`` for an unknown account or a stale snapshot.
    """
    marker = observed_at if observed_at is not None else int(time.time())
    forced = observed_at is None
    row = await db.fetchrow(
        f"""
        UPDATE marketplace_accounts
        SET charges_enabled = $2, payouts_enabled = $3, details_submitted = $4,
            requirements_due = $5::jsonb,
            status = CASE WHEN suspended THEN 'suspended' ELSE $6 END,
            stripe_updated_at = GREATEST(stripe_updated_at, $7), updated_at = now()
        WHERE stripe_account_id = $1 AND ($8 OR stripe_updated_at <= $7)
        RETURNING {ACCOUNT_COLUMNS}
        """,  # noqa: S608 - constant columns
        str(stripe_account.get("id")),
        bool(stripe_account.get("charges_enabled")),
        bool(stripe_account.get("payouts_enabled")),
        bool(stripe_account.get("details_submitted")),
        json.dumps(_due(stripe_account)),
        account_status(stripe_account),
        marker,
        forced,
    )
    return None if row is None else account_from_row(row)


async def _audit(db: Executor, actor: str, action: str, subject: str, data: object) -> None:
    await db.execute(
        "INSERT INTO marketplace_audit_log (actor, action, subject, data, created_at) "
        "VALUES ($1, $2, $3, $4::jsonb, now())",
        actor,
        action,
        subject,
        json.dumps(data),
    )


class UnknownRole(InvalidInput):
    """A role no enabled plugin declared (``register_account_roles``)."""

    code = "unknown_role"


class AccountService:
    """Onboarding and status of connected accounts.

    Args:
        pool: the asyncpg pool.
        gateway: the Stripe gateway.
        public_url: the engine's public base address; Stripe sends the
            account holder back to the onboarding pages there
            (``engine.accounts.onboarding``).
    """

    def __init__(
        self,
        pool: Any,
        gateway: StripeGateway,
        *,
        public_url: str,
        roles: Collection[str] = CORE_ACCOUNT_ROLES,
    ) -> None:
        self._pool = pool
        self._gateway = gateway
        self._public_url = public_url.rstrip("/")
        self._roles = frozenset(roles)

    async def create(
        self, new: NewAccount, *, operation: str | None, actor: str
    ) -> tuple[Account, OnboardingLink]:
        """Create an Express account and its first onboarding link.

        Args:
            new: what to create.
            operation: a token naming this business operation (a retried
                request passes the same one), so Stripe creates one account
                however often it is retried; ``None`` for a fresh one.
            actor: who asked (for the audit log).

        Raises:
            InvalidInput / UnknownCurrency: a bad field (also as Stripe reports it).
            GatewayError: Stripe failed.
        """
        if new.role not in self._roles:
            raise UnknownRole(
                f"unknown role {new.role!r} (known: {', '.join(sorted(self._roles))})",
                field="role",
            )
        currency = None
        if new.default_currency:
            if not is_known_currency(new.default_currency):
                raise UnknownCurrency(new.default_currency, field="default_currency")
            currency = normalize_currency(new.default_currency)
        token = operation or uuid.uuid4().hex
        params: dict[str, Any] = {
            "type": "express",
            "country": new.country,
            "capabilities": {
                "card_payments": {"requested": True},
                "transfers": {"requested": True},
            },
            "business_profile": {"name": new.display_name},
            "metadata": {"role": new.role},
        }
        if new.email:
            params["email"] = new.email
        if currency:
            params["default_currency"] = currency
        stripe_account = await self._gateway.call(
            "accounts",
            "create",
            params=params,
            idempotency_key=idempotency_key("account", "create", token),
        )
        account_id = str(stripe_account["id"])
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO marketplace_accounts
                    (stripe_account_id, role, display_name, email, country, default_currency,
                     status, charges_enabled, payouts_enabled, details_submitted,
                     requirements_due, suspended, stripe_updated_at, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, false, 0,
                        now(), now())
                ON CONFLICT (stripe_account_id) DO NOTHING
                RETURNING id
                """,
                account_id,
                new.role,
                new.display_name,
                new.email or "",
                str(stripe_account.get("country") or new.country),
                str(stripe_account.get("default_currency") or currency or "usd"),
                account_status(stripe_account),
                bool(stripe_account.get("charges_enabled")),
                bool(stripe_account.get("payouts_enabled")),
                bool(stripe_account.get("details_submitted")),
                json.dumps(_due(stripe_account)),
            )
            if inserted is not None:
                await _audit(
                    conn,
                    actor,
                    "account.create",
                    account_id,
                    {"role": new.role, "country": new.country, "operation": token},
                )
        link = await self.onboarding_link(account_id, operation=f"{token}:first")
        return await self.get(account_id), link

    async def onboarding_link(self, account_id: str, *, operation: str | None) -> OnboardingLink:
        """A new onboarding link for an existing account.

        Raises:
            NotFound: no such account.
        """
        await self.get(account_id)
        token = operation or uuid.uuid4().hex
        urls = onboarding_urls(self._public_url, account_id, await load_signer(self._pool))
        link = await self._gateway.create_account_link(
            account_id,
            refresh_url=urls.refresh_url,
            return_url=urls.return_url,
            key=idempotency_key("account", account_id, "link", token),
        )
        return OnboardingLink(
            account_id=account_id,
            url=str(link["url"]),
            expires_at=int(link.get("expires_at") or 0),
        )

    async def dashboard_link(self, account_id: str, *, operation: str | None) -> DashboardLink:
        """A login link to the account's Express Dashboard (bank account, payouts).

        Raises:
            NotFound: no such account.
            AccountNotReady: onboarding is not finished (send an onboarding link).
        """
        account = await self.get(account_id)
        if not account.details_submitted:
            raise AccountNotReady(
                f"account {account_id} has not finished onboarding: create an onboarding "
                f"link (POST /v1/accounts/{account_id}/onboarding-link) instead",
                account_id=account_id,
                reason="onboarding",
            )
        token = operation or uuid.uuid4().hex
        link = await self._gateway.call(
            "accounts.login_links",
            "create",
            account_id,
            idempotency_key=idempotency_key("account", account_id, "login_link", token),
        )
        return DashboardLink(
            account_id=account_id, url=str(link["url"]), created=int(link.get("created") or 0)
        )

    async def retry_payout(self, account_id: str, payout_id: str) -> PayoutRetry:
        """Send a failed payout's amount to the account's bank again (a manual payout).

        Only for accounts paid out manually: on an automatic schedule Stripe itself
        pays the returned funds with the next payout once the bank account works, and
        a second, manual payout would race it. Retrying twice makes one payout.

        Raises:
            NotFound: no such payout of this account.
            Conflict: the payout did not fail, or the account is paid out automatically.
            AccountRestricted: payouts are disabled (the bank account must change first).
        """
        row = await self._pool.fetchrow(
            "SELECT stripe_payout_id, amount, currency, status FROM marketplace_payouts "
            "WHERE stripe_payout_id = $1 AND account_id = $2",
            payout_id,
            account_id,
        )
        if row is None:
            raise NotFound(f"no payout {payout_id}")
        if row["status"] != "failed":
            raise Conflict(
                f"payout {payout_id} is {row['status']}: only a failed payout can be retried",
                state=str(row["status"]),
            )
        stripe_account = await self._gateway.retrieve_account(account_id)
        errored = bank_errored(stripe_account)
        if errored or not stripe_account.get("payouts_enabled"):
            raise AccountRestricted(
                f"account {account_id} cannot be paid out yet: "
                + (
                    "the bank account the payout failed to is still on it"
                    if errored
                    else "Stripe disabled its payouts"
                )
                + f"; change it first (POST /v1/accounts/{account_id}/dashboard-link)",
                account_id=account_id,
                reason="bank_account_errored" if errored else "payouts_disabled",
            )
        schedule = ((stripe_account.get("settings") or {}).get("payouts") or {}).get(
            "schedule"
        ) or {}
        interval = str(schedule.get("interval") or "daily")
        if interval != "manual":
            raise Conflict(
                f"account {account_id} is paid out automatically ({interval}): Stripe pays "
                "the returned funds with its next payout now that payouts are enabled",
                schedule=interval,
            )
        payout = await self._gateway.call(
            "payouts",
            "create",
            params={
                "amount": int(row["amount"]),
                "currency": str(row["currency"]),
                "description": f"retry of {payout_id}",
                "metadata": {"retry_of": payout_id},
            },
            account=account_id,
            idempotency_key=idempotency_key("payout", payout_id, "retry"),
        )
        return PayoutRetry(
            failed_payout=payout_id,
            payout=str(payout["id"]),
            amount=int(payout["amount"]),
            currency=str(payout["currency"]),
            status=str(payout["status"]),
            arrival_date=int(payout.get("arrival_date") or 0),
        )

    async def get(self, account_id: str) -> Account:
        """Our copy of one account.

        Raises:
            NotFound: no such account.
        """
        row = await self._pool.fetchrow(
            f"SELECT {ACCOUNT_COLUMNS} FROM marketplace_accounts WHERE stripe_account_id = $1",  # noqa: S608
            account_id,
        )
        if row is None:
            raise NotFound(f"no connected account {account_id!r}", account_id=account_id)
        return account_from_row(row)

    async def list_accounts(
        self, *, after: int = 0, limit: int = 20, role: str | None = None
    ) -> AccountPage:
        """Accounts in creation order after row id ``after``."""
        if not 1 <= limit <= 100:
            raise InvalidInput("limit must be between 1 and 100", field="limit")
        rows = await self._pool.fetch(
            f"SELECT {ACCOUNT_COLUMNS} FROM marketplace_accounts "  # noqa: S608 - constant columns
            "WHERE id > $1 AND ($2::text IS NULL OR role = $2) ORDER BY id LIMIT $3",
            after,
            role,
            limit + 1,
        )
        accounts = [account_from_row(row) for row in rows[:limit]]
        next_after = int(rows[limit - 1]["id"]) if len(rows) > limit else None
        return AccountPage(accounts=accounts, next_after=next_after)

    async def refresh(self, account_id: str) -> Account:
        """Re-read the account from Stripe and store its status.

        Raises:
            NotFound: no such account (here or at Stripe).
        """
        await self.get(account_id)
        stripe_account = await self._gateway.retrieve_account(account_id)
        updated = await apply_stripe_account(self._pool, stripe_account)
        return updated or await self.get(account_id)

    async def suspend(self, account_id: str, *, actor: str, reason: str = "") -> Account:
        """Stop the platform from charging for or paying out to an account.

        Raises:
            NotFound: no such account.
        """
        return await self._set_suspended(account_id, True, actor=actor, reason=reason)

    async def resume(self, account_id: str, *, actor: str) -> Account:
        """Lift a suspension; the status goes back to what Stripe last said.

        Raises:
            NotFound: no such account.
        """
        return await self._set_suspended(account_id, False, actor=actor, reason="")

    async def _set_suspended(
        self, account_id: str, suspended: bool, *, actor: str, reason: str
    ) -> Account:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""
                UPDATE marketplace_accounts
                SET suspended = $2,
                    status = CASE WHEN $2 THEN 'suspended' ELSE {_STORED_STATUS_SQL} END,
                    updated_at = now()
                WHERE stripe_account_id = $1
                RETURNING {ACCOUNT_COLUMNS}
                """,  # noqa: S608 - constant SQL fragments
                account_id,
                suspended,
            )
            if row is None:
                raise NotFound(f"no connected account {account_id!r}", account_id=account_id)
            action = "account.suspend" if suspended else "account.resume"
            await _audit(conn, actor, action, account_id, {"reason": reason} if reason else {})
            # The account's API keys stop (or resume) working in every process at once.
            await bump(conn, KEYS_SETTING)
        return account_from_row(row)
