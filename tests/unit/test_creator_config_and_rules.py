"""creator_subscriptions, pure parts: its config section, who may sell, its split."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.core.errors import AccountNotReady, AccountRestricted, ConfigError
from engine.core.money import Money
from engine.core.orders import Commission, Order
from engine.core.plugins import build_plugins
from engine.core.settings import settings_from_mapping
from plugins.creator_subscriptions.config import CreatorSubscriptionsConfig
from plugins.creator_subscriptions.env import CreatorRow, require_selling
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


READY = CreatorRow(
    id=1,
    account_id="acct_1",
    handle="ada",
    display_name="Ada",
    default_currency="usd",
    status="active",
    charges_enabled=True,
    payouts_enabled=True,
    details_submitted=True,
    suspended=False,
    sold_before=True,
    payout_failure_code=None,
)


def test_who_may_sell() -> None:
    require_selling(READY)
    onboarding = replace(
        READY,
        charges_enabled=False,
        sold_before=False,
        status="restricted",
        details_submitted=False,
    )
    with pytest.raises(AccountNotReady):
        require_selling(onboarding)
    with pytest.raises(AccountRestricted):
        require_selling(replace(READY, charges_enabled=False, status="restricted"))
    with pytest.raises(AccountRestricted):
        require_selling(replace(READY, suspended=True))
    # A payout failure alone does not stop sales: the money waits on the balance.
    require_selling(replace(READY, payout_failure_code="no_account", payouts_enabled=False))


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
