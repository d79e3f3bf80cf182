"""HTTP intake for Stripe webhooks: verify on the raw body, commit, then hand off.

``POST /webhooks/stripe`` (platform events) and ``POST /webhooks/stripe/connect``
(Connect events) each verify against their own secrets. Nothing is stored unless
the signature, timestamp, size and JSON shape are all good. A verified event is
committed to its account's mailbox before the 2xx (deliveries arriving together
share one commit: ``engine.webhooks.grouping``); a duplicate is acknowledged
and changes nothing. A verified event that must not be applied is acknowledged
too (so Stripe stops retrying) and stored dead with its reason
(``engine.webhooks.screening``): a malformed one in the ``quarantine`` mailbox, one
of another API version or of the other mode (live or test) in its own mailbox.
When the commit newly schedules the account, a drain token is published to
JetStream (one token for all the accounts a group commit newly scheduled); if that
publish fails the event is still safe in PostgreSQL and the sweeper publishes it
later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import Request, post

from engine.api.problems import problem_responses
from engine.core.errors import InvalidInput, MarketplaceError
from engine.core.settings import Settings
from engine.observability import Metrics, log_context
from engine.webhooks.grouping import GroupCommit
from engine.webhooks.mailbox import Accepted, Mailbox
from engine.webhooks.screening import live_key, malformed_reason, quarantined, wrong_mode_reason
from engine.webhooks.signature import SignatureError, verify
from engine.webhooks.versions import foreign_version_reason
from engine.worker.runtime import Scheduler

__all__ = ["PayloadTooLarge", "WebhookIntake", "WebhookReceipt", "webhook_routes"]

log = logging.getLogger(__name__)


class PayloadTooLarge(MarketplaceError):
    """The webhook body is over ``webhooks.max_body_bytes``."""

    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class MalformedEvent(InvalidInput):
    """The body is not a JSON Stripe event."""

    code = "malformed_event"


class WebhookReceipt(msgspec.Struct, frozen=True):
    """The 200 answer to Stripe: the event id and whether it was a duplicate."""

    received: bool
    event_id: str
    duplicate: bool


class _Event(msgspec.Struct):
    id: str
    type: str
    object: str = "event"
    account: str | None = None


_DECODER = msgspec.json.Decoder(dict[str, Any])


class WebhookIntake:
    """Verifies, commits and schedules; shared by both endpoints."""

    def __init__(
        self, settings: Settings, mailbox: Mailbox, scheduler: Scheduler, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._mailbox = mailbox
        self._scheduler = scheduler
        self._metrics = metrics
        self._live = live_key(settings.stripe.secret_key)
        self._group = GroupCommit(mailbox, scheduler)

    def _secrets(self, connect: bool) -> Sequence[str]:
        stripe = self._settings.stripe
        return stripe.connect_webhook_secrets if connect else stripe.webhook_secrets

    def _reject(self, reason: str, error: MarketplaceError) -> MarketplaceError:
        self._metrics.webhook_rejected.labels(reason).inc()
        log.warning("webhook rejected (%s): %s", reason, error.detail)
        return error

    async def receive(self, body: bytes, signature: str | None, *, connect: bool) -> WebhookReceipt:
        """Accept one delivery; raise a 4xx domain error for anything unverifiable."""
        limit = self._settings.webhooks.max_body_bytes
        if len(body) > limit:
            raise self._reject("too_large", PayloadTooLarge(f"body over {limit} bytes"))
        try:
            verify(
                body,
                signature,
                self._secrets(connect),
                tolerance=self._settings.webhooks.tolerance_seconds,
            )
        except SignatureError as exc:
            raise self._reject("signature", exc) from None
        try:
            parsed = _DECODER.decode(body)
            raw = body.decode("utf-8")
            event = msgspec.convert(parsed, _Event)
        except (
            msgspec.DecodeError,
            msgspec.ValidationError,
            UnicodeDecodeError,
            RecursionError,  # nested deeper than the decoder goes
        ) as exc:
            raise self._reject("malformed", MalformedEvent(f"not a Stripe event: {exc}")) from None
        if event.object != "event" or not event.id.startswith("evt_"):
            raise self._reject("malformed", MalformedEvent("not a Stripe event object"))
        if connect and not event.account:
            raise self._reject(
                "malformed",
                MalformedEvent("a Connect event must name its account", field="account"),
            )
        endpoint = "connect" if connect else "platform"
        problem = malformed_reason(parsed, body)
        key = ""
        if problem is None:
            try:
                key = self._mailbox.key_of(parsed)
            except Exception as exc:  # a plugin's resolve_mailbox_key broke on this shape
                problem = f"no mailbox: resolve_mailbox_key failed ({type(exc).__name__}: {exc})"
                log.exception("resolve_mailbox_key failed on %s", event.id)
        if problem is not None:
            stored = quarantined(parsed, raw, problem)
            parked = await self._mailbox.quarantine(stored)
            self._count(endpoint, "malformed", parked, stored.reason)
            return WebhookReceipt(
                received=True, event_id=stored.event_id, duplicate=not parked.inserted
            )
        with log_context(event_id=event.id, account=event.account or "platform"):
            for outcome, reason in (
                ("foreign_version", foreign_version_reason(parsed)),
                ("wrong_mode", wrong_mode_reason(parsed, live=self._live)),
            ):
                if reason is not None:
                    # Stored and dead-lettered with the reason: never handled.
                    parked = await self._mailbox.accept(parsed, raw, dead_reason=reason, key=key)
                    self._count(endpoint, outcome, parked, reason)
                    return WebhookReceipt(
                        received=True, event_id=event.id, duplicate=not parked.inserted
                    )
            # Committed (with the deliveries arriving meanwhile) and its drain published
            # if it newly scheduled the mailbox; a refused publish is retried.
            accepted = await self._group.accept(parsed, raw, key)
            self._metrics.webhook_received.labels(
                endpoint, "new" if accepted.inserted else "duplicate"
            ).inc()
        return WebhookReceipt(received=True, event_id=event.id, duplicate=not accepted.inserted)

    def _count(self, endpoint: str, outcome: str, parked: Accepted, reason: str) -> None:
        """Count (and log) an event stored dead at intake."""
        self._metrics.webhook_received.labels(
            endpoint, outcome if parked.inserted else "duplicate"
        ).inc()
        if parked.inserted:
            log.warning("webhook parked: %s", reason)


def _intake(request: Request[Any, Any, Any]) -> WebhookIntake:
    intake: WebhookIntake = request.app.state["webhook_intake"]
    return intake


_INTAKE_ERRORS = {
    400: "A bad or missing `Stripe-Signature` (`invalid_signature`), or not a Stripe event"
    " (`malformed_event`); Stripe retries",
    413: "The event is over `webhooks.max_body_bytes` (`payload_too_large`)",
    500: "The event could not be stored (`internal_error`: the database failed); Stripe retries",
}


@post(
    "/webhooks/stripe",
    operation_id="receivePlatformWebhook",
    tags=["webhooks"],
    status_code=200,
    opt={"public": True},
    summary="Stripe platform events (signed)",
    responses=problem_responses(400, 413, 500, descriptions=_INTAKE_ERRORS),
)
async def receive_platform_event(request: Request[Any, Any, Any]) -> WebhookReceipt:
    """Verify and durably accept a platform event."""
    body = await request.body()
    return await _intake(request).receive(
        body, request.headers.get("stripe-signature"), connect=False
    )


@post(
    "/webhooks/stripe/connect",
    operation_id="receiveConnectWebhook",
    tags=["webhooks"],
    status_code=200,
    opt={"public": True},
    summary="Stripe Connect events from connected accounts (signed)",
    responses=problem_responses(400, 413, 500, descriptions=_INTAKE_ERRORS),
)
async def receive_connect_event(request: Request[Any, Any, Any]) -> WebhookReceipt:
    """Verify and durably accept a connected account's event."""
    body = await request.body()
    return await _intake(request).receive(
        body, request.headers.get("stripe-signature"), connect=True
    )


def webhook_routes() -> list[Any]:
    """The two public intake routes."""
    return [receive_platform_event, receive_connect_event]
