"""Field types of request schemas: each kind of input declared once, with its limits.

Request bodies (msgspec structs) and query/path parameters use these, so the
limits live in the schema, in the OpenAPI document and in validation alike, and
every bad value is refused before anything reaches the database, as a ``422
validation_error`` naming the field (PostgreSQL cannot store a NUL character, so
one in any text used to end as a 500).

- ``Line``: one line of text, no control characters (names, labels, emails).
- ``Text``: free text; tabs and line breaks allowed, other control characters not.
- Ready-made sizes: ``Name`` (1-200), ``Label`` (0-200), ``EmailText`` (0-254),
  ``Note`` (0-500), ``LongText`` (0-5000); ``Currency``, ``AccountId``.
- ``Count`` and ``MinorUnits`` bound integers where PostgreSQL's ``bigint`` ends.
- For query and path parameters: ``QueryParameter(pattern=LINE_PATTERN, max_length=...)``.

Use them as ``Annotated[Line, msgspec.Meta(max_length=64)]`` for other sizes. A
plugin's request structs subclass ``RequestBody`` (unknown fields refused).
Bodies are decoded strictly (``engine.api.strict``): ``0`` is not a boolean,
``"1"`` not an integer.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

__all__ = [
    "LINE_PATTERN",
    "PATTERN_MESSAGES",
    "TEXT_PATTERN",
    "AccountId",
    "Count",
    "Currency",
    "EmailText",
    "Label",
    "Line",
    "LongText",
    "MinorUnits",
    "Name",
    "Note",
    "RequestBody",
    "Text",
]

LINE_PATTERN: Final = r"^[^\x00-\x1f\x7f]*$"
"""No control characters at all (NUL included)."""
TEXT_PATTERN: Final = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""No control characters but tab, line feed and carriage return."""

PATTERN_MESSAGES: Final = {
    LINE_PATTERN: "must be one line without control characters (such as NUL)",
    TEXT_PATTERN: "must not contain control characters (such as NUL) other than tabs and newlines",
}
"""What a refused pattern means, for the problem's message (instead of the regex)."""

Line = Annotated[str, msgspec.Meta(pattern=LINE_PATTERN)]
Text = Annotated[str, msgspec.Meta(pattern=TEXT_PATTERN)]

Name = Annotated[Line, msgspec.Meta(min_length=1, max_length=200)]
Label = Annotated[Line, msgspec.Meta(max_length=200)]
EmailText = Annotated[Line, msgspec.Meta(max_length=254)]
Note = Annotated[Text, msgspec.Meta(max_length=500)]
LongText = Annotated[Text, msgspec.Meta(max_length=5000)]

Currency = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z]{3}$", description="ISO 4217", examples=["usd"])
]
AccountId = Annotated[
    str, msgspec.Meta(pattern=r"^acct_[A-Za-z0-9]{1,60}$", description="a connected account id")
]

Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
MinorUnits = Annotated[
    int, msgspec.Meta(ge=0, le=99_999_999_999, description="minor units of the currency")
]


class RequestBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields refused (``additionalProperties: false``)."""
