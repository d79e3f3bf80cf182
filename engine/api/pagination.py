"""Cursor pagination: opaque ``cursor`` / ``next_cursor`` strings over row ids.

Lists are in creation order; a cursor encodes the last row id a page ended at,
so pages stay stable while rows are added.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Final

from litestar.params import QueryParameter

from engine.api.fields import LINE_PATTERN
from engine.core.errors import InvalidInput

__all__ = ["Cursor", "Limit", "decode_cursor", "encode_cursor"]

_PREFIX: Final = "after:"

Limit = Annotated[
    int, QueryParameter(ge=1, le=100, description="Page size (1-100)", required=False)
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        max_length=200,
        pattern=LINE_PATTERN,
        description="`next_cursor` of the previous page; omit for the first page",
        required=False,
    ),
]


def encode_cursor(after: int | None) -> str | None:
    """The cursor that continues after row id ``after`` (``None``: no more pages)."""
    if after is None:
        return None
    return base64.urlsafe_b64encode(f"{_PREFIX}{after}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The row id a cursor continues after (0 for the first page).

    Raises:
        InvalidInput: the cursor was not made by ``encode_cursor``.
    """
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    value = text.removeprefix(_PREFIX)
    if not text.startswith(_PREFIX) or not value.isdigit() or len(value) > 18:
        raise InvalidInput("cursor is not a next_cursor this API returned", field="cursor")
    return int(value)
