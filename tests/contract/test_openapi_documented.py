"""The published OpenAPI describes every operation: what it does, its errors, closed bodies.

Built from the app with every shipped plugin, the webhook intake and the example
plugin (``examples/course_sales``), without starting any service: the schema is
the app's own. Every operation needs a summary written for people (not
Litestar's default, the handler's name), a description, and its error responses;
every request body schema, and every object schema it contains, refuses
unknown fields (``additionalProperties: false``), as the API does.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.api.app import create_app_from_settings
from engine.core.plugins import build_plugins
from engine.core.settings import Settings, settings_from_mapping

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "course_sales"
METHODS = ("get", "put", "post", "delete", "patch")
NEVER_FAILS = {"GET /health"}
"""Liveness answers 200 whenever the process answers at all (its ``default`` problem aside)."""


@pytest.fixture(scope="module")
def openapi() -> Iterator[dict[str, Any]]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        import course_sales.hooks  # the example, from its source

        enabled = [*Settings().plugins.enabled, "course_sales"]
        settings = settings_from_mapping(
            {
                "engine": {"public_url": "http://marketplace.test"},
                "database": {"url": "postgresql://unused/unused"},
                "nats": {"url": "nats://127.0.0.1:1"},
                "stripe": {"secret_key": "sk_test_openapi"},
                "plugins": {"enabled": enabled},
            }
        )
        plugins = build_plugins(settings, extra={"course_sales": course_sales.hooks})
        app = create_app_from_settings(settings, plugins=plugins, webhooks=True)
        yield app.openapi_schema.to_schema()
    finally:
        sys.path.remove(str(EXAMPLE))
        for name in [name for name in sys.modules if name.split(".")[0] == "course_sales"]:
            del sys.modules[name]


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def test_every_operation_has_a_summary_a_description_and_its_errors(
    openapi: dict[str, Any],
) -> None:
    labels = set()
    problems = []
    for label, operation in _operations(openapi):
        labels.add(label)
        summary = str(operation.get("summary") or "")
        description = str(operation.get("description") or "").strip()
        if " " not in summary.strip():
            # Litestar's default summary is the handler's name ("ListProviders").
            problems.append(f"{label}: summary {summary!r} is not a sentence")
        if not description or description == summary:
            problems.append(f"{label}: no description beyond the summary")
        errors = [status for status in operation.get("responses", {}) if status[:1] in "45"]
        if not errors and label not in NEVER_FAILS:
            problems.append(f"{label}: no error responses documented")
        for status, response in operation.get("responses", {}).items():
            if not str(response.get("description") or "").strip():
                problems.append(f"{label}: response {status} has no description")
    assert not problems, "\n".join(problems)
    assert {"POST /v1/course_sales/enrollments", "POST /webhooks/stripe"} <= labels
    assert "GET /v1/three_sided_bookings/providers" in labels


def test_every_request_body_refuses_unknown_fields(openapi: dict[str, Any]) -> None:
    components = openapi["components"]["schemas"]
    open_objects = []
    bodies = 0
    for label, operation in _operations(openapi):
        for content in operation.get("requestBody", {}).get("content", {}).values():
            bodies += 1
            for where, schema in _object_schemas(content["schema"], components, set()):
                if schema.get("additionalProperties") is not False:
                    open_objects.append(f"{label}: {where}")
    assert not open_objects, "open request schemas:\n" + "\n".join(open_objects)
    assert bodies > 25


def _object_schemas(
    schema: dict[str, Any], components: dict[str, Any], seen: set[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object schema with declared properties reachable from ``schema``."""
    ref = schema.get("$ref")
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        if name in seen:
            return
        seen.add(name)
        target = components[name]
        if "properties" in target:
            yield name, target
        yield from _object_schemas(target, components, seen)
        return
    for key in ("oneOf", "anyOf", "allOf", "prefixItems"):
        for item in schema.get(key, []):
            yield from _object_schemas(item, components, seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _object_schemas(schema[key], components, seen)
    for name, prop in schema.get("properties", {}).items():
        if isinstance(prop, dict):
            if "properties" in prop and "$ref" not in prop:
                yield name, prop
            yield from _object_schemas(prop, components, seen)
