"""The API against its own OpenAPI schema: generated requests, no 5xx, every response declared.

Schemathesis loads ``/schema/openapi.json`` from the app (ASGI, in-process) and
sends a bounded number of generated requests per operation, valid and invalid,
authenticated with an admin key. Every response must be a non-5xx whose status,
content type, headers and body the schema declares, problems included. The app
runs with every shipped plugin, the webhook intake and the offline Stripe
sandbox, so the whole published surface is exercised.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from litestar import Litestar
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.api.app import create_app_from_settings
from engine.core.db import migrate
from engine.core.plugins import build_plugins
from engine.core.settings import Settings, settings_from_mapping
from engine.sandbox.testing import running_sandbox

ADMIN_KEY = "mk_contractadmin_" + "d" * 40
EXAMPLES_PER_OPERATION = 25

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
async def contract_settings(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[Settings]:
    with running_sandbox() as sandbox:
        config = settings_from_mapping(
            {
                "engine": {"public_url": "http://marketplace.test"},
                "api": {"bootstrap_admin_key": ADMIN_KEY},
                "database": {"url": fresh_database_url, "pool_min": 1, "pool_max": 4},
                "nats": {"url": nats_url, "stream": unique_name.upper()},
                "stripe": {
                    "secret_key": "sk_test_contract",
                    "api_base": sandbox.url,
                    "max_network_retries": 0,
                },
            }
        )
        await migrate(fresh_database_url, build_plugins(config).table_apps())
        yield config


@pytest.fixture
def contract_app(contract_settings: Settings) -> Iterator[Litestar]:
    # Schemathesis runs the app (and its lifespan: pools, NATS, webhook
    # publisher) on its own event-loop thread, so the app opens its services.
    yield create_app_from_settings(contract_settings)
    with contextlib.suppress(Exception):
        shutdown_lifespans()


def _runner(operation: Any, mode: schemathesis.GenerationMode) -> Callable[[], None]:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=auth, checks=CHECKS)

    return run


def test_every_operation_conforms_to_the_published_schema(contract_app: Litestar) -> None:
    # Bounded by examples per operation, not by a clock: a busy machine is slower, not wrong.
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", contract_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{operation.method.upper()} {operation.path}" for operation in operations}
    assert "POST /v1/accounts" in labels
    assert "POST /webhooks/stripe" in labels
    for operation in operations:
        _runner(operation, schemathesis.GenerationMode.POSITIVE)()
        # Operations without parameters or body have nothing to make invalid.
        with contextlib.suppress(Unsatisfiable):
            _runner(operation, schemathesis.GenerationMode.NEGATIVE)()
