"""The one module that talks to Stripe: an async facade over ``stripe.StripeClient``.

The base address is configuration (the sandbox in development and tests,
Stripe in production). Every write takes an idempotency key derived from the
business operation (``"booking:42:transfer:provider"``), so a retried job never
moves money twice. Stripe's exceptions become the engine's domain errors.
Results are plain ``dict``s in Stripe's JSON shape, so nothing else needs the SDK.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import stripe

from engine.core.errors import (
    AccountRestricted,
    AuthenticationRequired,
    CardDeclined,
    GatewayError,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidInput,
    MarketplaceError,
    NotFound,
    RateLimited,
)
from engine.stripe_version import STRIPE_API_VERSION

__all__ = ["STRIPE_API_VERSION", "StripeGateway", "call_deadline", "idempotency_key"]

StripeObject = dict[str, Any]
Guard = Callable[[str, str, Mapping[str, Any], str | None], Awaitable[None]]
"""``guard(resource, method, params, account)``: raises to refuse a write."""


_MAX_KEY = 255


def idempotency_key(*parts: object) -> str:
    """Join business-operation parts into a Stripe idempotency key (<= 255 chars).

    ``idempotency_key("booking", 42, "transfer", "provider")`` ->
    ``"booking:42:transfer:provider"``; over-long keys keep a readable prefix
    and end in a hash so they stay unique.
    """
    key = ":".join(str(part) for part in parts)
    if len(key) <= _MAX_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: _MAX_KEY - 65]}:{digest}"


_MAX_RETRY_DELAY = 5.0
"""The SDK's longest sleep between two retries (``stripe.HTTPClient.MAX_DELAY``)."""


def call_deadline(timeout_seconds: float, max_network_retries: int) -> float:
    """The longest one gateway call can take: every try timing out, every retry's sleep."""
    tries = max_network_retries + 1
    return timeout_seconds * tries + _MAX_RETRY_DELAY * max_network_retries


