"""Clock hooks, extension routes, persistence and reset: the sandbox's own interfaces."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import stripe

from engine.sandbox import SandboxState, create_app
from engine.sandbox.routing import Registry
from engine.sandbox.testing import RunningSandbox, running_sandbox
from engine.sandbox.wire import Call, Obj

DAY = 86_400


def test_tick_callbacks_see_global_and_test_clock_advances() -> None:
    ticks: list[tuple[int, int, str | None]] = []
    state = SandboxState()
    state.add_tick_callback(lambda _state, old, new, clock: ticks.append((old, new, clock)))
    with running_sandbox(state=state) as sandbox:
        client = sandbox.client()
        before = sandbox.control("GET", "/_sandbox/clock")["now"]
        after = sandbox.advance(DAY)
        assert after >= before + DAY
        clock = client.v1.test_helpers.test_clocks.create(params={"frozen_time": 1_800_000_000})
        client.v1.test_helpers.test_clocks.advance(
            clock.id, params={"frozen_time": 1_800_000_000 + 3 * DAY}
        )
        assert ticks[-1] == (1_800_000_000, 1_800_000_000 + 3 * DAY, clock.id)
        assert ticks[0][2] is None
        assert ticks[0][1] - ticks[0][0] >= DAY


def test_extension_routes_jobs_and_ticks() -> None:
    """What `engine.sandbox.billing` will do through its `install(registry)`."""
    app = create_app()
    registry = Registry(app.state, app.router)
    seen: list[str] = []

    def list_products(call: Call) -> Obj:
        return {"object": "list", "data": [], "has_more": False, "url": "/v1/products"}

    registry.route("GET", "/v1/products", list_products, "ProductListParams")
    registry.job("renew", lambda _state, ref: seen.append(ref))
    app.state.schedule("", app.state.now() + 10, "renew", "sub_1")
    with running_sandbox(app=app) as sandbox:
        sandbox.advance(20)
        assert seen == ["sub_1"]
        auth = ("sk_test_x", "")
        listed = sandbox.http.get(f"{sandbox.url}/v1/products", params={"limit": 3}, auth=auth)
        assert listed.json()["object"] == "list"
        unknown = sandbox.http.get(f"{sandbox.url}/v1/products", params={"nope": 1}, auth=auth)
        assert unknown.json()["error"]["code"] == "parameter_unknown"


def test_in_process_asgi_without_a_server() -> None:
    app = create_app()

    async def scenario() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
            response = await http.post(
                "/v1/customers", data={"email": "asgi@example.com"}, auth=("sk_test_x", "")
            )
            return response.status_code

    assert asyncio.run(scenario()) == 200


def test_persistence_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.pickle"

    async def lifespan(app: Any) -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, str]:
            return next(messages)

        async def send(_message: Any) -> None:
            return None

        await app({"type": "lifespan"}, receive, send)

    first = create_app(persist_path=path)
    with running_sandbox(state=first.state) as sandbox:
        customer = sandbox.client().v1.customers.create(params={"email": "kept@example.com"})
    first.save()
    assert path.exists()
    second = create_app(persist_path=path)
    asyncio.run(lifespan(second))
    assert second.state.platform_id == first.state.platform_id
    assert second.state.objects[customer.id]["email"] == "kept@example.com"

    # State saved in another API version's shapes is not served: the sandbox starts afresh.
    second.state.store.api_version = "2025-01-27.acacia"
    second.save()
    third = create_app(persist_path=path)
    assert customer.id not in third.state.objects
    assert third.state.platform_id != first.state.platform_id


def test_reset_forgets_everything(sandbox: RunningSandbox, client: stripe.StripeClient) -> None:
    client.v1.customers.create(params={"email": "gone@example.com"})
    platform = sandbox.state.platform_id
    answer = sandbox.control("POST", "/_sandbox/reset")
    assert answer["platform"] != platform
    assert client.v1.customers.list().data == []


def test_bypass_pending_funds_are_available_at_once(client: stripe.StripeClient) -> None:
    client.v1.payment_intents.create(
        params={
            "amount": 1_000,
            "currency": "usd",
            "payment_method": "pm_card_bypassPending",
            "confirm": True,
        }
    )
    balance = client.v1.balance.retrieve()
    assert balance.available[0].amount == 1_000 - 59
    assert balance.pending[0].amount == 0


def test_stripe_fee_can_be_turned_off() -> None:
    from engine.sandbox import SandboxOptions

    with running_sandbox(options=SandboxOptions(stripe_fee=False)) as sandbox:
        client = sandbox.client()
        pi = client.v1.payment_intents.create(
            params={
                "amount": 1_000,
                "currency": "usd",
                "payment_method": "pm_card_visa",
                "confirm": True,
                "expand": ["latest_charge.balance_transaction"],
            }
        )
        charge: Any = pi.latest_charge
        assert charge.balance_transaction.fee == 0


def test_off_session_charge_helper_for_extensions() -> None:
    from engine.sandbox.resources.payments import charge_off_session

    state = SandboxState()
    ok, error = charge_off_session(
        state,
        state.platform_id,
        {"amount": 2_000, "currency": "usd", "payment_method": "pm_card_visa"},
    )
    assert error is None
    assert ok["status"] == "succeeded"
    failed, error = charge_off_session(
        state,
        state.platform_id,
        {"amount": 2_000, "currency": "usd", "payment_method": "pm_card_chargeCustomerFail"},
    )
    assert error is not None
    assert error.status == 402
    assert failed["status"] == "requires_payment_method"
