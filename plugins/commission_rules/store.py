"""Rule versions in PostgreSQL: every version that priced anything is kept, never changed.

The tables (``tables.py``) must be bound to a database first; the engine's
``Database.bind(plugins.table_apps())`` (done by ``Services.start``) does it.

- ``record_versions``: store a rule set's versions (idempotent), e.g. the
  config's at start-up, so a payment's ``(rule_id, rule_version)`` always
  resolves to the content that priced it.
- ``save_rule_set``: the admin path: validate, store, and put in force; an
  invalid set stores nothing and the previous one stays in force.
- ``sync_rules``: start-up: record the config's versions, then put the newest
  admin-saved set in force if there is one.
- ``list_versions`` / ``get_version``: history for the admin API.
- ``past_transactions`` / ``dry_run_period``: the DB-backed dry run over the
  payments the engine recorded (``payments_created_between``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from engine.core.contributions import PluginRuntime
from engine.core.errors import ConfigError
from engine.live_settings import LiveSettings
from engine.payments.records import payments_created_between
from plugins.commission_rules.config import PLUGIN, CommissionRulesConfig
from plugins.commission_rules.dry_run import DryRunReport, PastTransaction, dry_run
from plugins.commission_rules.rules import Rule, parse_rule
from plugins.commission_rules.ruleset import RuleSet, compile_rules
from plugins.commission_rules.schemas import RuleSpec
from plugins.commission_rules.services import active_rules, install_rules
from plugins.commission_rules.tables import RuleSetRecord, RuleVersion

__all__ = [
    "SOURCE_API",
    "SOURCE_CONFIG",
    "StoredVersion",
    "dry_run_period",
    "get_version",
    "list_versions",
    "load_saved_rule_set",
    "past_transactions",
    "record_versions",
    "reload_saved_rules",
    "save_rule_set",
    "sync_rules",
]

SOURCE_CONFIG = "config"
SOURCE_API = "api"
RULE_SET_SETTING = f"{PLUGIN}.rule_set"
"""The live setting bumped when an admin saves a rule set (``engine.live_settings``)."""


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One stored rule version (what the admin API lists)."""

    rule_id: str
    version: int
    spec: RuleSpec
    source: str
    first_seen_at: datetime

    def rule(self, roles: Sequence[str]) -> Rule:
        """The rule itself, to explain or re-price a past transaction."""
        return parse_rule(self.spec, position=0, roles=roles, key=f"versions[{self.key}]")

    @property
    def key(self) -> str:
        """``"<rule_id>@<version>"``."""
        return f"{self.rule_id}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "rule_id": self.rule_id,
            "version": self.version,
            "content": msgspec.to_builtins(self.spec),
            "source": self.source,
            "first_seen_at": self.first_seen_at.isoformat(),
        }


def _stored(row: Mapping[str, Any]) -> StoredVersion:
    return StoredVersion(
        rule_id=row["rule_id"],
        version=row["version"],
        spec=msgspec.convert(row["content"], RuleSpec, strict=False),
        source=row["source"],
        first_seen_at=row["first_seen_at"],
    )


async def record_versions(
    rules: RuleSet, *, source: str, note: str = "", live: LiveSettings | None = None
) -> int:
    """Store every version of ``rules`` not stored yet, and the set itself.

    With ``live``, a new set also bumps the live setting ``RULE_SET_SETTING`` in
    the same transaction, so every process puts it in force.

    Returns:
        How many rule versions were new.
    """
    now = datetime.now(UTC)
    new = 0
    async with RuleVersion._meta.db.transaction() as transaction:
        for rule in rules.rules:
            inserted = await (
                RuleVersion.insert(
                    RuleVersion(
                        key=f"{rule.id}@{rule.version}",
                        rule_id=rule.id,
                        version=rule.version,
                        content=msgspec.to_builtins(rule.to_spec()),
                        source=source,
                        first_seen_at=now,
                    )
                )
                .on_conflict(target=RuleVersion.key, action="DO NOTHING")
                .returning(RuleVersion.id)
            )
            new += len(inserted)
        latest = (
            await RuleSetRecord.select(RuleSetRecord.fingerprint)
            .where(RuleSetRecord.source == source)
            .order_by(RuleSetRecord.id, ascending=False)
            .first()
        )
        if latest is None or latest["fingerprint"] != rules.fingerprint:
            await RuleSetRecord.insert(
                RuleSetRecord(
                    fingerprint=rules.fingerprint,
                    rules=[[rule.id, rule.version] for rule in rules.rules],
                    roles=list(rules.roles),
                    source=source,
                    note=note,
                    created_at=now,
                )
            )
            if live is not None:
                await live.bump(RULE_SET_SETTING, conn=transaction.connection)
    return new


