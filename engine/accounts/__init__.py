"""Connected-account onboarding and status (the service behind ``/v1/accounts``).

Public names: ``AccountService`` (create, links, refresh, suspend, resume),
``apply_stripe_account`` (mirror a Stripe account object, order-insensitive;
the ``account.updated`` webhook handler's entry point), ``account_status``,
and the ``Account`` / ``NewAccount`` / ``OnboardingLink`` structs.
"""

from engine.accounts.models import (
    ROLES,
    STATUSES,
    Account,
    AccountPage,
    NewAccount,
    OnboardingLink,
    Role,
    Status,
)
from engine.accounts.service import (
    AccountService,
    account_from_row,
    account_status,
    apply_stripe_account,
)

__all__ = [
    "ROLES",
    "STATUSES",
    "Account",
    "AccountPage",
    "AccountService",
    "NewAccount",
    "OnboardingLink",
    "Role",
    "Status",
    "account_from_row",
    "account_status",
    "apply_stripe_account",
]
