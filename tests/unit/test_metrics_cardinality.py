"""Metrics stay bounded: 10,000 accounts (and bookings, disputes) make no more series than 10."""

from __future__ import annotations

from prometheus_client import generate_latest

from engine.observability import Metrics


def _series(metrics: Metrics) -> int:
    return sum(len(family.samples) for family in metrics.registry.collect())


def _activity(metrics: Metrics, accounts: int, offset: int = 0) -> None:
    for n in range(offset, offset + accounts):
        key = f"acct_{n:016x}"
        metrics.drained(
            key, handled=3, lag_seconds=[0.02, 0.3], failed=n % 7 == 0, dead=n % 97 == 0
        )
        metrics.drained(
            f"three_sided_bookings:booking:{n}", handled=1, lag_seconds=[0.1], failed=False, dead=0
        )
        metrics.drained(f"dispute:ch_{n}", handled=1, lag_seconds=[1.0], failed=False, dead=0)
    metrics.pending({f"acct_{n:016x}": n % 5 for n in range(offset, offset + accounts)})


def test_series_do_not_grow_with_the_number_of_accounts() -> None:
    few, many = Metrics(top_mailboxes=10), Metrics(top_mailboxes=10)
    _activity(few, 20)
    _activity(many, 10_000)
    assert _series(many) == _series(few)
    # ... nor over time, as other accounts become the busiest.
    _activity(many, 10_000, offset=10_000)
    assert _series(many) == _series(few)
    text = generate_latest(many.registry).decode()
    assert "acct_" not in text.split("marketplace_webhook_pending_top", 1)[0]
    assert text.count("marketplace_webhook_pending_top{") == 10


def test_the_busiest_mailboxes_are_named_and_leave_when_idle() -> None:
    metrics = Metrics(top_mailboxes=2)
    metrics.pending({"acct_a": 5, "acct_b": 50, "acct_c": 7, "three_sided_bookings:booking:9": 9})
    text = generate_latest(metrics.registry).decode()
    assert 'marketplace_webhook_pending_top{mailbox="acct_b"} 50.0' in text
    assert 'marketplace_webhook_pending_top{mailbox="three_sided_bookings:booking:9"} 9.0' in text
    assert 'mailbox="acct_a"' not in text
    assert 'marketplace_webhook_pending{kind="account"} 62.0' in text
    metrics.pending({"acct_c": 1})
    text = generate_latest(metrics.registry).decode()
    assert 'mailbox="acct_b"' not in text
    assert 'marketplace_webhook_pending{kind="three_sided_bookings"} 0.0' in text
