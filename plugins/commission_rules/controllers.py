"""Admin API of the commission_rules plugin: rules, versions, explain and dry run.

Everything here is admin-only. Saving a rule set validates it whole first: an
invalid set is refused with a problem naming the rule and field, nothing is
stored, and the rules in force stay as they were.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from engine.api.auth import requires_scope
from engine.api.fields import LINE_PATTERN, Currency, Line, MinorUnits, Note, RequestBody
from engine.api.problems import problem_responses
from engine.core.errors import ConfigError, InvalidInput
from engine.core.money import Money
from engine.core.orders import Order
from engine.services import Services
from plugins.commission_rules import store
from plugins.commission_rules.config import PLUGIN, CommissionRulesConfig
from plugins.commission_rules.explain import explain
from plugins.commission_rules.ruleset import compile_rules
from plugins.commission_rules.schemas import RuleSpec
from plugins.commission_rules.services import active_rules

__all__ = ["CommissionRulesController"]


Key = Annotated[Line, msgspec.Meta(min_length=1, max_length=64)]
Value = Annotated[Line, msgspec.Meta(max_length=200)]


class RuleSetBody(RequestBody, frozen=True):
    """A whole rule set (it replaces the one in force)."""

    rules: Annotated[list[RuleSpec], msgspec.Meta(max_length=1000)]
    note: Note = ""


class ExplainBody(RequestBody, frozen=True):
    """An order to explain the commission of."""

    plugin: Key
    amount: MinorUnits
    currency: Currency
    kind: Key = "order"
    beneficiaries: Annotated[dict[Key, Value], msgspec.Meta(max_length=32)] = msgspec.field(
        default_factory=dict
    )
    attributes: Annotated[
        dict[Key, Value | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]],
        msgspec.Meta(max_length=32),
    ] = msgspec.field(default_factory=dict)
    at: datetime | None = None


class DryRunBody(RequestBody, frozen=True):
    """A proposed rule set and the period of past payments to re-price with it."""

    rules: Annotated[list[RuleSpec], msgspec.Meta(max_length=1000)]
    since: datetime
    until: datetime


class RuleSetView(msgspec.Struct, frozen=True):
    """The rules in force, each with its id and version."""

    rules: list[dict[str, Any]]


class VersionList(msgspec.Struct, frozen=True):
    """Stored rule versions (history never changes)."""

    data: list[dict[str, Any]]


def _rules_view(services: Services) -> RuleSetView:
    rules = active_rules(services.plugins.runtime)
    return RuleSetView(
        rules=[
            {"id": rule.id, "version": rule.version, "content": msgspec.to_builtins(rule.to_spec())}
            for rule in rules.rules
        ]
    )


class InvalidRule(InvalidInput):
    """A proposed rule is invalid (``field`` names the rule and field)."""

    code = "invalid_rule"


def _as_input_error(error: ConfigError) -> InvalidRule:
    """A rule problem is the caller's input here, not the server's configuration."""
    return InvalidRule(f"{error.key}: {error.problem}", field=error.key)


class CommissionRulesController(Controller):
    """The platform's commission rules (admin keys only)."""

    path = "/v1/commission_rules"
    tags = ["commission_rules"]
    guards = [requires_scope()]

    @get(
        "/rules",
        operation_id="getCommissionRules",
        summary="Get the commission rules in force",
        responses=problem_responses(401, 403),
    )
    async def get_rules(self, services: NamedDependency[Services]) -> RuleSetView:
        """The rule set in force now, each rule with its id, version and content (admin)."""
        return _rules_view(services)

    @put(
        "/rules",
        operation_id="replaceCommissionRules",
        summary="Replace the commission rule set",
        responses=problem_responses(400, 401, 403, 422),
    )
    async def replace_rules(
        self, data: JSONBody[RuleSetBody], services: NamedDependency[Services]
    ) -> RuleSetView:
        """Validate and put a new rule set in force; it is stored with every version."""
        try:
            await store.save_rule_set(services.plugins.runtime, data.rules, note=data.note)
        except ConfigError as exc:
            raise _as_input_error(exc) from None
        return _rules_view(services)

    @get(
        "/versions",
        operation_id="listCommissionRuleVersions",
        summary="List stored commission rule versions",
        responses=problem_responses(400, 401, 403),
    )
    async def list_versions(
        self,
        rule_id: Annotated[
            str | None,
            QueryParameter(
                required=False, max_length=200, pattern=LINE_PATTERN, description="One rule only"
            ),
        ] = None,
    ) -> VersionList:
        """Every stored version of every rule (or of one), oldest first."""
        versions = await store.list_versions(rule_id)
        return VersionList(data=[version.to_dict() for version in versions])

    @post(
        "/explain",
        operation_id="explainCommission",
        summary="Explain an order's commission",
        status_code=200,
        responses=problem_responses(400, 401, 403, 422),
    )
    async def explain_order(
        self, data: JSONBody[ExplainBody], services: NamedDependency[Services]
    ) -> dict[str, Any]:
        """Which rules matched the order, which won, and the arithmetic."""
        try:
            price = Money(data.amount, data.currency)
        except InvalidInput as exc:
            raise InvalidInput(exc.detail, field="currency") from None
        order = Order(
            plugin=data.plugin,
            kind=data.kind,
            amount=price,
            reference="explain",
            beneficiaries=data.beneficiaries,
            attributes=data.attributes,
            occurred_at=data.at or datetime.now(UTC),
        )
        return explain(order, price, active_rules(services.plugins.runtime)).to_dict()

    @post(
        "/dry-run",
        operation_id="dryRunCommissionRules",
        summary="Re-price past payments with proposed rules",
        status_code=200,
        responses=problem_responses(400, 401, 403, 422),
    )
    async def dry_run(
        self, data: JSONBody[DryRunBody], services: NamedDependency[Services]
    ) -> dict[str, Any]:
        """What past payments in the period would have paid under the proposed rules."""
        if data.until <= data.since:
            raise InvalidInput("until must be after since", field="until")
        config: CommissionRulesConfig = services.plugins.runtime.config(PLUGIN)
        try:
            proposed = compile_rules(data.rules, roles=config.roles, key="rules")
        except ConfigError as exc:
            raise _as_input_error(exc) from None
        report = await store.dry_run_period(proposed, data.since, data.until)
        return report.to_dict()
