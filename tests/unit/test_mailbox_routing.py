"""Which mailbox an event goes to: its account, the account its money is for, its disputed
or refunded charge, or the platform; and the retry backoff."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.contributions import MAILBOX_ACCOUNT_METADATA
from engine.core.mailboxes import PLATFORM_MAILBOX as PLATFORM_ACCOUNT
from engine.core.mailboxes import default_mailbox_key
from engine.core.plugins import Plugins, build_plugins, hookimpl
from engine.core.settings import settings_from_mapping
from engine.webhooks.mailbox import backoff_seconds


def _event(obj: dict[str, Any], account: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": "evt_1", "type": "x", "data": {"object": obj}}
    if account:
        body["account"] = account
    return body


@pytest.mark.parametrize(
    ("event", "mailbox"),
    [
        (_event({"object": "payout"}, account="acct_a"), "acct_a"),
        (_event({"object": "subscription", "transfer_data": {"destination": "acct_b"}}), "acct_b"),
        (
            _event(
                {
                    "object": "invoice",
                    "parent": {
                        "type": "subscription_details",
                        "subscription_details": {
                            "subscription": "sub_1",
                            "metadata": {MAILBOX_ACCOUNT_METADATA: "acct_b"},
                        },
                    },
                }
            ),
            "acct_b",
        ),
        (
            _event({"object": "invoice", "parent": {"subscription_details": {"metadata": {}}}}),
            PLATFORM_ACCOUNT,
        ),
        (
            _event(
                {"object": "payment_intent", "transfer_data": {"destination": {"id": "acct_c"}}}
            ),
            "acct_c",
        ),
        (_event({"object": "transfer", "destination": "acct_d"}), "acct_d"),
        (_event({"object": "payment_intent", "transfer_data": None}), PLATFORM_ACCOUNT),
        (_event({"object": "transfer", "destination": "ba_123"}), PLATFORM_ACCOUNT),
        (_event({"object": "customer"}), PLATFORM_ACCOUNT),
        ({"id": "evt_2", "type": "x"}, PLATFORM_ACCOUNT),
        (_event({"object": "dispute", "charge": "ch_1"}), "dispute:ch_1"),
        (_event({"object": "dispute", "charge": {"id": "ch_2"}}), "dispute:ch_2"),
        (_event({"object": "dispute", "charge": None}), PLATFORM_ACCOUNT),
        (_event({"object": "dispute", "charge": "ch_1"}, account="acct_e"), "acct_e"),
        # A refund names only its charge (a destination charge's too): the charge's
        # refund mailbox, so one refund's failing handler parks none of the platform's.
        (_event({"object": "refund", "charge": "ch_3"}), "refund:ch_3"),
        (_event({"object": "refund", "charge": {"id": "ch_4"}}), "refund:ch_4"),
        (_event({"object": "refund", "charge": None}), PLATFORM_ACCOUNT),
        (_event({"object": "refund", "charge": "ch_3"}, account="acct_f"), "acct_f"),
    ],
)
def test_event_goes_to_the_account_it_concerns(event: dict[str, Any], mailbox: str) -> None:
    assert default_mailbox_key(event) == mailbox


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 30])
def test_backoff_grows_with_jitter_and_is_capped(attempt: int) -> None:
    ceiling = min(60.0, 1.0 * 2 ** (attempt - 1))
    for _ in range(50):
        delay = backoff_seconds(attempt, 1.0, 60.0)
        assert ceiling / 2 <= delay <= ceiling


class _CourseKeys:
    """A plugin keying its own events by course; a broken variant returns a bad key."""

    def __init__(self, key: object = None) -> None:
        self.key = key

    @hookimpl
    def resolve_mailbox_key(self, event: dict[str, Any]) -> object:
        course = event["data"]["object"].get("metadata", {}).get("course")
        if course is None:
            return None
        return self.key if self.key is not None else f"courses:course:{course}"


def _plugins(plugin: object) -> Plugins:
    settings = settings_from_mapping({"plugins": {"enabled": ["courses"]}})
    return build_plugins(settings, extra={"courses": plugin})


def test_a_plugin_keys_its_own_events_and_leaves_the_rest_to_the_engine() -> None:
    plugins = _plugins(_CourseKeys())
    course_event = _event({"object": "charge", "metadata": {"course": "7"}})
    assert plugins.mailbox_key(course_event) == "courses:course:7"
    assert plugins.mailbox_key(_event({"object": "payout"}, account="acct_a")) == "acct_a"


@pytest.mark.parametrize("bad", ["", "x" * 65, "has space", 42])
def test_a_key_that_does_not_fit_falls_back_to_the_engines_key(
    bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    plugins = _plugins(_CourseKeys(bad))
    course_event = _event({"object": "charge", "metadata": {"course": "7"}}, account="acct_z")
    assert plugins.mailbox_key(course_event) == "acct_z"
    assert "resolve_mailbox_key returned" in caplog.text
