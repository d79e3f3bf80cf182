"""Control endpoints under `/_sandbox/...`: what Stripe's dashboard (or time) would do.

- `POST /_sandbox/clock/advance` `{"seconds": N}` or `{"to": unix}`; `GET /_sandbox/clock`
- `POST /_sandbox/accounts/{id}/complete_onboarding`, `POST /_sandbox/accounts/{id}/restrict`
- `POST /_sandbox/accounts/{id}/adjustments` `{"amount": N, "currency": "usd"}` (`platform`
  for the platform's balance): an adjustment Stripe makes on a balance (a correction, not a
  dispute's): a balance transaction of type `adjustment`, no source, no event
- `GET /_sandbox/deliveries` (`?event=`, `?endpoint=`, `?status=`),
  `POST /_sandbox/deliveries/wait` (`{"timeout": s}`: until no delivery is in flight)
- `GET /_sandbox/requests` (`?path=`, `?after=SEQ`): the API requests received, oldest first,
  each with its `seq`, `method`, `path`, raw `query`, `account` (`Stripe-Account`),
  `status` and, for a list, how many objects it returned (`listed`)
- `POST /_sandbox/faults` `{"status": 429|500|503, "count": N}`: the next N API requests fail
- `POST /_sandbox/holds` `{"path": "/v1/payouts"}`: API requests to that exact path wait,
  before they are served, until `POST /_sandbox/holds/release` (`{"path": ...}`; none: every
  hold); `GET /_sandbox/holds`: each held path and how many requests wait on it. Stripe
  answering slowly, at the moment a test chooses (what the engine holds meanwhile).
- `POST /_sandbox/reset`
- `GET /_sandbox/onboarding/{id}`: the page an account link points to
- `GET /_sandbox/authenticate/{pi_or_seti}?client_secret=...`: the 3D Secure page a
  `next_action` points to; `POST` it `outcome=complete|fail` (and the `client_secret`)
  to authenticate or fail, then it redirects to the `return_url` if there is one
- `GET /_sandbox/invoices/{id}`: the hosted invoice page (`hosted_invoice_url`)
- `GET /_sandbox/health`
Bodies may be JSON or form-encoded.
"""

from __future__ import annotations

import html
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from engine.sandbox.clock import advance
from engine.sandbox.errors import StripeError, invalid, missing
from engine.sandbox.ledger import add_txn
from engine.sandbox.resources.accounts import complete_onboarding, restrict
from engine.sandbox.resources.payments import authenticate
from engine.sandbox.resources.setup_intents import authenticate_setup
from engine.sandbox.state import GLOBAL
from engine.sandbox.wire import Obj, Params, parse_form

if TYPE_CHECKING:
    from engine.sandbox.app import SandboxApp


@dataclass(slots=True)
class ControlResponse:
    status: int
    body: bytes
    content_type: bytes = b"application/json"
    location: str | None = None


def _json(obj: Any, status: int = 200) -> ControlResponse:
    return ControlResponse(status, msgspec.json.encode(obj))


def _params(body: bytes, content_type: str, query: str) -> Params:
    params: Params = parse_form(query)
    if not body:
        return params
    if "json" in content_type:
        decoded = msgspec.json.decode(body)
        if not isinstance(decoded, dict):
            raise invalid("Expected a JSON object.")
        params.update(decoded)
    else:
        params.update(parse_form(body.decode()))
    return params


