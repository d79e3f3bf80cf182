"""The notifier on real PostgreSQL, a real SMTP server (aiosmtpd) and a real HTTP receiver.

The receiver is a threaded ``http.server`` that verifies every request's
``Marketplace-Signature`` with the engine's own Stripe-scheme verifier and
answers from a script of status codes; the SMTP server is aiosmtpd's
``Controller`` on a free port. Retries use millisecond backoffs so the
retry and dead-letter paths run in a second or two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import json
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from support.accounts import know_accounts
from support.pipeline import CONNECT_SECRET, PLATFORM_SECRET
from support.stripe_events import event, signed

from engine.core.db import migrate
from engine.core.money import Money
from engine.core.orders import LifecycleEvent, PayoutFailure
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import settings_from_mapping
from engine.infra.processes import find_free_port
from engine.notifier import cli as notifier_cli
from engine.notifier.delivery import LOOPS, deliver_due, notifier_config, run_delivery_loop
from engine.notifier.outbox import retry_dead
from engine.notifier.senders import ATTEMPT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER
from engine.observability import Metrics
from engine.sandbox.testing import running_sandbox
from engine.services import Services
from engine.webhooks.service import WebhookService
from engine.webhooks.signature import SignatureError, verify
from engine.worker.runtime import run_worker

SECRET = "whsec_notifier_test"
PLAIN_NO_ACCOUNT = (
    "Payout of 12.00 USD to acct_notify failed: the bank account does not exist "
    "(no_account). Ask the account holder to update their bank details."
)


# ---------------------------------------------------------------- receivers


@dataclass
class Received:
    """One POST as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """The operator's app: verifies signatures, answers from ``script`` then ``default``."""

    url: str
    script: list[int] = field(default_factory=list)
    default: int = 200
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        try:
            verify(body, headers.get(SIGNATURE_HEADER), [SECRET])
            verified = True
        except SignatureError:
            verified = False
        with self.lock:
            status = self.script.pop(0) if self.script else self.default
            if not verified:
                status = 400
            self.requests.append(Received(headers, body, verified, status))
        return status

    def ids(self) -> list[str]:
        with self.lock:
            return [request.headers[IDEMPOTENCY_HEADER] for request in self.requests]


