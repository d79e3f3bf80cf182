"""Webhook intake over real HTTP against hostile but correctly signed events.

Each odd event is acknowledged (2xx, so Stripe stops retrying), never applied (no
payout row, no ledger entry) and parked as a dead letter whose reason names the
field. Events of an account the platform does not know, or of the other mode, are
parked the same way. A well-formed twin of the same payout, sent last, is applied:
the worker was running and would have applied the others had they been accepted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from support.stack import Stack, running_stack

from engine.testing.events import signed, stripe_event
from engine.webhooks.setup import CONNECT_PATH, PLATFORM_PATH

Mutation = Callable[[dict[str, Any]], None]


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(fresh_database_url, nats_url, unique_name.upper()) as running:
        yield running


async def _new_account(stack: Stack) -> str:
    """A connected account created through the engine (known to the platform)."""
    created = await stack.http.post(
        "/v1/accounts",
        json={"role": "creator", "display_name": "Hostile", "email": "owner@example.com"},
    )
    assert created.status_code == 201, created.text
    return str(created.json()["account"]["id"])


def _payout_event(account: str, payout_id: str, event_type: str = "payout.paid") -> dict[str, Any]:
    payout = {
        "id": payout_id,
        "object": "payout",
        "amount": 1_500,
        "currency": "usd",
        "status": "failed" if event_type == "payout.failed" else "paid",
        "failure_code": "no_account" if event_type == "payout.failed" else None,
        "failure_balance_transaction": {"id": f"txn_{payout_id}", "created": 1_700_000_100},
        "created": 1_700_000_000,
        "arrival_date": 1_700_086_400,
        "metadata": {},
    }
    return stripe_event(event_type, payout, account=account)


async def _deliver(stack: Stack, body: dict[str, Any]) -> Any:
    payload, headers = signed(body, stack.settings.stripe.connect_webhook_secrets[0])
    return await stack.http.post(CONNECT_PATH, content=payload, headers=headers)


async def _applied(stack: Stack, payout_id: str) -> tuple[int, int]:
    """Payout rows and ledger transactions for ``payout_id``."""
    async with stack.services.db.pool.acquire() as conn:
        payouts = await conn.fetchval(
            "SELECT count(*) FROM marketplace_payouts WHERE stripe_payout_id = $1", payout_id
        )
        postings = await conn.fetchval(
            "SELECT count(*) FROM marketplace_ledger_transactions WHERE stripe_object_id = $1",
            payout_id,
        )
    return int(payouts), int(postings)


async def _dead_letters(stack: Stack, mailbox: str) -> dict[str, str]:
    """The admin API's dead letters of ``mailbox``: event id -> reason."""
    response = await stack.http.get(
        "/v1/admin/webhooks/dead-letters", params={"account": mailbox, "limit": 500}
    )
    assert response.status_code == 200, response.text
    return {letter["event_id"]: letter["last_error"] for letter in response.json()["data"]}


async def _mailbox(stack: Stack, key: str) -> dict[str, Any] | None:
    """The admin API's view of one mailbox."""
    response = await stack.http.get("/v1/admin/webhooks/accounts")
    assert response.status_code == 200, response.text
    found = [row for row in response.json() if row["account"] == key]
    return found[0] if found else None


