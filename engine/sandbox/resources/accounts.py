"""Connected accounts: create/update/verify, capabilities, external accounts, links, onboarding.

Verification follows Stripe's test values (TEST-VALUES.md): a Custom account
with `individual[dob]` 1901-01-01 or 1902-01-01, `tos_acceptance`,
`business_profile` (url or product description) and an external account is
enabled at once (a company needs `company[name]`, `company[tax_id]` and a verified
representative, `resources/persons.py`); other dates leave `individual.verification.document` due,
`address_no_match` and id number `111111111` fail. Express and Standard accounts
are enabled when onboarding completes (`POST /_sandbox/accounts/{id}/complete_onboarding`,
which the account-link page calls).
"""

from __future__ import annotations

import copy
from typing import Any

from engine.sandbox.errors import invalid
from engine.sandbox.events import emit
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.common import (
    connected_account,
    copy_fields,
    merge_nested,
    require_platform,
)
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, Params, page, to_bool

VERIFIED_DOBS = frozenset({(1901, 1, 1), (1902, 1, 1)})
HOSTED_DUE = (
    "business_profile.product_description",
    "business_profile.support_phone",
    "business_profile.url",
    "external_account",
    "tos_acceptance.date",
    "tos_acceptance.ip",
)
# Stripe's test bank account numbers -> payout failure code (None: payouts succeed).
PAYOUT_FAILURES: dict[str, str | None] = {
    "000123456789": None,
    "000111111116": "no_account",
    "000111111113": "account_closed",
    "000222222227": "insufficient_funds",
    "000333333335": "debit_not_authorized",
    "000444444440": "invalid_currency",
    "DE89370400440532013000": None,
    "DE62370400440532013001": "no_account",
    "DE89370400440532013002": "account_closed",
    "DE89370400440532013003": "insufficient_funds",
    "DE89370400440532013004": "debit_not_authorized",
    "DE89370400440532013005": "invalid_currency",
}
_IBAN_SUFFIX_FAILURES = {
    "2013001": "no_account",
    "2013002": "account_closed",
    "2013003": "insufficient_funds",
    "2013004": "debit_not_authorized",
    "2013005": "invalid_currency",
}
_BANK_TOKENS = {
    "noaccount": "000111111116",
    "accountclosed": "000111111113",
    "insufficientfunds": "000222222227",
    "debitnotauthorized": "000333333335",
    "invalidcurrency": "000444444440",
}
_CONTROLLERS: dict[str, Obj] = {
    "express": {
        "fees": {"payer": "application"},
        "is_controller": True,
        "losses": {"payments": "application"},
        "requirement_collection": "stripe",
        "stripe_dashboard": {"type": "express"},
        "type": "application",
    },
    "custom": {
        "fees": {"payer": "application"},
        "is_controller": True,
        "losses": {"payments": "application"},
        "requirement_collection": "application",
        "stripe_dashboard": {"type": "none"},
        "type": "application",
    },
    "standard": {"is_controller": True, "type": "application"},
}


def payout_failure_code(account_number: str) -> str | None:
    """The failure Stripe's test mode gives payouts to this bank account number."""
    if account_number in PAYOUT_FAILURES:
        return PAYOUT_FAILURES[account_number]
    if account_number[:2].isalpha():
        return _IBAN_SUFFIX_FAILURES.get(account_number[-7:])
    return None


# -- accounts -------------------------------------------------------------------------


def create_account(call: Call) -> Obj:
    require_platform(call)
    state = call.state
    params = call.params
    type_ = _account_type(params)
    account_id = new_id("acct", 16)
    country = call.str_("country") or "US"
    currency = call.str_("default_currency") or _default_currency(country)
    account = build(
        "account",
        account_id,
        state.now(),
        type=type_,
        controller=copy.deepcopy(_CONTROLLERS[type_]),
        country=country,
        default_currency=currency,
        email=call.str_("email"),
        business_type=call.str_("business_type"),
        metadata=call.metadata(),
        capabilities={},
    )
    account["external_accounts"]["url"] = f"/v1/accounts/{account_id}/external_accounts"
    account["settings"]["payouts"]["schedule"] = {"delay_days": 2, "interval": "daily"}
    account["settings"]["dashboard"]["display_name"] = None
    state.put(account, state.platform_id, "account")
    state.store.connected.append(account_id)
    private = state.private(account_id)
    private["requested"] = _requested_capabilities(call.dict_("capabilities"), type_)
    _apply_profile(call, account, private)
    if call.has("external_account"):
        _add_external_account(call, account, call.params["external_account"], "external_account")
    evaluate(state, account_id)
    return account


