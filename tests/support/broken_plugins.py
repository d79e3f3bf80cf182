"""Deliberately broken plugins: each breaks one conformance property, and the check must say which.

- ``LossySplit`` (``lossy_split``): halves what is left after the commission
  with floor division, so an odd remainder loses a cent.
- ``CountingHandler`` (``counting_events``): its ``payment_intent.succeeded``
  handler inserts a row on every delivery, so a repeated event changes state.
- ``IdempotentCounter`` (``counted_once``): the same handler done right
  (``ON CONFLICT DO NOTHING`` on the event id); it must pass.
- ``AsyncSplit`` (``async_split``): an ``async def`` first-result hook
  (``ASYNC_SPLIT`` is one, for an entry point).
- ``Misspelled`` (``misspelled``): implements ``resolve_spilt``.
- ``Unmarked`` (``unmarked``): defines ``resolve_split`` without ``@hookimpl``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from piccolo.columns import Varchar
from piccolo.conf.apps import AppConfig
from piccolo.table import Table

from engine.core.contributions import TableApp, WebhookRegistration
from engine.core.money import Money
from engine.core.orders import PLATFORM, Commission, Order, SplitLeg, SplitPlan
from engine.core.plugins import hookimpl
from engine.testing.conformance import ConformanceSpec
from engine.testing.strategies import orders


class LossySplit:
    """Splits the rest between a seller and a partner, dropping odd cents."""

    name = "lossy_split"

    @hookimpl
    def resolve_split(self, order: Order, price: Money, commission: Commission) -> SplitPlan | None:
        if order.plugin != self.name:
            return None
        half = (price.amount - commission.amount.amount) // 2
        legs = (
            SplitLeg(PLATFORM, commission.amount),
            SplitLeg("seller", Money(half, price.currency), order.beneficiaries["seller"]),
            SplitLeg("partner", Money(half, price.currency), order.beneficiaries["partner"]),
        )
        # The plan is internally consistent; it just is not the price any more.
        return SplitPlan(Money(commission.amount.amount + 2 * half, price.currency), legs)

    def conformance(self) -> ConformanceSpec:
        return ConformanceSpec(orders=orders(self.name, roles=("seller", "partner")))


class CountingEventsSeen(Table, tablename="counting_events_seen"):
    """One row per delivery (the bug: there should be one per event)."""

    event_id = Varchar(length=255)


class CountedOnceSeen(Table, tablename="counted_once_seen"):
    """One row per event."""

    event_id = Varchar(length=255, unique=True)


async def _count_every_delivery(event: Any, ctx: Any) -> None:
    await ctx.conn.execute("INSERT INTO counting_events_seen (event_id) VALUES ($1)", event["id"])


async def _count_each_event_once(event: Any, ctx: Any) -> None:
    await ctx.conn.execute(
        "INSERT INTO counted_once_seen (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
        event["id"],
    )


class CountingHandler:
    """Records every delivery of ``payment_intent.succeeded`` (not idempotent)."""

    name = "counting_events"
    table = CountingEventsSeen
    handler = staticmethod(_count_every_delivery)

    @hookimpl
    def register_tables(self, register: Callable[[TableApp], None]) -> None:
        app = AppConfig(app_name=self.name, migrations_folder_path="", table_classes=[self.table])
        register(TableApp(plugin=self.name, app_config=app))

    @hookimpl
    def register_webhook_handlers(self, register: Callable[[WebhookRegistration], None]) -> None:
        register(
            WebhookRegistration("payment_intent.succeeded", self.handler, f"{self.name}.count")
        )


class IdempotentCounter(CountingHandler):
    """The same plugin with an idempotent handler."""

    name = "counted_once"
    table = CountedOnceSeen
    handler = staticmethod(_count_each_event_once)


class AsyncSplit:
    """An ``async def`` first-result hook: its coroutine would always win."""

    @hookimpl
    async def resolve_split(
        self, order: Order, price: Money, commission: Commission
    ) -> SplitPlan | None:
        return None


ASYNC_SPLIT = AsyncSplit()
"""An instance for an entry point (``support.broken_plugins:ASYNC_SPLIT``)."""


class Misspelled:
    """Implements a hook that does not exist."""

    @hookimpl
    def resolve_spilt(self, order: Order) -> None:
        return None


class Unmarked:
    """Defines a hook without ``@hookimpl``: pluggy never calls it."""

    def resolve_split(self, order: Order) -> None:
        return None
