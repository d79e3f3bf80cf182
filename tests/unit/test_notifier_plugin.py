"""The notifier plugin without I/O: config validation, hooks into memory, wire format."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from engine.core.errors import ConfigError
from engine.core.money import Money
from engine.core.orders import LifecycleEvent, PayoutFailure
from engine.core.plugins import Plugins, build_plugins
from engine.core.settings import settings_from_mapping
from engine.notifier import delivery, hooks, outbox
from engine.notifier.config import NotifierConfig
from engine.notifier.outbox import Notification
from engine.notifier.senders import (
    ATTEMPT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    Claimed,
    DeliveryError,
    email_message,
    send_webhook,
)
from engine.webhooks.signature import verify

SECRET = "whsec_unit"
WEBHOOK = {"webhook_url": "https://ops.example.test/hooks", "webhook_secret": SECRET}
EMAIL = {
    "email_to": ["ops@example.test"],
    "email_from": "marketplace@example.test",
    "smtp_host": "mail.example.test",
}


def notifier_plugins(**section: Any) -> Plugins:
    plugins_section: dict[str, Any] = {"enabled": ["notifier"]}
    if section:
        plugins_section["notifier"] = section
    return build_plugins(settings_from_mapping({"plugins": plugins_section}))


def pending(plugins: Plugins) -> list[Notification]:
    kept: list[Notification] = plugins.runtime.state("notifier").get("pending", [])
    return kept


def failure(code: str = "no_account") -> PayoutFailure:
    return PayoutFailure("acct_1", "payout", code, Money(1200, "usd"), "po_1")


# ---------------------------------------------------------------- config


def test_unconfigured_notifier_is_enabled_but_sends_nothing() -> None:
    plugins = notifier_plugins()
    assert plugins.is_enabled("notifier")
    plugins.notify_payout_failure(failure())
    plugins.notify_lifecycle(LifecycleEvent("engine.account.updated", subject_id="acct_1"))
    assert pending(plugins) == []
    config = plugins.runtime.config("notifier")
    assert isinstance(config, NotifierConfig)
    assert config.channels == ()
    assert config.max_attempts == 8


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"webhook_url": "https://x.test/h"}, "plugins.notifier.webhook_secret"),
        ({"webhook_url": "ftp://x.test", "webhook_secret": "s"}, "plugins.notifier.webhook_url"),
        ({"email_to": ["a@b.test"], "email_from": "c@d.test"}, "plugins.notifier.smtp_host"),
        ({"email_to": ["a@b.test"], "smtp_host": "mail"}, "plugins.notifier.email_from"),
        ({"smtp_ssl": True}, "plugins.notifier.smtp_starttls"),
        (
            {"backoff_base_seconds": 10, "backoff_cap_seconds": 5},
            "plugins.notifier.backoff_cap_seconds",
        ),
        ({"max_attempts": 0}, "plugins.notifier.max_attempts"),
        ({"smtp_port": 70000}, "plugins.notifier.smtp_port"),
        ({"webhok_url": "https://x.test"}, "plugins.notifier"),
    ],
)
def test_bad_notifier_config_names_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        notifier_plugins(**section)
    assert info.value.key == key
    if "webhok_url" in section:
        assert "webhok_url" in info.value.problem


def test_channels_follow_what_is_configured() -> None:
    both = notifier_plugins(**WEBHOOK, **EMAIL).runtime.config("notifier")
    assert both.channels == ("webhook", "email")
    assert notifier_plugins(**EMAIL).runtime.config("notifier").channels == ("email",)


# ---------------------------------------------------------------- hooks


def test_payout_failure_outside_a_loop_waits_in_memory_one_row_per_channel() -> None:
    plugins = notifier_plugins(**WEBHOOK, **EMAIL)
    plugins.notify_payout_failure(failure())
    rows = pending(plugins)
    assert [row.channel for row in rows] == ["webhook", "email"]
    assert len({row.id for row in rows}) == 2, "each channel row has its own idempotency id"
    for row in rows:
        assert row.kind == "engine.payout.failed"
        assert row.payload["id"] == row.id
        assert row.payload["type"] == "engine.payout.failed"
        assert row.payload["data"]["reason"] == "the bank account does not exist"
        assert row.payload["message"]["text"].startswith("Payout of 12.00 USD to acct_1 failed")
        json.dumps(row.payload)  # stored as JSONB as is


def test_events_filter_selects_what_is_sent() -> None:
    plugins = notifier_plugins(**WEBHOOK, events=["engine.payout.*", "*.booking.completed"])
    plugins.notify_lifecycle(LifecycleEvent("engine.account.updated", subject_id="acct_1"))
    plugins.notify_lifecycle(
        LifecycleEvent("three_sided_bookings.booking.completed", subject_id="bk_1")
    )
    plugins.notify_payout_failure(failure())
    plugins.notify_payout_failure(
        PayoutFailure("acct_1", "transfer", "account_restricted", Money(5, "usd"), "tr_1")
    )
    assert [row.kind for row in pending(plugins)] == [
        "three_sided_bookings.booking.completed",
        "engine.payout.failed",
    ]


def test_lifecycle_data_of_any_shape_becomes_json() -> None:
    plugins = notifier_plugins(**WEBHOOK)

    class Opaque:
        def __str__(self) -> str:
            return "opaque-thing"

    plugins.notify_lifecycle(
        LifecycleEvent(
            "creator_subscriptions.subscription.renewed",
            subject_id="sub_1",
            account_id="acct_1",
            data={
                "amount": Money(999, "eur"),
                "at": datetime(2025, 3, 1, tzinfo=UTC),
                "rate": Decimal("12.5"),
                "tags": ("a", "b"),
                "thing": Opaque(),
            },
        )
    )
    (row,) = pending(plugins)
    assert row.payload["data"] == {
        "amount": {"amount": 999, "currency": "eur"},
        "at": "2025-03-01T00:00:00+00:00",
        "rate": "12.5",
        "tags": ["a", "b"],
        "thing": "opaque-thing",
    }
    assert row.payload["account"] == "acct_1"
    assert row.payload["subject"] == "sub_1"


async def test_inside_a_loop_without_services_rows_still_wait_in_memory() -> None:
    plugins = notifier_plugins(**WEBHOOK)
    assert plugins.runtime.services is None
    plugins.notify_payout_failure(failure())
    assert len(pending(plugins)) == 1
    assert not plugins.runtime.state("notifier").get("tasks")


async def test_inside_a_loop_with_services_the_insert_is_a_task_and_the_hook_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugins = notifier_plugins(**WEBHOOK)
    inserted: list[list[Notification]] = []
    release = asyncio.Event()

    class SlowPool:
        """Stands in for asyncpg: the insert only finishes when released."""

    async def fake_store(pool: Any, rows: list[Notification]) -> None:
        await release.wait()
        inserted.append(list(rows))

    class Db:
        pool = SlowPool()

    class FakeServices:
        db = Db()

    plugins.runtime.services = FakeServices()
    monkeypatch.setattr(outbox, "store", fake_store)
    plugins.notify_payout_failure(failure())
    tasks = plugins.runtime.state("notifier")["tasks"]
    assert len(tasks) == 1, "the insert was scheduled, not awaited"
    assert inserted == []
    release.set()
    await asyncio.gather(*tasks)
    assert len(inserted) == 1
    assert pending(plugins) == []
    assert not plugins.runtime.state("notifier")["tasks"], "finished tasks are let go"


def test_hooks_never_raise_even_when_building_a_notice_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plugins = notifier_plugins(**WEBHOOK)

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug in a notice")

    monkeypatch.setattr(hooks, "payout_failure_notifications", broken)
    monkeypatch.setattr(hooks, "lifecycle_notifications", broken)
    hooks.on_payout_failure(failure(), plugins.runtime)
    hooks.on_lifecycle_event(LifecycleEvent("engine.account.updated", "acct_1"), plugins.runtime)
    assert "could not queue" in caplog.text


def test_memory_is_bounded_while_the_database_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "MAX_PENDING", 5)
    plugins = notifier_plugins(**WEBHOOK)
    for number in range(8):
        plugins.notify_payout_failure(
            PayoutFailure("acct_1", "payout", "declined", Money(1, "usd"), f"po_{number}")
        )
    kept = pending(plugins)
    assert [row.payload["subject"] for row in kept] == [f"po_{n}" for n in range(3, 8)]


# ---------------------------------------------------------------- wire format


def claimed(payload: dict[str, Any], attempts: int = 2) -> Claimed:
    return Claimed(
        id=str(payload["id"]),
        kind=str(payload["type"]),
        channel="webhook",
        body=json.dumps(payload).encode(),
        attempts=attempts,
    )


async def test_webhook_is_signed_with_stripes_scheme_and_carries_the_id() -> None:
    config = notifier_plugins(**WEBHOOK).runtime.config("notifier")
    payload = {"id": "ntf_abc", "type": "engine.payout.failed", "data": {}}
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        await send_webhook(http, config, claimed(payload))
    (request,) = seen
    assert str(request.url) == WEBHOOK["webhook_url"]
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers[IDEMPOTENCY_HEADER] == "ntf_abc"
    assert request.headers[ATTEMPT_HEADER] == "2"
    verify(request.content, request.headers[SIGNATURE_HEADER], [SECRET])
    with pytest.raises(Exception, match="signature"):
        verify(request.content, request.headers[SIGNATURE_HEADER], ["whsec_other"])


@pytest.mark.parametrize("status", [301, 404, 500, 503])
async def test_any_non_2xx_answer_is_a_failed_try(status: int) -> None:
    config = notifier_plugins(**WEBHOOK).runtime.config("notifier")
    transport = httpx.MockTransport(lambda request: httpx.Response(status, text="nope"))
    async with httpx.AsyncClient(transport=transport) as http:
        with pytest.raises(DeliveryError, match=f"HTTP {status}"):
            await send_webhook(http, config, claimed({"id": "ntf_1", "type": "t"}))


async def test_connection_errors_are_failed_tries() -> None:
    config = notifier_plugins(**WEBHOOK).runtime.config("notifier")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(DeliveryError, match="ConnectError"):
            await send_webhook(http, config, claimed({"id": "ntf_1", "type": "t"}))


def test_email_is_plain_text_with_a_stable_message_id() -> None:
    config = notifier_plugins(**EMAIL).runtime.config("notifier")
    payload = {
        "id": "ntf_xyz",
        "type": "engine.payout.failed",
        "message": {"subject": "Payout to acct_1 failed", "text": "Payout of 12.00 USD ..."},
    }
    message = email_message(config, "ntf_xyz", payload)
    assert message["From"] == "marketplace@example.test"
    assert message["To"] == "ops@example.test"
    assert message["Subject"] == "Payout to acct_1 failed"
    assert message["Message-ID"] == "<ntf_xyz@example.test>"
    assert message["X-Marketplace-Notification-Id"] == "ntf_xyz"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().startswith("Payout of 12.00 USD")


# ---------------------------------------------------------------- hosting


@pytest.mark.parametrize(
    "section",
    [{}, {**WEBHOOK, "run_delivery": False}],
    ids=["no channel", "run_delivery off"],
)
async def test_start_up_hosts_no_delivery_loop_when_there_is_nothing_to_do(
    section: dict[str, Any],
) -> None:
    plugins = notifier_plugins(**section)

    class FakeServices:
        """Only ``plugins`` is read before the loop would start."""

    services = FakeServices()
    services.plugins = plugins  # type: ignore[attr-defined]
    starts = plugins.startup_functions()
    assert delivery.start_in_background in starts
    for start in starts:
        await start(services)
    assert not plugins.runtime.state("notifier").get(delivery.LOOPS)
