"""Structured logs and Prometheus metrics.

Log lines carry the current event id, account and business object from context
variables, so every line written while an event is handled says which event and
account it belongs to. Metrics are per account (webhook lag, handled, failures,
dead letters) on a registry the API exposes at ``/metrics``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engine.core.errors import LedgerConflict, RecordConflict
from engine.core.mailboxes import mailbox_kind

__all__ = [
    "CONTEXT_FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "Metrics",
    "configure_logging",
    "log_context",
]

CONTEXT_FIELDS = ("event_id", "account", "subject")
_context: dict[str, contextvars.ContextVar[str]] = {
    name: contextvars.ContextVar(name, default="") for name in CONTEXT_FIELDS
}


@contextlib.contextmanager
def log_context(**values: str) -> Iterator[None]:
    """Attach ``event_id``/``account``/``subject`` to every log line in this block."""
    tokens = [(name, _context[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for name, token in reversed(tokens):
            _context[name].reset(token)


class ContextFilter(logging.Filter):
    """Copies the context variables onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "")
            if value:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Install the context filter (and the JSON formatter) on the root logger."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(account)s %(event_id)s] %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries log every request at INFO; the engine's own lines say what matters.
    for noisy in ("stripe", "httpx", "piccolo", "taskiq", "nats"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class Metrics:
    """The engine's Prometheus metrics on their own registry, bounded in series."""

    def __init__(self, *, top_mailboxes: int = 10) -> None:
        self.registry = CollectorRegistry()
        self.webhook_received = Counter(
            "marketplace_webhook_received_total",
            "Verified webhook events accepted, by endpoint and whether new",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.webhook_rejected = Counter(
            "marketplace_webhook_rejected_total",
            "Webhook deliveries refused (bad signature, too big, malformed)",
            ["reason"],
            registry=self.registry,
        )
        # Per-mailbox series would grow with every account, booking and dispute
        # (and never go away): the counters and the histogram are labelled by the
        # mailbox's kind only, and per-mailbox detail is kept for the few mailboxes
        # that need attention (``top_mailboxes``), replaced at every sample.
        self.webhook_handled = Counter(
            "marketplace_webhook_handled_total",
            "Events handled, by mailbox kind",
            ["kind"],
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "marketplace_webhook_failures_total",
            "Handler failures (retries), by mailbox kind",
            ["kind"],
            registry=self.registry,
        )
        self.webhook_dead = Counter(
            "marketplace_webhook_dead_letters_total",
            "Events parked in dead letter, by mailbox kind",
            ["kind"],
            registry=self.registry,
        )
        self.webhook_lag = Histogram(
            "marketplace_webhook_lag_seconds",
            "Time from receipt to handled, by mailbox kind",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry,
        )
        self.mailbox_pending = Gauge(
            "marketplace_webhook_pending",
            "Pending events, by mailbox kind (sampled by the sweeper)",
            ["kind"],
            registry=self.registry,
        )
        self.mailbox_pending_top = Gauge(
            "marketplace_webhook_pending_top",
            "Pending events of the mailboxes with the most (at most top_mailboxes of them)",
            ["mailbox"],
            registry=self.registry,
        )
        self.ledger_conflicts = Counter(
            "marketplace_ledger_conflicts_total",
            "Postings refused: their key was posted before with other entries, by posting kind",
            ["kind"],
            registry=self.registry,
        )
        self.record_conflicts = Counter(
            "marketplace_record_conflicts_total",
            "Records refused: a Stripe object recorded again with other facts, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.top_mailboxes = top_mailboxes
        self._top: set[str] = set()
        self._kinds: set[str] = set()

    def drained(
        self, key: str, *, handled: int, lag_seconds: Iterable[float], failed: bool, dead: int
    ) -> None:
        """Count one drain of mailbox ``key``."""
        kind = mailbox_kind(key)
        if handled:
            self.webhook_handled.labels(kind).inc(handled)
            lag = self.webhook_lag.labels(kind)
            for seconds in lag_seconds:
                lag.observe(seconds)
        if failed:
            self.webhook_failures.labels(kind).inc()
        if dead:
            self.webhook_dead.labels(kind).inc(dead)

    def ledger_conflict(self, conflict: LedgerConflict | RecordConflict) -> None:
        """Count one posting the ledger refused, or one record the engine refused
        (``Ledger.observe_conflicts``)."""
        counter = (
            self.record_conflicts if isinstance(conflict, RecordConflict) else self.ledger_conflicts
        )
        counter.labels(conflict.kind or "unknown").inc()

    def pending(self, counts: Mapping[str, int]) -> None:
        """Set the pending gauges from every mailbox's pending count.

        Totals per kind (a kind seen before and now idle reads 0), and the
        ``top_mailboxes`` mailboxes with the most pending events by name; one
        that left the top is removed, so the series stay bounded.
        """
        totals = dict.fromkeys(self._kinds, 0)
        for key, count in counts.items():
            kind = mailbox_kind(key)
            totals[kind] = totals.get(kind, 0) + count
        self._kinds |= set(totals)
        for kind, count in totals.items():
            self.mailbox_pending.labels(kind).set(count)
        busiest = sorted(((count, key) for key, count in counts.items() if count), reverse=True)[
            : self.top_mailboxes
        ]
        top = {key for _, key in busiest}
        for key in self._top - top:
            self.mailbox_pending_top.remove(key)
        for count, key in busiest:
            self.mailbox_pending_top.labels(key).set(count)
        self._top = top
