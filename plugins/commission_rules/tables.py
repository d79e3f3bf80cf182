"""The commission_rules Piccolo app: rule versions and rule sets, prefixed ``commission_rules_``.

A rule version row is written once and never changed or deleted: a payment
records ``(rule_id, rule_version)`` and can always be explained and re-priced
from here, whatever happens to the rules afterwards.
"""

from __future__ import annotations

from pathlib import Path

from piccolo.columns import JSONB, BigSerial, Integer, Text, Timestamptz, Varchar
from piccolo.conf.apps import AppConfig
from piccolo.table import Table

__all__ = ["APP_CONFIG", "RuleSetRecord", "RuleVersion"]


class RuleVersion(Table, tablename="commission_rules_rule_versions"):
    """One version of one rule: its canonical written form (``RuleSpec`` as JSON).

    ``key`` is ``"<rule_id>@<version>"``, unique, so recording the same
    version twice (every start-up, every process) is a no-op.
    """

    id = BigSerial(primary_key=True)
    key = Varchar(length=220, unique=True)
    rule_id = Varchar(length=100, index=True)
    version = Integer()
    content = JSONB()
    source = Varchar(length=32)
    first_seen_at = Timestamptz()


class RuleSetRecord(Table, tablename="commission_rules_rule_sets"):
    """A whole rule set as it was put in force: ordered ``[rule_id, version]`` pairs.

    ``source`` is ``config`` (seen in the config file at start-up) or ``api``
    (saved by an admin); the newest ``api`` row is the rule set in force.
    """

    id = BigSerial(primary_key=True)
    fingerprint = Varchar(length=32, index=True)
    rules = JSONB()
    roles = JSONB()
    source = Varchar(length=32, index=True)
    note = Text(default="")
    created_at = Timestamptz()


APP_CONFIG = AppConfig(
    app_name="commission_rules",
    migrations_folder_path=str(Path(__file__).parent / "migrations"),
    table_classes=[RuleVersion, RuleSetRecord],
)
