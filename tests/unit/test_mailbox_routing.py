"""Which mailbox an event goes to: its account, the account its money is for, or the platform."""

from __future__ import annotations

from typing import Any

import pytest

from engine.core.contributions import MAILBOX_ACCOUNT_METADATA
from engine.webhooks.mailbox import PLATFORM_ACCOUNT, backoff_seconds, event_account


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
    ],
)
def test_event_goes_to_the_account_it_concerns(event: dict[str, Any], mailbox: str) -> None:
    assert event_account(event) == mailbox


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 30])
def test_backoff_grows_with_jitter_and_is_capped(attempt: int) -> None:
    ceiling = min(60.0, 1.0 * 2 ** (attempt - 1))
    for _ in range(50):
        delay = backoff_seconds(attempt, 1.0, 60.0)
        assert ceiling / 2 <= delay <= ceiling
