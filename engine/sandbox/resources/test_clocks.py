"""`/v1/test_helpers/test_clocks`: frozen clocks that customers (and their payments) follow."""

from __future__ import annotations

from engine.sandbox.clock import advance
from engine.sandbox.errors import invalid
from engine.sandbox.events import emit
from engine.sandbox.objects import build, new_id
from engine.sandbox.routing import Route
from engine.sandbox.wire import Call, Obj, page

DAY = 86_400


def create_test_clock(call: Call) -> Obj:
    state = call.state
    frozen = call.req_int("frozen_time")
    clock = build(
        "test_helpers.test_clock",
        new_id("clock"),
        state.now(),
        deletes_after=state.now() + 30 * DAY,
        frozen_time=frozen,
        name=call.str_("name"),
        status="ready",
        status_details={},
    )
    state.put(clock, call.account, "test_helpers.test_clock")
    emit(state, "test_helpers.test_clock.created", clock, account=call.account)
    return clock


def retrieve_test_clock(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "test_helpers.test_clock")


def advance_test_clock(call: Call) -> Obj:
    """Advance synchronously: the clock is `ready` again when the response is sent."""
    state = call.state
    clock = state.get(call.args[0], call.account, "test_helpers.test_clock")
    target = call.req_int("frozen_time")
    if target <= clock["frozen_time"]:
        raise invalid(
            "The frozen_time must be after the test clock's current frozen_time.",
            param="frozen_time",
        )
    clock["status"] = "advancing"
    clock["status_details"] = {"advancing": {"target_frozen_time": target}}
    emit(state, "test_helpers.test_clock.advancing", clock, account=call.account)
    advance(state, clock["id"], target)
    clock["status"] = "ready"
    clock["status_details"] = {}
    emit(state, "test_helpers.test_clock.ready", clock, account=call.account)
    return clock


def delete_test_clock(call: Call) -> Obj:
    state = call.state
    clock = state.get(call.args[0], call.account, "test_helpers.test_clock")
    for customer_id in state.listed(call.account, "customer"):
        customer = state.find(customer_id)
        if customer is not None and customer["test_clock"] == clock["id"]:
            state.delete(customer_id)
    state.delete(clock["id"])
    state.store.jobs.pop(clock["id"], None)
    emit(state, "test_helpers.test_clock.deleted", clock, account=call.account)
    return build("deleted_test_helpers.test_clock", clock["id"], 0)


def list_test_clocks(call: Call) -> Obj:
    return page(
        call,
        call.state.listed(call.account, "test_helpers.test_clock"),
        "/v1/test_helpers/test_clocks",
        position=call.state.store.position,
    )


ROUTES = (
    Route(
        "POST",
        "/v1/test_helpers/test_clocks",
        create_test_clock,
        "test_helpers.TestClockCreateParams",
    ),
    Route(
        "GET", "/v1/test_helpers/test_clocks", list_test_clocks, "test_helpers.TestClockListParams"
    ),
    Route(
        "GET",
        "/v1/test_helpers/test_clocks/{}",
        retrieve_test_clock,
        "test_helpers.TestClockRetrieveParams",
    ),
    Route(
        "DELETE",
        "/v1/test_helpers/test_clocks/{}",
        delete_test_clock,
        "test_helpers.TestClockDeleteParams",
    ),
    Route(
        "POST",
        "/v1/test_helpers/test_clocks/{}/advance",
        advance_test_clock,
        "test_helpers.TestClockAdvanceParams",
    ),
)
