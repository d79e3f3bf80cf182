"""Which parameters each endpoint accepts, derived from the stripe SDK's typed params.

The SDK ships a `TypedDict` per endpoint (`stripe.params.PaymentIntentCreateParams`
...), generated from Stripe's OpenAPI spec. Walking those gives the parameter
tree Stripe accepts, so unknown parameters get `parameter_unknown` exactly where
Stripe would reject them, without a hand-kept list.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from dataclasses import dataclass
from typing import Any, TypeGuard

from engine.sandbox.errors import missing_param, unknown_param
from engine.sandbox.wire import Params

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RequestOptions keys are client-side options that never go on the wire.
_CLIENT_OPTIONS = frozenset(
    {
        "api_key",
        "stripe_version",
        "stripe_account",
        "stripe_context",
        "max_network_retries",
        "idempotency_key",
        "content_type",
        "headers",
    }
)
_ANY = "any"


@dataclass(frozen=True, slots=True)
class Shape:
    """Allowed children of one parameter: `None` means free-form (no checks)."""

    children: dict[str, Shape | None]
    required: frozenset[str]


def _is_typeddict(value: Any) -> TypeGuard[type]:
    return (
        isinstance(value, type)
        and issubclass(value, dict)
        and hasattr(value, "__annotations__")
        and hasattr(value, "__required_keys__")
    )


def _shape_of(cls: type, seen: dict[type, Shape]) -> Shape:
    if cls in seen:
        return seen[cls]
    children: dict[str, Shape | None] = {}
    shape = Shape(children, frozenset())
    seen[cls] = shape
    module = sys.modules[cls.__module__]
    for name, annotation in cls.__annotations__.items():
        if name in _CLIENT_OPTIONS:
            continue
        text = annotation if isinstance(annotation, str) else repr(annotation)
        nested = [
            candidate
            for ident in _IDENT.findall(text)
            if _is_typeddict(candidate := getattr(module, ident, None))
        ]
        if nested:
            merged: dict[str, Shape | None] = {}
            for sub in nested:
                merged.update(_shape_of(sub, seen).children)
            children[name] = Shape(merged, frozenset())
        else:
            children[name] = None
    required = frozenset(getattr(cls, "__required_keys__", ())) - _CLIENT_OPTIONS
    result = Shape(children, required)
    seen[cls] = result
    return result


@functools.cache
def shape(params_class: str) -> Shape | None:
    """The parameter tree for `stripe.params.<params_class>`, or None if unknown."""
    # The SDK's types are the schema here; no request ever goes through the SDK.
    package, _, name = ("stripe.params." + params_class).rpartition(".")
    module = importlib.import_module(package)
    try:
        cls = getattr(module, name)
    except AttributeError:
        return None
    if not _is_typeddict(cls):
        return None
    return _shape_of(cls, {})


def validate(params: Params, params_class: str | None) -> None:
    """Raise `parameter_unknown`/`parameter_missing` as Stripe would for these params."""
    if params_class is None:
        return
    tree = shape(params_class)
    if tree is None:
        return
    for name in tree.required:
        if name not in params:
            raise missing_param(name)
    _check(params, tree, "")


def _check(params: Params, tree: Shape, prefix: str) -> None:
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else key
        if key not in tree.children:
            raise unknown_param(name)
        child = tree.children[key]
        if child is None:
            continue
        if isinstance(value, dict):
            _check(value, child, name)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _check(item, child, f"{name}[{i}]")
