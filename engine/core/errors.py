"""Domain errors: every error the engine raises on purpose, each with a stable code.

The API maps each class to an RFC 9457 problem response using ``code`` (the
stable machine-readable identifier, also the last segment of the problem
``type`` URI) and ``status``. Plugins raise these (or subclass
``MarketplaceError``) instead of bare exceptions.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AccountNotReady",
    "AccountRestricted",
    "AuthenticationRequired",
    "CardDeclined",
    "ConfigError",
    "Conflict",
    "CurrencyMismatch",
    "FieldNotApplicable",
    "Forbidden",
    "GatewayError",
    "IdempotencyConflict",
    "IllegalTransition",
    "InsufficientBalance",
    "InvalidAmount",
    "InvalidInput",
    "LedgerConflict",
    "LedgerImbalance",
    "MarketplaceError",
    "NotFound",
    "PaymentActionRequired",
    "PluginError",
    "RateLimited",
    "RecordConflict",
    "UnknownCurrency",
]


class MarketplaceError(Exception):
    """Base of every domain error. ``code`` is stable; ``status`` is the HTTP status.

    ``final`` says whether the same request would fail the same way again: a
    final error is the request's outcome (kept for its ``Idempotency-Key``); one
    that is not (a state that may change soon, a busy or failing dependency)
    is never stored, so a retry with the same key runs again.
    """

    code: ClassVar[str] = "marketplace_error"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Request failed"
    final: ClassVar[bool] = True
    expected: ClassVar[bool] = False
    """A 5xx that is the endpoint's normal answer (``/ready`` while a dependency is
    missing): logged as a warning, not an error."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra


class InvalidInput(MarketplaceError):
    """A request field is missing or has a bad value (``field`` names it)."""

    code = "invalid_input"
    status = 400
    title = "Invalid input"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail, field=field, **extra)
        self.field = field


class InvalidAmount(InvalidInput):
    """An amount is not an integer of minor units, or has too many decimals."""

    code = "invalid_amount"


class UnknownCurrency(InvalidInput):
    """A currency code that is not ISO 4217."""

    code = "unknown_currency"

    def __init__(self, currency: str, *, field: str | None = "currency") -> None:
        super().__init__(f"unknown currency {currency!r}", field=field, currency=currency)


class CurrencyMismatch(InvalidInput):
    """Arithmetic between amounts of different currencies."""

    code = "currency_mismatch"

    def __init__(self, left: str, right: str) -> None:
        super().__init__(f"cannot combine {left} with {right}", left=left, right=right)


class FieldNotApplicable(InvalidInput):
    """A field the action cannot use (in the object's current state): refused, never ignored."""

    code = "field_not_applicable"
    status = 422
    title = "Field not applicable"


class AuthenticationRequired(MarketplaceError):
    """No API key, or one that does not exist or was revoked."""

    code = "authentication_required"
    status = 401
    title = "Authentication required"


class Forbidden(MarketplaceError):
    """The key is valid but its scope does not allow this action."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(MarketplaceError):
    """The object does not exist, or is not visible to this key."""

    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(MarketplaceError):
    """The request conflicts with the current state of the object."""

    code = "conflict"
    status = 409
    title = "Conflict"


class AccountNotReady(Conflict):
    """The connected account cannot take charges yet (onboarding incomplete)."""

    code = "account_not_ready"
    final = False  # onboarding completes; the same request then succeeds


class AccountRestricted(Conflict):
    """The connected account is restricted or suspended."""

    code = "account_restricted"
    final = False  # Stripe or the admin may lift it


class IllegalTransition(Conflict):
    """A state machine refused an action in the current state."""

    code = "illegal_transition"

    def __init__(self, detail: str, *, state: str, allowed: list[str]) -> None:
        super().__init__(detail, state=state, allowed=allowed)


class IdempotencyConflict(MarketplaceError):
    """The Idempotency-Key was used before with a different request."""

    code = "idempotency_key_reused"
    status = 422
    title = "Idempotency key reused"


class RateLimited(MarketplaceError):
    """Too many requests."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"
    final = False


class GatewayError(MarketplaceError):
    """Stripe failed in a way the engine cannot attribute to the request."""

    code = "gateway_error"
    status = 502
    title = "Payment gateway error"
    final = False


class CardDeclined(GatewayError):
    """The card was declined (``decline_code`` says why)."""

    code = "card_declined"
    status = 402
    title = "Card declined"
    final = True  # Stripe keeps the decline under its own idempotency key too


class PaymentActionRequired(MarketplaceError):
    """A payment (or a card's set-up) waits for the customer to authenticate it (3D Secure).

    ``action`` is the ``engine.core.authentication.CustomerAction`` to show the customer;
    the payment goes on, driven by webhooks, once they have. Plugins raise it to leave a
    business object where it is until then; reaching the API it is a 402 carrying the
    action.
    """

    code = "payment_action_required"
    status = 402
    title = "Payment needs the customer's action"

    def __init__(self, detail: str, *, action: Any, **extra: Any) -> None:
        super().__init__(detail, action=action, **extra)
        self.action = action


class InsufficientBalance(GatewayError):
    """A transfer or payout exceeds the available balance."""

    code = "insufficient_balance"
    status = 409
    title = "Insufficient balance"
    final = False  # the balance grows as funds become available


class RecordConflict(MarketplaceError):
    """A Stripe object recorded again with other facts (a transfer's amount or destination).

    The same facts again are a retry and change nothing; other facts mean two
    code paths disagree about one movement: refused, never silently overwritten,
    and, like ``LedgerConflict``, counted and opened as an admin alert.

    Attributes:
        kind: what was recorded (``transfer``).
        key: the key it is recorded under (the transfer's idempotency key).
        stripe_id: the Stripe object (``tr_...``).
        account: the account the money went to (``acct_...``), else ``""``.
        currency: its currency.
    """

    code = "record_conflict"
    status = 500
    title = "Record conflict"

    def __init__(
        self,
        detail: str,
        *,
        kind: str,
        key: str,
        stripe_id: str,
        account: str = "",
        currency: str = "",
    ) -> None:
        super().__init__(detail, kind=kind, key=key, stripe_id=stripe_id)
        self.kind = kind
        self.key = key
        self.stripe_id = stripe_id
        self.account = account
        self.currency = currency


class LedgerImbalance(MarketplaceError):
    """A ledger transaction whose entries do not sum to zero per currency."""

    code = "ledger_imbalance"
    status = 500
    title = "Ledger imbalance"


class LedgerConflict(MarketplaceError):
    """A posting under a key already posted with different entries (refused, never dropped).

    The same key with the same entries is a retry and changes nothing; different
    entries mean two code paths disagree about one movement, which someone must
    look at: the ledger raises this, counts it and opens an admin alert.
    """

    code = "ledger_conflict"
    status = 500
    title = "Ledger posting conflict"

    def __init__(
        self,
        detail: str,
        *,
        key: str,
        kind: str,
        existing: list[tuple[str, int, str]],
        refused: list[tuple[str, int, str]],
    ) -> None:
        super().__init__(detail, key=key, kind=kind)
        self.key = key
        self.kind = kind
        self.existing = existing
        self.refused = refused


class ConfigError(MarketplaceError):
    """The configuration is invalid; ``key`` names the offending setting."""

    code = "config_error"
    status = 500
    title = "Configuration error"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}", key=key)
        self.key = key
        self.problem = problem


class PluginError(ConfigError):
    """A plugin failed to load or registered something invalid."""

    code = "plugin_error"