def _account_type(params: Params) -> str:
    type_ = params.get("type")
    if isinstance(type_, str) and type_:
        if type_ not in _CONTROLLERS:
            raise invalid("Invalid type: must be one of custom, express, or standard", param="type")
        return type_
    controller = params.get("controller")
    if isinstance(controller, dict):
        dashboard = controller.get("stripe_dashboard", {})
        dash_type = dashboard.get("type") if isinstance(dashboard, dict) else None
        if dash_type == "express":
            return "express"
        if dash_type == "none":
            return "custom"
    return "standard"


def _default_currency(country: str) -> str:
    euro = {"AT", "BE", "DE", "ES", "FI", "FR", "IE", "IT", "LU", "NL", "PT", "GR"}
    mapping = {"US": "usd", "GB": "gbp", "CA": "cad", "AU": "aud", "JP": "jpy", "CH": "chf"}
    return "eur" if country in euro else mapping.get(country, "usd")


def _requested_capabilities(raw: Params, type_: str) -> list[str]:
    requested = [
        name
        for name, value in raw.items()
        if isinstance(value, dict) and to_bool(value.get("requested", "false"), "capabilities")
    ]
    if not requested:
        requested = ["card_payments", "transfers"]
    return requested


def _apply_profile(call: Call, account: Obj, private: dict[str, Any]) -> None:
    params = call.params
    if "business_profile" in params:
        merge_nested(account["business_profile"], call.dict_("business_profile"))
    if "tos_acceptance" in params:
        tos = call.dict_("tos_acceptance")
        merge_nested(account["tos_acceptance"], tos)
        if account["tos_acceptance"].get("date") is not None:
            account["tos_acceptance"]["date"] = int(account["tos_acceptance"]["date"])
    if "settings" in params:
        settings = call.dict_("settings")
        schedule = (
            settings.get("payouts", {}).get("schedule")
            if isinstance(settings.get("payouts"), dict)
            else None
        )
        merge_nested(account["settings"], settings)
        if isinstance(schedule, dict):
            _normalise_schedule(account["settings"]["payouts"]["schedule"])
    for key in ("individual", "company"):
        if key in params:
            current = private.setdefault(key, {})
            merge_nested(current, call.dict_(key))
    if "individual" in params and not account["business_type"]:
        account["business_type"] = "individual"


def _normalise_schedule(schedule: Obj) -> None:
    interval = schedule.get("interval", "daily")
    if interval not in ("manual", "daily", "weekly", "monthly"):
        raise invalid("Invalid payout interval", param="settings[payouts][schedule][interval]")
    delay = schedule.get("delay_days", 2)
    schedule["delay_days"] = 2 if delay == "minimum" else int(delay)
    if "monthly_anchor" in schedule:
        schedule["monthly_anchor"] = int(schedule["monthly_anchor"])


def retrieve_account(call: Call) -> Obj:
    return connected_account(call, call.args[0])


def retrieve_current(call: Call) -> Obj:
    return call.state.objects[call.account]


def update_account(call: Call) -> Obj:
    state = call.state
    account = connected_account(call, call.args[0])
    account_id = account["id"]
    before = _snapshot(account)
    previous = copy_fields(account, call.params, ("email", "business_type"))
    if call.has("metadata"):
        previous["metadata"] = account["metadata"]
        account["metadata"] = call.metadata(account["metadata"])
    private = state.private(account_id)
    if call.has("capabilities"):
        extra = _requested_capabilities(call.dict_("capabilities"), account["type"])
        private["requested"] = sorted(set(private.get("requested", [])) | set(extra))
    _apply_profile(call, account, private)
    if call.has("external_account"):
        _add_external_account(call, account, call.params["external_account"], "external_account")
    evaluate(state, account_id, emit_update=False)
    previous.update(_diff(before, account))
    emit(state, "account.updated", account, account=account_id, previous=previous)
    return account


