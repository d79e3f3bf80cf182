"""What the account service takes and returns: new-account input, the account view, links.

Plain msgspec structs (no HTTP): the API uses them as request and response
bodies, and plugins may use them to read accounts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec

from engine.api.fields import Name

__all__ = [
    "ROLES",
    "STATUSES",
    "Account",
    "AccountPage",
    "NewAccount",
    "OnboardingLink",
    "Role",
    "Status",
]

Role = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="creator, provider, venue, or a role an enabled plugin declares",
    ),
]
ROLES: Final[tuple[str, ...]] = ("creator", "provider", "venue")

Status = Literal["onboarding", "active", "restricted", "suspended"]
STATUSES: Final[tuple[str, ...]] = ("onboarding", "active", "restricted", "suspended")

DisplayName = Name
Email = Annotated[
    str,
    msgspec.Meta(
        max_length=254,
        pattern=r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$",
        examples=["ada@example.com"],
    ),
]
Country = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2", examples=["US"])
]
CurrencyCode = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z]{3}$", description="ISO 4217", examples=["usd"])
]


class NewAccount(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A connected account to create for a creator, provider or venue."""

    role: Role
    display_name: DisplayName
    email: Email | None = None
    country: Country = "US"
    default_currency: CurrencyCode | None = msgspec.field(
        default=None,
    )


class Account(msgspec.Struct, frozen=True, kw_only=True):
    """A connected account as the engine knows it (``id`` is Stripe's ``acct_...``)."""

    id: str
    role: str
    display_name: str
    email: str
    country: str
    default_currency: str
    status: Status
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool
    requirements_due: list[str]
    payout_failure_code: str | None
    suspended: bool
    created_at: datetime
    updated_at: datetime


class OnboardingLink(msgspec.Struct, frozen=True, kw_only=True):
    """A single-use Stripe-hosted onboarding page for a connected account."""

    account_id: str
    url: str
    expires_at: int


class DashboardLink(msgspec.Struct, frozen=True, kw_only=True):
    """A single-use link to the account's Stripe Express Dashboard.

    There the holder changes the bank account payouts go to, and sees their payouts:
    for Express accounts Stripe lets the holder, not the platform, manage them.
    """

    account_id: str
    url: str
    created: int


class PayoutRetry(msgspec.Struct, frozen=True, kw_only=True):
    """A failed payout sent again: the new payout Stripe made for the same amount."""

    failed_payout: str
    payout: str
    amount: int
    currency: str
    status: str
    arrival_date: int


class AccountPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of accounts; ``next_after`` is the row id to continue after, if any."""

    accounts: list[Account]
    next_after: int | None
