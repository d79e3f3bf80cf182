"""Helpers shared by the resource modules: ownership checks, field updates, list filters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.sandbox.errors import StripeError, invalid, missing
from engine.sandbox.state import GLOBAL, SandboxState
from engine.sandbox.wire import Call, Obj, Params


def connected_account(call: Call, account_id: str, param: str = "id") -> Obj:
    """A connected account the caller may act on (the platform, or the account itself)."""
    state = call.state
    account = state.find(account_id)
    allowed = (
        account is not None
        and state.store.kind.get(account_id) == "account"
        and (
            call.account == account_id
            or (not call.connected and state.owner_of(account_id) == state.platform_id)
        )
    )
    if not allowed or account is None:
        raise missing("account", account_id, param)
    return account


def destination_account(call: Call, account_id: str, param: str) -> Obj:
    """A connected account of the platform named as a destination / on_behalf_of."""
    state = call.state
    account = state.find(account_id)
    if (
        account is None
        or state.store.kind.get(account_id) != "account"
        or account_id == state.platform_id
        or state.owner_of(account_id) != state.platform_id
    ):
        raise invalid(f"No such destination: '{account_id}'", param=param, code="resource_missing")
    return account


def require_platform(call: Call) -> None:
    if call.connected:
        raise StripeError(
            403,
            "This application does not have the required permissions for this endpoint "
            "on account '" + call.account + "'.",
            type_="invalid_request_error",
            code="platform_api_key_expired",
        )


def copy_fields(target: Obj, params: Params, names: tuple[str, ...]) -> Obj:
    """Copy plain fields present in `params`; return their previous values."""
    previous: Obj = {}
    for name in names:
        if name in params:
            value: Any = params[name]
            if value == "":
                value = None
            if target.get(name) != value:
                previous[name] = target.get(name)
                target[name] = value
    return previous


def merge_nested(target: Obj, updates: Params) -> None:
    """Deep-merge form params into a nested object (only keys it already has or new dicts)."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_nested(target[key], value)
        else:
            target[key] = None if value == "" else value


def domain_of(state: SandboxState, object_id: str | None) -> str:
    """The time domain (test clock id or global) an object's jobs run in."""
    if not object_id:
        return GLOBAL
    return str(state.private(object_id).get("domain", GLOBAL))


def expect_status(obj: Obj, allowed: tuple[str, ...], action: str, kind: str) -> None:
    if obj["status"] not in allowed:
        raise invalid(
            f"This {kind} cannot be {action} because it has a status of {obj['status']}. "
            f"Only a {kind} with one of the following statuses may be {action}: "
            + ", ".join(allowed)
            + ".",
            code=f"{kind}_unexpected_state",
        )


def time_range(call: Call, name: str) -> Callable[[int], bool]:
    """A list's time filter as Stripe takes it: ``name=<unix>`` (that second) or
    ``name[gt|gte|lt|lte]=<unix>`` (bounds, all must hold); absent: everything."""
    if isinstance(call.params.get(name), dict):
        bounds = {k: int(v) for k, v in call.dict_(name).items() if k in _BOUNDS}
        return lambda value: all(_BOUNDS[k](value, b) for k, b in bounds.items())
    exact = call.int_(name)
    return lambda value: exact is None or value == exact


_BOUNDS: dict[str, Callable[[int, int], bool]] = {
    "gt": lambda value, bound: value > bound,
    "gte": lambda value, bound: value >= bound,
    "lt": lambda value, bound: value < bound,
    "lte": lambda value, bound: value <= bound,
}
