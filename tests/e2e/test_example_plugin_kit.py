"""The testing kit's stack helpers the example plugin's tests do not reach: clocks, events."""

from __future__ import annotations

import asyncio

from engine.testing.stack import running_stack


async def test_stack_moves_clocks_and_delivers_signed_events(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> None:
    async with running_stack(
        fresh_database_url, nats_url, unique_name.upper(), plugins=[]
    ) as stack:
        stripe = stack.stripe()
        clock = await asyncio.to_thread(
            stripe.v1.test_helpers.test_clocks.create, params={"frozen_time": 1_700_000_000}
        )
        await stack.advance_test_clock(clock.id, 86_400)
        moved = await asyncio.to_thread(stripe.v1.test_helpers.test_clocks.retrieve, clock.id)
        assert moved.frozen_time == 1_700_086_400

        before = await asyncio.to_thread(stack.sandbox.control, "GET", "/_sandbox/clock")
        await stack.advance(3_600)
        after = await asyncio.to_thread(stack.sandbox.control, "GET", "/_sandbox/clock")
        assert after["now"] >= before["now"] + 3_600

        # An account the engine created (an event of an account it does not know is parked).
        created = await stack.http.post(
            "/v1/accounts",
            json={"role": "creator", "display_name": "Kit", "email": "k@example.com"},
        )
        assert created.status_code == 201, created.text
        account_id = created.json()["account"]["id"]
        account = {"id": account_id, "object": "account", "charges_enabled": True}
        first = await stack.send_event("account.updated", account, account=account["id"])
        assert first["received"] is True
        assert first["duplicate"] is False
        again = await stack.send_event(
            "account.updated", account, account=account["id"], event_id=first["event_id"]
        )
        assert again["duplicate"] is True
        platform = await stack.send_event("balance.available", {"object": "balance"})
        assert platform["duplicate"] is False
        assert not await stack.dead_events()
        await stack.assert_ledger_balanced()
