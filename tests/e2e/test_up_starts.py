"""``marketplace up`` on a fresh data directory comes up with a working worker, every time.

Each start is a real ``up`` process (embedded PostgreSQL and NATS, the sandbox,
the API and its worker) in an empty directory; it must print its address only
once it listens, answer ``/ready``, drain the ``account.updated`` Stripe sends
when onboarding completes, and stop on SIGINT leaving nothing behind. The soak
version is ``scripts/up_soak.py --runs 20``.
"""

from __future__ import annotations

import pytest
from support.up_runs import fresh_checkout, start_drain_stop

STARTS = 3


@pytest.mark.parametrize("attempt", range(STARTS))
def test_up_starts_on_a_fresh_directory_with_a_draining_worker(attempt: int) -> None:
    with fresh_checkout(f"start-{attempt}") as checkout:
        start_drain_stop(checkout)
