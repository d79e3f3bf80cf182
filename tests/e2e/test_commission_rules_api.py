"""End to end: the commission rules admin API (rules, versions, explain, dry run)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.stack import Stack, running_stack

RULES = [
    {"id": "default", "rate_bps": 1000},
    {"id": "spa", "rate_bps": 1200, "scope": {"plugin": "three_sided_bookings"}},
    {
        "id": "spa-massage",
        "rate_bps": 1500,
        "scope": {"plugin": "three_sided_bookings", "service_type": "massage"},
    },
]


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


async def test_rules_are_replaced_versioned_and_explained(stack: Stack) -> None:
    before = (await stack.http.get("/v1/commission_rules/rules")).json()
    assert [rule["id"] for rule in before["rules"]] == ["default"]

    saved = await stack.http.put("/v1/commission_rules/rules", json={"rules": RULES, "note": "spa"})
    assert saved.status_code == 200, saved.text
    assert {rule["id"] for rule in saved.json()["rules"]} == {"default", "spa", "spa-massage"}

    explained = await stack.http.post(
        "/v1/commission_rules/explain",
        json={
            "plugin": "three_sided_bookings",
            "amount": 10_000,
            "currency": "gbp",
            "attributes": {"service_type": "massage"},
        },
    )
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["winner"]["id"] == "spa-massage"
    assert body["fee"] == {"amount": 1500, "currency": "gbp"}

    versions = (await stack.http.get("/v1/commission_rules/versions")).json()["data"]
    assert {version["rule_id"] for version in versions} >= {"default", "spa", "spa-massage"}


async def test_an_invalid_rule_set_is_refused_and_the_old_one_stays(stack: Stack) -> None:
    bad = [
        {"id": "default", "rate_bps": 1000},
        {"id": "greedy", "rate_bps": 12_000, "scope": {"plugin": "x"}},
    ]
    refused = await stack.http.put("/v1/commission_rules/rules", json={"rules": bad})
    assert refused.status_code == 400, refused.text
    problem = refused.json()
    assert problem["code"] == "invalid_rule"
    assert "rules[1]" in problem["field"]
    assert "rate_bps" in problem["field"]
    rules = (await stack.http.get("/v1/commission_rules/rules")).json()["rules"]
    assert [rule["id"] for rule in rules] == ["default"]


async def test_only_admins_see_commission_rules(stack: Stack) -> None:
    service = stack.client_for(await stack.create_key("service"))
    assert (await service.get("/v1/commission_rules/rules")).status_code == 403
