"""Settings of the notifier plugin: ``[plugins.notifier]`` in the config file.

Every field has a default, and with the defaults no channel is configured, so
an enabled but unconfigured notifier records nothing and sends nothing. A
channel is on when its address is set: ``webhook_url`` for signed webhooks to
the operator's app, ``email_to`` (with ``smtp_host`` and ``email_from``) for
email. The engine converts the section into ``NotifierConfig`` at start-up and
refuses unknown keys; ``__post_init__`` refuses a half-configured channel,
naming the missing key.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated

import msgspec

from engine.core.errors import ConfigError

__all__ = ["CHANNEL_EMAIL", "CHANNEL_WEBHOOK", "CONFIG_KEY", "PLUGIN", "NotifierConfig"]

PLUGIN = "notifier"
CONFIG_KEY = f"plugins.{PLUGIN}"

CHANNEL_WEBHOOK = "webhook"
CHANNEL_EMAIL = "email"

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class NotifierConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[plugins.notifier]``: where notifications go and how hard to try.

    Attributes:
        webhook_url: the operator's endpoint; each notification is POSTed there
            as JSON, signed in ``Marketplace-Signature`` (Stripe's scheme).
        webhook_secret: the HMAC key for that signature (required with ``webhook_url``).
        webhook_timeout_seconds: how long one POST may take before it counts as failed.
        email_to: recipients of notification emails (empty: no email).
        email_from: the ``From`` address (required with ``email_to``).
        smtp_host: the mail server (required with ``email_to``).
        smtp_port: its port (587 is submission with STARTTLS).
        smtp_starttls: upgrade the connection with STARTTLS before logging in.
        smtp_ssl: connect with implicit TLS instead (port 465); excludes STARTTLS.
        smtp_username: login name, if the server wants one.
        smtp_password: its password.
        smtp_timeout_seconds: socket timeout for one SMTP conversation.
        events: which notifications to send, as glob patterns over the kind:
            lifecycle names (``"creator_subscriptions.subscription.*"``) and
            ``"engine.payout.failed"`` / ``"engine.transfer.failed"`` for
            payout failures. The default sends everything.
        max_attempts: tries per notification and channel before it is dead.
        backoff_base_seconds: the first retry waits about this long; each later
            one twice as long (with jitter), up to ``backoff_cap_seconds``.
        backoff_cap_seconds: the longest wait between two tries.
        poll_interval_seconds: how often the delivery loop looks for due rows
            written by other processes (rows written in its own process wake it).
        batch_size: how many due notifications one pass claims and sends at once.
        keep_sent_days: sent notifications older than this are deleted (dead
            ones are kept for inspection).
        run_delivery: run the delivery loop in every engine process (API and
            worker) while its services are open; false leaves delivery to
            whoever calls ``engine.notifier.delivery.run_delivery_loop``.
    """

    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_timeout_seconds: PositiveSeconds = 10.0
    email_to: list[str] = msgspec.field(default_factory=list)
    email_from: str = ""
    smtp_host: str = ""
    smtp_port: Port = 587
    smtp_starttls: bool = True
    smtp_ssl: bool = False
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_timeout_seconds: PositiveSeconds = 30.0
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 8
    backoff_base_seconds: PositiveSeconds = 30.0
    backoff_cap_seconds: PositiveSeconds = 3600.0
    poll_interval_seconds: PositiveSeconds = 5.0
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    keep_sent_days: Annotated[int, msgspec.Meta(ge=1)] = 30
    run_delivery: bool = True

    def __post_init__(self) -> None:
        # ConfigError (not ValueError) so msgspec lets it through unchanged and
        # start-up names the exact key that is missing.
        if self.webhook_url:
            if not self.webhook_url.startswith(("http://", "https://")):
                raise ConfigError(f"{CONFIG_KEY}.webhook_url", "must be an http(s):// URL")
            if not self.webhook_secret:
                raise ConfigError(
                    f"{CONFIG_KEY}.webhook_secret",
                    "is required when webhook_url is set (notifications are always signed)",
                )
        if self.email_to:
            if not self.smtp_host:
                raise ConfigError(f"{CONFIG_KEY}.smtp_host", "is required when email_to is set")
            if not self.email_from:
                raise ConfigError(f"{CONFIG_KEY}.email_from", "is required when email_to is set")
        if self.smtp_ssl and self.smtp_starttls:
            raise ConfigError(
                f"{CONFIG_KEY}.smtp_starttls",
                "must be false when smtp_ssl is true (implicit TLS or STARTTLS, not both)",
            )
        if self.backoff_cap_seconds < self.backoff_base_seconds:
            raise ConfigError(
                f"{CONFIG_KEY}.backoff_cap_seconds", "must not be below backoff_base_seconds"
            )

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels that are configured, in delivery order."""
        found: list[str] = []
        if self.webhook_url:
            found.append(CHANNEL_WEBHOOK)
        if self.email_to:
            found.append(CHANNEL_EMAIL)
        return tuple(found)

    def wants(self, kind: str) -> bool:
        """Whether notifications of ``kind`` are to be sent (``events`` globs)."""
        return any(fnmatch.fnmatchcase(kind, pattern) for pattern in self.events)
