"""The context a webhook handler gets declares what handlers use: the event's
connection and an after-commit registration, and the worker's context gives both."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from engine.core.contributions import HandlerContext, StripeEvent, WebhookRegistration
from engine.worker.dispatch import Dispatcher, EventContext


def test_the_protocol_declares_connection_and_after_commit() -> None:
    declared = {name for name in vars(HandlerContext) if not name.startswith("_")}
    assert {"conn", "after_commit", "services", "plugin_config"} <= declared
    hints = inspect.get_annotations(HandlerContext.conn.fget, eval_str=True)  # type: ignore[attr-defined]
    assert "Connection" in str(hints["return"])
    assert HandlerContext in EventContext.__mro__  # implements it explicitly (mypy checks)


class _Config:
    share_bps = 1500


async def test_a_handler_gets_the_events_connection_and_after_commit_runs_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = object()  # the mailbox's connection; the dispatcher only hands it on
    services = SimpleNamespace(
        plugins=SimpleNamespace(runtime=SimpleNamespace(config=lambda plugin: _Config()))
    )
    seen: dict[str, Any] = {}
    ran: list[str] = []

    def failing() -> None:
        ran.append("failing")
        raise RuntimeError("mail server down")

    async def handler(event: StripeEvent, ctx: HandlerContext) -> None:
        seen["conn"] = ctx.conn
        seen["config"] = ctx.plugin_config
        ctx.after_commit(lambda: ran.append("first"))
        ctx.after_commit(failing)
        ctx.after_commit(lambda: ran.append("last"))

    dispatcher = Dispatcher(services, [WebhookRegistration("invoice.paid", handler, "demo.paid")])
    contexts = await dispatcher.handle({"id": "evt_1", "type": "invoice.paid"}, conn)  # type: ignore[arg-type]
    assert seen["conn"] is conn
    assert isinstance(seen["config"], _Config)
    assert ran == []  # nothing before the commit
    for ctx in contexts:
        ctx.run_after_commit()
    assert ran == ["first", "failing", "last"]
    assert "mail server down" in caplog.text