def delete_account(call: Call) -> Obj:
    require_platform(call)
    state = call.state
    account = connected_account(call, call.args[0])
    state.delete(account["id"])
    if account["id"] in state.store.connected:
        state.store.connected.remove(account["id"])
    return build("deleted_account", account["id"], 0)


def list_accounts(call: Call) -> Obj:
    require_platform(call)
    state = call.state
    return page(
        call,
        state.listed(state.platform_id, "account"),
        "/v1/accounts",
        keep=lambda obj: obj["id"] != state.platform_id,
        position=state.store.position,
    )


# -- verification -------------------------------------------------------------------


def _snapshot(account: Obj) -> Obj:
    return {
        key: copy.deepcopy(account[key])
        for key in (
            "charges_enabled",
            "payouts_enabled",
            "details_submitted",
            "requirements",
            "capabilities",
        )
    }


def _diff(before: Obj, account: Obj) -> Obj:
    return {key: value for key, value in before.items() if account[key] != value}


def _custom_requirements(
    state: SandboxState, account: Obj, private: dict[str, Any]
) -> tuple[list[str], list[Obj]]:
    due: list[str] = []
    errors: list[Obj] = []

    def fail(requirement: str, code: str, reason: str) -> None:
        due.append(requirement)
        errors.append({"code": code, "reason": reason, "requirement": requirement})

    profile = account["business_profile"]
    if not (profile.get("url") or profile.get("product_description")):
        due.append("business_profile.url")
    if not account["external_accounts"]["data"]:
        due.append("external_account")
    tos = account["tos_acceptance"]
    if not tos.get("date"):
        due.append("tos_acceptance.date")
    if not tos.get("ip"):
        due.append("tos_acceptance.ip")
    if (account["business_type"] or "individual") == "company":
        company = private.get("company", {})
        if not company.get("name"):
            due.append("company.name")
        tax_id = company.get("tax_id")
        if not tax_id:
            due.append("company.tax_id")
        elif tax_id == "111111111":
            fail("company.tax_id", "verification_failed_tax_id_match", "Tax id did not match.")
        due += person_requirements(state, account["id"])
        return due, errors
    person = private.get("individual", {})
    dob = person.get("dob")
    if not isinstance(dob, dict) or not all(dob.get(k) for k in ("day", "month", "year")):
        due.extend(["individual.dob.day", "individual.dob.month", "individual.dob.year"])
    else:
        try:
            parts = (int(dob["year"]), int(dob["month"]), int(dob["day"]))
        except (TypeError, ValueError):
            parts = (0, 0, 0)
        if parts not in VERIFIED_DOBS:
            fail(
                "individual.verification.document",
                "verification_failed_other",
                "The date of birth could not be verified (test mode: use 1901-01-01).",
            )
    address = person.get("address")
    if isinstance(address, dict) and address.get("line1") == "address_no_match":
        fail(
            "individual.address.line1",
            "verification_failed_address_match",
            "The address could not be verified.",
        )
    if person.get("id_number") == "111111111":
        fail(
            "individual.id_number",
            "verification_failed_id_number_match",
            "The id number could not be verified.",
        )
    if person.get("ssn_last_4") not in (None, "0000"):
        fail(
            "individual.ssn_last_4",
            "verification_failed_id_number_match",
            "The SSN digits could not be verified (test mode: use 0000).",
        )
    return due, errors


def person_requirements(state: SandboxState, account_id: str) -> list[str]:
    """What a company account still owes about its persons (`representative.*`, `person_...`)."""
    persons = [
        state.objects[p] for p in state.private(account_id).get("persons", []) if p in state.objects
    ]
    representatives = [p for p in persons if p["relationship"]["representative"]]
    if not representatives:
        return [
            "representative.first_name",
            "representative.last_name",
            "representative.dob.day",
            "representative.dob.month",
            "representative.dob.year",
        ]
    due: list[str] = []
    for person in representatives:
        due += [f"{person['id']}.{item}" for item in person["requirements"]["currently_due"]]
    return due


