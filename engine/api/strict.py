"""Strict requests: JSON bodies decoded with exact types, and no NUL in any parameter.

Litestar converts a handler's body into its struct in msgspec's lax mode (the
same conversion serves query strings, where everything is text), so a JSON
``0`` would pass for ``false`` and ``"1"`` for ``1``. JSON carries its own
types: every JSON body is first decoded here in strict mode against the
handler's declared body type, which also applies the struct's refusal of
unknown fields and every declared limit. A refusal is a ``ValidationException``
(``422 validation_error`` naming the field, see ``engine.api.problems``).

NUL characters cannot reach PostgreSQL's text columns: a query or path
parameter or a JSON string (key or value) holding one is refused here too,
whether or not its field declares a pattern (``engine.api.fields`` does).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import msgspec
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import BodyKwarg

__all__ = ["strict_request"]

_NUL_MESSAGE = "must not contain a NUL character"


async def strict_request(request: Request[Any, Any, Any]) -> None:
    """Refuse what the handler's declared types do not allow, before the handler runs.

    Installed as the app's ``before_request`` hook; returns ``None`` so the
    request goes on to Litestar's own parsing when nothing is wrong.
    """
    _refuse_nul_parameters(request)
    field = request.route_handler.parsed_data_field
    if field is None or not _is_json_body(field.kwarg_definition):
        return
    body = await request.body()
    if not body.strip():
        return
    try:
        _decoder(field.annotation).decode(body)
    except msgspec.ValidationError as error:
        raise ValidationException(
            detail=str(error), extra=[{"key": "data", "message": str(error), "source": "body"}]
        ) from error
    except msgspec.DecodeError:
        return  # not JSON at all: Litestar's own parsing answers malformed_body
    if b"\\u0000" in body:
        _refuse_nul_in_json(body)


def _is_json_body(definition: Any) -> bool:
    if isinstance(definition, BodyKwarg):
        return definition.media_type == RequestEncodingType.JSON
    return definition is None  # a plain ``data`` parameter is JSON


@functools.cache
def _decoder(annotation: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(annotation, strict=True)


def _refuse_nul_parameters(request: Request[Any, Any, Any]) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            _refuse(name, "path")
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            _refuse(name, "query")


def _refuse_nul_in_json(body: bytes) -> None:
    for path in _nul_paths(msgspec.json.decode(body), ""):
        _refuse(path or "body", "body")


def _nul_paths(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, str):
        if "\x00" in value:
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                yield inner
            yield from _nul_paths(item, inner)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_paths(item, f"{path}[{index}]")


def _refuse(field: str, source: str) -> None:
    shown = field.replace("\x00", "\\u0000")
    raise ValidationException(
        detail=f"{shown} {_NUL_MESSAGE}",
        extra=[{"key": shown, "message": _NUL_MESSAGE, "source": source}],
    )