async def save_rule_set(
    runtime: PluginRuntime,
    specs: Sequence[RuleSpec],
    *,
    roles: Sequence[str] | None = None,
    note: str = "",
) -> RuleSet:
    """Validate a whole new rule set, store it, and put it in force (the admin path).

    Raises:
        ConfigError: naming the rule and field (``rules[3].maximum``); nothing
            is stored and the previous rule set stays in force.
    """
    config: CommissionRulesConfig = runtime.config(PLUGIN)
    candidate = compile_rules(specs, roles=config.roles if roles is None else roles, key="rules")
    live = runtime.services.live if runtime.services is not None else None
    await record_versions(candidate, source=SOURCE_API, note=note, live=live)
    specs = [rule.to_spec() for rule in candidate.rules]
    return install_rules(runtime, specs, roles=candidate.roles)


async def load_saved_rule_set() -> RuleSet | None:
    """The newest admin-saved rule set, rebuilt from its stored versions (``None`` if none).

    Raises:
        ConfigError: a version the set names is missing (the store was tampered with).
    """
    record = (
        await RuleSetRecord.select()
        .where(RuleSetRecord.source == SOURCE_API)
        .order_by(RuleSetRecord.id, ascending=False)
        .first()
        .output(load_json=True)
    )
    if record is None:
        return None
    keys = [f"{rule_id}@{version}" for rule_id, version in record["rules"]]
    rows = await RuleVersion.select().where(RuleVersion.key.is_in(keys)).output(load_json=True)
    by_key = {row["key"]: _stored(row) for row in rows}
    missing = [key for key in keys if key not in by_key]
    if missing:
        raise ConfigError(
            "commission_rules_rule_sets",
            f"rule set {record['id']} names unknown versions {missing}",
        )
    return compile_rules([by_key[key].spec for key in keys], roles=record["roles"], key="rules")


async def sync_rules(runtime: PluginRuntime) -> RuleSet:
    """Start-up: record the config's versions; put the newest saved set in force if any.

    With the engine's services running, also watches ``RULE_SET_SETTING``: a set
    saved through any API process is put in force here too.

    Returns:
        The rule set in force afterwards.
    """
    await record_versions(active_rules(runtime), source=SOURCE_CONFIG)
    await reload_saved_rules(runtime)
    if runtime.services is not None:

        async def reload(version: int) -> None:
            del version  # the newest saved set is what every version means
            await reload_saved_rules(runtime)

        runtime.services.live.watch(RULE_SET_SETTING, reload)
    return active_rules(runtime)


async def reload_saved_rules(runtime: PluginRuntime) -> RuleSet | None:
    """Put the newest admin-saved rule set in force in this process (``None``: none saved)."""
    saved = await load_saved_rule_set()
    if saved is not None:
        install_rules(runtime, [rule.to_spec() for rule in saved.rules], roles=saved.roles)
    return saved


async def list_versions(rule_id: str | None = None) -> list[StoredVersion]:
    """Every stored version (of one rule, or all), oldest first."""
    query = RuleVersion.select().order_by(RuleVersion.id)
    if rule_id is not None:
        query = query.where(RuleVersion.rule_id == rule_id)
    return [_stored(row) for row in await query.output(load_json=True)]


async def get_version(rule_id: str, version: int) -> StoredVersion | None:
    """One stored version, or ``None``."""
    row = (
        await RuleVersion.select()
        .where(RuleVersion.key == f"{rule_id}@{version}")
        .first()
        .output(load_json=True)
    )
    return None if row is None else _stored(row)


def _beneficiaries(split: Any) -> dict[str, str]:
    """Roles and accounts from a payment's stored split plan, as far as it says."""
    legs = split.get("legs", []) if isinstance(split, dict) else []
    found: dict[str, str] = {}
    for leg in legs if isinstance(legs, list) else []:
        if isinstance(leg, dict) and leg.get("role") and leg.get("account_id"):
            found[str(leg["role"])] = str(leg["account_id"])
    return found


async def past_transactions(
    since: datetime, until: datetime, *, statuses: Collection[str] | None = None
) -> list[PastTransaction]:
    """Payments created in ``[since, until)`` as dry-run transactions.

    Read from the engine (``engine.payments.records.payments_created_between``)
    with the order's attributes as priced; rules scoped on attributes a payment
    lacks re-price as if they were absent. Beneficiaries come from the stored
    split plan's legs (``{"legs": [{"role", "account_id"}, ...]}``).
    """
    transactions = []
    for payment in await payments_created_between(since, until, statuses=statuses):
        # Payments recorded before the engine kept the order's scope values
        # (``service_type``, ``tier``, ``monthly_volume``) have none.
        beneficiaries = _beneficiaries(dict(payment.split))
        account = payment.account_id or next(iter(beneficiaries.values()), "platform")
        transactions.append(
            PastTransaction(
                account=account,
                price=payment.amount,
                actual_fee=payment.fee,
                occurred_at=payment.created_at,
                plugin=payment.plugin,
                kind=payment.kind,
                beneficiaries=beneficiaries,
                attributes=dict(payment.attributes),
                reference=payment.reference,
            )
        )
    return transactions


async def dry_run_period(
    proposed: RuleSet,
    since: datetime,
    until: datetime,
    *,
    statuses: Collection[str] | None = None,
) -> DryRunReport:
    """Re-price the period's payments with ``proposed`` (see ``dry_run``)."""
    return dry_run(proposed, await past_transactions(since, until, statuses=statuses))
