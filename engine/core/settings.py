"""Settings: the TOML config file, environment overrides, and validation at start.

Precedence: built-in defaults < config file (``--config`` / ``MARKETPLACE_CONFIG``,
else ``config/marketplace.toml`` semantics built in) < environment variables.
Every problem is reported as ``ConfigError(key, problem)`` naming the dotted key,
so ``marketplace`` exits non-zero with e.g. ``plugins.enabled[1]: unknown plugin
'comission_rules'``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from engine.core.errors import ConfigError

__all__ = [
    "ApiSettings",
    "CommissionSettings",
    "DatabaseSettings",
    "EngineSettings",
    "NatsSettings",
    "PluginsSettings",
    "Settings",
    "StripeSettings",
    "WebhookSettings",
    "WorkerSettings",
    "load_settings",
    "replace_section",
    "require_database_url",
    "require_nats_url",
    "settings_from_mapping",
]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every settings section: immutable, unknown keys refused."""


class EngineSettings(_Section, frozen=True):
    """``[engine]``: where state lives and how the engine presents itself."""

    environment: str = "development"
    data_dir: str = ".marketplace"
    public_url: str = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    live_settings_poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Longest a setting changed at run time takes to reach every process (if NOTIFY is lost)."""
    live_settings_listen: bool = True
    """LISTEN for changes (off behind a pooler in transaction mode: then only polling)."""


class ApiSettings(_Section, frozen=True):
    """``[api]``: the HTTP server."""

    host: str = "127.0.0.1"
    port: Port = 8000
    max_body_bytes: Positive = 1_048_576
    idempotency_ttl_hours: Annotated[int, msgspec.Meta(ge=24)] = 24
    bootstrap_admin_key: str = ""
    ready_requires_worker: bool = False
    """``/ready`` fails while no worker reports and pulls (``marketplace up`` turns it on)."""


class DatabaseSettings(_Section, frozen=True):
    """``[database]``: PostgreSQL. An empty ``url`` means the embedded server."""

    url: str = ""
    pool_min: Positive = 2
    pool_max: Positive = 20


class NatsSettings(_Section, frozen=True):
    """``[nats]``: NATS JetStream. An empty ``url`` means the embedded server.

    ``url`` names one server or a cluster's: a TOML array, or one string with
    commas (``MARKETPLACE_NATS_URL=nats://a:4222,nats://b:4222``). The client
    takes them all as its server pool, so losing any one node is survived.
    """

    url: str | list[str] = ""
    stream: str = "MARKETPLACE"
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1

    @property
    def servers(self) -> list[str]:
        """Every configured server URL, in order (empty: none configured)."""
        parts = self.url.split(",") if isinstance(self.url, str) else self.url
        return [part.strip() for part in parts if part.strip()]


class StripeSettings(_Section, frozen=True):
    """``[stripe]``: keys and base address. An empty ``api_base`` in development
    means the embedded sandbox; production sets ``https://api.stripe.com``."""

    secret_key: str = "sk_test_marketplace_sandbox"  # noqa: S105 - the sandbox accepts any sk_test_ key
    api_base: str = ""
    webhook_secrets: list[str] = msgspec.field(default_factory=list)
    connect_webhook_secrets: list[str] = msgspec.field(default_factory=list)
    max_network_retries: NonNegative = 2
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    """Limit on each HTTP request to Stripe; a whole call, retries included, is bounded by
    ``timeout_seconds * (max_network_retries + 1) + 5 s * max_network_retries`` (55 s with
    the defaults), below ``[webhooks] lease_seconds``."""


class WebhookSettings(_Section, frozen=True):
    """``[webhooks]``: intake limits and per-account retry policy."""

    tolerance_seconds: Positive = 300
    max_body_bytes: Positive = 1_048_576
    max_attempts: Positive = 8
    backoff_base_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    backoff_max_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    batch_size: Positive = 50
    lease_seconds: Positive = 60
    sweep_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class WorkerSettings(_Section, frozen=True):
    """``[worker]``: background processing."""

    concurrency: Positive = 64
    """Drain tokens (and plugin tasks) a worker holds unfinished at once: queued or draining."""
    drains: Positive = 4
    """Batched drains a worker runs at once."""
    keys_per_drain: Positive = 16
    """Mailboxes one drain leases in one round trip, then applies in one transaction (each
    key fenced by its own token)."""
    metrics_port: Port = 0
    """Serve the worker's Prometheus metrics on this port (0: not served)."""
    heartbeat_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    metrics_top_mailboxes: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 10
    """How many of the busiest mailboxes the pending metric names (the rest are per kind)."""
    """How often each worker reports itself in ``marketplace_workers`` (read by ``/ready``)."""
    payout_refresh_seconds: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    """How often the workers apply Stripe's list of payouts of the platform and every
    connected account (``engine.payouts.refresh``: at most once per interval across
    all workers), so payouts whose events were lost converge on Stripe's status (0: never)."""


class CommissionSettings(_Section, frozen=True):
    """``[commission]``: the engine's default fee when no plugin decides one."""

    default_bps: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 1000


class PluginsSettings(_Section, frozen=True):
    """``[plugins]``: which installed plugins are enabled.

    Each enabled plugin's own section ``[plugins.<name>]`` is validated by the
    schema that plugin registers; it is kept raw here until then.
    """

    enabled: list[str] = msgspec.field(
        default_factory=lambda: [
            "commission_rules",
            "creator_subscriptions",
            "notifier",
            "reconciliation",
            "three_sided_bookings",
        ]
    )
    sections: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)


