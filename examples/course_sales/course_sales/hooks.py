"""Hook implementations of course_sales (hookimpls only; the logic lives beside them)."""

from __future__ import annotations

from engine.core.contributions import (
    CliCommand,
    ConfigSection,
    PluginRuntime,
    Registrar,
    Route,
    TableApp,
    WebhookRegistration,
)
from engine.core.money import Money
from engine.core.orders import Commission, Order, SplitPlan
from engine.core.plugins import hookimpl

from course_sales import cli, webhooks
from course_sales.config import PLUGIN, CourseSalesConfig
from course_sales.pricing import coupon_price, revenue_share
from course_sales.tables import APP_CONFIG


@hookimpl
def register_config_schema(register: Registrar[ConfigSection]) -> None:
    """Declare ``[plugins.course_sales]``."""
    register(ConfigSection(plugin=PLUGIN, schema=CourseSalesConfig))


@hookimpl
def register_tables(register: Registrar[TableApp]) -> None:
    """Courses and enrollments (``course_sales_*``)."""
    register(TableApp(plugin=PLUGIN, app_config=APP_CONFIG))


@hookimpl
def register_routes(register: Registrar[Route]) -> None:
    """``/v1/course_sales/...``."""
    # Imported here: workers and the CLI load the hooks without the HTTP layer.
    from course_sales.controllers import CourseController

    register(CourseController)


@hookimpl
def register_webhook_handlers(register: Registrar[WebhookRegistration]) -> None:
    """Transfer the shares when a course payment succeeds."""
    register(
        WebhookRegistration(
            "payment_intent.succeeded", webhooks.on_payment_intent_succeeded, f"{PLUGIN}.settle"
        )
    )


@hookimpl
def register_cli_commands(register: Registrar[CliCommand]) -> None:
    """``marketplace course-sales quote``."""
    register(cli.command())


@hookimpl
def resolve_price(order: Order, runtime: PluginRuntime) -> Money | None:
    """A course's list price less its coupon (``None``: no coupon, or not a course)."""
    if order.plugin != PLUGIN:
        return None
    config: CourseSalesConfig = runtime.config(PLUGIN)
    return coupon_price(order, config)


@hookimpl
def resolve_split(
    order: Order, price: Money, commission: Commission, runtime: PluginRuntime
) -> SplitPlan | None:
    """Platform commission, then instructor and affiliate (``None`` for other models' orders)."""
    if order.plugin != PLUGIN:
        return None
    config: CourseSalesConfig = runtime.config(PLUGIN)
    return revenue_share(order, price, commission, config)
