"""Persons of connected accounts (`/v1/accounts/{id}/persons`): representatives, owners.

A Custom account with `business_type=company` needs a representative before it is
enabled; the person is verified by Stripe's test values, as an individual is
(`dob` 1901-01-01 or 1902-01-01, `address[line1]=address_no_match` and id number
`111111111` fail), or by an identity document (`verification[document][front]`, a
file uploaded with purpose `identity_document`).
"""

from __future__ import annotations

from typing import Any

from engine.sandbox.errors import invalid
from engine.sandbox.events import emit
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.accounts import VERIFIED_DOBS, evaluate
from engine.sandbox.resources.common import connected_account, merge_nested
from engine.sandbox.resources.files import require_file
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, Params, page, to_bool

_PLAIN = ("first_name", "last_name", "email", "phone")
_RELATIONSHIP = ("director", "executive", "legal_guardian", "owner", "representative")


def _empty_requirements() -> Obj:
    return {
        "alternatives": [],
        "currently_due": [],
        "errors": [],
        "eventually_due": [],
        "past_due": [],
        "pending_verification": [],
    }


def create_person(call: Call) -> Obj:
    state = call.state
    account = connected_account(call, call.args[0])
    person = build(
        "person",
        new_id("person", 24),
        state.now(),
        account=account["id"],
        additional_tos_acceptances={"account": {"date": None, "ip": None, "user_agent": None}},
        dob={"day": None, "month": None, "year": None},
        first_name=None,
        future_requirements=_empty_requirements(),
        id_number_provided=False,
        last_name=None,
        metadata={},
        relationship={
            "authorizer": None,
            "director": False,
            "executive": False,
            "legal_guardian": False,
            "owner": False,
            "percent_ownership": None,
            "representative": False,
            "title": None,
        },
        requirements=_empty_requirements(),
        ssn_last_4_provided=False,
        verification={
            "additional_document": {
                "back": None,
                "details": None,
                "details_code": None,
                "front": None,
            },
            "details": None,
            "details_code": None,
            "document": {"back": None, "details": None, "details_code": None, "front": None},
            "status": "unverified",
        },
    )
    person.update(
        address=dict.fromkeys(("city", "country", "line1", "line2", "postal_code", "state"))
    )
    person.update(email=None, phone=None)
    _apply(call, person)
    state.put(person, account["id"], "person")
    state.private(account["id"]).setdefault("persons", []).append(person["id"])
    emit(state, "person.created", person, account=account["id"])
    evaluate(state, account["id"])
    return person


def _apply(call: Call, person: Obj) -> Obj:
    """Copy the request's fields onto the person and verify it; return previous values."""
    state = call.state
    private = state.private(person["id"])
    previous: Obj = {}
    for name in _PLAIN:
        if call.has(name):
            previous[name] = person[name]
            person[name] = call.str_(name) or None
    for name in ("dob", "address"):
        if call.has(name):
            previous[name] = dict(person[name])
            merge_nested(person[name], call.dict_(name))
    if call.has("relationship"):
        previous["relationship"] = dict(person["relationship"])
        for key, value in call.dict_("relationship").items():
            if key in _RELATIONSHIP:
                person["relationship"][key] = to_bool(value, f"relationship[{key}]")
            elif key == "percent_ownership":
                person["relationship"][key] = float(value) if value not in ("", None) else None
            elif key == "title":
                person["relationship"][key] = value or None
            else:
                raise invalid(f"Received unknown parameter: relationship[{key}]")
    if call.has("id_number"):
        private["id_number"] = call.str_("id_number")
        person["id_number_provided"] = bool(private["id_number"])
    if call.has("ssn_last_4"):
        private["ssn_last_4"] = call.str_("ssn_last_4")
        person["ssn_last_4_provided"] = bool(private["ssn_last_4"])
    if call.has("metadata"):
        previous["metadata"] = person["metadata"]
        person["metadata"] = call.metadata(person["metadata"])
    verification = call.dict_("verification")
    for slot in ("document", "additional_document"):
        document = verification.get(slot)
        if not isinstance(document, dict):
            continue
        for side in ("front", "back"):
            file_id = document.get(side)
            if file_id:
                param = f"verification[{slot}][{side}]"
                purposes = ("identity_document", "additional_verification")
                # The document may be uploaded by the platform or on the account itself.
                require_file(call, str(file_id), purposes, param, owners=(person["account"],))
                person["verification"][slot][side] = str(file_id)
    _verify(state, person)
    return previous


