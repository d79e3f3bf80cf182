"""Admin API for the webhook mailboxes: per-mailbox state, dead letters and replay.

A mailbox is named by its key (``account`` in the API): a connected account,
``platform``, or a key a plugin chose (``three_sided_bookings:booking:42``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter, PathParameter

from engine.api.auth import requires_scope
from engine.api.fields import LINE_PATTERN
from engine.core.errors import NotFound
from engine.webhooks.service import WebhookService

__all__ = ["WebhookAdminController"]

EventId = Annotated[
    str, PathParameter(max_length=255, pattern=LINE_PATTERN, description="Stripe's event id")
]
MailboxAccount = Annotated[
    str,
    PathParameter(
        max_length=64,
        pattern=LINE_PATTERN,
        description="A mailbox key: a connected account id, 'platform', or a plugin's key",
    ),
]


class MailboxView(msgspec.Struct, frozen=True):
    """One mailbox (``account`` is its key): pending and dead counts, retry state."""

    account: str
    scheduled: bool
    parked: bool
    pending: int
    dead: int
    handled: int
    attempts: int
    last_error: str
    backoff_until: datetime | None
    oldest_pending: datetime | None


class DeadLetterView(msgspec.Struct, frozen=True):
    """A dead-lettered event with why it failed."""

    event_id: str
    account: str
    type: str
    attempts: int
    last_error: str
    received_at: datetime


class DeadLetterPage(msgspec.Struct, frozen=True):
    """A page of dead letters."""

    data: list[DeadLetterView]


class ReplayResult(msgspec.Struct, frozen=True):
    """The accounts whose mailboxes were re-opened for processing."""

    accounts: list[str]


def _service(request: Request[Any, Any, Any]) -> WebhookService:
    service: WebhookService = request.app.state["webhooks"]
    return service


class WebhookAdminController(Controller):
    """Mailboxes and dead letters, for operators (admin keys only)."""

    path = "/v1/admin/webhooks"
    tags = ["admin: webhooks"]
    guards = [requires_scope()]

    @get("/accounts", operation_id="listWebhookMailboxes", summary="Every account's mailbox")
    async def list_mailboxes(self, request: Request[Any, Any, Any]) -> list[MailboxView]:
        """Per-account webhook processing state (pending, dead, retries)."""
        states = await _service(request).mailbox.account_states()
        return [msgspec.convert(state, MailboxView) for state in states]

    @get("/dead-letters", operation_id="listDeadLetters", summary="Dead-lettered events")
    async def list_dead_letters(
        self,
        request: Request[Any, Any, Any],
        account: str | None = Parameter(default=None, max_length=64, pattern=LINE_PATTERN),
        limit: int = Parameter(default=100, ge=1, le=500),
    ) -> DeadLetterPage:
        """Events that failed ``webhooks.max_attempts`` times, with reason and attempts."""
        letters = await _service(request).mailbox.dead_letters(account=account, limit=limit)
        return DeadLetterPage(
            data=[
                msgspec.convert(letter, DeadLetterView, from_attributes=True) for letter in letters
            ]
        )

    @post(
        "/dead-letters/{event_id:str}/replay",
        operation_id="replayDeadLetter",
        summary="Replay one dead-lettered event",
        status_code=202,
    )
    async def replay_event(
        self, request: Request[Any, Any, Any], event_id: EventId
    ) -> ReplayResult:
        """Make the event pending again and resume its account (in order)."""
        accounts = await _service(request).replay(event_ids=[event_id])
        if not accounts:
            raise NotFound(f"no dead-lettered event {event_id!r}")
        return ReplayResult(accounts=accounts)

    @post(
        "/accounts/{account:str}/replay",
        operation_id="replayAccount",
        summary="Replay every dead-lettered event of an account",
        status_code=202,
    )
    async def replay_account(
        self, request: Request[Any, Any, Any], account: MailboxAccount
    ) -> ReplayResult:
        """Resume a parked account: its dead events and everything queued behind them."""
        accounts = await _service(request).replay(account=account)
        if not accounts:
            raise NotFound(f"no webhook mailbox for account {account!r}")
        return ReplayResult(accounts=accounts)
