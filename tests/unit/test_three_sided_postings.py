"""three_sided_bookings: ledger postings mirror Stripe balance transactions; names agree."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.core.ledger import CUSTOMERS, DISPUTES, PLATFORM, PLATFORM_STRIPE_FEES, stripe_time
from engine.core.money import Money
from engine.core.plugins import build_plugins
from engine.core.settings import settings_from_mapping
from plugins.three_sided_bookings import actions, controllers, process, webhooks
from plugins.three_sided_bookings.postings import (
    charge_posting,
    dispute_lost_posting,
    dispute_txn_posting,
    refund_posting,
    reversal_posting,
    transfer_posting,
)

AT = stripe_time(1_767_225_600)


def by_account(posting: object) -> dict[str, int]:
    totals: dict[str, int] = {}
    for entry in posting.entries:  # type: ignore[attr-defined]
        totals[entry.account] = totals.get(entry.account, 0) + entry.amount.amount
    return totals


@given(amount=st.integers(1, 10**8), fee=st.integers(0, 10**6))
def test_a_charge_mirrors_its_balance_transaction(amount: int, fee: int) -> None:
    posting = charge_posting(
        "booking:1", "ch_1", Money(amount, "gbp"), Money(fee, "gbp"), occurred_at=AT
    )
    assert posting.key == "charge:ch_1"
    assert posting.stripe_object_id == "ch_1"
    assert posting.reference == "booking:1"
    # The platform nets what Stripe's balance transaction nets: amount - fee.
    totals = by_account(posting)
    assert totals[PLATFORM] == amount - fee
    assert totals[CUSTOMERS] == -amount
    assert totals.get(PLATFORM_STRIPE_FEES, 0) == fee


def test_movements_between_platform_and_accounts() -> None:
    gbp = Money(500, "gbp")
    assert by_account(transfer_posting("booking:1", "tr_1", "acct_v", gbp, occurred_at=AT)) == {
        PLATFORM: -500,
        "acct_v": 500,
    }
    assert by_account(reversal_posting("booking:1", "trr_1", "acct_v", gbp, occurred_at=AT)) == {
        PLATFORM: 500,
        "acct_v": -500,
    }
    assert by_account(refund_posting("booking:1", "re_1", gbp, occurred_at=AT)) == {
        PLATFORM: -500,
        CUSTOMERS: 500,
    }
    keys = [
        transfer_posting("b", "tr_1", "a", gbp, occurred_at=AT).key,
        reversal_posting("b", "trr_1", "a", gbp, occurred_at=AT).key,
        refund_posting("b", "re_1", gbp, occurred_at=AT).key,
    ]
    assert keys == ["transfer:tr_1", "reversal:trr_1", "refund:re_1"]


def test_a_dispute_withdrawn_then_reinstated_or_lost() -> None:
    withdrawn = dispute_txn_posting(
        "booking:1", "dp_1", "txn_1", Money(-10_000, "gbp"), Money(1_500, "gbp"), occurred_at=AT
    )
    assert by_account(withdrawn) == {
        PLATFORM: -11_500,
        DISPUTES: 10_000,
        PLATFORM_STRIPE_FEES: 1_500,
    }
    reinstated = dispute_txn_posting(
        "booking:1", "dp_1", "txn_2", Money(10_000, "gbp"), Money(-1_500, "gbp"), occurred_at=AT
    )
    assert by_account(reinstated) == {
        PLATFORM: 11_500,
        DISPUTES: -10_000,
        PLATFORM_STRIPE_FEES: -1_500,
    }
    assert withdrawn.key != reinstated.key  # one posting per balance transaction
    lost = dispute_lost_posting("booking:1", "dp_1", Money(10_000, "gbp"), occurred_at=AT)
    assert by_account(lost) == {DISPUTES: -10_000, CUSTOMERS: 10_000}


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
