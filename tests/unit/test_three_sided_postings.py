"""three_sided_bookings: every process action is implemented; names agree."""

from __future__ import annotations

from engine.core.ledger import stripe_time
from engine.core.plugins import build_plugins
from engine.core.settings import settings_from_mapping
from plugins.three_sided_bookings import actions, controllers, process, webhooks

AT = stripe_time(1_767_225_600)


def by_account(posting: object) -> dict[str, int]:
    totals: dict[str, int] = {}
    for entry in posting.entries:  # type: ignore[attr-defined]
        totals[entry.account] = totals.get(entry.account, 0) + entry.amount.amount
    return totals


def test_every_process_action_is_implemented() -> None:
    assert set(actions.ACTION_IMPLEMENTATIONS) == set(process.ACTIONS)


def test_the_plugin_contributes_handlers_tables_and_routes() -> None:
    plugins = build_plugins(
        settings_from_mapping({"plugins": {"enabled": ["three_sided_bookings"]}})
    )
    handled = {registration.event_type for registration in plugins.webhook_handlers()}
    assert {"charge.dispute.created", "charge.dispute.closed", "account.updated"} <= handled
    assert all(r.name.startswith("three_sided_bookings.") for r in webhooks.registrations())
    [app] = plugins.table_apps()
    names = [table._meta.tablename for table in app.app_config.table_classes]  # type: ignore[attr-defined]
    assert all(name.startswith("three_sided_bookings_") for name in names)
    assert set(plugins.routes()) == set(controllers.ROUTES)
    assert [command.name for command in plugins.cli_commands()] == ["bookings-timers"]
