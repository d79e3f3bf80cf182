"""The API against its own OpenAPI schema: generated requests, no 5xx, every response declared.

Schemathesis loads ``/schema/openapi.json`` from the app (ASGI, in-process) and
sends a bounded number of generated requests per operation, valid and invalid,
once with an admin key and once with a connected account's own key (a
creator's). Objects of each kind are made first and every other request aims
at them (``support.fuzz``), so requests reach real objects in real states. Every
response must be a non-5xx whose status, content type, headers and body the
schema declares, problems included. The app runs with every shipped plugin, the
webhook intake and the offline Stripe sandbox, so the whole published surface is
exercised. ``scripts/fuzz_api.py`` is the long run (10,000 requests and more).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.fuzz import ADMIN_KEY, fuzz, fuzz_app, fuzz_settings, migrated, seed_objects

from engine.core.settings import Settings
from engine.sandbox.testing import RunningSandbox, running_sandbox

# Examples per operation, generation mode (valid, invalid) and key: bounded by
# count, not by a clock (a busy machine is slower, not wrong); about 700 requests.
EXAMPLES = {"admin": 3, "account": 2}


@pytest.fixture
async def fuzz_setup(
    fresh_database_url: str, nats_url: str, unique_name: str
) -> AsyncIterator[tuple[Settings, RunningSandbox]]:
    with running_sandbox() as sandbox:
        settings = fuzz_settings(fresh_database_url, nats_url, unique_name.upper(), sandbox.url)
        yield await migrated(settings), sandbox


def test_every_operation_conforms_to_the_published_schema(
    fuzz_setup: tuple[Settings, RunningSandbox],
) -> None:
    settings, sandbox = fuzz_setup
    with fuzz_app(settings) as app:
        seeds = seed_objects(app, sandbox)
        keys = {"admin": ADMIN_KEY, "account": seeds.account_key}
        report = fuzz(app, keys, examples=EXAMPLES, path_ids=seeds.path_ids)
    assert report.requests > 300, report.summary()
    assert report.failures == [], "\n".join([*report.summary(), *report.failures[:20]])
    assert report.server_errors == 0
    # Both keys reached the handlers: successes and refusals alike.
    assert {200, 403, 404} <= set(report.statuses), report.statuses
