"""All sandbox state in memory: objects by id and owner, balances, jobs, idempotency, clock."""

from __future__ import annotations

import heapq
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.sandbox.errors import missing
from engine.sandbox.objects import API_VERSION, build, new_id
from engine.sandbox.wire import Obj

TickCallback = Callable[["SandboxState", int, int, "str | None"], None]
"""`callback(state, old_time, new_time, test_clock_id)` run after a clock advance.

`test_clock_id` is None for the sandbox's global clock, else the id of the test
clock that moved. Callbacks run after the sandbox's own due jobs (funds becoming
available, payout schedules, authorisation expiry) up to `new_time`; jobs they
schedule at or before `new_time` run right after them.
"""

JobHandler = Callable[["SandboxState", str], None]
"""`handler(state, ref)` for a scheduled job of one kind."""

PaymentCallback = Callable[["SandboxState", Obj], None]
"""`callback(state, payment_intent)` run when a PaymentIntent succeeds after its creating
request (the customer authenticated it, or confirmed it later): billing pays its invoice."""

Includable = Callable[["SandboxState", Obj], Any]
"""`include(state, obj)` -> the value of a field Stripe serves only when asked for it
with `expand[]` (an "includable" field such as `invoice.payments`)."""

GLOBAL = ""
"""The time domain of the sandbox's global clock (others are test clock ids)."""

START_VARIABLE = "MARKETPLACE_SANDBOX_START"
"""Environment variable: the instant a new sandbox's global clock starts at (ISO 8601)."""


def start_time_from_environment(environ: Mapping[str, str] | None = None) -> int | None:
    """The unix time ``MARKETPLACE_SANDBOX_START`` names, or None when it is unset.

    ``2028-02-29`` (midnight UTC) or ``2027-03-28T00:30:00Z``; a time without an
    offset is UTC. Lets a developer or a test run start the sandbox on a chosen
    date (month ends, leap days, the night clocks change) instead of today.

    Raises:
        ValueError: the value is not an ISO 8601 date or date-time (naming it).
    """
    raw = (os.environ if environ is None else environ).get(START_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{START_VARIABLE}={raw!r} is not an ISO 8601 date or date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


@dataclass
class SandboxOptions:
    """Behaviour switches; the defaults match Stripe's test mode closely."""

    stripe_fee: bool = True
    """Charge a deterministic processing fee on every charge's balance transaction."""
    fee_percent_bp: int = 290
    """Percentage part of the processing fee, in basis points (2.9%)."""
    fee_fixed: int = 30
    """Fixed part of the processing fee in a 2-decimal currency's minor units."""
    funds_delay_days: int = 2
    """Days before a charge's funds become available (`pm_card_bypassPending`: 0)."""
    dispute_fee: int = 1500
    """Dispute fee in a 2-decimal currency's minor units."""
    webhook_retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)
    """Seconds between delivery attempts: Stripe's 3-day backoff, compressed."""
    webhook_timeout: float = 5.0
    webhook_concurrency: int = 32
    frozen_clock: bool = False
    """If True the global clock only moves when advanced; else it follows real time."""
    idempotency_capacity: int = 200_000
    invoice_finalize_delay: int = 3600
    """Seconds a renewal invoice stays a draft before it is finalised and charged (Stripe: ~1 h)."""
    invoice_retry_days: tuple[int, ...] = (3, 5, 7)
    """Retries of a failed renewal payment, each this many days after the previous attempt."""
    invoice_retries_exhausted: str = "cancel"
    """The subscription when the last retry fails: `cancel`, `unpaid` or `past_due` (left as is)."""


@dataclass
class IdempotentResult:
    """A stored response to replay for a repeated `Idempotency-Key`."""

    method: str
    path: str
    fingerprint: str
    status: int
    body: bytes


@dataclass
class Store:
    """The pickleable data of a sandbox (persisted as one unit)."""

    objects: dict[str, Obj] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)
    kind: dict[str, str] = field(default_factory=dict)
    lists: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)
    private: dict[str, dict[str, Any]] = field(default_factory=dict)
    balances: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    jobs: dict[str, list[tuple[int, int, str, str]]] = field(default_factory=dict)
    seq: int = 0
    clock_offset: int = 0
    frozen_base: int = 0
    payout_cursor: int = 0
    idempotency: OrderedDict[tuple[str, str], IdempotentResult] = field(default_factory=OrderedDict)
    platform_id: str = ""
    connected: list[str] = field(default_factory=list)
    webhook_endpoints: list[str] = field(default_factory=list)
    deliveries: dict[str, Obj] = field(default_factory=dict)
    api_version: str = API_VERSION
    """The API version whose shapes the objects have (a store of another is not loaded)."""


