"""The file a running ``marketplace up`` leaves in its data directory, and reading it back.

``up`` writes ``<data_dir>/stack.json`` once its stack is ready (the addresses
of its PostgreSQL, NATS, sandbox and API, the webhook secrets it registered)
and removes it when it stops. Any other ``marketplace`` command run with the
same data directory (by default: in the same directory) fills the settings it
lacks from that file while the ``up`` process is alive, so
``marketplace commission versions`` beside a running ``make up`` needs no
extra settings. Values set in the config or the environment always win.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.core.settings import Settings, replace_section
from engine.infra.processes import pid_alive

__all__ = ["STACK_FILE", "RunningStack", "attach_running_stack"]

STACK_FILE = "stack.json"


@dataclass(frozen=True, slots=True)
class RunningStack:
    """What a running ``up`` serves on (the contents of ``stack.json``)."""

    pid: int
    api_url: str
    database_url: str
    nats_url: str
    stripe_api_base: str = ""
    """Set only when ``up`` runs the offline sandbox."""
    webhook_secrets: list[str] = field(default_factory=list)
    connect_webhook_secrets: list[str] = field(default_factory=list)

    def write(self, data_dir: Path) -> Path:
        """Write atomically (owner-readable only: it names webhook secrets)."""
        path = data_dir / STACK_FILE
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        scratch.chmod(0o600)
        scratch.replace(path)
        return path

    @classmethod
    def read(cls, data_dir: Path) -> RunningStack | None:
        """The stack described in ``data_dir``, or None when none runs there."""
        try:
            raw = json.loads((data_dir / STACK_FILE).read_text(encoding="utf-8"))
            stack = cls(**raw)
        except (OSError, ValueError, TypeError):
            return None
        return stack if pid_alive(stack.pid) else None

    @staticmethod
    def remove(data_dir: Path) -> None:
        """Forget the stack (``up`` stopping)."""
        (data_dir / STACK_FILE).unlink(missing_ok=True)


def attach_running_stack(settings: Settings) -> Settings:
    """``settings`` with what they leave empty taken from a running ``up`` in their data dir."""
    stack = RunningStack.read(settings.data_path)
    if stack is None:
        return settings
    if not settings.database.url:
        settings = replace_section(settings, "database", url=stack.database_url)
    if not settings.nats.url:
        settings = replace_section(settings, "nats", url=stack.nats_url)
    if not settings.engine.public_url:
        settings = replace_section(settings, "engine", public_url=stack.api_url)
    # The sandbox stands in for Stripe only for test keys (it accepts any sk_test_).
    sandbox_key = settings.stripe.secret_key.startswith("sk_test_")
    if stack.stripe_api_base and not settings.stripe.api_base and sandbox_key:
        settings = replace_section(settings, "stripe", api_base=stack.stripe_api_base)
        if not settings.stripe.webhook_secrets:
            settings = replace_section(settings, "stripe", webhook_secrets=stack.webhook_secrets)
        if not settings.stripe.connect_webhook_secrets:
            settings = replace_section(
                settings, "stripe", connect_webhook_secrets=stack.connect_webhook_secrets
            )
    return settings
