"""Stripe's error envelope: the one exception type the sandbox raises and its constructors."""

from __future__ import annotations

from typing import Any

DOC_URL = "https://stripe.com/docs/error-codes/"


class StripeError(Exception):
    """An API error rendered as Stripe's `{"error": {...}}` envelope with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
        store_idempotent: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.extra = extra or {}
        # Stripe saves idempotent results only once an endpoint started executing:
        # validation failures are not replayed.
        self.store_idempotent = store_idempotent

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON body Stripe would send for this error."""
        err: dict[str, Any] = {"message": self.message, "type": self.type}
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = DOC_URL + self.code.replace("_", "-")
        if self.param is not None:
            err["param"] = self.param
        if self.decline_code is not None:
            err["decline_code"] = self.decline_code
        err.update(self.extra)
        err["request_log_url"] = (
            f"https://dashboard.stripe.com/test/logs/{request_id}?t={request_id}"
        )
        return {"error": err}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeError:
    """A 400 `invalid_request_error` raised while the endpoint runs."""
    return StripeError(400, message, code=code, param=param)


def invalid_param(message: str, param: str, code: str = "parameter_invalid") -> StripeError:
    """A 400 for a malformed parameter (validation: not saved for idempotent replay)."""
    return StripeError(400, message, code=code, param=param, store_idempotent=False)


def unknown_param(param: str) -> StripeError:
    """A 400 `parameter_unknown` naming the parameter."""
    return StripeError(
        400,
        f"Received unknown parameter: {param}",
        code="parameter_unknown",
        param=param,
        store_idempotent=False,
    )


def missing_param(param: str) -> StripeError:
    """A 400 `parameter_missing`."""
    return StripeError(
        400,
        f"Missing required param: {param}.",
        code="parameter_missing",
        param=param,
        store_idempotent=False,
    )


def missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    """A 404 `resource_missing` for an id this account cannot see."""
    return StripeError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def unrecognized_url(method: str, path: str) -> StripeError:
    """The 404 Stripe returns for a path it does not serve."""
    return StripeError(
        404,
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
        "or we can help at https://support.stripe.com/.",
        store_idempotent=False,
    )


def authentication(key: str) -> StripeError:
    """The 401 for a key that is not a test secret key."""
    shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else key
    message = (
        f"Invalid API Key provided: {shown}"
        if key
        else "You did not provide an API key. You need to provide your API key in the "
        "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
    )
    return StripeError(401, message, store_idempotent=False)


def card_declined(message: str, code: str, decline_code: str, extra: dict[str, Any]) -> StripeError:
    """A 402 `card_error` as returned when a confirmation is declined."""
    return StripeError(
        402, message, type_="card_error", code=code, decline_code=decline_code, extra=extra
    )