def evaluate(state: SandboxState, account_id: str, *, emit_update: bool = True) -> None:
    """Recompute requirements, capabilities and the enabled flags of an account."""
    account = state.objects[account_id]
    private = state.private(account_id)
    before = _snapshot(account)
    onboarding = private.get("onboarding")
    errors: list[Obj] = []
    if onboarding == "restricted":
        due = ["individual.verification.document"]
    elif onboarding == "completed":
        due = []
    elif account["type"] == "custom":
        due, errors = _custom_requirements(state, account, private)
    else:
        due = list(HOSTED_DUE)
    enabled = not due
    requirements = account["requirements"]
    requirements.update(
        currently_due=list(due),
        eventually_due=list(due),
        past_due=list(due) if onboarding == "restricted" else [],
        errors=errors,
        pending_verification=[],
        disabled_reason=None if enabled else "requirements.past_due",
        current_deadline=None,
    )
    status = "active" if enabled else "inactive"
    account["capabilities"] = dict.fromkeys(private.get("requested", []), status)
    has_bank = bool(account["external_accounts"]["data"])
    account["charges_enabled"] = enabled
    account["payouts_enabled"] = enabled and has_bank
    account["details_submitted"] = enabled or onboarding == "completed"
    state.dirty = True
    if emit_update:
        previous = _diff(before, account)
        if previous:
            emit(state, "account.updated", account, account=account_id, previous=previous)


def test_bank_details(account: Obj, account_number: str) -> Params:
    """The external account a tester typed on the onboarding page, if it is a test one.

    Stripe's test-mode onboarding takes only test bank details: a US test account number
    (routing 110000000) or a test IBAN of any EU country (TEST-VALUES.md); anything else
    is refused with a message naming what is accepted.
    """
    number = account_number.replace(" ", "").upper()
    if number in PAYOUT_FAILURES and not number[:2].isalpha():
        return {
            "country": "US",
            "currency": "usd",
            "routing_number": "110000000",
            "account_number": number,
            "account_holder_name": "Sandbox Test",
        }
    if (
        len(number) == 22
        and number[:2].isalpha()
        and number[2:].isdigit()
        and number[-7:] in ("2013000", *_IBAN_SUFFIX_FAILURES)
    ):
        return {
            "country": number[:2],
            "currency": "eur",
            "account_number": number,
            "account_holder_name": "Sandbox Test",
        }
    raise invalid(
        f"{account_number!r} is not a test bank account. Use a US test account number "
        f"({', '.join(n for n in PAYOUT_FAILURES if n.isdigit())}; routing 110000000) or a "
        "test IBAN such as DE89370400440532013000 (any EU country prefix).",
        param="account_number",
        code="account_number_invalid",
    )


def complete_onboarding(
    state: SandboxState, account_id: str, account_number: str | None = None
) -> Obj:
    """What finishing Stripe's hosted onboarding does: everything due is provided.

    `account_number` is the external account typed on the page (default: the
    succeeding US test account 000123456789 when the account has none yet).
    """
    account = state.objects[account_id]
    private = state.private(account_id)
    if account_number:
        details = test_bank_details(account, account_number)
        bank = store_bank_account(state, account, details)
        _make_default(state, account, bank)
        emit(state, "account.external_account.created", bank, account=account_id)
    elif not account["external_accounts"]["data"]:
        store_bank_account(
            state,
            account,
            {
                "country": account["country"],
                "currency": account["default_currency"],
                "routing_number": "110000000",
                "account_number": "000123456789",
                "account_holder_name": "Sandbox Test",
            },
        )
    private["onboarding"] = "completed"
    if account["tos_acceptance"].get("date") is None:
        account["tos_acceptance"].update(date=state.now(), ip="127.0.0.1")
    evaluate(state, account_id)
    return account


def restrict(state: SandboxState, account_id: str) -> Obj:
    """Put an account under review: payments and payouts disabled, a document past due."""
    state.private(account_id)["onboarding"] = "restricted"
    evaluate(state, account_id)
    return state.objects[account_id]


# -- external accounts ----------------------------------------------------------------


def _add_external_account(call: Call, account: Obj, raw: Any, param: str) -> Obj:
    if isinstance(raw, str):
        if not raw.startswith(("btok_", "tok_")):
            raise invalid(f"No such token: '{raw}'", param=param, code="resource_missing")
        lowered = raw.lower()
        number = next((num for key, num in _BANK_TOKENS.items() if key in lowered), "000123456789")
        details: Params = {
            "country": account["country"],
            "currency": account["default_currency"],
            "routing_number": "110000000",
            "account_number": number,
        }
    elif isinstance(raw, dict):
        details = raw
        if details.get("object", "bank_account") != "bank_account":
            raise invalid("The sandbox only supports bank account external accounts.", param=param)
        if not details.get("account_number"):
            raise invalid(
                "Missing required param: external_account[account_number].",
                param=f"{param}[account_number]",
                code="parameter_missing",
            )
    else:
        raise invalid("Invalid external_account", param=param)
    bank = store_bank_account(call.state, account, details)
    emit(call.state, "account.external_account.created", bank, account=account["id"])
    return bank


