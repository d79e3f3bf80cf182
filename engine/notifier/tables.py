"""The notifier's table: an outbox of notifications, one row per notification and channel.

A row is written when a hook fires and deleted some days after it is sent. Each
channel gets its own row so a dead webhook endpoint never holds back the email
of the same notification (or the other way round). ``next_attempt_at`` is NULL
once a row is finished (sent or dead), so the delivery query's index range only
covers rows still to be tried, however much history accumulates; ``sent_at``
is indexed for the periodic purge of old sent rows.
"""

from __future__ import annotations

from pathlib import Path

from piccolo.columns import JSONB, Integer, Text, Timestamptz, Varchar
from piccolo.conf.apps import AppConfig
from piccolo.table import Table

__all__ = ["APP_CONFIG", "STATUS_DEAD", "STATUS_PENDING", "STATUS_SENT", "NotifierOutbox"]

STATUS_PENDING = "pending"
STATUS_SENT = "sent"
STATUS_DEAD = "dead"


class NotifierOutbox(Table, tablename="notifier_outbox"):
    """One notification to deliver on one channel (``webhook`` or ``email``).

    ``id`` is also the idempotency id the receiver sees, stable across retries.
    ``payload`` is the whole notification as sent (the webhook body; the email
    is rendered from its ``message``), so delivery needs nothing else.
    """

    id = Varchar(length=40, primary_key=True)
    kind = Varchar(length=200)
    channel = Varchar(length=16)
    payload = JSONB()
    status = Varchar(length=16, default=STATUS_PENDING)
    attempts = Integer(default=0)
    next_attempt_at = Timestamptz(null=True, default=None, index=True)
    last_error = Text(default="")
    created_at = Timestamptz()
    sent_at = Timestamptz(null=True, default=None, index=True)


APP_CONFIG = AppConfig(
    app_name="notifier",
    migrations_folder_path=str(Path(__file__).parent / "migrations"),
    table_classes=[NotifierOutbox],
)