@contextlib.contextmanager
def running_receiver(script: list[int] | None = None, default: int = 200) -> Iterator[Receiver]:
    receiver_box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status = receiver_box[0].answer(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on what was received instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(
        f"http://127.0.0.1:{server.server_address[1]}/hooks/marketplace",
        list(script or []),
        default,
    )
    receiver_box.append(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Inbox:
    """aiosmtpd handler keeping every accepted message."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"

    def texts(self) -> list[str]:
        return [str(message.get_content()) for message in self.messages]


@dataclass
class Smtp:
    port: int
    inbox: Inbox


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    inbox = Inbox()
    port = find_free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(port, inbox)
    finally:
        controller.stop()


@contextlib.contextmanager
def silent_smtp() -> Iterator[socket.socket]:
    """A listening socket that never accepts nor says a word (a hung mail server)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener
    finally:
        listener.close()


def connection_waiting(listener: socket.socket) -> bool:
    """Whether a client has connected to ``listener`` (a connection sits in its backlog)."""
    readable, _, _ = select.select([listener], [], [], 0)
    return bool(readable)


# ---------------------------------------------------------------- engine side


def notifier_settings(database_url: str, **notifier: Any) -> Any:
    policy = {
        "backoff_base_seconds": 0.02,
        "backoff_cap_seconds": 0.1,
        "poll_interval_seconds": 0.05,
        "max_attempts": 3,
        "smtp_starttls": False,
        "webhook_timeout_seconds": 5.0,
        "smtp_timeout_seconds": 5.0,
        **notifier,
    }
    return settings_from_mapping(
        {
            "database": {"url": database_url, "pool_max": 6},
            "plugins": {"enabled": ["notifier"], "notifier": policy},
        }
    )


def webhook_to(receiver: Receiver) -> dict[str, Any]:
    return {"webhook_url": receiver.url, "webhook_secret": SECRET}


def email_to(port: int) -> dict[str, Any]:
    return {
        "email_to": ["ops@example.test", "finance@example.test"],
        "email_from": "marketplace@example.test",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
    }


@dataclass
class Notifier:
    plugins: Plugins
    services: Services
    stop: asyncio.Event
    loops: list[asyncio.Task[None]]

    def start_loop(self) -> None:
        self.loops.append(asyncio.create_task(run_delivery_loop(self.services, self.stop)))

    async def rows(self) -> list[dict[str, Any]]:
        async with self.services.db.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, kind, channel, status, attempts, last_error, payload::text AS payload "
                "FROM notifier_outbox ORDER BY created_at, channel"
            )
        return [dict(row) for row in rows]

    async def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in await self.rows():
            key = f"{row['channel']}:{row['status']}"
            counts[key] = counts.get(key, 0) + 1
        return counts


@contextlib.asynccontextmanager
async def running_notifier(
    database_url: str, *, loop: bool = True, **notifier: Any
) -> AsyncIterator[Notifier]:
    """Services with the notifier; ``loop`` lets start-up host the delivery loop itself."""
    settings = notifier_settings(database_url, run_delivery=loop, **notifier)
    plugins = build_plugins(settings)
    await migrate(database_url, plugins.table_apps())
    services = await Services.start(settings, plugins=plugins, connect_nats=False)
    running = Notifier(plugins, services, asyncio.Event(), [])
    hosted = set(plugins.runtime.state("notifier").get(LOOPS, ()))
    assert len(hosted) == (1 if loop else 0), "start-up hosts exactly one delivery loop"
    try:
        yield running
    finally:
        running.stop.set()
        await services.close()
        # Both kinds of loop end by themselves: on ``stop`` or once services close.
        for task in [*running.loops, *hosted]:
            await asyncio.wait_for(task, 10)


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 15, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def payout_failure(code: str = "no_account", payout: str = "po_notify_1") -> PayoutFailure:
    return PayoutFailure(
        account_id="acct_notify",
        kind="payout",
        failure_code=code,
        amount=Money(1200, "usd"),
        stripe_object_id=payout,
        message="No bank account could be located with those details.",
    )


# ---------------------------------------------------------------- tests


async def test_payout_failure_sends_one_signed_webhook_and_one_plain_email(
    fresh_database_url: str, smtp: Smtp
) -> None:
    with running_receiver() as receiver:
        async with running_notifier(
            fresh_database_url, **webhook_to(receiver), **email_to(smtp.port)
        ) as notifier:
            notifier.plugins.notify_payout_failure(payout_failure())
            await wait_until(
                lambda: len(receiver.requests) == 1 and len(smtp.inbox.messages) == 1,
                what="one webhook and one email",
            )
            await wait_until(lambda: _all_sent(notifier, 2), what="both rows marked sent")
            await asyncio.sleep(0.3)  # room for a wrongful second delivery
            rows = await notifier.rows()

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.verified, "the receiver verified the Stripe-scheme signature"
    assert request.headers[SIGNATURE_HEADER].startswith("t=")
    body = request.payload
    webhook_row = next(row for row in rows if row["channel"] == "webhook")
    assert request.headers[IDEMPOTENCY_HEADER] == body["id"] == webhook_row["id"]
    assert request.headers[ATTEMPT_HEADER] == "1"
    assert body["type"] == "engine.payout.failed"
    assert body["account"] == "acct_notify"
    assert body["data"]["failure_code"] == "no_account"
    assert body["data"]["amount"] == 1200
    assert body["data"]["currency"] == "usd"
    assert body["data"]["reason"] == "the bank account does not exist"
    assert body["message"]["text"].startswith(PLAIN_NO_ACCOUNT)

    assert len(smtp.inbox.messages) == 1
    message = smtp.inbox.messages[0]
    assert sorted(smtp.inbox.recipients[0]) == ["finance@example.test", "ops@example.test"]
    assert message["From"] == "marketplace@example.test"
    assert "failed: the bank account does not exist" in message["Subject"]
    assert PLAIN_NO_ACCOUNT in smtp.inbox.texts()[0]
    assert "po_notify_1" in smtp.inbox.texts()[0]
    email_row = next(row for row in rows if row["channel"] == "email")
    assert message["X-Marketplace-Notification-Id"] == email_row["id"]
    assert [row["status"] for row in rows] == ["sent", "sent"]
    assert [row["attempts"] for row in rows] == [1, 1]


async def _all_sent(notifier: Notifier, count: int) -> bool:
    rows = await notifier.rows()
    return len(rows) == count and all(row["status"] == "sent" for row in rows)


async def test_receiver_failing_twice_gets_it_on_the_third_attempt_with_the_same_id(
    fresh_database_url: str,
) -> None:
    with running_receiver(script=[500, 500]) as receiver:
        async with running_notifier(
            fresh_database_url, max_attempts=5, **webhook_to(receiver)
        ) as notifier:
            notifier.plugins.notify_payout_failure(payout_failure("account_closed"))
            await wait_until(lambda: _all_sent(notifier, 1), what="the notification to be sent")
            await asyncio.sleep(0.3)
            rows = await notifier.rows()

    assert [request.status for request in receiver.requests] == [500, 500, 200]
    assert all(request.verified for request in receiver.requests)
    ids = receiver.ids()
    assert len(set(ids)) == 1
    assert ids[0] == rows[0]["id"]
    assert {request.payload["id"] for request in receiver.requests} == {ids[0]}
    assert [request.headers[ATTEMPT_HEADER] for request in receiver.requests] == ["1", "2", "3"]
    assert rows[0]["status"] == "sent"
    assert rows[0]["attempts"] == 3
    assert rows[0]["last_error"] == ""


async def test_always_failing_receiver_goes_dead_while_email_keeps_flowing(
    fresh_database_url: str, smtp: Smtp
) -> None:
    with running_receiver(default=500) as receiver:
        async with running_notifier(
            fresh_database_url, max_attempts=3, **webhook_to(receiver), **email_to(smtp.port)
        ) as notifier:
            notifier.plugins.notify_payout_failure(payout_failure("no_account", "po_a"))
            await wait_until(lambda: len(smtp.inbox.messages) == 1, what="the first email")
            notifier.plugins.notify_lifecycle(
                LifecycleEvent(
                    "creator_subscriptions.subscription.renewed",
                    subject_id="sub_1",
                    account_id="acct_notify",
                    data={"amount": Money(500, "eur"), "tier": "gold"},
                )
            )
            await wait_until(lambda: len(smtp.inbox.messages) == 2, what="the second email")
            await wait_until(
                lambda: _statuses_are(notifier, {"webhook:dead": 2, "email:sent": 2}),
                what="both webhooks dead, both emails sent",
            )
            rows = await notifier.rows()
            assert len(receiver.requests) == 2 * 3, "three tries each, then no more"

            # The operator fixes the endpoint and retries the dead ones.
            receiver.default = 200
            assert await retry_dead(notifier.services.db.pool) == 2
            await wait_until(
                lambda: _statuses_are(notifier, {"webhook:sent": 2, "email:sent": 2}),
                what="the retried webhooks to be sent",
            )

    dead = [row for row in rows if row["channel"] == "webhook"]
    assert all(row["attempts"] == 3 for row in dead)
    assert all(row["last_error"].startswith("HTTP 500") for row in dead)
    renewal = smtp.inbox.texts()[1]
    assert "Subscription renewed: sub_1 (account acct_notify)" in renewal
    accepted = [request for request in receiver.requests if request.status == 200]
    assert len(accepted) == 2
    renewed = next(r.payload for r in accepted if r.payload["type"].endswith("renewed"))
    assert renewed["data"]["amount"] == {"amount": 500, "currency": "eur"}
    assert len(receiver.requests) == 2 * 3 + 2


async def _statuses_are(notifier: Notifier, expected: dict[str, int]) -> bool:
    return await notifier.statuses() == expected


async def test_hooks_return_at_once_when_the_smtp_server_is_down(
    fresh_database_url: str,
) -> None:
    with running_receiver() as receiver, silent_smtp() as hung:
        async with running_notifier(
            fresh_database_url,
            smtp_timeout_seconds=1.0,
            **webhook_to(receiver),
            **email_to(hung.getsockname()[1]),
        ) as notifier:
            for number in range(50):
                notifier.plugins.notify_payout_failure(payout_failure(payout=f"po_{number}"))
            # Nothing was awaited since the first call: a hook that talked to the mail
            # server itself (and so could hang on it) would have left a connection on it.
            assert not connection_waiting(hung), "a hook call connected to the mail server"
            # The webhooks of the same notifications go out while every email hangs.
            await wait_until(lambda: len(receiver.requests) == 50, what="all 50 webhooks")
            await wait_until(
                lambda: _email_attempted(notifier), timeout=20, what="an email try to time out"
            )
            rows = await notifier.rows()
            assert connection_waiting(hung), "the emails were tried, in the background"

    assert all(r.verified for r in receiver.requests)
    emails = [row for row in rows if row["channel"] == "email"]
    assert len(emails) == 50
    failed = [row for row in emails if row["last_error"]]
    assert failed, "the hung server made tries fail"
    assert all(row["status"] == "pending" for row in failed), "retried later, not dropped"
    assert all("timed out" in row["last_error"] for row in failed)


async def _email_attempted(notifier: Notifier) -> bool:
    return any(row["channel"] == "email" and row["last_error"] for row in await notifier.rows())


async def test_hook_outside_a_loop_is_kept_in_memory_then_stored_and_sent(
    fresh_database_url: str,
) -> None:
    with running_receiver() as receiver:
        async with running_notifier(fresh_database_url, **webhook_to(receiver)) as notifier:
            # A thread has no running loop: the hook must not try to schedule anything.
            await asyncio.to_thread(notifier.plugins.notify_payout_failure, payout_failure())
            pending = notifier.plugins.runtime.state("notifier").get("pending")
            assert pending is not None
            await wait_until(lambda: len(receiver.requests) == 1, what="the webhook")
            await wait_until(lambda: _all_sent(notifier, 1), what="the row marked sent")
    assert pending == []
    assert receiver.requests[0].payload["data"]["failure_code"] == "no_account"


async def test_several_delivery_loops_send_each_notification_once(
    fresh_database_url: str,
) -> None:
    with running_receiver() as receiver:
        async with running_notifier(
            fresh_database_url, loop=False, batch_size=5, **webhook_to(receiver)
        ) as notifier:
            for number in range(40):
                notifier.plugins.notify_payout_failure(payout_failure(payout=f"po_{number}"))
            await wait_until(lambda: _row_count(notifier, 40), what="40 rows in the outbox")
            for _ in range(3):
                notifier.start_loop()
            await wait_until(lambda: _all_sent(notifier, 40), what="all 40 sent")
            await asyncio.sleep(0.3)
    ids = receiver.ids()
    assert len(ids) == 40
    assert len(set(ids)) == 40


async def _row_count(notifier: Notifier, count: int) -> bool:
    return len(await notifier.rows()) == count


async def test_deliver_due_alone_reports_what_it_tried(fresh_database_url: str) -> None:
    with running_receiver(default=503) as receiver:
        async with running_notifier(
            fresh_database_url,
            loop=False,
            backoff_base_seconds=30,
            backoff_cap_seconds=60,
            **webhook_to(receiver),
        ) as notifier:
            notifier.plugins.notify_payout_failure(payout_failure())
            await wait_until(lambda: _row_count(notifier, 1), what="the row")
            config = notifier_config(notifier.services)
            assert config is not None
            assert await deliver_due(notifier.services, config) == 1
            assert await deliver_due(notifier.services, config) == 0, "backing off"
            rows = await notifier.rows()
    assert rows[0]["status"] == "pending"
    assert rows[0]["attempts"] == 1
    assert rows[0]["last_error"].startswith("HTTP 503")
    assert len(receiver.requests) == 1


async def test_stripe_payout_failed_event_through_the_worker_notifies_the_operator(
    fresh_database_url: str, nats_url: str, unique_name: str, smtp: Smtp
) -> None:
    """End to end: Stripe's signed ``payout.failed`` -> intake -> worker -> hook -> notices.

    The account is one the platform knows (the worker parks events of others), so the
    payout handler asks Stripe (the sandbox) whether its bank is still errored.
    """
    with running_sandbox() as sandbox, running_receiver() as receiver:

        def settings_for(*, delivers: bool) -> Any:
            return settings_from_mapping(
                {
                    "database": {"url": fresh_database_url, "pool_max": 6},
                    "nats": {"url": nats_url, "stream": unique_name.upper()},
                    "stripe": {
                        "webhook_secrets": [PLATFORM_SECRET],
                        "connect_webhook_secrets": [CONNECT_SECRET],
                        "api_base": sandbox.url,
                        "max_network_retries": 0,
                    },
                    "webhooks": {"sweep_interval_seconds": 0.2, "lease_seconds": 5},
                    "plugins": {
                        "enabled": ["notifier"],
                        "notifier": {
                            **webhook_to(receiver),
                            **email_to(smtp.port),
                            "smtp_starttls": False,
                            "poll_interval_seconds": 0.05,
                            "run_delivery": delivers,
                        },
                    },
                }
            )

        # The API side does not deliver, so what arrives was sent by the loop
        # the worker's start-up hosts.
        api_settings = settings_for(delivers=False)
        worker_settings = settings_for(delivers=True)
        api_plugins = build_plugins(api_settings)
        worker_plugins = build_plugins(worker_settings)
        await migrate(fresh_database_url, api_plugins.table_apps())
        services = await Services.start(api_settings, plugins=api_plugins)
        created = await asyncio.to_thread(
            sandbox.client().v1.accounts.create, params={"type": "express"}
        )
        account = str(created.id)
        await know_accounts(services.db.pool, [account])
        webhooks = await WebhookService.start(services, Metrics())
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(worker_settings, plugins=worker_plugins, stop=stop))
        try:
            payout = {
                "id": "po_e2e_1",
                "object": "payout",
                "amount": 1200,
                "currency": "usd",
                "status": "failed",
                "failure_code": "no_account",
                "failure_message": "No bank account could be located.",
                "created": int(time.time()) - 86_400,
                "arrival_date": int(time.time()),
            }
            body = event(account, 1, event_type="payout.failed", obj=payout)
            payload, headers = signed(body, CONNECT_SECRET)
            await webhooks.intake.receive(payload, headers["Stripe-Signature"], connect=True)
            await wait_until(
                lambda: len(receiver.requests) == 1 and len(smtp.inbox.messages) == 1,
                timeout=30,
                what="the operator's webhook and email",
            )
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker, 10)
            await webhooks.close()
            await services.close()

    assert receiver.requests[0].verified
    assert receiver.requests[0].payload["data"]["stripe_object_id"] == "po_e2e_1"
    assert PLAIN_NO_ACCOUNT.replace("acct_notify", account) in smtp.inbox.texts()[0]


async def test_cli_status_lists_dead_notifications_and_retry_dead_revives_them(
    fresh_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_receiver(default=500) as receiver:
        async with running_notifier(
            fresh_database_url, max_attempts=1, **webhook_to(receiver)
        ) as notifier:
            notifier.plugins.notify_payout_failure(payout_failure())
            await wait_until(
                lambda: _statuses_are(notifier, {"webhook:dead": 1}), what="a dead webhook"
            )
            (row,) = await notifier.rows()
            await notifier_cli._run(argparse.Namespace(action="status"), fresh_database_url)
            status = capsys.readouterr().out
            receiver.default = 200  # the operator fixed the endpoint
            await notifier_cli._run(
                argparse.Namespace(action="retry-dead", id=[row["id"]]), fresh_database_url
            )
            retried = capsys.readouterr().out
            await wait_until(
                lambda: _statuses_are(notifier, {"webhook:sent": 1}), what="the retried webhook"
            )
    assert "webhook  dead 1" in status
    assert f"dead  {row['id']}  webhook  engine.payout.failed  HTTP 500" in status
    assert retried.strip() == "1 notification(s) pending again"