async def _wait_until(
    read: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float = 60
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = await read()
    while not done(value):
        if loop.time() > deadline:
            raise AssertionError(f"not done after {timeout}s: {value}")
        await asyncio.sleep(0.1)
        value = await read()


def _set(key: str, value: object) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body[key] = value

    return mutate


def _metadata(metadata: dict[str, str]) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        body["data"]["object"]["metadata"] = metadata

    return mutate


# The cases of issue 18, each with the field its reason must name.
HOSTILE: dict[str, tuple[Mutation, str]] = {
    "id of 300 characters": (_set("id", "evt_" + "x" * 296), "`id`"),
    "account of 100 characters": (_set("account", "acct_" + "a" * 95), "`account`"),
    "type of 200 characters": (_set("type", "payout." + "p" * 193), "`type`"),
    "created 'yesterday'": (_set("created", "yesterday"), "`created`"),
    "created 10**20": (_set("created", 10**20), "`created`"),
    "livemode 'no'": (_set("livemode", "no"), "`livemode`"),
    "NUL in the id": (_set("id", "evt_nul\x00id"), "`id`"),
    "NUL in the type": (_set("type", "payout.\x00paid"), "`type`"),
    "NUL in the account": (_set("account", "acct_nul\x00"), "`account`"),
    "NUL in the api_version": (_set("api_version", "2026\x00"), "`api_version`"),
    "NUL in nested data": (_metadata({"note": "a\x00b"}), "`data.object.metadata.note`"),
    "NUL in a nested key": (_metadata({"k\x00": "v"}), "`data.object.metadata.k\\u0000`"),
}


async def test_signed_events_with_odd_fields_are_acknowledged_parked_and_never_applied(
    stack: Stack,
) -> None:
    account = await _new_account(stack)
    stored_ids: dict[str, str] = {}
    for number, (name, (mutate, _)) in enumerate(HOSTILE.items()):
        body = _payout_event(account, f"po_hostile_{number}")
        mutate(body)
        response = await _deliver(stack, body)
        assert response.status_code == 200, (name, response.status_code, response.text)
        receipt = response.json()
        assert receipt["received"] is True, name
        stored_ids[name] = receipt["event_id"]
        again = await _deliver(stack, body)  # Stripe's retry of the same event
        assert (again.status_code, again.json()["duplicate"]) == (200, True), name
    control = _payout_event(account, "po_control")
    assert (await _deliver(stack, control)).status_code == 200
    await stack.settle(allow_dead_letters=True)

    assert await _applied(stack, "po_control") == (1, 1)  # the twin that is well formed
    for number, name in enumerate(HOSTILE):
        assert await _applied(stack, f"po_hostile_{number}") == (0, 0), name
    quarantined = await _dead_letters(stack, "quarantine")
    assert len(quarantined) == len(HOSTILE)
    for name, (_, field) in HOSTILE.items():
        reason = quarantined[stored_ids[name]]
        assert field in reason, (name, reason)
        assert reason.startswith("malformed event, not applied"), (name, reason)
    assert len(stored_ids["id of 300 characters"]) <= 255

    # A replay from the dead letter is refused again: still dead, still not applied.
    name = "created 'yesterday'"
    replayed = stored_ids[name]
    answer = await stack.http.post(f"/v1/admin/webhooks/dead-letters/{replayed}/replay")
    assert answer.status_code == 202, answer.text
    await stack.settle(allow_dead_letters=True)
    assert "`created`" in (await _dead_letters(stack, "quarantine"))[replayed]
    assert await _applied(stack, f"po_hostile_{list(HOSTILE).index(name)}") == (0, 0)


async def test_events_of_an_unknown_connected_account_are_parked_not_applied(
    stack: Stack,
) -> None:
    stranger = "acct_1NotOnThisPlatform"
    for event_type, payout_id in (("payout.paid", "po_stray_1"), ("payout.failed", "po_stray_2")):
        response = await _deliver(stack, _payout_event(stranger, payout_id, event_type))
        assert response.status_code == 200, response.text
    # Retried with backoff (the account may be one the engine is storing right now),
    # then dead and the mailbox parked: the second event waits behind the first.
    await _wait_until(lambda: _mailbox(stack, stranger), lambda m: m is not None and m["parked"])

    for payout_id in ("po_stray_1", "po_stray_2"):
        assert await _applied(stack, payout_id) == (0, 0)
    async with stack.services.db.pool.acquire() as conn:
        entries = await conn.fetchval(
            "SELECT count(*) FROM marketplace_ledger_entries WHERE account LIKE $1",
            f"%{stranger}%",
        )
    assert entries == 0
    dead = await _dead_letters(stack, stranger)
    assert len(dead) == 1  # the first is dead; the second waits behind it, in order
    (reason,) = dead.values()
    assert stranger in reason
    assert "does not know" in reason
    mailbox = await _mailbox(stack, stranger)
    assert mailbox is not None
    assert (mailbox["parked"], mailbox["dead"], mailbox["pending"]) == (True, 1, 1)


async def test_an_event_of_the_other_mode_is_parked_not_applied(stack: Stack) -> None:
    account = await _new_account(stack)
    live = _payout_event(account, "po_live")
    live["livemode"] = True  # a live event reaching this engine's test key
    response = await _deliver(stack, live)
    assert response.status_code == 200, response.text
    await stack.settle(allow_dead_letters=True)
    assert await _applied(stack, "po_live") == (0, 0)
    dead = await _dead_letters(stack, account)
    assert "livemode true" in dead[live["id"]]
    assert "test key" in dead[live["id"]]

    answer = await stack.http.post(f"/v1/admin/webhooks/dead-letters/{live['id']}/replay")
    assert answer.status_code == 202, answer.text
    await stack.settle(allow_dead_letters=True)
    assert await _applied(stack, "po_live") == (0, 0)
    assert "livemode true" in (await _dead_letters(stack, account))[live["id"]]


async def test_an_event_a_plugin_cannot_key_is_quarantined_not_a_500(stack: Stack) -> None:
    """three_sided_bookings keys a refund by its metadata's booking id; a signed refund whose
    ``metadata`` is a string breaks that hook. Acknowledged, quarantined, never applied."""
    refund = {"id": "re_odd", "object": "refund", "amount": 100, "metadata": "not a map"}
    body = stripe_event("refund.created", refund)
    payload, headers = signed(body, stack.settings.stripe.webhook_secrets[0])
    response = await stack.http.post(PLATFORM_PATH, content=payload, headers=headers)
    assert response.status_code == 200, response.text
    await stack.settle(allow_dead_letters=True)
    reason = (await _dead_letters(stack, "quarantine"))[body["id"]]
    assert "resolve_mailbox_key failed" in reason
    async with stack.services.db.pool.acquire() as conn:
        handled = await conn.fetchval(
            "SELECT count(*) FROM marketplace_webhook_events WHERE status = 'handled'"
        )
    assert handled == 0


def test_the_cases_really_are_odd() -> None:
    """Each mutation changes the event (a case that sends a normal event proves nothing)."""
    for name, (mutate, _) in HOSTILE.items():
        body = _payout_event("acct_1Case", "po_case")
        before = json.dumps(body)
        mutate(body)
        assert json.dumps(body) != before, name
