"""RFC 9457 problem details: the one shape of every error response the API sends.

Every error, whatever raised it, leaves as ``application/problem+json``::

    {"type": "https://marketplace.dev/problems/<code>", "title": ..., "status": ...,
     "detail": ..., "code": ..., "instance": "/v1/accounts/acct_x", ...extra}

- ``MarketplaceError`` subclasses keep their ``status``, ``code``, ``title``,
  ``detail`` and ``extra`` members (``extra`` is merged at the top level).
- Request validation (the declared types and limits of bodies and parameters,
  checked strictly by ``engine.api.strict`` and Litestar) becomes ``422
  validation_error`` with ``errors: [{field, message, source}]``; a body that
  is not JSON at all becomes ``400 malformed_body`` naming the field ``body``.
- Litestar's other HTTP errors (404/405 of unknown routes, 413 over the body
  limit ...) keep their status with a stable code.
- Anything else is ``500 internal_error``: logged with its traceback, never
  described to the client.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ExceptionHandlersMap

from engine.api.fields import PATTERN_MESSAGES
from engine.core.errors import MarketplaceError

__all__ = [
    "NOT_FINAL_SCOPE_KEY",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_TYPE_BASE",
    "FieldError",
    "Problem",
    "exception_handlers",
    "problem_response",
    "problem_responses",
]

log = logging.getLogger(__name__)

NOT_FINAL_SCOPE_KEY = "marketplace.outcome_not_final"
"""Set in the ASGI scope when an error is not the request's outcome (not to be replayed)."""

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://marketplace.dev/problems/"

# Members of the problem object that ``extra`` may not overwrite.
_RESERVED = frozenset({"type", "title", "status", "detail", "code", "instance"})

# Stable codes for the HTTP errors Litestar raises itself.
_HTTP_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "authentication_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
    503: "service_unavailable",
}