class SandboxState:
    """The sandbox's state and clock; resource modules act on it, the app serves it."""

    def __init__(
        self,
        options: SandboxOptions | None = None,
        *,
        start_time: int | None = None,
    ) -> None:
        self.options = options or SandboxOptions()
        self.tick_callbacks: list[TickCallback] = []
        self.job_handlers: dict[str, JobHandler] = {}
        self.includables: dict[tuple[str, str], Includable] = {}
        self.payment_callbacks: list[PaymentCallback] = []
        self.base_url = ""
        """The sandbox's own address as its last request saw it (for URLs made in jobs)."""
        """(object type, field) -> how to compute an includable field (see `Includable`)."""
        self.outbox: list[str] = []
        """Event ids waiting to be handed to the webhook dispatcher."""
        self.dirty = False
        self.faults: list[int] = []
        """HTTP statuses (429 or 500) the next API requests answer with (control endpoint)."""
        self.current_request: tuple[str | None, str | None] = (None, None)
        """(request id, idempotency key) of the request being handled, for events."""
        self._start_time = start_time if start_time is not None else start_time_from_environment()
        self.store = Store()
        self.reset()

    # -- lifecycle ---------------------------------------------------------------

    def reset(self) -> None:
        """Forget every object; keep options, callbacks and job handlers."""
        self.store = Store()
        base = self._start_time if self._start_time is not None else int(time.time())
        self.store.frozen_base = base
        self.store.clock_offset = 0 if self._start_time is None else base - int(time.time())
        self.store.payout_cursor = self.now()
        self.outbox.clear()
        self._create_platform()
        self.dirty = True

    def load(self, store: Store) -> None:
        """Adopt a persisted store."""
        self.store = store
        self.outbox.clear()

    def _create_platform(self) -> None:
        account_id = new_id("acct", 16)
        account = build(
            "account",
            account_id,
            self.now(),
            type="standard",
            controller={"type": "account"},
            charges_enabled=True,
            payouts_enabled=True,
            details_submitted=True,
            email="platform@sandbox.invalid",
            capabilities={"card_payments": "active", "transfers": "active"},
        )
        account["requirements"].update(currently_due=[], eventually_due=[], disabled_reason=None)
        account["external_accounts"]["url"] = f"/v1/accounts/{account_id}/external_accounts"
        self.store.platform_id = account_id
        self.put(account, account_id, "account")

    # -- clock ---------------------------------------------------------------------

    def now(self, domain: str = GLOBAL) -> int:
        """Current unix time on the global clock or on a test clock (by id)."""
        if domain:
            clock = self.store.objects.get(domain)
            if clock is not None:
                return int(clock["frozen_time"])
        if self.options.frozen_clock:
            return self.store.frozen_base + self.store.clock_offset
        return int(time.time()) + self.store.clock_offset

    def schedule(self, domain: str, due: int, kind: str, ref: str) -> None:
        """Run job `kind` for `ref` once `domain`'s clock reaches `due`."""
        self.store.seq += 1
        heapq.heappush(self.store.jobs.setdefault(domain, []), (due, self.store.seq, kind, ref))

    def add_tick_callback(self, callback: TickCallback) -> None:
        """Register a callback run on every clock advance (see `TickCallback`)."""
        self.tick_callbacks.append(callback)

    # -- objects -------------------------------------------------------------------

    @property
    def objects(self) -> dict[str, Obj]:
        return self.store.objects

    @property
    def platform_id(self) -> str:
        return self.store.platform_id

    def put(self, obj: Obj, owner: str, kind: str, *, listed: bool = True) -> Obj:
        """Store a new object owned by `owner`, listed under (owner, kind)."""
        store = self.store
        object_id = obj["id"]
        store.objects[object_id] = obj
        store.owner[object_id] = owner
        store.kind[object_id] = kind
        if listed:
            ids = store.lists.setdefault((owner, kind), [])
            store.position[object_id] = len(ids)
            ids.append(object_id)
        self.dirty = True
        return obj

    def listed(self, owner: str, kind: str) -> list[str]:
        """Ids of `kind` owned by `owner`, oldest first (may include deleted ids)."""
        return self.store.lists.get((owner, kind), [])

    def get(self, object_id: str, account: str, kind: str, param: str = "id") -> Obj:
        """The object if `account` may see it, else Stripe's 404."""
        obj = self.store.objects.get(object_id)
        if (
            obj is None
            or self.store.kind.get(object_id) != kind
            or self.store.owner.get(object_id) != account
        ):
            raise missing(kind, object_id, param)
        return obj

    def find(self, object_id: str) -> Obj | None:
        """The object regardless of owner (for internal links)."""
        return self.store.objects.get(object_id)

    def owner_of(self, object_id: str) -> str:
        return self.store.owner[object_id]

    def private(self, object_id: str) -> dict[str, Any]:
        """Sandbox-only data kept beside an object (never served)."""
        return self.store.private.setdefault(object_id, {})

    def delete(self, object_id: str) -> None:
        self.store.objects.pop(object_id, None)
        self.dirty = True