class Settings(_Section, frozen=True):
    """The whole validated configuration."""

    engine: EngineSettings = msgspec.field(default_factory=EngineSettings)
    api: ApiSettings = msgspec.field(default_factory=ApiSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    stripe: StripeSettings = msgspec.field(default_factory=StripeSettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    commission: CommissionSettings = msgspec.field(default_factory=CommissionSettings)
    plugins: PluginsSettings = msgspec.field(default_factory=PluginsSettings)

    @property
    def data_path(self) -> Path:
        """The directory for local state (embedded servers, sandbox state)."""
        return Path(self.engine.data_dir).expanduser().resolve()


def replace_section(settings: Settings, section: str, **changes: Any) -> Settings:
    """``settings`` with keys of one section changed (settings are frozen)."""
    current = getattr(settings, section)
    return msgspec.structs.replace(
        settings, **{section: msgspec.structs.replace(current, **changes)}
    )


_RUNNING_UP = "or run this in the directory of a running `marketplace up`"


def require_database_url(settings: Settings) -> str:
    """``database.url``, or a ConfigError saying how to set it."""
    if not settings.database.url:
        raise ConfigError(
            "database.url",
            "is empty: set MARKETPLACE_DATABASE_URL (or database.url in the --config file), "
            + _RUNNING_UP,
        )
    return settings.database.url


def require_nats_url(settings: Settings) -> list[str]:
    """The NATS servers of ``nats.url``, or a ConfigError saying how to set them."""
    if not settings.nats.servers:
        raise ConfigError(
            "nats.url",
            "is empty: set MARKETPLACE_NATS_URL (or nats.url in the --config file), " + _RUNNING_UP,
        )
    return settings.nats.servers


# Environment variable -> dotted key. Values are parsed as TOML values when they
# look like one (numbers, booleans, arrays), else taken as strings.
ENV_OVERRIDES: Mapping[str, str] = {
    # Unprefixed names first so the MARKETPLACE_ ones win when both are set.
    "DATABASE_URL": "database.url",
    "NATS_URL": "nats.url",
    "STRIPE_SECRET_KEY": "stripe.secret_key",
    "MARKETPLACE_DATABASE_URL": "database.url",
    "MARKETPLACE_NATS_URL": "nats.url",
    "MARKETPLACE_STRIPE_SECRET_KEY": "stripe.secret_key",
    "MARKETPLACE_STRIPE_API_BASE": "stripe.api_base",
    "MARKETPLACE_STRIPE_WEBHOOK_SECRETS": "stripe.webhook_secrets",
    "MARKETPLACE_STRIPE_CONNECT_WEBHOOK_SECRETS": "stripe.connect_webhook_secrets",
    "MARKETPLACE_API_HOST": "api.host",
    "MARKETPLACE_API_PORT": "api.port",
    "MARKETPLACE_DATA_DIR": "engine.data_dir",
    "MARKETPLACE_PUBLIC_URL": "engine.public_url",
    "MARKETPLACE_LOG_LEVEL": "engine.log_level",
    "MARKETPLACE_PLUGINS": "plugins.enabled",
}

_LIST_KEYS = frozenset(
    {"stripe.webhook_secrets", "stripe.connect_webhook_secrets", "plugins.enabled"}
)


def _env_value(key: str, raw: str) -> Any:
    if key in _LIST_KEYS:
        return [item.strip() for item in raw.split(",") if item.strip()]
    if re.fullmatch(r"-?\d+", raw.strip()):
        return int(raw)
    return raw


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(part, "must be a table")
        node = child
    node[leaf] = value


def _key_from_msgspec_path(message: str) -> tuple[str, str]:
    """Turn msgspec's ``... - at `$.api.port``` into ("api.port", "...")."""
    match = re.search(r" - at `\$\.?(?P<path>[^`]*)`", message)
    problem = message[: match.start()] if match else message
    path = match.group("path") if match else ""
    unknown = re.match(r"Object contains unknown field `(?P<field>[^`]+)`", problem)
    if unknown:
        path = f"{path}.{unknown.group('field')}" if path else unknown.group("field")
        problem = "unknown key"
    return path or "<root>", problem.strip()


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate a config mapping (as read from TOML) into ``Settings``.

    ``[plugins.<name>]`` tables are moved into ``plugins.sections`` so the core
    schema stays closed while each plugin validates its own section later.
    """
    raw = dict(data)
    plugins = raw.get("plugins")
    if isinstance(plugins, dict):
        plugins = dict(plugins)
        sections = {name: value for name, value in plugins.items() if isinstance(value, dict)}
        for name in sections:
            del plugins[name]
        plugins["sections"] = sections
        raw["plugins"] = plugins
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        key, problem = _key_from_msgspec_path(str(exc))
        raise ConfigError(key, problem) from None
    _check_urls(settings)
    return settings


def _check_urls(settings: Settings) -> None:
    url = settings.database.url
    if url and not url.startswith(("postgres://", "postgresql://")):
        raise ConfigError("database.url", "must be a postgresql:// URL")
    for index, server in enumerate(settings.nats.servers):
        if not server.startswith(("nats://", "tls://")):
            where = "nats.url" if isinstance(settings.nats.url, str) else f"nats.url[{index}]"
            raise ConfigError(where, f"{server!r} is not a nats:// or tls:// URL")
    if not settings.stripe.secret_key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
        raise ConfigError(
            "stripe.secret_key", "must be a Stripe secret key (sk_test_... or sk_live_...)"
        )
    if len(set(settings.plugins.enabled)) != len(settings.plugins.enabled):
        raise ConfigError("plugins.enabled", "lists a plugin twice")


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file (if any), apply environment overrides, validate.

    Args:
        path: a TOML file; ``None`` uses ``MARKETPLACE_CONFIG`` or built-in defaults.
        environ: the environment to read overrides from (``os.environ`` by default).

    Raises:
        ConfigError: naming the key that is wrong.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("MARKETPLACE_CONFIG"):
        path = Path(env["MARKETPLACE_CONFIG"])
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    for variable, key in ENV_OVERRIDES.items():
        if env.get(variable):
            _set_dotted(data, key, _env_value(key, env[variable]))
    return settings_from_mapping(data)
