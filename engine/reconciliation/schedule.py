"""When the workers reconcile: the ``reconciliation`` plugin's config and its periodic task.

The workers call ``run_when_due`` once a minute (``CHECK_SECONDS``); it starts
a run when the latest one (from any source: this schedule, ``marketplace
reconcile`` or the finance panel) started ``every_minutes`` ago or more, so
restarting workers does not reconcile again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import msgspec

__all__ = [
    "CHECK_SECONDS",
    "PLUGIN",
    "TASK",
    "ReconciliationConfig",
    "due",
    "run_when_due",
]

PLUGIN: Final = "reconciliation"
TASK: Final = "reconciliation.run"
CHECK_SECONDS: Final = 60.0


class ReconciliationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[plugins.reconciliation]``.

    Attributes:
        every_minutes: how often the workers reconcile (at once when no run
            has happened yet).
    """

    every_minutes: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 60)] = 60


async def due(services: Any, *, now: datetime | None = None) -> bool:
    """Whether the latest run started at least ``every_minutes`` ago (or there is none)."""
    from engine.reconciliation.store import latest_run

    config = services.plugins.runtime.config(PLUGIN)
    minutes = config.every_minutes if isinstance(config, ReconciliationConfig) else 60
    latest = await latest_run(services.db.pool, finished=False)
    if latest is None:
        return True
    return latest.started_at <= (now or datetime.now(UTC)) - timedelta(minutes=minutes)


async def run_when_due(services: Any) -> None:
    """The periodic task: reconcile if a run is due."""
    from engine.reconciliation.service import reconciliation_task

    if await due(services):
        await reconciliation_task(services)