def _translate(exc: stripe.StripeError) -> MarketplaceError:
    """Map a Stripe exception to the engine's domain error."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or getattr(exc, "code", None) or ""
    param = getattr(error, "param", None)
    message = getattr(error, "message", None) or str(exc.user_message or exc) or code
    extra: dict[str, Any] = {"stripe_code": code, "stripe_request_id": exc.request_id}
    if isinstance(exc, stripe.CardError):
        decline = getattr(error, "decline_code", None) or code
        intent = getattr(error, "payment_intent", None)
        if intent is not None:
            # The intent a declined confirmation left (an off-session payment that needs
            # authentication is confirmed again on-session from it).
            extra["payment_intent"] = getattr(intent, "id", None) or str(intent)
        return CardDeclined(message, decline_code=decline, **extra)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return AuthenticationRequired(f"Stripe refused the platform key: {message}", **extra)
    if isinstance(exc, stripe.RateLimitError):
        return RateLimited(message, **extra)
    if isinstance(exc, stripe.IdempotencyError):
        return IdempotencyConflict(message, **extra)
    if isinstance(exc, stripe.InvalidRequestError):
        if code == "resource_missing" and param and param != "id":
            # An id given in the request that Stripe does not know (a payment method):
            # the request's fault, naming the field, not a missing resource of the URL.
            return InvalidInput(message, field=param, **extra)
        if code == "resource_missing":
            return NotFound(message, **extra)
        if code in {"balance_insufficient", "insufficient_funds"}:
            return InsufficientBalance(message, **extra)
        if code in {"account_invalid", "account_restricted"} or "restricted" in message:
            return AccountRestricted(message, **extra)
        return InvalidInput(message, field=param, **extra)
    return GatewayError(message, **extra)


class _HTTPXClient(stripe.HTTPXClient):
    """The SDK's httpx client, handing httpx the encoded body as ``content``.

    ``stripe.HTTPXClient`` passes its form-encoded body (a ``str``) as
    ``data=``, which httpx deprecates for raw content: a DeprecationWarning on
    every POST. ``content=`` sends the same bytes with the same headers (the
    SDK sets ``Content-Type`` itself). An empty body stays ``data={}``, as the
    SDK sends it.
    """

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> Any:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        if isinstance(kwargs.get("data"), str | bytes):
            kwargs["content"] = kwargs.pop("data")
        return args, kwargs


class StripeGateway:
    """Async access to Stripe (or the sandbox) for the engine and plugins.

    Every call is bounded: each request by ``timeout_seconds`` (the SDK's own
    default is 80 s) and the whole call, retries included, by
    ``call_deadline_seconds``. A webhook handler calls Stripe inside its
    mailbox drain; the bound keeps one slow answer from holding a mailbox
    for longer than its lease (see ``engine.webhooks.leases``).

    Args:
        secret_key: the platform's secret key.
        api_base: base address (``http://127.0.0.1:12111`` for the sandbox);
            empty for Stripe itself.
        max_network_retries: the SDK's own retries of network failures (safe
            because every write carries an idempotency key).
        timeout_seconds: the limit on each HTTP request to Stripe.
    """

    def __init__(
        self,
        secret_key: str,
        api_base: str = "",
        *,
        max_network_retries: int = 2,
        timeout_seconds: float = 15.0,
    ) -> None:
        base: Any = {}
        if api_base:
            base = {"api": api_base, "connect": api_base, "files": api_base}
        self.api_base = api_base
        self.guard: Guard | None = None
        """Runs before every write (``engine.payments.payability.Payability`` in a running
        engine): refuses a charge for an account that cannot be paid, before Stripe sees it."""
        self.call_deadline_seconds = call_deadline(timeout_seconds, max_network_retries)
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses=base,
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=max_network_retries,
            http_client=_HTTPXClient(allow_sync_methods=True, timeout=timeout_seconds),
        )

    @staticmethod
    def _options(account: str | None, key: str | None) -> Any:
        options: dict[str, str] = {}
        if account:
            options["stripe_account"] = account
        if key:
            options["idempotency_key"] = key
        return options

    async def call(
        self,
        resource: str,
        method: str,
        *args: str,
        params: Mapping[str, Any] | None = None,
        account: str | None = None,
        idempotency_key: str | None = None,
    ) -> StripeObject:
        """Call ``client.v1.<resource>.<method>_async(*args, params, options)``.

        ``resource`` may be dotted for nested services (``"transfers.reversals"``).
        Writes (``create``, ``update``, ``capture``, ``cancel``, ``confirm`` ...)
        must pass ``idempotency_key``.
        """
        service: Any = self._client.v1
        for part in resource.split("."):
            service = getattr(service, part)
        function = getattr(service, f"{method}_async")
        if method not in {"retrieve", "list"} and idempotency_key is None:
            raise GatewayError(f"{resource}.{method} needs an idempotency key")
        if self.guard is not None and method not in {"retrieve", "list"}:
            await self.guard(resource, method, params or {}, account)
        try:
            async with asyncio.timeout(self.call_deadline_seconds):
                result = await function(
                    *args,
                    params=dict(params or {}),
                    options=self._options(account, idempotency_key),
                )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        except TimeoutError:
            raise GatewayError(
                f"Stripe did not answer {resource}.{method} within "
                f"{self.call_deadline_seconds:.0f} s",
                stripe_code="timeout",
            ) from None
        return _to_dict(result)

    # ------------------------------------------------------------ accounts

    async def create_account(
        self, *, kind: str, email: str, country: str, role: str, key: str
    ) -> StripeObject:
        """Create a connected account (``kind`` express or custom) for a role."""
        params: dict[str, Any] = {
            "type": kind,
            "country": country,
            "email": email,
            "capabilities": {
                "card_payments": {"requested": True},
                "transfers": {"requested": True},
            },
            "metadata": {"role": role},
        }
        return await self.call("accounts", "create", params=params, idempotency_key=key)

    async def create_account_link(
        self, account_id: str, *, refresh_url: str, return_url: str, key: str
    ) -> StripeObject:
        """An onboarding link for a connected account."""
        params = {
            "account": account_id,
            "refresh_url": refresh_url,
            "return_url": return_url,
            "type": "account_onboarding",
        }
        return await self.call("account_links", "create", params=params, idempotency_key=key)

    async def retrieve_account(self, account_id: str) -> StripeObject:
        """The connected account as Stripe sees it now."""
        return await self.call("accounts", "retrieve", account_id)

    async def balance(self, account: str | None = None) -> StripeObject:
        """Available and pending balance of the platform or a connected account."""
        try:
            async with asyncio.timeout(self.call_deadline_seconds):
                result = await self._client.v1.balance.retrieve_async(
                    options=self._options(account, None)
                )
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        except TimeoutError:
            raise GatewayError(
                f"Stripe did not answer balance.retrieve within {self.call_deadline_seconds:.0f} s",
                stripe_code="timeout",
            ) from None
        return _to_dict(result)

    async def upload_file(
        self,
        content: bytes,
        *,
        filename: str,
        purpose: str,
        key: str,
        account: str | None = None,
    ) -> StripeObject:
        """Upload a file (``POST /v1/files``, multipart to Stripe's files host).

        ``purpose`` is Stripe's: ``dispute_evidence`` (a PDF, JPEG or PNG),
        ``identity_document`` ... The result's ``id`` (``file_...``) is what
        dispute evidence or a person's verification document names.
        """
        upload = io.BytesIO(content)
        upload.name = filename
        return await self.call(
            "files",
            "create",
            params={"purpose": purpose, "file": upload},
            account=account,
            idempotency_key=key,
        )

    async def list_all(
        self,
        resource: str,
        *,
        params: Mapping[str, Any] | None = None,
        account: str | None = None,
        page_size: int = 100,
    ) -> list[StripeObject]:
        """Every object of a list endpoint, following ``starting_after`` pages."""
        items: list[StripeObject] = []
        query = {**(params or {}), "limit": page_size}
        while True:
            page = await self.call(resource, "list", params=query, account=account)
            data = page.get("data", [])
            items += data
            if not page.get("has_more") or not data:
                return items
            query["starting_after"] = data[-1]["id"]


def _to_dict(result: Any) -> StripeObject:
    if isinstance(result, stripe.StripeObject):
        converted: StripeObject = result.to_dict()
        return converted
    if isinstance(result, dict):
        return result
    raise GatewayError(f"unexpected Stripe response {type(result).__name__}")
