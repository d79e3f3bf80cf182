"""``marketplace commission explain|dry-run``: the plugin's CLI sub-commands.

``explain`` prices a hypothetical order with the configured rules through the
same code as the hook. ``dry-run`` re-prices past transactions with a proposed
rule file: the period's rows of the engine's payments table, or a JSON file
(``--transactions``). ``versions`` lists the stored rule versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec

from engine.core.contributions import CliCommand
from engine.core.errors import ConfigError, MarketplaceError
from engine.core.money import Money
from engine.core.orders import Order
from engine.core.plugins import build_plugins
from engine.core.settings import Settings, require_database_url
from plugins.commission_rules.config import PLUGIN
from plugins.commission_rules.dry_run import DryRunReport, PastTransaction, dry_run
from plugins.commission_rules.explain import explain
from plugins.commission_rules.rules import DEFAULT_ROLES, check_roles
from plugins.commission_rules.ruleset import MONTHLY_VOLUME, RuleSet, compile_rules
from plugins.commission_rules.schemas import RuleSpec
from plugins.commission_rules.services import active_rules

__all__ = ["command", "load_rule_file", "load_transactions"]

_DRY_RUN_HELP = (
    "Re-price past transactions with a proposed rule file and report, per account, the fee "
    "that would have been charged versus the actual one. Transactions come from the payments "
    "table (database.url) for --from/--to; --transactions FILE.json reads them from a file "
    "instead (offline). NOTE: until the payments table stores the order attributes "
    "(service_type, tier, monthly_volume), rules scoped on them re-price as if they were absent."
)


def command() -> CliCommand:
    """The ``marketplace commission`` command."""
    return CliCommand(
        name="commission",
        help="Explain commission fees and dry-run proposed rules",
        configure=configure,
        run=run,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``explain`` and ``dry-run`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="commission_command", required=True)
    ex = sub.add_parser(
        "explain",
        help="Which rules match an order, which wins, and the arithmetic",
        description="Price a hypothetical order with the configured rules and explain it.",
    )
    ex.add_argument("--plugin", required=True, help="business model, e.g. three_sided_bookings")
    ex.add_argument("--kind", default="", help="what is sold, e.g. booking, subscription, tip")
    ex.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="[ROLE=]ID",
        help="a beneficiary, e.g. venue=acct_1 (repeatable); an ID without ROLE is tried "
        "in every configured role",
    )
    ex.add_argument("--amount", required=True, type=int, help="price in minor units (1000 = 10.00)")
    ex.add_argument("--currency", required=True, help="ISO 4217 code, e.g. gbp")
    ex.add_argument("--service-type", help="service type, e.g. massage")
    ex.add_argument("--tier", help="tier, e.g. gold")
    ex.add_argument(
        "--monthly-volume",
        type=int,
        default=None,
        help="the account's month-to-date gross volume in minor units (default 0)",
    )
    ex.add_argument("--at", help="ISO 8601 instant to price at (default now; no offset = UTC)")
    ex.add_argument("--json", action="store_true", help="print JSON instead of text")

    dr = sub.add_parser("dry-run", help=_DRY_RUN_HELP, description=_DRY_RUN_HELP)
    dr.add_argument(
        "--rules",
        required=True,
        type=Path,
        help="TOML file with [[rules]] (optionally roles = [...]) or a [plugins.commission_rules] "
        "section",
    )
    dr.add_argument(
        "--transactions",
        type=Path,
        help="JSON array of past transactions instead of the database (see "
        "docs/commission_rules.md)",
    )
    dr.add_argument("--from", dest="since", help="ISO 8601 start (inclusive)")
    dr.add_argument("--to", dest="until", help="ISO 8601 end (exclusive)")
    dr.add_argument("--json", action="store_true", help="print JSON instead of a table")

    versions = sub.add_parser(
        "versions",
        help="List stored rule versions (every version that could have priced a payment)",
    )
    versions.add_argument("--rule", help="only this rule id")
    versions.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace, settings: Any, out: TextIO | None = None) -> int:
    """Run a sub-command; returns the exit code (2 on a usage or config error)."""
    stream = sys.stdout if out is None else out
    try:
        if args.commission_command == "explain":
            return _explain(args, settings, stream)
        if args.commission_command == "versions":
            return asyncio.run(_versions(args, settings, stream))
        return _dry_run(args, settings, stream)
    except MarketplaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _instant(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(flag, f"not an ISO 8601 instant: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _configured_rules(settings: Settings) -> RuleSet:
    plugins = build_plugins(settings)
    if not plugins.is_enabled(PLUGIN):
        raise ConfigError("plugins.enabled", f"{PLUGIN} is not enabled")
    return active_rules(plugins.runtime)


def _explain(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    rules = _configured_rules(settings)
    beneficiaries: dict[str, str] = {}
    for item in args.account:
        role, sep, account = item.partition("=")
        if sep:
            beneficiaries[role.strip()] = account.strip()
        else:
            beneficiaries.update(dict.fromkeys(rules.roles, item.strip()))
    attributes: dict[str, Any] = {}
    if args.service_type:
        attributes["service_type"] = args.service_type
    if args.tier:
        attributes["tier"] = args.tier
    if args.monthly_volume is not None:
        attributes[MONTHLY_VOLUME] = args.monthly_volume
    price = Money(args.amount, args.currency)
    order = Order(
        plugin=args.plugin,
        kind=args.kind,
        amount=price,
        reference="cli:explain",
        beneficiaries=beneficiaries,
        attributes=attributes,
        occurred_at=_instant(args.at, "--at") or datetime.now(UTC),
    )
    explanation = explain(order, price, rules)
    if args.json:
        print(json.dumps(explanation.to_dict(), indent=2), file=out)
    else:
        print(explanation.text(), file=out)
    return 0


def load_rule_file(path: Path, *, default_roles: list[str] | None = None) -> RuleSet:
    """Compile a proposed rule file: ``[[rules]]`` at the top or a ``[plugins.commission_rules]``.

    Raises:
        ConfigError: the file is missing or not TOML, or a rule is invalid
            (the key names the file, the rule and the field).
    """
    try:
        data: Mapping[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    section = data.get("plugins", {}).get(PLUGIN, data)
    try:
        specs = msgspec.convert(section.get("rules", []), list[RuleSpec], strict=False)
        roles = msgspec.convert(
            section.get("roles", default_roles or list(DEFAULT_ROLES)), list[str]
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}:rules", str(exc)) from None
    check_roles(roles, key=f"{path}:roles")
    return compile_rules(specs, roles=roles, key=f"{path}:rules")


class _TransactionRow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account: str
    plugin: str
    kind: str
    amount: int
    currency: str
    actual_fee: int
    occurred_at: datetime
    beneficiaries: dict[str, str] = msgspec.field(default_factory=dict)
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    reference: str = ""


def load_transactions(path: Path) -> list[PastTransaction]:
    """Read the stop-gap JSON array of past transactions.

    Each item: ``account, plugin, kind, amount, currency, actual_fee`` (minor
    units), ``occurred_at`` (ISO 8601 with offset), optional ``beneficiaries``,
    ``attributes`` (with ``monthly_volume`` as recorded) and ``reference``.
    """
    try:
        rows = msgspec.json.decode(path.read_bytes(), type=list[_TransactionRow])
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except msgspec.ValidationError as exc:
        raise ConfigError(str(path), str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(str(path), f"not valid JSON: {exc}") from None
    return [
        PastTransaction(
            account=row.account,
            price=Money(row.amount, row.currency),
            actual_fee=Money(row.actual_fee, row.currency),
            occurred_at=row.occurred_at
            if row.occurred_at.tzinfo is not None
            else row.occurred_at.replace(tzinfo=UTC),
            plugin=row.plugin,
            kind=row.kind,
            beneficiaries=row.beneficiaries,
            attributes=row.attributes,
            reference=row.reference,
        )
        for row in rows
    ]


def _dry_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    section = settings.plugins.sections.get(PLUGIN, {})
    roles = section.get("roles") if isinstance(section, dict) else None
    proposed = load_rule_file(args.rules, default_roles=roles)
    since = _instant(args.since, "--from")
    until = _instant(args.until, "--to")
    if args.transactions is not None:
        report = dry_run(proposed, load_transactions(args.transactions), since=since, until=until)
    else:
        if since is None or until is None:
            raise ConfigError("--from/--to", "a dry run over the database needs a period")
        report = asyncio.run(_dry_run_database(settings, proposed, since, until))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2), file=out)
    else:
        print(report.text(), file=out)
    return 0


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[None]:
    """The engine's database with this plugin's tables bound, for one command."""
    from engine.core.db import Database

    database = Database(require_database_url(settings), min_size=1, max_size=2)
    database.bind(build_plugins(settings).table_apps())
    await database.start()
    try:
        yield
    finally:
        await database.close()


async def _dry_run_database(
    settings: Settings, proposed: RuleSet, since: datetime, until: datetime
) -> DryRunReport:
    from plugins.commission_rules.store import dry_run_period

    async with _database(settings):
        return await dry_run_period(proposed, since, until)


async def _versions(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from plugins.commission_rules.store import list_versions

    async with _database(settings):
        versions = await list_versions(args.rule)
    if args.json:
        print(json.dumps([version.to_dict() for version in versions], indent=2), file=out)
        return 0
    for version in versions:
        content = msgspec.json.encode(version.spec).decode()
        print(
            f"{version.rule_id} v{version.version}  {version.source:<6} "
            f"first seen {version.first_seen_at.isoformat()}  {content}",
            file=out,
        )
    return 0