def _number(params: Params, name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid integer: {value}", param=name) from None


def _account(app: SandboxApp, account_id: str) -> None:
    state = app.state
    if state.store.kind.get(account_id) != "account" or account_id == state.platform_id:
        raise missing("account", account_id)


async def handle(  # noqa: PLR0917 - the parts of one HTTP request, passed as read
    app: SandboxApp, method: str, path: str, body: bytes, content_type: str, query: str
) -> ControlResponse:
    """Serve one `/_sandbox/...` request."""
    state = app.state
    parts = path.strip("/").split("/")[1:]
    params = _params(body, content_type, query)
    route = (method, *parts)
    match route:
        case ("GET", "health"):
            return _json({"ok": True, "platform": state.platform_id})
        case ("GET", "clock"):
            return _json({"now": state.now()})
        case ("POST", "clock", "advance"):
            seconds = _number(params, "seconds")
            target = _number(params, "to")
            if target is None:
                if seconds is None or seconds < 0:
                    raise invalid("Pass a non-negative `seconds` or a unix time `to`.")
                target = state.now() + seconds
            advance(state, GLOBAL, target)
            app.after_change()
            return _json({"now": state.now()})
        case ("POST", "accounts", account_id, "complete_onboarding"):
            _account(app, account_id)
            number = params.get("account_number")
            try:
                account = complete_onboarding(state, account_id, str(number) if number else None)
            except StripeError as err:
                if "link" not in params:
                    raise
                page = _onboarding_page(app, account_id, params, error=err.message)
                return ControlResponse(400, page.encode(), b"text/html; charset=utf-8")
            app.after_change()
            redirect = params.get("return_url")
            if isinstance(redirect, str) and redirect:
                return ControlResponse(303, b"", b"text/plain", location=redirect)
            return _json(account)
        case ("POST", "accounts", account_id, "adjustments"):
            owner = state.platform_id if account_id == "platform" else account_id
            if owner != state.platform_id:
                _account(app, account_id)
            amount = _number(params, "amount")
            if not amount:
                raise invalid("Pass a non-zero integer `amount`.", param="amount")
            txn = add_txn(
                state,
                owner,
                amount=amount,
                currency=str(params.get("currency") or "usd").lower(),
                type_="adjustment",
                source=None,
                description=str(params.get("description") or "Adjustment"),
            )
            txn["reporting_category"] = "other_adjustment"
            app.after_change()
            return _json(txn)
        case ("POST", "accounts", account_id, "restrict"):
            _account(app, account_id)
            account = restrict(state, account_id)
            app.after_change()
            return _json(account)
        case ("GET", "deliveries"):
            return _json({"object": "list", "data": _deliveries(app, params)})
        case ("GET", "requests"):
            return _json({"object": "list", "data": _requests(app, params)})
        case ("POST", "deliveries", "wait"):
            timeout = float(params.get("timeout", 10))
            idle = await app.dispatcher.wait_idle(timeout)
            return _json({"idle": idle, "data": _deliveries(app, params)})
        case ("POST", "faults"):
            status = _number(params, "status") or 429
            if status not in (429, 500, 503):
                raise invalid("status must be 429, 500 or 503", param="status")
            state.faults.extend([status] * (_number(params, "count") or 1))
            return _json({"queued": len(state.faults)})
        case ("POST", "holds"):
            held = params.get("path")
            if not isinstance(held, str) or not held.startswith("/v1/"):
                raise invalid("Pass the API `path` to hold, e.g. /v1/payouts.", param="path")
            app.hold(held)
            return _json({"object": "list", "data": _holds(app)})
        case ("GET", "holds"):
            return _json({"object": "list", "data": _holds(app)})
        case ("POST", "holds", "release"):
            held = params.get("path")
            app.release_holds(str(held) if held else None)
            return _json({"object": "list", "data": _holds(app)})
        case ("POST", "reset"):
            state.reset()
            app.after_change()
            return _json({"ok": True, "platform": state.platform_id})
        case ("GET", "onboarding", account_id):
            _account(app, account_id)
            return ControlResponse(
                200, _onboarding_page(app, account_id, params).encode(), b"text/html; charset=utf-8"
            )
        case ("GET", "authenticate", intent_id):
            intent = _intent(app, intent_id, params)
            return _html(_authentication_page(intent, params))
        case ("POST", "authenticate", intent_id):
            intent = _intent(app, intent_id, params)
            outcome = params.get("outcome")
            if outcome not in ("complete", "fail"):
                raise invalid("outcome must be `complete` or `fail`", param="outcome")
            if intent["object"] == "setup_intent":
                intent = authenticate_setup(state, intent_id, success=outcome == "complete")
            else:
                intent = authenticate(state, intent_id, success=outcome == "complete")
            app.after_change()
            return_url = state.private(intent_id).get("return_url")
            if return_url:
                separator = "&" if "?" in return_url else "?"
                kind = "setup_intent" if intent["object"] == "setup_intent" else "payment_intent"
                query = urllib.parse.urlencode(
                    {kind: intent_id, f"{kind}_client_secret": intent["client_secret"]}
                )
                return ControlResponse(
                    303, b"", b"text/plain", location=f"{return_url}{separator}{query}"
                )
            return _json(intent)
        case ("GET", "invoices", invoice_id):
            if state.store.kind.get(invoice_id) != "invoice":
                raise missing("invoice", invoice_id)
            return _html(_invoice_page(app, state.objects[invoice_id]))
        case ("GET", "dashboard", account_id):
            _account(app, account_id)
            return _json(state.objects[account_id])
    raise StripeError(404, f"Unrecognized sandbox control URL ({method}: {path}).")


def _html(page: str) -> ControlResponse:
    return ControlResponse(200, page.encode(), b"text/html; charset=utf-8")


def _intent(app: SandboxApp, intent_id: str, params: Params) -> Obj:
    """The PaymentIntent or SetupIntent being authenticated; its client secret must match."""
    state = app.state
    kind = state.store.kind.get(intent_id)
    if kind not in ("payment_intent", "setup_intent"):
        raise missing("payment_intent", intent_id)
    intent = state.objects[intent_id]
    if params.get("client_secret") != intent["client_secret"]:
        raise StripeError(
            400,
            "The client_secret provided does not match the client_secret associated with "
            f"{intent_id}.",
            code="resource_missing",
            param="client_secret",
        )
    return intent


def _authentication_page(intent: Obj, params: Params) -> str:
    intent_id = html.escape(intent["id"])
    secret = html.escape(intent["client_secret"])
    amount = ""
    if intent["object"] == "payment_intent":
        amount = (
            f"<p>Amount: {intent['amount']} {html.escape(intent['currency'])} (minor units)</p>"
        )
    status = html.escape(intent["status"])
    forms = "".join(
        f"""<form method="post" action="/_sandbox/authenticate/{intent_id}">
<input type="hidden" name="client_secret" value="{secret}">
<input type="hidden" name="outcome" value="{outcome}">
<button type="submit" name="{outcome}">{label}</button></form>"""
        for outcome, label in (
            ("complete", "Complete authentication"),
            ("fail", "Fail authentication"),
        )
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox 3D Secure</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>3D Secure test page</h1>
<p>This page stands in for the card issuer's authentication of {intent_id}
(status: {status}).</p>{amount}
{forms if intent["status"] == "requires_action" else "<p>Nothing to authenticate.</p>"}
</body></html>"""


def _invoice_page(app: SandboxApp, invoice: Obj) -> str:
    state = app.state
    intent = state.find(state.private(invoice["id"]).get("intent") or "")
    action = ""
    if intent is not None and intent["status"] == "requires_action":
        query = urllib.parse.urlencode({"client_secret": intent["client_secret"]})
        href = html.escape(f"/_sandbox/authenticate/{intent['id']}?{query}")
        action = f'<p><a href="{href}">Authenticate the payment</a></p>'
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Invoice {html.escape(invoice["id"])}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>Invoice {html.escape(str(invoice["number"] or invoice["id"]))}</h1>
<p>Status: {html.escape(str(invoice["status"]))}; amount due {invoice["amount_remaining"]}
{html.escape(invoice["currency"])} (minor units).</p>{action}
</body></html>"""


def _requests(app: SandboxApp, params: Params) -> list[Obj]:
    path = params.get("path")
    after = _number(params, "after") or 0
    return [
        entry
        for entry in app.requests
        if entry["seq"] > after and (path is None or entry["path"] == path)
    ]


def _holds(app: SandboxApp) -> list[Obj]:
    return [{"path": path, "waiting": hold.waiting} for path, hold in app.holds.items()]


def _deliveries(app: SandboxApp, params: Params) -> list[Obj]:
    filters = {k: params[k] for k in ("event", "endpoint", "status", "event_type") if k in params}
    return [
        d
        for d in app.state.store.deliveries.values()
        if all(d.get(k) == v for k, v in filters.items())
    ]


def _onboarding_page(
    app: SandboxApp, account_id: str, params: Params, error: str | None = None
) -> str:
    link_id = str(params.get("link", ""))
    link = app.state.private(account_id).get("links", {}).get(link_id, {})
    return_url = str(link.get("return_url", "") or params.get("return_url", ""))
    action = f"/_sandbox/accounts/{urllib.parse.quote(account_id)}/complete_onboarding"
    number = html.escape(str(params.get("account_number") or "000123456789"))
    problem = f'<p role="alert" style="color: #b00">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sandbox onboarding</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>Sandbox onboarding for {html.escape(account_id)}</h1>
<p>This page stands in for Stripe's hosted onboarding. Completing it provides every
requirement with Stripe's test values and the bank account below, which must be one of
Stripe's test accounts: a US account number (routing 110000000) such as 000123456789
(payouts succeed) or 000111111116 (payouts fail, no_account), or a test IBAN such as
DE89370400440532013000 (any EU country prefix).</p>{problem}
<form method="post" action="{html.escape(action)}">
<input type="hidden" name="return_url" value="{html.escape(return_url)}">
<input type="hidden" name="link" value="{html.escape(link_id)}">
<label>Bank account number or IBAN
<input name="account_number" value="{number}" required></label>
<button type="submit">Complete onboarding</button>
</form></body></html>"""