def store_bank_account(state: SandboxState, account: Obj, details: Params) -> Obj:
    number = str(details["account_number"]).replace(" ", "")
    country = str(details.get("country") or (number[:2] if number[:2].isalpha() else "US"))
    currency = str(details.get("currency") or account["default_currency"]).lower()
    bank = build(
        "bank_account",
        new_id("ba"),
        0,
        account_holder_name=details.get("account_holder_name"),
        account_holder_type=details.get("account_holder_type"),
        country=country.upper(),
        currency=currency,
        fingerprint=new_id("fp", 16)[3:],
        last4=number[-4:],
        routing_number=details.get("routing_number"),
        metadata={},
        status="new",
    )
    state.put(bank, account["id"], "bank_account")
    private = state.private(bank["id"])
    private["account_number"] = number
    existing = [b for b in account["external_accounts"]["data"] if b["currency"] == currency]
    private["default_for_currency"] = not existing
    account["external_accounts"]["data"].append(bank)
    state.dirty = True
    return bank


def default_bank_account(state: SandboxState, account: Obj, currency: str) -> Obj | None:
    """The external account payouts in `currency` go to."""
    banks: list[Obj] = account["external_accounts"]["data"]
    for bank in banks:
        if bank["currency"] == currency and state.private(bank["id"]).get("default_for_currency"):
            return bank
    return banks[0] if banks else None


def create_external_account(call: Call) -> Obj:
    account = connected_account(call, call.args[0])
    bank = _add_external_account(
        call, account, call.params.get("external_account"), "external_account"
    )
    if call.bool_("default_for_currency"):
        _make_default(call.state, account, bank)
    evaluate(call.state, account["id"])
    return bank


def _bank(call: Call) -> tuple[Obj, Obj]:
    account = connected_account(call, call.args[0])
    bank = call.state.get(call.args[1], account["id"], "bank_account")
    if bank not in account["external_accounts"]["data"]:
        raise invalid(f"No such external account: '{call.args[1]}'", code="resource_missing")
    return account, bank


def _make_default(state: SandboxState, account: Obj, bank: Obj) -> None:
    for other in account["external_accounts"]["data"]:
        if other["currency"] == bank["currency"]:
            state.private(other["id"])["default_for_currency"] = other is bank


def retrieve_external_account(call: Call) -> Obj:
    return _bank(call)[1]


def update_external_account(call: Call) -> Obj:
    account, bank = _bank(call)
    copy_fields(bank, call.params, ("account_holder_name", "account_holder_type"))
    if call.has("metadata"):
        bank["metadata"] = call.metadata(bank["metadata"])
    if call.bool_("default_for_currency"):
        _make_default(call.state, account, bank)
    emit(call.state, "account.external_account.updated", bank, account=account["id"])
    return bank


def delete_external_account(call: Call) -> Obj:
    account, bank = _bank(call)
    if (
        call.state.private(bank["id"]).get("default_for_currency")
        and len(
            [b for b in account["external_accounts"]["data"] if b["currency"] == bank["currency"]]
        )
        > 1
    ):
        raise invalid(
            "You cannot delete the default bank account for your default currency.",
            code="default_for_currency",
        )
    account["external_accounts"]["data"].remove(bank)
    call.state.delete(bank["id"])
    emit(call.state, "account.external_account.deleted", bank, account=account["id"])
    evaluate(call.state, account["id"])
    return build("deleted_external_account", bank["id"], 0)


def list_external_accounts(call: Call) -> Obj:
    account = connected_account(call, call.args[0])
    return page(
        call,
        call.state.listed(account["id"], "bank_account"),
        f"/v1/accounts/{account['id']}/external_accounts",
        position=call.state.store.position,
    )


# -- capabilities ---------------------------------------------------------------------