def _verify(state: SandboxState, person: Obj) -> None:
    """Stripe's test values decide whether the person is verified."""
    private = state.private(person["id"])
    due: list[str] = []
    errors: list[Obj] = []
    dob = person["dob"]
    parts: tuple[Any, ...] = (dob.get("year"), dob.get("month"), dob.get("day"))
    documented = bool(person["verification"]["document"]["front"])
    if not all(parts):
        due += ["dob.day", "dob.month", "dob.year"]
    else:
        try:
            verified_dob = (int(parts[0]), int(parts[1]), int(parts[2])) in VERIFIED_DOBS
        except (TypeError, ValueError):
            verified_dob = False
        if not verified_dob and not documented:
            due.append("verification.document")
            errors.append(
                {
                    "code": "verification_failed_other",
                    "reason": "The date of birth could not be verified (test mode: 1901-01-01).",
                    "requirement": "verification.document",
                }
            )
    for name in ("first_name", "last_name"):
        if not person[name]:
            due.append(name)
    if person["address"].get("line1") == "address_no_match":
        due.append("address.line1")
        errors.append(
            {
                "code": "verification_failed_address_match",
                "reason": "The address could not be verified.",
                "requirement": "address.line1",
            }
        )
    if private.get("id_number") == "111111111":
        due.append("id_number")
        errors.append(
            {
                "code": "verification_failed_id_number_match",
                "reason": "The id number could not be verified.",
                "requirement": "id_number",
            }
        )
    person["requirements"].update(currently_due=due, eventually_due=list(due), errors=errors)
    person["verification"]["status"] = "unverified" if due else "verified"


def _person(call: Call) -> tuple[Obj, Obj]:
    account = connected_account(call, call.args[0])
    person = call.state.get(call.args[1], account["id"], "person")
    return account, person


def retrieve_person(call: Call) -> Obj:
    return _person(call)[1]


def update_person(call: Call) -> Obj:
    state = call.state
    account, person = _person(call)
    previous = _apply(call, person)
    emit(state, "person.updated", person, account=account["id"], previous=previous)
    evaluate(state, account["id"])
    return person


def delete_person(call: Call) -> Obj:
    state = call.state
    account, person = _person(call)
    state.delete(person["id"])
    persons: list[str] = state.private(account["id"]).get("persons", [])
    if person["id"] in persons:
        persons.remove(person["id"])
    emit(state, "person.deleted", person, account=account["id"])
    evaluate(state, account["id"])
    return {"deleted": True, "id": person["id"], "object": "person"}


def list_persons(call: Call) -> Obj:
    account = connected_account(call, call.args[0])
    relationship: Params = call.dict_("relationship")

    def keep(person: Obj) -> bool:
        return all(
            person["relationship"].get(key) == to_bool(value, f"relationship[{key}]")
            for key, value in relationship.items()
        )

    return page(
        call,
        call.state.listed(account["id"], "person"),
        f"/v1/accounts/{account['id']}/persons",
        keep=keep,
        position=call.state.store.position,
    )


ROUTES = (
    Route("POST", "/v1/accounts/{}/persons", create_person, "AccountPersonCreateParams"),
    Route("GET", "/v1/accounts/{}/persons", list_persons, "AccountPersonListParams"),
    Route("GET", "/v1/accounts/{}/persons/{}", retrieve_person, "AccountPersonRetrieveParams"),
    Route("POST", "/v1/accounts/{}/persons/{}", update_person, "AccountPersonUpdateParams"),
    Route("DELETE", "/v1/accounts/{}/persons/{}", delete_person, "AccountPersonDeleteParams"),
)
