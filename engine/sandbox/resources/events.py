"""`/v1/events` and `/v1/webhook_endpoints`."""

from __future__ import annotations

from engine.sandbox.errors import invalid
from engine.sandbox.objects import API_VERSION, build, new_id, new_secret
from engine.sandbox.resources.common import require_platform
from engine.sandbox.routing import Route
from engine.sandbox.wire import Call, Obj, page


def retrieve_event(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "event")


def list_events(call: Call) -> Obj:
    type_ = call.str_("type")
    types = set(call.list_("types"))
    created = call.dict_("created") if isinstance(call.params.get("created"), dict) else {}
    exact = call.int_("created") if isinstance(call.params.get("created"), str) else None

    def keep(event: Obj) -> bool:
        kind = event["type"]
        if type_ is not None:
            if type_.endswith("*"):
                if not kind.startswith(type_[:-1]):
                    return False
            elif kind != type_:
                return False
        if types and kind not in types:
            return False
        if exact is not None and event["created"] != exact:
            return False
        return _in_range(event["created"], created)

    return page(
        call,
        call.state.listed(call.account, "event"),
        "/v1/events",
        keep=keep,
        position=call.state.store.position,
    )


def _in_range(value: int, bounds: Obj) -> bool:
    checks = {
        "gt": lambda b: value > b,
        "gte": lambda b: value >= b,
        "lt": lambda b: value < b,
        "lte": lambda b: value <= b,
    }
    return all(checks[k](int(v)) for k, v in bounds.items() if k in checks)


def create_webhook_endpoint(call: Call) -> Obj:
    require_platform(call)
    state = call.state
    url = call.req_str("url")
    if not url.startswith(("http://", "https://")):
        raise invalid("Invalid URL: must be an http(s) URL.", param="url", code="url_invalid")
    enabled = [str(e) for e in call.list_("enabled_events")]
    if not enabled:
        raise invalid(
            "Missing required param: enabled_events.",
            param="enabled_events",
            code="parameter_missing",
        )
    version = call.str_("api_version") or None
    if version is not None and version != API_VERSION:
        raise invalid(
            f"The sandbox renders events in API version {API_VERSION} only; "
            f"api_version {version} is not available here.",
            param="api_version",
        )
    endpoint = build(
        "webhook_endpoint",
        new_id("we"),
        state.now(),
        api_version=version,
        description=call.str_("description"),
        enabled_events=enabled,
        metadata=call.metadata(),
        status="enabled",
        url=url,
    )
    state.put(endpoint, call.account, "webhook_endpoint")
    secret = new_secret("whsec")
    private = state.private(endpoint["id"])
    private.update(secret=secret, connect=call.bool_("connect"))
    state.store.webhook_endpoints.append(endpoint["id"])
    # Stripe returns the signing secret only in the creation response.
    return {**endpoint, "secret": secret}


def retrieve_webhook_endpoint(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "webhook_endpoint")


def update_webhook_endpoint(call: Call) -> Obj:
    endpoint = call.state.get(call.args[0], call.account, "webhook_endpoint")
    if call.has("url"):
        endpoint["url"] = call.req_str("url")
    if call.has("enabled_events"):
        endpoint["enabled_events"] = [str(e) for e in call.list_("enabled_events")]
    if call.has("description"):
        endpoint["description"] = call.str_("description") or None
    if call.has("disabled"):
        endpoint["status"] = "disabled" if call.bool_("disabled") else "enabled"
    if call.has("metadata"):
        endpoint["metadata"] = call.metadata(endpoint["metadata"])
    call.state.dirty = True
    return endpoint


def delete_webhook_endpoint(call: Call) -> Obj:
    state = call.state
    endpoint = state.get(call.args[0], call.account, "webhook_endpoint")
    state.delete(endpoint["id"])
    if endpoint["id"] in state.store.webhook_endpoints:
        state.store.webhook_endpoints.remove(endpoint["id"])
    return build("deleted_webhook_endpoint", endpoint["id"], 0)


def list_webhook_endpoints(call: Call) -> Obj:
    return page(
        call,
        call.state.listed(call.account, "webhook_endpoint"),
        "/v1/webhook_endpoints",
        position=call.state.store.position,
    )


ROUTES = (
    Route("GET", "/v1/events", list_events, "EventListParams"),
    Route("GET", "/v1/events/{}", retrieve_event, "EventRetrieveParams"),
    Route("POST", "/v1/webhook_endpoints", create_webhook_endpoint, "WebhookEndpointCreateParams"),
    Route("GET", "/v1/webhook_endpoints", list_webhook_endpoints, "WebhookEndpointListParams"),
    Route(
        "GET",
        "/v1/webhook_endpoints/{}",
        retrieve_webhook_endpoint,
        "WebhookEndpointRetrieveParams",
    ),
    Route(
        "POST", "/v1/webhook_endpoints/{}", update_webhook_endpoint, "WebhookEndpointUpdateParams"
    ),
    Route(
        "DELETE", "/v1/webhook_endpoints/{}", delete_webhook_endpoint, "WebhookEndpointDeleteParams"
    ),
)
