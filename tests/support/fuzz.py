"""Schemathesis over the whole published API, as an admin and as a connected account.

Shared by ``tests/contract/test_openapi_schemathesis.py`` (a few hundred
requests in ``make test``) and ``scripts/fuzz_api.py`` (a long run). The app is
the real one (every shipped plugin, the webhook intake, PostgreSQL, NATS and the
offline Stripe sandbox), driven in-process through ASGI. Every generated
request, valid or not, must answer a non-5xx response whose status, content
type, headers and body the schema declares (problems included).

A failing check is recorded, not raised inside Hypothesis: the run goes on (no
shrinking), every request is counted, and the caller decides (the test fails on
any failure, the script reports them).
"""

from __future__ import annotations

import contextlib
import secrets
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from litestar import Litestar
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.api.app import create_app_from_settings
from engine.api.keys import create_api_key
from engine.core.db import migrate
from engine.core.plugins import build_plugins
from engine.core.settings import Settings, settings_from_mapping

__all__ = [
    "ADMIN_KEY",
    "CHECKS",
    "FUZZ_ACCOUNT",
    "MODES",
    "Report",
    "account_key",
    "fuzz",
    "fuzz_app",
    "fuzz_settings",
    "new_stream_name",
    "operation_count",
]

ADMIN_KEY = "mk_fuzzadmin_" + "d" * 40
FUZZ_ACCOUNT = "acct_fuzzcreator"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    allow_header_conformance,
]

MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass
class Report:
    """What a run sent and what came back."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        """Responses with a 5xx status."""
        return sum(count for status, count in self.statuses.items() if status >= 500)

    def summary(self) -> list[str]:
        """The lines ``scripts/fuzz_api.py`` prints."""
        by_class = Counter(f"{status // 100}xx" for status in self.statuses.elements())
        return [
            f"fuzz: requests {self.requests}",
            f"fuzz: 5xx {self.server_errors}",
            f"fuzz: failed checks {len(self.failures)}",
            "fuzz: statuses " + ", ".join(f"{k} {v}" for k, v in sorted(by_class.items())),
        ]


def fuzz_settings(database_url: str, nats_url: str, stream: str, sandbox_url: str) -> Settings:
    """Every shipped plugin and the webhook intake, Stripe being the sandbox."""
    return settings_from_mapping(
        {
            "engine": {"public_url": "http://marketplace.test"},
            "api": {"bootstrap_admin_key": ADMIN_KEY},
            "database": {"url": database_url, "pool_min": 1, "pool_max": 4},
            "nats": {"url": nats_url, "stream": stream},
            "stripe": {
                "secret_key": "sk_test_fuzz",
                "api_base": sandbox_url,
                "max_network_retries": 0,
            },
        }
    )


async def account_key(settings: Settings) -> str:
    """Migrate the database, add an active creator account and return a key of its own."""
    url = settings.database.url
    await migrate(url, build_plugins(settings).table_apps())
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        await pool.execute(
            "INSERT INTO marketplace_accounts (stripe_account_id, role, display_name, email, "
            "country, default_currency, status, charges_enabled, payouts_enabled, "
            "requirements_due, created_at, updated_at) "
            "VALUES ($1, 'creator', 'Fuzz creator', '', 'US', 'usd', 'active', true, true, "
            "'[]'::jsonb, now(), now()) ON CONFLICT DO NOTHING",
            FUZZ_ACCOUNT,
        )
        _, plaintext = await create_api_key(pool, "account", FUZZ_ACCOUNT, label="fuzz")
    finally:
        await pool.close()
    return plaintext


@contextlib.contextmanager
def fuzz_app(settings: Settings) -> Iterator[Litestar]:
    """The app; schemathesis runs it (and its lifespan) on its own event-loop thread."""
    yield create_app_from_settings(settings)
    with contextlib.suppress(Exception):
        shutdown_lifespans()


def operation_count(app: Litestar, only: Sequence[str] = ()) -> int:
    """How many operations a run covers."""
    return len(_operations(app, only))


def _operations(app: Litestar, only: Sequence[str]) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    return [
        operation
        for operation in operations
        if not only or f"{operation.method.upper()} {operation.path}" in only
    ]


def fuzz(
    app: Litestar,
    keys: Mapping[str, str],
    *,
    examples: Mapping[str, int],
    seed: int = 0,
    report: Report | None = None,
    only: Sequence[str] = (),
) -> Report:
    """Generate requests for every operation, valid and invalid, with each key.

    Args:
        app: the API.
        keys: a label (``admin``, ``account``) and the API key to send.
        examples: the most examples per operation, generation mode and key label.
        seed: Hypothesis' seed (the same seed sends the same requests).
        report: a report to add to (several passes of the script).
        only: operation labels (``"GET /v1/accounts"``) to restrict the run to.
    """
    report = report or Report()
    for operation in _operations(app, only):
        for key_label, key in keys.items():
            headers = {"Authorization": f"Bearer {key}"}
            for mode in MODES:
                run = _runner(operation, mode, headers, examples[key_label], seed, report)
                # Operations without parameters or body have nothing to make invalid.
                with contextlib.suppress(Unsatisfiable):
                    run()
    return report


def _runner(  # noqa: PLR0917  # one call site, every argument needed
    operation: Any,
    mode: schemathesis.GenerationMode,
    headers: dict[str, str],
    max_examples: int,
    seed: int,
    report: Report,
) -> Any:
    @hypothesis_seed(seed)
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        report.requests += 1
        report.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except Exception as failure:  # every failed check is recorded
            first_line = str(failure).strip().splitlines()[:3]
            report.failures.append(
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                + " | ".join(first_line)
            )

    return run


def new_stream_name() -> str:
    """A NATS stream of the run's own."""
    return f"FUZZ_{secrets.token_hex(4).upper()}"
