"""The ``reconciliation`` plugin: runs reconciliation in the workers on a schedule (hookimpls only).

Reconciliation itself is part of the engine (``marketplace reconcile``, the
finance panel's button); enabling this plugin only schedules it:
``plugins.enabled = [..., "reconciliation"]`` and, optionally,

.. code-block:: toml

    [plugins.reconciliation]
    every_minutes = 60

See ``engine.reconciliation.schedule``. One worker at a time runs it (the
workers' per-task lock, and the run's own).
"""

from __future__ import annotations

from engine.core.contributions import ConfigSection, PeriodicTask, Registrar
from engine.core.plugins import hookimpl
from engine.reconciliation.schedule import (
    CHECK_SECONDS,
    PLUGIN,
    TASK,
    ReconciliationConfig,
    run_when_due,
)


@hookimpl
def register_config_schema(register: Registrar[ConfigSection]) -> None:
    """Declare ``[plugins.reconciliation]`` (see ``ReconciliationConfig``)."""
    register(ConfigSection(plugin=PLUGIN, schema=ReconciliationConfig))


@hookimpl
def register_periodic_tasks(register: Registrar[PeriodicTask]) -> None:
    """``reconciliation.run``: checked every minute, runs every ``every_minutes``."""
    register(PeriodicTask(TASK, CHECK_SECONDS, run_when_due))
