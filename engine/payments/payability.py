"""Whether a party can be paid: the one check before any money is taken for it.

No business model may take a customer's money for a seller who cannot
receive it. The rule lives here, and the engine applies it in two places so a
plugin gets it without writing it:

- the gateway runs it before every Stripe call that charges for a connected
  account (a destination charge's ``transfer_data.destination`` or
  ``on_behalf_of``, a subscription's ``transfer_data``, a direct charge made
  with the ``Stripe-Account`` header);
- ``require_payable`` (also behind ``engine.payments.pricing.price_for_charge``)
  for separate charges and transfers, where the charge names no account: a
  business model calls it with the order's beneficiaries before it creates
  what it charges for.

A party is payable when the platform knows its connected account, the
operator has not suspended it, Stripe has not restricted it, and both charges
and payouts are enabled (onboarding finished). Each refusal is a ``409`` that
names the party's role, its account and the reason, raised before any Stripe
call (``404`` for an account the platform does not know):

================  ===================  ==========================================
reason            code                 meaning
================  ===================  ==========================================
unknown_account   not_found (404)      not a connected account of this platform
suspended         account_restricted   the operator suspended it (no new payments)
restricted        account_restricted   Stripe restricted it (requirements past due)
onboarding        account_not_ready    onboarding not finished (charges disabled)
payouts_disabled  account_restricted   Stripe disabled its payouts
================  ===================  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from engine.core.errors import AccountNotReady, AccountRestricted, MarketplaceError, NotFound

__all__ = ["Payability", "refusal", "require_payable"]

_COLUMNS: Final = (
    "stripe_account_id, status, suspended, charges_enabled, payouts_enabled, requirements_due"
)


class _Fetcher(Protocol):
    async def fetch(self, query: str, *args: object) -> Any:
        """All rows."""


def refusal(role: str, account_id: str, row: Mapping[str, Any] | None) -> MarketplaceError | None:
    """The error refusing a charge for ``account_id`` (``row`` from ``marketplace_accounts``).

    ``None`` when the account can be paid.
    """
    party = f"{role} {account_id}"
    extra = {"party": role, "account_id": account_id}
    if row is None:
        return NotFound(
            f"{party} is not a connected account of this platform",
            reason="unknown_account",
            **extra,
        )
    if row["suspended"]:
        return AccountRestricted(
            f"{party} is suspended by the platform and takes no new payments",
            reason="suspended",
            **extra,
        )
    if row["status"] == "restricted":
        due = ", ".join(str(item) for item in (row["requirements_due"] or [])) or "none listed"
        return AccountRestricted(
            f"{party} is restricted by Stripe (requirements due: {due})",
            reason="restricted",
            **extra,
        )
    if not row["charges_enabled"]:
        return AccountNotReady(
            f"{party} has not finished onboarding (charges not enabled)",
            reason="onboarding",
            **extra,
        )
    if not row["payouts_enabled"]:
        return AccountRestricted(
            f"{party} cannot be paid out (payouts disabled by Stripe)",
            reason="payouts_disabled",
            **extra,
        )
    return None


async def require_payable(executor: _Fetcher, parties: Mapping[str, str]) -> None:
    """Refuse (409) unless every party can be paid.

    Args:
        executor: a pool or connection.
        parties: role -> connected account id (an ``Order``'s ``beneficiaries``).

    Raises:
        NotFound: a party's account is not a connected account of this platform.
        AccountNotReady: a party's onboarding is not finished.
        AccountRestricted: a party is suspended, restricted or cannot be paid out.
    """
    wanted = {role: account for role, account in parties.items() if account}
    if not wanted:
        return
    rows = await executor.fetch(
        f"SELECT {_COLUMNS} FROM marketplace_accounts WHERE stripe_account_id = ANY($1::text[])",  # noqa: S608 - constant columns
        sorted(set(wanted.values())),
    )
    by_id = {str(row["stripe_account_id"]): row for row in rows}
    for role, account in sorted(wanted.items()):
        error = refusal(role, account, by_id.get(account))
        if error is not None:
            raise error


# Writes that take a customer's money and may name the account it is taken for.
_CHARGING: Final = frozenset(
    {
        ("payment_intents", "create"),
        ("payment_intents", "update"),
        ("subscriptions", "create"),
        ("subscriptions", "update"),
        ("subscription_schedules", "create"),
        ("invoices", "create"),
        ("checkout.sessions", "create"),
        ("charges", "create"),
    }
)
# Of those, the ones that charge on the connected account itself with Stripe-Account.
_DIRECT: Final = frozenset(
    {
        ("payment_intents", "create"),
        ("subscriptions", "create"),
        ("invoices", "create"),
        ("checkout.sessions", "create"),
        ("charges", "create"),
    }
)


def charged_parties(
    resource: str, method: str, params: Mapping[str, Any], account: str | None
) -> dict[str, str]:
    """The connected accounts a Stripe write charges for (role -> account id)."""
    if (resource, method) not in _CHARGING:
        return {}
    parties: dict[str, str] = {}
    for source in (params, params.get("payment_intent_data"), params.get("subscription_data")):
        if not isinstance(source, Mapping):
            continue
        transfer = source.get("transfer_data")
        if isinstance(transfer, Mapping) and transfer.get("destination"):
            parties["destination"] = str(transfer["destination"])
        if source.get("on_behalf_of"):
            parties["on_behalf_of"] = str(source["on_behalf_of"])
    if account and (resource, method) in _DIRECT:
        parties["direct charge account"] = account
    return parties


class Payability:
    """The gateway's guard: ``await guard(resource, method, params, account)`` before a write."""

    def __init__(self, executor: _Fetcher) -> None:
        self._executor = executor

    async def __call__(
        self, resource: str, method: str, params: Mapping[str, Any], account: str | None
    ) -> None:
        """Refuse (409) a charge for an account that cannot be paid."""
        parties = charged_parties(resource, method, params, account)
        if parties:
            await require_payable(self._executor, parties)
