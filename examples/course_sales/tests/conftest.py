"""Configuration for the kit's mp_* fixtures: commission rules and the plugin's own section."""

from __future__ import annotations

from typing import Any

import pytest

COMMISSION_RULES = {
    "rules": [
        {"id": "default", "rate_bps": 1000},
        {"id": "courses", "rate_bps": 1500, "scope": {"plugin": "course_sales"}},
    ]
}


@pytest.fixture
def mp_config() -> dict[str, Any]:
    """15 % on course sales (commission_rules); affiliates get 25 % of the rest; one coupon."""
    return {
        "plugins": {
            "commission_rules": COMMISSION_RULES,
            "course_sales": {"affiliate_share_bps": 2500, "coupons": {"LAUNCH": 2000}},
        }
    }
