"""Mailbox keys: which webhook mailbox a Stripe event is queued in.

A mailbox is the unit of order and isolation of webhook processing: events
of one key are applied one at a time in the order they were accepted; a key
that keeps failing backs off, dead-letters and parks alone while every other
key flows. The engine keys an event by the connected account it concerns
(``default_mailbox_key``); a plugin may key its own events by a business
object instead, through the ``resolve_mailbox_key`` hook. Pure functions, no
I/O: they run in the webhook intake before the event is committed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from engine.core.contributions import MAILBOX_ACCOUNT_METADATA

__all__ = [
    "MAILBOX_KEY_PATTERN",
    "PLATFORM_MAILBOX",
    "default_mailbox_key",
    "is_mailbox_key",
    "mailbox_kind",
]

PLATFORM_MAILBOX: Final = "platform"
"""The mailbox of platform events that concern no connected account and no plugin's key."""

MAILBOX_KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,63}")
"""1 to 64 characters: letters, digits, ``_ . : -`` (``<plugin>:<object>:<id>`` by convention)."""


def is_mailbox_key(value: object) -> bool:
    """Whether ``value`` can name a mailbox (see ``MAILBOX_KEY_PATTERN``)."""
    return isinstance(value, str) and MAILBOX_KEY_PATTERN.fullmatch(value) is not None


_PER_CHARGE: Final = frozenset({"dispute", "refund"})
"""Objects that name only their charge: keyed ``<object>:<charge id>``."""


def _account_id(value: Any) -> str | None:
    """An ``acct_...`` id from a string or an expanded object."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value.startswith("acct_") else None


def default_mailbox_key(event: Mapping[str, Any]) -> str:
    """The engine's key for an event no plugin claimed.

    A connected account's own event goes to that account's mailbox. A platform
    event about money bound for one connected account (a destination charge, a
    subscription with ``transfer_data``, its invoices by the subscription
    metadata's ``MAILBOX_ACCOUNT_METADATA``, a transfer) goes to that account's
    mailbox too, so one creator's traffic or failures never queue behind
    another's. A platform dispute goes to the mailbox of its charge
    (``dispute:<charge id>``), and so does a platform refund
    (``refund:<charge id>``, a destination charge's too): each names only its
    charge, and one failing handler must not park the platform's other events.
    Anything else is the platform's.
    """
    account = event.get("account")
    if account:
        return str(account)
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if isinstance(obj, Mapping):
        transfer_data = obj.get("transfer_data")
        if isinstance(transfer_data, Mapping):
            destination = _account_id(transfer_data.get("destination"))
            if destination:
                return destination
        # An invoice has no transfer_data in the engine's API version: its subscription's
        # metadata snapshot names the account (``MAILBOX_ACCOUNT_METADATA``).
        parent = obj.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
        metadata = details.get("metadata") if isinstance(details, Mapping) else None
        if isinstance(metadata, Mapping):
            destination = _account_id(metadata.get(MAILBOX_ACCOUNT_METADATA))
            if destination:
                return destination
        if obj.get("object") == "transfer":
            destination = _account_id(obj.get("destination"))
            if destination:
                return destination
        charge = obj.get("charge")
        if isinstance(charge, Mapping):
            charge = charge.get("id")
        kind = obj.get("object")
        if kind in _PER_CHARGE and isinstance(charge, str) and charge:
            key = f"{kind}:{charge}"
            if is_mailbox_key(key):
                return key
    return PLATFORM_MAILBOX


def mailbox_kind(key: str) -> str:
    """What kind of mailbox ``key`` is, for metrics: ``account``, ``platform``, or the
    prefix of a business key (``three_sided_bookings``, ``dispute``, ``refund``).

    Kinds are few whatever the number of accounts and business objects, so
    metrics labelled by kind stay bounded.
    """
    if _account_id(key) is not None:
        return "account"
    return key.split(":", 1)[0]
