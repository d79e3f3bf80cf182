"""Operational routes: liveness (``/health``), readiness (``/ready``) and ``/metrics``.

``/health`` answers 200 whenever the process serves HTTP. ``/ready`` answers
200 only when PostgreSQL and NATS are reachable, else a 503 problem whose
``checks`` member names what is down, so a load balancer stops routing to an
instance that cannot work. It also reports whether some worker reports and
pulls (``workers``, with the reason when not); that fails readiness only with
``api.ready_requires_worker`` (``marketplace up`` sets it: its one worker is
part of the stack), since API instances of a larger deployment can take
webhooks durably while workers restart. ``/metrics`` is Prometheus' text format (admin or
service keys: scrapers authenticate like any integration client).
"""

from __future__ import annotations

import logging
from typing import Any, Final, Literal

import msgspec
from litestar import Controller, MediaType, Request, Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.api.auth import PUBLIC_OPT, requires_scope
from engine.api.problems import problem_responses
from engine.core.errors import MarketplaceError
from engine.observability import Metrics
from engine.services import Services
from engine.worker.heartbeat import WorkersReadiness, workers_readiness

__all__ = ["HealthController", "MetricsController", "NotReady", "Readiness"]

log = logging.getLogger(__name__)

METRICS_STATE_KEY: Final = "metrics"

CheckState = Literal["ok", "unavailable"]


class NotReady(MarketplaceError):
    """A dependency the engine needs (database, NATS) is unreachable."""

    code = "not_ready"
    status = 503
    title = "Service unavailable"
    expected = True  # readiness's normal answer; what is missing logs its own failures


class Liveness(msgspec.Struct, frozen=True):
    """The process is up."""

    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """Every dependency is reachable."""

    status: Literal["ready"] = "ready"
    checks: dict[str, CheckState]
    reasons: dict[str, str] = msgspec.field(default_factory=dict)


async def _database_ok(services: Services) -> bool:
    try:
        return await services.db.ping()
    except Exception:  # a closed or never-opened pool: not ready, whatever the reason
        log.warning("readiness: database check failed", exc_info=True)
        return False


async def _workers(services: Services) -> WorkersReadiness:
    stale = max(30.0, 6 * services.settings.worker.heartbeat_seconds)
    try:
        return await workers_readiness(services.db.pool, stale)
    except Exception as exc:  # same: report, do not crash the probe
        log.warning("readiness: workers check failed", exc_info=True)
        return WorkersReadiness(False, f"could not read worker heartbeats: {exc}")


async def _nats_ok(services: Services) -> bool:
    try:
        return await services.nats_ready()
    except Exception:  # same: report, do not crash the probe
        log.warning("readiness: NATS check failed", exc_info=True)
        return False


class HealthController(Controller):
    """Liveness and readiness probes (public)."""

    path = "/"
    tags = ["operations"]
    opt = {PUBLIC_OPT: True}

    @get("/health", operation_id="getHealth", summary="Liveness: the process is up")
    async def health(self) -> Liveness:
        """Always 200 while the process serves requests."""
        return Liveness()

    @get(
        "/ready",
        operation_id="getReadiness",
        summary="Readiness: database and NATS reachable",
        responses=problem_responses(503),
    )
    async def ready(self, services: NamedDependency[Services]) -> Readiness:
        """200 when PostgreSQL and NATS answer (and a worker pulls, where required).

        503 naming the unavailable ones otherwise, with ``reasons`` saying why.
        """
        database_ok = await _database_ok(services)
        checks: dict[str, CheckState] = {
            "database": "ok" if database_ok else "unavailable",
            "nats": "ok" if await _nats_ok(services) else "unavailable",
        }
        reasons: dict[str, str] = {}
        if database_ok:
            workers = await _workers(services)
            checks["workers"] = "ok" if workers.ok else "unavailable"
            if workers.reason:
                reasons["workers"] = workers.reason
        required = ["database", "nats"]
        if services.settings.api.ready_requires_worker:
            required.append("workers")
        down = [name for name in required if checks.get(name) != "ok"]
        if down:
            detail = "; ".join(f"{name}: {reasons.get(name, 'unavailable')}" for name in down)
            raise NotReady(detail, checks=checks, unavailable=down, reasons=reasons)
        return Readiness(checks=checks, reasons=reasons)


class MetricsController(Controller):
    """Prometheus metrics of this API process."""

    path = "/metrics"
    tags = ["operations"]
    guards = [requires_scope("service")]

    @get(
        "/",
        operation_id="getMetrics",
        summary="Prometheus metrics",
        media_type=MediaType.TEXT,
        responses=problem_responses(401, 403),
    )
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Webhook intake counters and the other metrics of this process (text format)."""
        metrics: Metrics = request.app.state[METRICS_STATE_KEY]
        # Litestar adds the charset itself; Prometheus' constant carries one already.
        media_type = CONTENT_TYPE_LATEST.split("; charset=")[0]
        return Response(generate_latest(metrics.registry), media_type=media_type)
