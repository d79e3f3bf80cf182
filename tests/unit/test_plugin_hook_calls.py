"""How the facade calls hooks: broadcasts in pluggy's order and through its wrappers,
isolated per implementation; hooks that cannot be called synchronously refused at load."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import PluginError
from engine.core.money import Money
from engine.core.orders import LifecycleEvent, Order, PayoutFailure
from engine.core.plugins import Plugins, build_plugins, hookimpl
from engine.core.settings import settings_from_mapping

EVENT = LifecycleEvent("engine.account.updated", "acct_1")
FAILURE = PayoutFailure("acct_1", "payout", "account_closed", Money(500, "usd"), "po_1")


def _plugins(**extra: object) -> Plugins:
    settings = settings_from_mapping({"plugins": {"enabled": list(extra)}})
    return build_plugins(settings, extra=extra)


class _Recorder:
    """Appends ``<name>`` to a shared list when told about a lifecycle event."""

    def __init__(self, name: str, calls: list[str], *, fail: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail

    def notify(self) -> None:
        self.calls.append(self.name)
        if self.fail:
            raise RuntimeError(f"{self.name} is down")


class _Plain(_Recorder):
    @hookimpl
    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        self.notify()


class _First(_Recorder):
    @hookimpl(tryfirst=True)
    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        self.notify()


class _Last(_Recorder):
    @hookimpl(trylast=True)
    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        self.notify()


class _Wrapper(_Recorder):
    @hookimpl(wrapper=True)
    def on_lifecycle_event(self, event: LifecycleEvent) -> Iterator[None]:
        self.calls.append(f"{self.name}:before")
        result = yield
        self.calls.append(f"{self.name}:after")
        return result


def test_broadcasts_run_in_pluggys_order() -> None:
    calls: list[str] = []
    # Registered in this order; pluggy calls tryfirst, then the latest registered, then trylast.
    plugins = _plugins(
        last=_Last("last", calls),
        first=_First("first", calls),
        older=_Plain("older", calls),
        newer=_Plain("newer", calls),
    )
    plugins.notify_lifecycle(EVENT)
    assert calls == ["first", "newer", "older", "last"]


def test_broadcasts_go_through_wrappers_and_a_failure_stops_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    plugins = _plugins(
        first=_First("first", calls, fail=True),
        plain=_Plain("plain", calls),
        wrapping=_Wrapper("wrapping", calls),
    )
    plugins.notify_lifecycle(EVENT)
    assert calls == ["wrapping:before", "first", "plain", "wrapping:after"]
    assert "plugin first failed in on_lifecycle_event" in caplog.text
    assert "first is down" in caplog.text


class _RaisingWrapper:
    @hookimpl(wrapper=True)
    def on_payout_failure(self, failure: PayoutFailure) -> Iterator[None]:
        raise RuntimeError("wrapper down")
        yield  # pragma: no cover - makes this a generator, as pluggy requires


def test_a_failing_wrapper_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    plugins = _plugins(raising=_RaisingWrapper())
    plugins.notify_payout_failure(FAILURE)
    assert "wrapper down" in caplog.text


class _WantsRuntime:
    def __init__(self) -> None:
        self.runtimes: list[Any] = []

    @hookimpl
    def on_payout_failure(self, failure: PayoutFailure, runtime: Any) -> None:
        self.runtimes.append(runtime)


def test_broadcasts_hand_the_runtime_to_whoever_asks() -> None:
    wants = _WantsRuntime()
    plugins = _plugins(wants=wants)
    plugins.notify_payout_failure(FAILURE)
    assert wants.runtimes == [plugins.runtime]


class _AsyncPrice:
    @hookimpl
    async def resolve_price(self, order: Order) -> Money | None:
        return None


class _GeneratorSplit:
    @hookimpl
    def resolve_split(self, order: Order) -> Iterator[None]:
        yield None


class _AsyncNotice:
    @hookimpl
    async def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        return None


class _AsyncMeaning:
    @hookimpl
    async def resolve_movement_meaning(self, stripe_object: dict[str, Any]) -> None:
        return None


@pytest.mark.parametrize(
    ("plugin", "hook", "problem"),
    [
        (_AsyncPrice(), "resolve_price", "is an async def"),
        (_GeneratorSplit(), "resolve_split", "is a generator"),
        (_AsyncNotice(), "on_lifecycle_event", "is an async def"),
        (_AsyncMeaning(), "resolve_movement_meaning", "is an async def"),
    ],
    ids=["async-first-result", "generator-first-result", "async-broadcast", "async-meaning"],
)
def test_hooks_that_cannot_run_synchronously_stop_the_load(
    plugin: object, hook: str, problem: str
) -> None:
    with pytest.raises(PluginError) as refused:
        _plugins(sloppy=plugin)
    assert refused.value.key == "plugins.sloppy"
    assert refused.value.problem.startswith(f"{hook} {problem}")


def test_the_command_line_refuses_to_start_naming_plugin_and_hook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine import cli
    from engine.core import plugins as plugin_loading

    installed = plugin_loading.installed_plugins()
    broken = EntryPoint(
        "async_split", "support.broken_plugins:ASYNC_SPLIT", plugin_loading.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(
        plugin_loading, "installed_plugins", lambda: {**installed, "async_split": broken}
    )
    config = tmp_path / "marketplace.toml"
    config.write_text('[plugins]\nenabled = ["async_split"]\n', encoding="utf-8")
    assert cli.main(["--config", str(config), "plugins"]) == cli.EXIT_CONFIG
    assert capsys.readouterr().err.startswith(
        "marketplace: config error: plugins.async_split: resolve_split is an async def"
    )


class _Orders:
    @hookimpl
    def resolve_movement_meaning(self, stripe_object: dict[str, Any]) -> tuple[str, str] | None:
        order = (stripe_object.get("metadata") or {}).get("order")
        return (f"orders:order:{order}", "orders") if order else None


class _BrokenMeaning:
    @hookimpl(tryfirst=True)
    def resolve_movement_meaning(self, stripe_object: dict[str, Any]) -> tuple[str, str] | None:
        raise KeyError("metadata")


def test_a_movement_is_named_by_the_first_plugin_that_knows_it() -> None:
    plugins = _plugins(orders=_Orders())
    named = {"id": "ch_1", "metadata": {"order": "7"}}
    assert plugins.movement_meaning(named) == ("orders:order:7", "orders")
    assert plugins.movement_meaning({"id": "ch_2", "metadata": {}}) == ("", "")


def test_a_failing_meaning_is_logged_and_the_movement_has_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugins = _plugins(orders=_Orders(), broken=_BrokenMeaning())
    assert plugins.movement_meaning({"id": "ch_1", "metadata": {"order": "7"}}) == ("", "")
    assert "resolve_movement_meaning failed for ch_1" in caplog.text
