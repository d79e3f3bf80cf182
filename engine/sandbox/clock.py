"""Time: the global clock, test clocks, and the jobs and tick callbacks that advancing runs.

Every object lives in a time domain: the global clock, or the test clock of its
customer. Advancing a clock runs, in time order, the jobs due in its domain
(funds becoming available, authorisation expiry, payout arrival...) and, on the
global clock, the daily payout schedules; then the registered tick callbacks
(`SandboxState.add_tick_callback`, e.g. billing renewals), then any job those
callbacks made due.
"""

from __future__ import annotations

import heapq

from engine.sandbox.errors import invalid
from engine.sandbox.state import GLOBAL, SandboxState

DAY = 86_400
PAYOUT_RUN = "payout_run"
"""Job-handler name called with the unix time of each UTC midnight the global clock passes."""


def run_due(state: SandboxState, domain: str = GLOBAL) -> None:
    """Run the jobs whose time has come (the global clock also moves in real time)."""
    now = state.now(domain)
    heap = state.store.jobs.get(domain)
    due_job = heap is not None and len(heap) > 0 and heap[0][0] <= now
    due_payouts = domain == GLOBAL and _next_boundary(state) <= now
    if due_job or due_payouts:
        _run_until(state, domain, now)


def _next_boundary(state: SandboxState) -> int:
    return (state.store.payout_cursor // DAY + 1) * DAY


def _pop_due(state: SandboxState, domain: str, until: int) -> None:
    heap = state.store.jobs.get(domain)
    while heap and heap[0][0] <= until:
        _, _, kind, ref = heapq.heappop(heap)
        handler = state.job_handlers.get(kind)
        if handler is not None:
            handler(state, ref)
        state.dirty = True


def _run_until(state: SandboxState, domain: str, target: int) -> None:
    while True:
        heap = state.store.jobs.get(domain)
        next_job = heap[0][0] if heap else None
        next_run = _next_boundary(state) if domain == GLOBAL else None
        candidates = [t for t in (next_job, next_run) if t is not None and t <= target]
        if not candidates:
            return
        moment = min(candidates)
        if next_job is not None and next_job == moment:
            _pop_due(state, domain, moment)
            continue
        _pop_due(state, domain, moment)
        state.store.payout_cursor = moment
        handler = state.job_handlers.get(PAYOUT_RUN)
        if handler is not None:
            handler(state, str(moment))


def _set_time(state: SandboxState, domain: str, when: int) -> None:
    if domain == GLOBAL:
        state.store.clock_offset += when - state.now()
    else:
        state.objects[domain]["frozen_time"] = when


def advance(state: SandboxState, domain: str, target: int) -> None:
    """Move `domain`'s clock to `target`, running everything that falls due on the way."""
    old = state.now(domain)
    if target < old:
        raise invalid("Cannot move a clock backwards.", param="frozen_time")
    _run_until(state, domain, old)
    # Step through due moments so each job sees the clock at its own time.
    while True:
        heap = state.store.jobs.get(domain)
        next_job = heap[0][0] if heap else None
        next_run = _next_boundary(state) if domain == GLOBAL else None
        steps = [t for t in (next_job, next_run) if t is not None and old <= t <= target]
        if not steps:
            break
        moment = min(steps)
        _set_time(state, domain, moment)
        _run_until(state, domain, moment)
    _set_time(state, domain, target)
    _run_until(state, domain, target)
    clock_id = None if domain == GLOBAL else domain
    for callback in list(state.tick_callbacks):
        callback(state, old, target, clock_id)
    _run_until(state, domain, target)
    state.dirty = True
