"""The webhook screening rules: limits at their edges, NUL anywhere, mode, quarantine form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.testing.events import stripe_event
from engine.webhooks.screening import (
    ACCOUNT_ID_MAX,
    CREATED_MAX,
    EVENT_ID_MAX,
    EVENT_TYPE_MAX,
    RefusedEvent,
    ensure_applicable,
    live_key,
    malformed_reason,
    quarantined,
    wrong_mode_reason,
)


def _event(**fields: Any) -> tuple[dict[str, Any], bytes]:
    body = stripe_event("payout.paid", {"id": "po_1", "object": "payout"}, account="acct_1")
    body.update(fields)
    return body, json.dumps(body).encode()


def test_a_normal_event_and_values_at_the_limits_pass() -> None:
    assert malformed_reason(*_event()) is None
    at_limits = _event(
        id="evt_" + "x" * (EVENT_ID_MAX - 4),
        type="t" * EVENT_TYPE_MAX,
        account="acct_" + "a" * (ACCOUNT_ID_MAX - 5),
        created=CREATED_MAX,
    )
    assert malformed_reason(*at_limits) is None
    no_optional = _event()
    del no_optional[0]["created"], no_optional[0]["livemode"]
    assert malformed_reason(no_optional[0], json.dumps(no_optional[0]).encode()) is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"id": "evt_" + "x" * (EVENT_ID_MAX - 3)}, "`id`"),
        ({"type": "t" * (EVENT_TYPE_MAX + 1)}, "`type`"),
        ({"account": "acct_" + "a" * (ACCOUNT_ID_MAX - 4)}, "`account`"),
        ({"account": "acct_a.b"}, "`account`"),
        ({"created": CREATED_MAX + 1}, "`created`"),
        ({"created": -1}, "`created`"),
        ({"created": True}, "`created`"),
        ({"created": 1.5}, "`created`"),
        ({"livemode": 0}, "`livemode`"),
        (
            {"request": {"id": None, "idempotency_key": ["a", "b\x00"]}},
            "`request.idempotency_key.1`",
        ),
    ],
)
def test_each_out_of_range_field_is_named(fields: dict[str, Any], named: str) -> None:
    reason = malformed_reason(*_event(**fields))
    assert reason is not None
    assert named in reason


def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    assert malformed_reason(*_event(description="C:\\u0000")) is None


def test_the_quarantined_form_fits_the_inbox_and_keeps_the_body() -> None:
    body, raw = _event(id="evt_" + "\x00" * 400, type="x" * 300)
    problem = malformed_reason(body, raw)
    assert problem is not None
    stored = quarantined(body, raw.decode(), problem)
    assert len(stored.event_id) <= EVENT_ID_MAX
    assert stored.event_id == quarantined(body, raw.decode(), problem).event_id  # dedupes
    assert stored.type == ""
    assert "\x00" not in stored.payload  # jsonb would refuse it
    assert json.loads(json.loads(stored.payload)["body"]) == body
    with pytest.raises(RefusedEvent, match="`id`"):
        ensure_applicable(json.loads(stored.payload), live=False)


def test_the_mode_follows_the_key() -> None:
    assert [live_key(key) for key in ("sk_live_x", "rk_live_x", "sk_test_x", "rk_test_x")] == [
        True,
        True,
        False,
        False,
    ]
    body, _ = _event()
    assert wrong_mode_reason(body, live=False) is None
    assert "test key" in (wrong_mode_reason({**body, "livemode": True}, live=False) or "")
    assert "live key" in (wrong_mode_reason(body, live=True) or "")
    with pytest.raises(RefusedEvent, match="livemode false"):
        ensure_applicable(body, live=True)