# msgspec's error location: "... - at `$.data.items[0].amount`" (or "at `key` in `$.scope`").
_MSGSPEC_PATH = re.compile(r" - at (?:`key` in )?`\$(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"Object (?:missing required|contains unknown) field `(?P<field>[^`]+)`")


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid input: where (``field``, ``source``) and what is wrong."""

    field: str
    message: str
    source: str = "body"


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """An RFC 9457 problem. Error-specific members (``errors``, ``field`` ...) may follow."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str
    errors: list[FieldError] | msgspec.UnsetType = msgspec.UNSET


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    instance: str,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    """Build the ``application/problem+json`` response for one error."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance,
    }
    for key, value in (extra or {}).items():
        if key not in _RESERVED and value is not None:
            body[key] = value
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", 'Bearer realm="marketplace"')
    return Response(
        content=msgspec.json.encode(body, enc_hook=str),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=all_headers,
    )


def _instance(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("path") or "/")


def _field_of(entry: Mapping[str, Any], cause: BaseException | None) -> str:
    """The dotted field a validation error is about, as precisely as msgspec says."""
    key = str(entry.get("key") or "")
    if isinstance(cause, msgspec.ValidationError):
        message = str(cause)
        match = _MSGSPEC_PATH.search(message)
        path = match.group("path").lstrip(".") if match else ""
        if path == "data" or path.startswith(("data.", "data[")):
            path = path.removeprefix("data").lstrip(".")
        named = _NAMED_FIELD.search(message)
        if named:
            path = f"{path}.{named.group('field')}" if path else named.group("field")
        if path:
            return path
    return "body" if key == "data" else key or "body"


def _field_errors(exc: ValidationException) -> list[dict[str, str]]:
    entries = exc.extra if isinstance(exc.extra, list) else []
    errors: list[dict[str, str]] = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        source = entry.get("source") or "body"
        errors.append(
            {
                "field": _field_of(entry, exc.__cause__),
                "message": _message(str(entry.get("message") or "invalid value")),
                "source": str(getattr(source, "value", source)),
            }
        )
    return errors or [{"field": "body", "message": exc.detail, "source": "body"}]


def _message(raw: str) -> str:
    """msgspec's message without its location, and a refused pattern said in words."""
    message = _MSGSPEC_PATH.sub("", raw)
    for pattern, meaning in PATTERN_MESSAGES.items():
        if f"matching regex {pattern!r}" in message:
            return meaning
    return message


def _on_domain_error(request: Request[Any, Any, Any], exc: MarketplaceError) -> Response[bytes]:
    if exc.status >= 500:
        level = logging.WARNING if exc.expected else logging.ERROR
        log.log(level, "%s on %s: %s", exc.code, _instance(request), exc.detail)
    if not exc.final:
        # Read by the Idempotency-Key middleware: this answer is not to be replayed.
        request.scope[NOT_FINAL_SCOPE_KEY] = True  # type: ignore[literal-required]
    return problem_response(
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        instance=_instance(request),
        extra=exc.extra,
    )


def _on_validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[bytes]:
    errors = _field_errors(exc)
    fields = ", ".join(sorted({error["field"] for error in errors}))
    return problem_response(
        status=422,
        code="validation_error",
        title="Invalid request",
        detail=f"invalid value for {fields}: {errors[0]['message']}",
        instance=_instance(request),
        extra={"errors": errors},
    )


def _on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= 500:
        return _on_unexpected_error(request, exc)
    if isinstance(exc.__cause__, msgspec.DecodeError) or (
        status == 400 and type(exc.__cause__).__name__ == "SerializationException"
    ):
        # The body could not be decoded at all (not JSON, truncated, bad UTF-8).
        return problem_response(
            status=400,
            code="malformed_body",
            title="Malformed request body",
            detail=f"the request body is not valid JSON: {exc.detail}",
            instance=_instance(request),
            extra={"errors": [{"field": "body", "message": exc.detail, "source": "body"}]},
        )
    phrase = _phrase(status)
    return problem_response(
        status=status,
        code=_HTTP_CODES.get(status, "client_error"),
        title=phrase.capitalize(),
        detail=_http_detail(request, exc, phrase),
        instance=_instance(request),
        headers=exc.headers,
    )


def _http_detail(request: Request[Any, Any, Any], exc: HTTPException, phrase: str) -> str:
    method = str(request.scope.get("method", ""))
    if exc.status_code == 404 and exc.detail in {"", phrase}:
        return f"no route for {method} {_instance(request)}"
    if exc.status_code == 405:
        return f"{method} is not allowed on {_instance(request)}"
    if exc.status_code == 413:
        return "the request body is larger than the configured limit (api.max_body_bytes)"
    return exc.detail if exc.detail and exc.detail != phrase else phrase.lower()


def _on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        request.scope.get("method", ""),
        _instance(request),
        exc_info=exc,
    )
    return problem_response(
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="the server failed to handle this request; it has been logged",
        instance=_instance(request),
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def exception_handlers() -> ExceptionHandlersMap:
    """The app-level handlers that turn every exception into a problem response."""
    return {
        MarketplaceError: _on_domain_error,
        ValidationException: _on_validation_error,
        HTTPException: _on_http_error,
        Exception: _on_unexpected_error,
    }


_DESCRIPTIONS: Mapping[int, str] = {
    400: "Invalid request: `malformed_body` (not JSON), `invalid_input` (see `field`)",
    401: "No valid API key (`authentication_required`)",
    402: (
        "The card was declined (`card_declined`), or the customer must authenticate the"
        " payment (`payment_action_required`, with `customer_action`)"
    ),
    403: "The key's scope does not allow this (`forbidden`)",
    404: "No such object, or not visible to this key (`not_found`): the two read alike",
    409: (
        "Conflict with the current state (`conflict`; `illegal_transition` with `state` and"
        " `allowed`; `account_not_ready` or `account_restricted` naming the party), or the"
        " same `Idempotency-Key` is in flight"
    ),
    413: "The request body is over the configured limit (`payload_too_large`)",
    422: (
        "A value out of its declared type or limits, a NUL character, an unknown field"
        " (`validation_error`, each field in `errors`), a field the action cannot use"
        " (`field_not_applicable`), or an `Idempotency-Key` reused with a different request"
        " (`idempotency_key_reused`)"
    ),
    429: "Too many requests (`rate_limited`); retry after a while",
    502: "Stripe failed (`gateway_error`)",
    503: "A dependency is unavailable (`service_unavailable`)",
}


def problem_responses(
    *statuses: int, descriptions: Mapping[int, str] | None = None
) -> dict[int, ResponseSpec]:
    """OpenAPI declarations of problem responses, for a handler's ``responses=``.

    ``descriptions`` replaces the generic text of some statuses with what they
    mean for this operation (its own codes).
    """
    own = descriptions or {}
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=own.get(status) or _DESCRIPTIONS.get(status, _phrase(status)),
            media_type=PROBLEM_MEDIA_TYPE,
            generate_examples=False,
        )
        for status in statuses
    }