def _capability(state: SandboxState, account: Obj, name: str) -> Obj:
    status = account["capabilities"].get(name, "unrequested")
    cap = build(
        "capability",
        name,
        0,
        account=account["id"],
        requested=name in account["capabilities"],
        requested_at=account["created"] if name in account["capabilities"] else None,
        status=status,
    )
    cap["requirements"].update(
        currently_due=account["requirements"]["currently_due"] if status != "active" else []
    )
    return cap


def list_capabilities(call: Call) -> Obj:
    account = connected_account(call, call.args[0])
    data = [_capability(call.state, account, n) for n in sorted(account["capabilities"])]
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "url": f"/v1/accounts/{account['id']}/capabilities",
    }


def retrieve_capability(call: Call) -> Obj:
    account = connected_account(call, call.args[0])
    return _capability(call.state, account, call.args[1])


def update_capability(call: Call) -> Obj:
    account = connected_account(call, call.args[0])
    name = call.args[1]
    private = call.state.private(account["id"])
    requested = set(private.get("requested", []))
    if call.bool_("requested", True):
        requested.add(name)
    else:
        requested.discard(name)
    private["requested"] = sorted(requested)
    evaluate(call.state, account["id"])
    return _capability(call.state, account, name)


# -- links ----------------------------------------------------------------------------


def create_account_link(call: Call) -> Obj:
    state = call.state
    account_id = call.req_str("account")
    connected_account(call, account_id, "account")
    return_url = call.str_("return_url") or ""
    refresh_url = call.str_("refresh_url") or ""
    token = new_id("link", 12)[5:]
    state.private(account_id).setdefault("links", {})[token] = {
        "return_url": return_url,
        "refresh_url": refresh_url,
    }
    now = state.now()
    return build(
        "account_link",
        "",
        now,
        expires_at=now + 300,
        url=f"{call.base_url}/_sandbox/onboarding/{account_id}?link={token}",
    )


def create_login_link(call: Call) -> Obj:
    account = connected_account(call, call.args[0])
    if account["type"] != "express":
        raise invalid("Login links can only be created for Express accounts.", param="account")
    return build(
        "login_link",
        "",
        call.state.now(),
        url=f"{call.base_url}/_sandbox/dashboard/{account['id']}",
    )


ROUTES = (
    Route("POST", "/v1/accounts", create_account, "AccountCreateParams"),
    Route("GET", "/v1/accounts", list_accounts, "AccountListParams"),
    Route("GET", "/v1/account", retrieve_current, "AccountRetrieveCurrentParams"),
    Route("GET", "/v1/accounts/{}", retrieve_account, "AccountRetrieveParams"),
    Route("POST", "/v1/accounts/{}", update_account, "AccountUpdateParams"),
    Route("DELETE", "/v1/accounts/{}", delete_account, "AccountDeleteParams"),
    Route(
        "POST",
        "/v1/accounts/{}/external_accounts",
        create_external_account,
        "AccountExternalAccountCreateParams",
    ),
    Route(
        "GET",
        "/v1/accounts/{}/external_accounts",
        list_external_accounts,
        "AccountExternalAccountListParams",
    ),
    Route(
        "GET",
        "/v1/accounts/{}/external_accounts/{}",
        retrieve_external_account,
        "AccountExternalAccountRetrieveParams",
    ),
    Route(
        "POST",
        "/v1/accounts/{}/external_accounts/{}",
        update_external_account,
        "AccountExternalAccountUpdateParams",
    ),
    Route(
        "DELETE",
        "/v1/accounts/{}/external_accounts/{}",
        delete_external_account,
        "AccountExternalAccountDeleteParams",
    ),
    Route("GET", "/v1/accounts/{}/capabilities", list_capabilities, "AccountCapabilityListParams"),
    Route(
        "GET",
        "/v1/accounts/{}/capabilities/{}",
        retrieve_capability,
        "AccountCapabilityRetrieveParams",
    ),
    Route(
        "POST",
        "/v1/accounts/{}/capabilities/{}",
        update_capability,
        "AccountCapabilityUpdateParams",
    ),
    Route("POST", "/v1/account_links", create_account_link, "AccountLinkCreateParams"),
    Route("POST", "/v1/accounts/{}/login_links", create_login_link, "AccountLoginLinkCreateParams"),
)
