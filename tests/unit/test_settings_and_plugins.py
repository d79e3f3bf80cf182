"""Settings validation and plugin loading: bad config names the key; enabling is config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import ConfigError, PluginError
from engine.core.money import Money
from engine.core.orders import Order
from engine.core.plugins import build_plugins, hookimpl
from engine.core.settings import load_settings, settings_from_mapping

REPO = Path(__file__).resolve().parents[2]


def test_default_config_file_loads_with_every_shipped_plugin() -> None:
    settings = load_settings(REPO / "config" / "marketplace.toml", environ={})
    plugins = build_plugins(settings)
    enabled = {info.name for info in plugins.infos if info.enabled}
    assert {"commission_rules", "creator_subscriptions", "three_sided_bookings"} <= enabled


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"plugins": {"enabled": ["comission_rules"]}}, "plugins.enabled[0]"),
        ({"commission": {"default_bps": -5}}, "commission.default_bps"),
        ({"api": {"port": "eighty"}}, "api.port"),
        ({"api": {"prot": 1}}, "api.prot"),
        ({"nope": {}}, "nope"),
        ({"database": {"url": "mysql://x"}}, "database.url"),
        (
            {"plugins": {"three_sided_bookings": {"deposit_bps": 20000}}},
            "plugins.three_sided_bookings.deposit_bps",
        ),
        ({"plugins": {"not_installed": {"x": 1}}}, "plugins.not_installed"),
        ({"nats": {"url": "nats://a:4222,http://b:4222"}}, "nats.url"),
        ({"nats": {"url": ["nats://a:4222", "b:4222"]}}, "nats.url[1]"),
        ({"nats": {"url": 4222}}, "nats.url"),
    ],
)
def test_bad_config_is_refused_naming_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_plugins(settings_from_mapping(config))
    assert info.value.key == key


def test_environment_overrides_config_file(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[database]\nurl = "postgresql://a@h/db"\n[api]\nport = 9000\n')
    env = {"MARKETPLACE_DATABASE_URL": "postgresql://b@h/db", "MARKETPLACE_API_PORT": "9100"}
    settings = load_settings(path, environ=env)
    assert settings.database.url == "postgresql://b@h/db"
    assert settings.api.port == 9100
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"MARKETPLACE_API_PORT": "99999"})
    assert info.value.key == "api.port"


def test_several_nats_servers_are_one_pool(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[nats]\nurl = ["nats://a:4222", "nats://b:4222", "tls://c:4222"]\n')
    assert load_settings(path, environ={}).nats.servers == [
        "nats://a:4222",
        "nats://b:4222",
        "tls://c:4222",
    ]
    env = {"MARKETPLACE_NATS_URL": "nats://a:4222, nats://b:4222"}
    assert load_settings(None, environ=env).nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert load_settings(None, environ={}).nats.servers == []


def test_disabling_a_plugin_removes_it() -> None:
    settings = settings_from_mapping({"plugins": {"enabled": ["commission_rules"]}})
    plugins = build_plugins(settings)
    states = {info.name: info.enabled for info in plugins.infos}
    assert states["three_sided_bookings"] is False
    assert states["commission_rules"] is True
    assert states["engine_defaults"] is True
    assert not plugins.is_enabled("creator_subscriptions")


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_config_file_is_read_before_or_after_the_command(
    where: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`make up UP_ARGS='--config FILE'` runs `marketplace up --config FILE`."""
    from engine import cli

    monkeypatch.chdir(tmp_path)
    for name in ("MARKETPLACE_CONFIG", "MARKETPLACE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "my.toml"
    config.write_text('[plugins]\nenabled = ["commission_rules"]\n', encoding="utf-8")
    option = ["--config", str(config)]
    argv = [*option, "plugins"] if where == "before" else ["plugins", *option]
    assert cli.main(argv) == 0
    states = {
        line.split()[0]: line.split()[1]
        for line in capsys.readouterr().out.splitlines()
        if not line.startswith(" ")
    }
    assert states["commission_rules"] == "enabled"
    assert states["three_sided_bookings"] == "disabled"


class _HalfPrice:
    @hookimpl
    def resolve_price(self, order: Order) -> Money | None:
        return Money(order.amount.amount // 2, order.amount.currency)


def test_an_enabled_plugin_wins_over_engine_defaults() -> None:
    order = Order("x", "sale", Money(1000, "usd"), "sale:1")
    disabled = build_plugins(
        settings_from_mapping({"plugins": {"enabled": []}}), extra={"half": _HalfPrice()}
    )
    assert disabled.price(order) == Money(1000, "usd")
    enabled = build_plugins(
        settings_from_mapping({"plugins": {"enabled": ["half"]}}), extra={"half": _HalfPrice()}
    )
    assert enabled.price(order) == Money(500, "usd")
    commission = enabled.commission(order, Money(500, "usd"))
    assert commission.amount == Money(50, "usd")  # default 1000 bps
    plan = enabled.split(order, Money(500, "usd"), commission)
    assert sum(leg.amount.amount for leg in plan.legs) == 500


class _Misspelled:
    @hookimpl
    def resolve_comission(self, order: Order) -> None:
        return None


def test_a_misspelled_hook_is_refused() -> None:
    with pytest.raises(PluginError, match="resolve_comission"):
        build_plugins(
            settings_from_mapping({"plugins": {"enabled": ["typo"]}}), extra={"typo": _Misspelled()}
        )


class _Broken:
    @hookimpl
    def on_lifecycle_event(self, event: Any) -> None:
        raise RuntimeError("notifier down")


def test_a_failing_broadcast_never_breaks_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    from engine.core.orders import LifecycleEvent

    plugins = build_plugins(
        settings_from_mapping({"plugins": {"enabled": ["broken"]}}), extra={"broken": _Broken()}
    )
    plugins.notify_lifecycle(LifecycleEvent("engine.account.updated", "acct_1"))
    assert "notifier down" in caplog.text


def test_three_sided_split_sums_to_price() -> None:
    plugins = build_plugins(settings_from_mapping({}))
    order = Order(
        "three_sided_bookings",
        "booking",
        Money(12_345, "gbp"),
        "booking:1",
        beneficiaries={"provider": "acct_p", "venue": "acct_v"},
    )
    price = plugins.price(order)
    plan = plugins.split(order, price, plugins.commission(order, price))
    assert sum(leg.amount.amount for leg in plan.legs) == 12_345
    assert plan.leg("provider").account_id == "acct_p"
