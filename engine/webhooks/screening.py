"""What a verified Stripe event must be before it is stored as applicable or applied.

A correctly signed event can still carry fields the engine cannot store or use:
an id longer than Stripe's ids, a NUL character (PostgreSQL's text and jsonb
refuse it), a ``created`` that is not a time, a ``livemode`` that is not a
boolean. The limits are declared here once and checked at intake, before the
database: such an event is acknowledged (a 2xx, so Stripe stops retrying) and
stored dead in the ``quarantine`` mailbox with a reason naming the field, never
applied. An event of the other mode (live for a test key, or the reverse) is
stored dead in its own mailbox with the reason. A replayed event is screened
again in the worker before any handler sees it (``ensure_applicable``), so
replaying one of them keeps it dead with its reason.

Events of a connected account the platform does not know are checked in the
worker (``UnknownConnectedAccount``): that needs the database, and intake must
stay one round trip.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ACCOUNT_ID_MAX",
    "ACCOUNT_ID_PATTERN",
    "CREATED_MAX",
    "EVENT_ID_MAX",
    "EVENT_TYPE_MAX",
    "QUARANTINE_MAILBOX",
    "Quarantined",
    "RefusedEvent",
    "UnknownConnectedAccount",
    "ensure_applicable",
    "live_key",
    "malformed_reason",
    "quarantined",
    "wrong_mode_reason",
]

EVENT_ID_MAX: Final = 255
"""Longest event id stored (Stripe's object ids are at most 255 characters)."""
EVENT_TYPE_MAX: Final = 128
"""Longest event type (Stripe's are under 60 characters: ``customer.subscription.updated``)."""
ACCOUNT_ID_MAX: Final = 64
"""Longest connected-account id: it names the event's mailbox, whose key is at most 64
characters (``engine.core.mailboxes.MAILBOX_KEY_PATTERN``). Stripe's are about 21."""
ACCOUNT_ID_PATTERN: Final = re.compile(rf"acct_\w{{1,{ACCOUNT_ID_MAX - 5}}}", re.ASCII)
"""What a connected account id looks like: ``acct_`` then ASCII letters, digits or ``_``."""
CREATED_MAX: Final = 253_402_300_799
"""Latest ``created`` accepted: 9999-12-31T23:59:59Z, the last second a timestamp can name."""

QUARANTINE_MAILBOX: Final = "quarantine"
"""The mailbox of malformed events: no sensible key can be read from them."""

_QUARANTINED_OBJECT: Final = "quarantined_event"
_NUL_ESCAPE: Final = b"\\u0000"


def _string_problem(name: str, value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return f"field `{name}` is {type(value).__name__}, not a string"
    if len(value) > limit:
        return f"field `{name}` is {len(value)} characters long, over the limit of {limit}"
    return None


def _path(parts: list[str]) -> str:
    shown = ".".join(parts) or "(root)"
    return shown.replace("\x00", "\\u0000")[:200]


def _nul_path(event: Mapping[str, Any]) -> str | None:
    """The path of the first string (or key) holding a NUL character, iteratively (any depth)."""
    stack: list[tuple[list[str], Any]] = [([], event)]
    while stack:
        parts, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return _path(parts)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if "\x00" in str(key):
                    return _path([*parts, str(key)])
                stack.append(([*parts, str(key)], item))
        elif isinstance(value, list):
            stack.extend(([*parts, str(index)], item) for index, item in enumerate(value))
    return None


def malformed_reason(event: Mapping[str, Any], body: bytes) -> str | None:
    """Why ``event`` (decoded from ``body``) cannot be stored as is, or None.

    Checks ``id``, ``type``, ``account`` against the limits above, ``created`` (an
    integer between 0 and ``CREATED_MAX`` when present), ``livemode`` (a boolean when
    present), and that no string or key anywhere holds a NUL character. Cheap: the
    nested scan runs only when the raw body contains an escaped NUL.
    """
    problem = _string_problem("id", event.get("id"), EVENT_ID_MAX) or _string_problem(
        "type", event.get("type"), EVENT_TYPE_MAX
    )
    if problem:
        return problem
    account = event.get("account")
    if account is not None:
        problem = _string_problem("account", account, ACCOUNT_ID_MAX)
        if problem:
            return problem
        if account and not ACCOUNT_ID_PATTERN.fullmatch(account):
            return "field `account` is not a connected account id (acct_ then letters, digits or _)"
    created = event.get("created")
    if created is not None and (
        isinstance(created, bool) or not isinstance(created, int) or not 0 <= created <= CREATED_MAX
    ):
        return f"field `created` is not a unix time between 0 and {CREATED_MAX}"
    livemode = event.get("livemode")
    if livemode is not None and not isinstance(livemode, bool):
        return f"field `livemode` is {type(livemode).__name__}, not a boolean"
    if _NUL_ESCAPE in body:
        where = _nul_path(event)
        if where is not None:
            return f"field `{where}` contains a NUL character"
    return None


def live_key(secret_key: str) -> bool:
    """Whether a Stripe secret (or restricted) key is a live-mode one."""
    return secret_key.startswith(("sk_live_", "rk_live_"))


def wrong_mode_reason(event: Mapping[str, Any], *, live: bool) -> str | None:
    """Why ``event`` is of the other mode than the engine's key, or None."""
    livemode = bool(event.get("livemode", False))
    if livemode == live:
        return None
    return (
        f"event {event.get('id')} has livemode {str(livemode).lower()}, but this engine "
        f"runs with a {'live' if live else 'test'} key: an event of the other mode is "
        "never applied (check which endpoint secret the sender uses)"
    )


@dataclass(frozen=True, slots=True)
class Quarantined:
    """How a malformed event is stored: an id, type and payload that fit the inbox."""

    event_id: str
    type: str
    payload: str
    reason: str


def _fits(value: object, limit: int) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit and "\x00" not in value else None


def quarantined(event: Mapping[str, Any], raw_body: str, problem: str) -> Quarantined:
    """The stored form of a malformed event.

    The id is kept when it fits (so a redelivery is a duplicate), else replaced by a
    digest of it; the raw body is kept as a JSON string inside a wrapper object, since
    jsonb cannot hold a NUL character.
    """
    raw_id = event.get("id")
    event_id = _fits(raw_id, EVENT_ID_MAX)
    if event_id is None:
        digest = hashlib.sha256(str(raw_id).encode("utf-8", "surrogatepass")).hexdigest()
        event_id = f"malformed:{digest}"
    reason = f"malformed event, not applied: {problem}"
    payload = json.dumps(
        {"object": _QUARANTINED_OBJECT, "id": event_id, "reason": reason, "body": raw_body}
    )
    return Quarantined(event_id, _fits(event.get("type"), EVENT_TYPE_MAX) or "", payload, reason)


class RefusedEvent(Exception):
    """A (replayed) event that must never be applied: malformed or of the other mode."""

    permanent = True
    """Tells the mailbox to dead-letter the event at once, without retries or parking."""


def ensure_applicable(event: Mapping[str, Any], *, live: bool) -> None:
    """Raise ``RefusedEvent`` for a quarantined or other-mode event (the worker's check)."""
    if event.get("object") == _QUARANTINED_OBJECT:
        raise RefusedEvent(str(event.get("reason") or "malformed event, not applied"))
    reason = wrong_mode_reason(event, live=live)
    if reason is not None:
        raise RefusedEvent(reason)


class UnknownConnectedAccount(Exception):
    """A Connect event for an account the platform does not know (``marketplace_accounts``).

    Not permanent: the mailbox retries it with backoff (an ``account.updated`` can
    arrive before the engine has stored an account it just created), then parks it
    dead. Replay it once the account exists.
    """

    def __init__(self, event_id: str, account: str) -> None:
        super().__init__(
            f"event {event_id} is for connected account {account}, which this platform "
            "does not know (not created through the engine): not applied; the mailbox "
            "is parked. If the account is created through the engine later, replay it."
        )
