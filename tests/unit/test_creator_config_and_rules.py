"""creator_subscriptions, pure parts: its config section, who may sell, its split."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from engine.core.errors import ConfigError
from engine.core.money import Money
from engine.core.orders import Commission, Order
from engine.core.plugins import build_plugins
from engine.core.settings import settings_from_mapping
from engine.payments.payability import refusal
from plugins.creator_subscriptions.config import CreatorSubscriptionsConfig
from plugins.creator_subscriptions.hooks import resolve_split


def plugins_with(section: dict[str, object]) -> object:
    return build_plugins(
        settings_from_mapping(
            {
                "plugins": {
                    "enabled": ["creator_subscriptions"],
                    "creator_subscriptions": section,
                }
            }
        )
    )


def test_defaults_and_overrides_are_validated() -> None:
    plugins = plugins_with({"dunning_retries": 2, "pause_behavior": "mark_uncollectible"})
    config = plugins.runtime.config("creator_subscriptions")  # type: ignore[attr-defined]
    assert isinstance(config, CreatorSubscriptionsConfig)
    assert (config.dunning_retries, config.pause_behavior) == (2, "mark_uncollectible")
    assert config.upgrade_proration == "always_invoice"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"intervals": ["month", "week"]}, "plugins.creator_subscriptions"),
        ({"dunning_retries": 11}, "plugins.creator_subscriptions.dunning_retries"),
        ({"pause_behavior": "stop"}, "plugins.creator_subscriptions.pause_behavior"),
        ({"dunning_retrys": 1}, "plugins.creator_subscriptions.dunning_retrys"),
        (
            {"min_one_time_amount": 5000, "max_one_time_amount": 100},
            "plugins.creator_subscriptions",
        ),
    ],
)
def test_bad_config_stops_start_up_naming_the_key(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        plugins_with(section)
    assert caught.value.key.startswith("plugins.creator_subscriptions")
    assert key.rsplit(".", 1)[-1] in f"{caught.value.key} {caught.value.detail}"


def test_who_may_be_paid() -> None:
    """The engine's payability rule (creators use it through ``require_selling``)."""
    ready = {
        "status": "active",
        "suspended": False,
        "charges_enabled": True,
        "payouts_enabled": True,
        "requirements_due": [],
    }

    def reason(**changes: Any) -> str | None:
        error = refusal("creator", "acct_1", {**ready, **changes})
        return None if error is None else f"{error.code}:{error.extra['reason']}"

    assert reason() is None
    assert reason(status="onboarding", charges_enabled=False) == "account_not_ready:onboarding"
    assert reason(status="restricted", charges_enabled=False, requirements_due=["x"]) == (
        "account_restricted:restricted"
    )
    assert reason(suspended=True) == "account_restricted:suspended"
    # Payouts disabled (a failed bank account Stripe stopped paying to): money would
    # pile up on a balance nobody can withdraw, so nothing new is taken for it.
    assert reason(payouts_enabled=False) == "account_restricted:payouts_disabled"
    unknown = refusal("creator", "acct_1", None)
    assert unknown is not None
    assert (unknown.code, unknown.extra["reason"]) == ("not_found", "unknown_account")


def test_split_gives_the_creator_the_rest_and_ignores_other_models() -> None:
    price = Money(1999, "usd")
    order = Order(
        plugin="creator_subscriptions",
        kind="tip",
        amount=price,
        reference="r",
        beneficiaries={"creator": "acct_1"},
    )
    plan = resolve_split(order, price, Commission(Money(200, "usd"), rule_id="r"))
    assert plan is not None
    assert [(leg.role, leg.amount.amount, leg.account_id) for leg in plan.legs] == [
        ("platform", 200, None),
        ("creator", 1799, "acct_1"),
    ]
    other = replace(order, plugin="three_sided_bookings")
    assert resolve_split(other, price, Commission(Money(200, "usd"), rule_id="r")) is None
