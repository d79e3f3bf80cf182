"""Routes: `(method, path pattern) -> handler` with the SDK params class that validates it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from engine.sandbox.state import (
    Includable,
    JobHandler,
    PaymentCallback,
    SandboxState,
    TickCallback,
)
from engine.sandbox.wire import Call, Obj

Handler = Callable[[Call], Obj]


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint. `pattern` uses `{}` for an id segment, e.g. `/v1/charges/{}`."""

    method: str
    pattern: str
    handler: Handler
    params: str | None = None
    """Name of the `stripe.params` TypedDict describing the accepted parameters."""


@dataclass
class Router:
    """Finds the route for a request in O(1) buckets keyed by method, length and resource."""

    _buckets: dict[tuple[str, int, str], list[tuple[tuple[str | None, ...], Route]]] = field(
        default_factory=dict
    )

    def add(self, route: Route) -> None:
        parts = route.pattern.strip("/").split("/")
        key = (route.method, len(parts), parts[1] if len(parts) > 1 else parts[0])
        segments = tuple(None if p == "{}" else p for p in parts)
        self._buckets.setdefault(key, []).append((segments, route))

    def match(self, method: str, path: str) -> tuple[Route, tuple[str, ...]] | None:
        parts = path.strip("/").split("/")
        key = (method, len(parts), parts[1] if len(parts) > 1 else parts[0])
        for segments, route in self._buckets.get(key, ()):
            args: list[str] = []
            for want, got in zip(segments, parts, strict=True):
                if want is None:
                    if not got:
                        break
                    args.append(got)
                elif want != got:
                    break
            else:
                return route, tuple(args)
        return None


@dataclass
class Registry:
    """What a sandbox extension (e.g. billing) may add: routes, jobs and tick callbacks."""

    state: SandboxState
    router: Router

    def route(self, method: str, pattern: str, handler: Handler, params: str | None = None) -> None:
        self.router.add(Route(method, pattern, handler, params))

    def job(self, kind: str, handler: JobHandler) -> None:
        self.state.job_handlers[kind] = handler

    def on_tick(self, callback: TickCallback) -> None:
        self.state.add_tick_callback(callback)

    def includable(self, object_type: str, name: str, include: Includable) -> None:
        """Serve `name` on objects of `object_type` only when asked for with `expand[]`."""
        self.state.includables[(object_type, name)] = include

    def on_payment(self, callback: PaymentCallback) -> None:
        """Run `callback(state, payment_intent)` when an intent succeeds after its creation."""
        self.state.payment_callbacks.append(callback)
