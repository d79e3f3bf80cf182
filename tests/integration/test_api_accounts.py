"""Connected-account onboarding through the API against the offline Stripe sandbox.

Create an Express account and its onboarding link, follow its status as the
sandbox completes or restricts onboarding, suspend and resume with audit rows,
page through accounts, and apply Stripe snapshots in any order.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from engine.accounts import account_status, apply_stripe_account
from engine.api.app import create_app_from_settings
from engine.core.db import migrate
from engine.core.plugins import build_plugins
from engine.core.settings import Settings, settings_from_mapping
from engine.sandbox.testing import RunningSandbox, running_sandbox

ADMIN_KEY = "mk_acctadmin_" + "c" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PUBLIC_URL = "http://marketplace.test"


@dataclass
class Onboarding:
    """The API, the sandbox behind its gateway, and a direct database connection."""

    client: AsyncTestClient[Litestar]
    sandbox: RunningSandbox
    db: asyncpg.Connection
    service: dict[str, str]

    async def create(self, role: str = "creator", **fields: Any) -> dict[str, Any]:
        body = {"role": role, "display_name": f"{role} test", "email": "t@example.com", **fields}
        response = await self.client.post("/v1/accounts", json=body, headers=self.service)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def audit(self, subject: str) -> list[tuple[str, str, dict[str, Any]]]:
        rows = await self.db.fetch(
            "SELECT actor, action, data FROM marketplace_audit_log WHERE subject = $1 ORDER BY id",
            subject,
        )
        return [(row["actor"], row["action"], json.loads(row["data"])) for row in rows]


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as running:
        yield running


def _settings(
    database_url: str, nats_url: str, stream: str, sandbox_url: str, public_url: str = PUBLIC_URL
) -> Settings:
    return settings_from_mapping(
        {
            "engine": {"public_url": public_url},
            "api": {"bootstrap_admin_key": ADMIN_KEY},
            "database": {"url": database_url, "pool_min": 1, "pool_max": 4},
            "nats": {"url": nats_url, "stream": stream},
            "stripe": {
                "secret_key": "sk_test_accounts",
                "api_base": sandbox_url,
                "max_network_retries": 0,
            },
            # Onboarding needs no plugin; test_api.py runs the app with all of them.
            "plugins": {"enabled": []},
        }
    )


@pytest.fixture
async def onboarding(
    fresh_database_url: str, nats_url: str, unique_name: str, sandbox: RunningSandbox
) -> AsyncIterator[Onboarding]:
    settings = _settings(fresh_database_url, nats_url, unique_name.upper(), sandbox.url)
    plugins = build_plugins(settings)
    await migrate(fresh_database_url, plugins.table_apps())
    app = create_app_from_settings(settings, plugins=plugins, webhooks=False)
    db = await asyncpg.connect(fresh_database_url)
    try:
        async with AsyncTestClient(app) as client:
            response = await client.post("/v1/api-keys", json={"scope": "service"}, headers=ADMIN)
            service = {"Authorization": f"Bearer {response.json()['key']}"}
            yield Onboarding(client=client, sandbox=sandbox, db=db, service=service)
    finally:
        await db.close()


async def test_create_account_returns_express_account_and_onboarding_link(
    onboarding: Onboarding,
) -> None:
    created = await onboarding.create("provider", country="US", default_currency="USD")
    account, link = created["account"], created["onboarding_link"]
    assert account["id"].startswith("acct_")
    assert account["role"] == "provider"
    assert account["status"] == "onboarding"
    assert account["default_currency"] == "usd"
    assert account["charges_enabled"] is False
    assert link["account_id"] == account["id"]
    assert link["url"].startswith(onboarding.sandbox.url)
    assert link["expires_at"] > 0

    stripe_account = onboarding.sandbox.state.objects[account["id"]]
    assert stripe_account["type"] == "express"
    assert stripe_account["metadata"]["role"] == "provider"
    links = onboarding.sandbox.state.private(account["id"])["links"]
    [return_url] = {entry["return_url"] for entry in links.values()}
    assert return_url.startswith(f"{PUBLIC_URL}/dashboard/onboarding/{account['id']}/return?token=")

    row = await onboarding.db.fetchrow(
        "SELECT role, status, email FROM marketplace_accounts WHERE stripe_account_id = $1",
        account["id"],
    )
    assert dict(row) == {"role": "provider", "status": "onboarding", "email": "t@example.com"}
    [(actor, action, data)] = await onboarding.audit(account["id"])
    assert actor.startswith("api_key:")
    assert action == "account.create"
    assert data["role"] == "provider"

    fetched = await onboarding.client.get(f"/v1/accounts/{account['id']}", headers=ADMIN)
    assert fetched.json() == account


async def test_retried_create_makes_one_stripe_account(onboarding: Onboarding) -> None:
    headers = {**onboarding.service, "Idempotency-Key": "onboard-ada"}
    body = {"role": "creator", "display_name": "Ada"}
    first = await onboarding.client.post("/v1/accounts", json=body, headers=headers)
    replay = await onboarding.client.post("/v1/accounts", json=body, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert replay.content == first.content
    assert replay.headers["idempotent-replayed"] == "true"

    # The stored response is gone (say it expired); the retry still reaches the
    # same Stripe account because the gateway key derives from the request's key.
    await onboarding.db.execute("DELETE FROM marketplace_idempotency")
    retried = await onboarding.client.post("/v1/accounts", json=body, headers=headers)
    assert retried.status_code == 201
    assert retried.json()["account"]["id"] == first.json()["account"]["id"]
    assert await onboarding.db.fetchval("SELECT count(*) FROM marketplace_accounts") == 1
    state = onboarding.sandbox.state
    created = [
        obj
        for obj in state.objects.values()
        if obj.get("object") == "account" and obj["id"] != state.platform_id
    ]
    assert len(created) == 1


async def test_refresh_follows_stripe_status(onboarding: Onboarding) -> None:
    account_id = (await onboarding.create())["account"]["id"]
    url = f"/v1/accounts/{account_id}/refresh"

    refreshed = await onboarding.client.post(url, headers=onboarding.service)
    assert refreshed.status_code == 200
    assert refreshed.json()["status"] == "onboarding"
    assert refreshed.json()["requirements_due"]

    onboarding.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    active = (await onboarding.client.post(url, headers=onboarding.service)).json()
    assert active["status"] == "active"
    assert (active["charges_enabled"], active["payouts_enabled"]) == (True, True)
    assert active["details_submitted"] is True

    onboarding.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/restrict")
    restricted = (await onboarding.client.post(url, headers=onboarding.service)).json()
    assert restricted["status"] == "restricted"
    assert restricted["charges_enabled"] is False


async def test_onboarding_link_endpoint_makes_a_new_link(onboarding: Onboarding) -> None:
    created = await onboarding.create()
    account_id = created["account"]["id"]
    response = await onboarding.client.post(
        f"/v1/accounts/{account_id}/onboarding-link", headers=onboarding.service
    )
    assert response.status_code == 201
    link = response.json()
    assert link["account_id"] == account_id
    assert link["url"] != created["onboarding_link"]["url"]
    missing = await onboarding.client.post(
        "/v1/accounts/acct_missing/onboarding-link", headers=onboarding.service
    )
    assert missing.status_code == 404


async def test_suspend_and_resume_are_admin_only_and_audited(onboarding: Onboarding) -> None:
    account_id = (await onboarding.create("venue"))["account"]["id"]
    onboarding.sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await onboarding.client.post(f"/v1/accounts/{account_id}/refresh", headers=ADMIN)

    suspended = await onboarding.client.post(
        f"/v1/accounts/{account_id}/suspend", json={"reason": "chargebacks"}, headers=ADMIN
    )
    assert suspended.status_code == 200
    assert (suspended.json()["status"], suspended.json()["suspended"]) == ("suspended", True)
    # Stripe's view changing does not lift our suspension.
    refreshed = await onboarding.client.post(f"/v1/accounts/{account_id}/refresh", headers=ADMIN)
    assert refreshed.json()["status"] == "suspended"

    resumed = await onboarding.client.post(f"/v1/accounts/{account_id}/resume", headers=ADMIN)
    assert (resumed.json()["status"], resumed.json()["suspended"]) == ("active", False)

    actions = [(action, data) for _, action, data in await onboarding.audit(account_id)]
    assert actions == [
        ("account.create", actions[0][1]),
        ("account.suspend", {"reason": "chargebacks"}),
        ("account.resume", {}),
    ]
    refused = await onboarding.client.post(
        f"/v1/accounts/{account_id}/suspend", headers=onboarding.service
    )
    assert refused.status_code == 403
    unknown = await onboarding.client.post("/v1/accounts/acct_nobody/suspend", headers=ADMIN)
    assert unknown.status_code == 404


async def test_account_key_reads_only_its_own_account(onboarding: Onboarding) -> None:
    mine = (await onboarding.create())["account"]["id"]
    theirs = (await onboarding.create())["account"]["id"]
    response = await onboarding.client.post(
        "/v1/api-keys", json={"scope": "account", "account_id": mine}, headers=ADMIN
    )
    creator = {"Authorization": f"Bearer {response.json()['key']}"}

    assert (await onboarding.client.get(f"/v1/accounts/{mine}", headers=creator)).is_success
    assert (
        await onboarding.client.get(f"/v1/accounts/{theirs}", headers=creator)
    ).status_code == 404
    listed = (await onboarding.client.get("/v1/accounts", headers=creator)).json()
    assert [account["id"] for account in listed["data"]] == [mine]
    own_refresh = await onboarding.client.post(f"/v1/accounts/{mine}/refresh", headers=creator)
    assert own_refresh.status_code == 200


async def test_accounts_are_paged_with_a_cursor(onboarding: Onboarding) -> None:
    ids = [(await onboarding.create())["account"]["id"] for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await onboarding.client.get("/v1/accounts", params=params, headers=ADMIN)
        page = response.json()
        seen += [account["id"] for account in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3


async def test_apply_stripe_account_ignores_stale_snapshots(onboarding: Onboarding) -> None:
    account_id = (await onboarding.create())["account"]["id"]
    enabled = {
        "id": account_id,
        "charges_enabled": True,
        "payouts_enabled": True,
        "details_submitted": True,
        "requirements": {"currently_due": []},
    }
    pending = {
        "id": account_id,
        "charges_enabled": False,
        "payouts_enabled": False,
        "details_submitted": False,
        "requirements": {"currently_due": ["external_account"]},
    }
    db: Any = onboarding.db
    newer = await apply_stripe_account(db, enabled, observed_at=2_000)
    assert newer is not None
    assert newer.status == "active"
    assert await apply_stripe_account(db, pending, observed_at=1_000) is None  # arrived late
    account = (await onboarding.client.get(f"/v1/accounts/{account_id}", headers=ADMIN)).json()
    assert account["status"] == "active"
    assert account["requirements_due"] == []
    assert await apply_stripe_account(db, {**pending, "id": "acct_unknown"}, observed_at=1) is None


@pytest.mark.parametrize(
    ("stripe_account", "status"),
    [
        ({"charges_enabled": True, "payouts_enabled": True}, "active"),
        (
            {"charges_enabled": True, "payouts_enabled": False, "details_submitted": True},
            "restricted",
        ),
        ({"requirements": {"disabled_reason": "requirements.past_due"}}, "onboarding"),
        ({"requirements": {"disabled_reason": "rejected.fraud"}}, "restricted"),
        (
            {"details_submitted": True, "requirements": {"disabled_reason": "under_review"}},
            "restricted",
        ),
        ({"details_submitted": False, "requirements": {"currently_due": ["tos"]}}, "onboarding"),
    ],
)
def test_account_status_from_stripe_flags(stripe_account: dict[str, Any], status: str) -> None:
    assert account_status(stripe_account) == status


async def test_onboarding_link_urls_fall_back_to_the_request_base(
    fresh_database_url: str, nats_url: str, unique_name: str, sandbox: RunningSandbox
) -> None:
    settings = _settings(
        fresh_database_url, nats_url, unique_name.upper(), sandbox.url, public_url=""
    )
    await migrate(fresh_database_url, build_plugins(settings).table_apps())
    app = create_app_from_settings(settings, webhooks=False)
    async with AsyncTestClient(app, base_url="http://api.example") as client:
        body = {"role": "creator", "display_name": "Ada"}
        response = await client.post("/v1/accounts", json=body, headers=ADMIN)
        assert response.status_code == 201, response.text
        account_id = response.json()["account"]["id"]
    links = sandbox.state.private(account_id)["links"]
    assert all(
        entry["refresh_url"].startswith(
            f"http://api.example/dashboard/onboarding/{account_id}/refresh?token="
        )
        for entry in links.values()
    )
