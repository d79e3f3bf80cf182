"""Schemathesis over the whole published API, as an admin and as a connected account.

Shared by ``tests/contract/test_openapi_schemathesis.py`` (a few hundred
requests in ``make test``) and ``scripts/fuzz_api.py`` (a long run). The app is
the real one (every shipped plugin, the webhook intake, PostgreSQL, NATS and the
offline Stripe sandbox), driven in-process through ASGI. Every generated
request, valid or not, must answer a non-5xx response whose status, content
type, headers and body the schema declares (problems included).

Before fuzzing, ``seed_objects`` creates one of each kind through the API (an
onboarded creator with a tier, a fan, a subscription and a tip; a provider, a
venue, a service and a paid booking) and an account key of the creator's own.
Every other generated request has its path ids replaced by these (unless the
path is what an invalid request got wrong), so generated bodies and queries
reach real objects in real states, not only 404s.

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
from datetime import UTC, datetime
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from litestar import Litestar
from litestar.testing import TestClient
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
from engine.core.db import migrate
from engine.core.plugins import build_plugins
from engine.core.settings import Settings, settings_from_mapping
from engine.sandbox.testing import RunningSandbox

__all__ = [
    "ADMIN_KEY",
    "CHECKS",
    "MODES",
    "Report",
    "Seeds",
    "fuzz",
    "fuzz_app",
    "fuzz_settings",
    "migrated",
    "new_stream_name",
    "operation_count",
    "seed_objects",
]

ADMIN_KEY = "mk_fuzzadmin_" + "d" * 40
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

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


async def migrated(settings: Settings) -> Settings:
    """Migrate the run's database for every enabled plugin."""
    await migrate(settings.database.url, build_plugins(settings).table_apps())
    return settings


@dataclass(frozen=True)
class Seeds:
    """Objects made before fuzzing: path ids to aim at, and the creator's own key."""

    path_ids: dict[str, str]
    account_key: str


def seed_objects(app: Litestar, sandbox: RunningSandbox) -> Seeds:
    """One object of each kind, made through the API as a client would."""
    with TestClient(app) as client:

        def call(method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
            response = client.request(method, path, json=body, headers=ADMIN)
            if response.status_code >= 300:
                raise RuntimeError(f"seeding {method} {path}: {response.text}")
            return response.json()

        def onboarded(account_id: str) -> str:
            sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
            call("POST", f"/v1/accounts/{account_id}/refresh")
            return account_id

        cs, tsb = "/v1/creator_subscriptions", "/v1/three_sided_bookings"
        creator = call("POST", f"{cs}/creators", {"handle": "fuzzada", "display_name": "Ada"})
        account = onboarded(str(creator["creator"]["account_id"]))
        tier = call("POST", f"{cs}/creators/{account}/tiers", {"name": "Gold", "amount": 900})
        fan = call(
            "POST",
            f"{cs}/fans",
            {"external_ref": "fuzz-fan", "name": "Fan", "payment_method": "pm_card_visa"},
        )
        subscription = call(
            "POST", f"{cs}/subscriptions", {"fan_id": fan["id"], "tier_id": tier["id"]}
        )
        tip = call(
            "POST",
            f"{cs}/payments/tips",
            {"fan_id": fan["id"], "creator_account_id": account, "amount": 500},
        )
        parties = {
            role: onboarded(
                str(
                    call("POST", "/v1/accounts", {"role": role, "display_name": role})["account"][
                        "id"
                    ]
                )
            )
            for role in ("provider", "venue")
        }
        service = call(
            "POST",
            f"{tsb}/services",
            {"name": "Massage", "service_type": "massage", "duration_minutes": 60, "price": 9000},
        )
        provider = call(
            "POST", f"{tsb}/providers", {"account_id": parties["provider"], "display_name": "P"}
        )
        venue = call("POST", f"{tsb}/venues", {"account_id": parties["venue"], "display_name": "V"})
        now = int(sandbox.control("GET", "/_sandbox/clock")["now"])
        booking = call(
            "POST",
            f"{tsb}/bookings",
            {
                "service_id": service["id"],
                "provider_id": provider["id"],
                "venue_id": venue["id"],
                "starts_at": datetime.fromtimestamp(now + 3 * 86_400, UTC).isoformat(),
                "payment_model": "full",
                "customer": {"name": "Customer"},
                "payment_method": "pm_card_visa",
            },
        )
        key = call("POST", "/v1/api-keys", {"scope": "account", "account_id": account})
    path_ids = {
        "account_id": account,
        "tier_id": tier["id"],
        "fan_id": fan["id"],
        "subscription_id": subscription["id"],
        "payment_id": tip["id"],
        "service_id": service["id"],
        "provider_id": provider["id"],
        "venue_id": venue["id"],
        "booking_id": booking["id"],
    }
    return Seeds({name: str(value) for name, value in path_ids.items()}, str(key["key"]))


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
    path_ids: Mapping[str, str] | None = None,
) -> Report:
    """Generate requests for every operation, valid and invalid, with each key.

    Args:
        app: the API.
        keys: a label (``admin``, ``account``) and the API key to send.
        examples: the most examples per operation, generation mode and key label.
        seed: Hypothesis' seed (the same seed sends the same requests).
        report: a report to add to (several passes of the script).
        only: operation labels (``"GET /v1/accounts"``) to restrict the run to.
        path_ids: ids of seeded objects by path parameter name: every other
            request aims at them.
    """
    report = report or Report()
    for operation in _operations(app, only):
        for key_label, key in keys.items():
            headers = {"Authorization": f"Bearer {key}"}
            for mode in MODES:
                run = _runner(
                    operation, mode, headers, examples[key_label], seed, report, path_ids or {}
                )
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
    path_ids: Mapping[str, str],
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
        if report.requests % 2 and case.path_parameters and _path_is_valid(case):
            for name in case.path_parameters:
                if name in path_ids:
                    case.path_parameters[name] = path_ids[name]
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


def _path_is_valid(case: schemathesis.Case) -> bool:
    """Whether replacing the path ids keeps the case what it was (valid, or invalid elsewhere)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_negative:
        return True
    data = meta.phase.data
    negated = {data.parameter_location, *(m.parameter_location for m in data.mutations)}
    return all(loc is not None and loc.value in {"body", "query"} for loc in negated)


def new_stream_name() -> str:
    """A NATS stream of the run's own."""
    return f"FUZZ_{secrets.token_hex(4).upper()}"
