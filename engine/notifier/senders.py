"""The wire format of notifications: signed webhook POSTs and plain-text SMTP email.

A sender makes one try and raises ``DeliveryError`` when it did not succeed;
retrying, backoff and bookkeeping are ``engine.notifier.delivery``'s job.

Outbound webhooks are signed exactly like Stripe signs its own:
``Marketplace-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with
``webhook_secret``, so the operator's app can verify them with the same code
it would use for Stripe (the tolerance check included). ``Idempotency-Key``
carries the notification id, the same on every retry, so the receiver can
drop repeats.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import httpx

from engine.notifier.config import NotifierConfig
from engine.webhooks.signature import sign

__all__ = [
    "ATTEMPT_HEADER",
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "Claimed",
    "DeliveryError",
    "email_message",
    "send_email",
    "send_webhook",
]

SIGNATURE_HEADER = "Marketplace-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
ATTEMPT_HEADER = "Marketplace-Delivery-Attempt"


class DeliveryError(Exception):
    """One try to deliver a notification did not succeed (it will be retried)."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A row this process has leased for one delivery try.

    ``body`` is the stored JSON exactly as it will be sent and signed;
    ``attempts`` counts this try.
    """

    id: str
    kind: str
    channel: str
    body: bytes
    attempts: int

    @property
    def payload(self) -> dict[str, Any]:
        """The notification as a dict."""
        data: dict[str, Any] = json.loads(self.body)
        return data


async def send_webhook(http: httpx.AsyncClient, config: NotifierConfig, row: Claimed) -> None:
    """POST the notification, signed; any answer but 2xx (or no answer) raises ``DeliveryError``."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "marketplace-notifier/1",
        # A fresh timestamp per try, as Stripe does, so retries pass the
        # receiver's tolerance check however late they come.
        SIGNATURE_HEADER: sign(row.body, config.webhook_secret, int(time.time())),
        IDEMPOTENCY_HEADER: row.id,
        ATTEMPT_HEADER: str(row.attempts),
    }
    try:
        response = await http.post(
            config.webhook_url,
            content=row.body,
            headers=headers,
            timeout=config.webhook_timeout_seconds,
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"HTTP {response.status_code}: {response.text[:200]}")


def email_message(
    config: NotifierConfig, notification_id: str, payload: Mapping[str, Any]
) -> EmailMessage:
    """The plain-text email for a stored notification."""
    message = payload.get("message") or {}
    email = EmailMessage()
    email["From"] = config.email_from
    email["To"] = ", ".join(config.email_to)
    email["Subject"] = str(message.get("subject") or payload.get("type") or "Notification")
    email["Date"] = formatdate(localtime=False)
    # Stable across retries, so a mail client shows a re-sent notice once.
    domain = config.email_from.rpartition("@")[2] or "marketplace.invalid"
    email["Message-ID"] = f"<{notification_id}@{domain}>"
    email["X-Marketplace-Notification-Id"] = notification_id
    email["X-Marketplace-Notification-Type"] = str(payload.get("type") or "")
    email.set_content(str(message.get("text") or json.dumps(payload, indent=2)))
    return email


def _smtp_send(config: NotifierConfig, email: EmailMessage) -> None:
    """Blocking SMTP conversation; runs in a thread (``send_email``)."""
    timeout = config.smtp_timeout_seconds
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if config.smtp_ssl:
        smtp = smtplib.SMTP_SSL(
            config.smtp_host, config.smtp_port, timeout=timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=timeout)
    with smtp:
        if config.smtp_starttls:
            smtp.starttls(context=context)
        if config.smtp_username:
            smtp.login(config.smtp_username, config.smtp_password)
        smtp.send_message(email)


async def send_email(config: NotifierConfig, row: Claimed) -> None:
    """Send the notification by SMTP in a worker thread; failures raise ``DeliveryError``."""
    email = email_message(config, row.id, row.payload)
    try:
        await asyncio.to_thread(_smtp_send, config, email)
    except (OSError, smtplib.SMTPException) as exc:  # SMTPException covers refusals
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
