"""A compiled rule set: set-level validation and the index that finds an order's rule.

Precedence: among the rules whose scope, dates and volume tier match an order,
the one with the most scope keys wins; among equally specific ones, the higher
volume tier wins. Two rules equal on both that could match one order at one
instant are a configuration error, unless more specific rules cover every such
order for that whole time (then the ambiguity can never be observed). So the
winner is unique, and found without scanning all rules: rules are bucketed by
their scope keys (a *shape*) and values, and an order looks up one bucket per
shape its own values allow (at most 2^k for k scope keys, a dozen in practice).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from engine.core.errors import ConfigError, InvalidInput
from engine.core.money import Money
from engine.core.orders import Commission, Order
from plugins.commission_rules.rules import (
    DEFAULT_ROLES,
    FOREVER_END,
    FOREVER_START,
    Rule,
    parse_rule,
)
from plugins.commission_rules.schemas import RuleSpec

__all__ = [
    "MONTHLY_VOLUME",
    "Quote",
    "RuleSet",
    "compile_rules",
    "monthly_volume",
    "order_instant",
]

MONTHLY_VOLUME = "monthly_volume"
"""``order.attributes`` key: the account's month-to-date gross volume (minor units
of the order's currency); missing means 0. The engine fills it (see the docs)."""

_ShapeKeys = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Shape:
    """All rules that set exactly the scope keys ``keys``, bucketed by their values."""

    keys: _ShapeKeys
    key_set: frozenset[str]
    bucket_key: Callable[[Mapping[str, str]], Any]
    buckets: Mapping[Any, tuple[Rule, ...]]


def _no_keys(_values: Mapping[str, str]) -> tuple[()]:
    return ()


def _bucket_key_of(keys: _ShapeKeys) -> Callable[[Mapping[str, str]], Any]:
    """``itemgetter`` over the keys: a scalar for one key, a tuple for several."""
    return itemgetter(*keys) if keys else _no_keys


def _rule_bucket_key(rule: Rule) -> Any:
    values = tuple(value for _, value in rule.scope)
    return values[0] if len(values) == 1 else values


class Quote(NamedTuple):
    """The fee for one priced order and the rules that decided it.

    Attributes:
        rule: the winning rule.
        fee: the fee, ``0 <= fee <= price``.
        price: the price the fee was computed on.
        matched: every rule that applied, winner first (precedence order).
    """

    rule: Rule
    fee: Money
    price: Money
    matched: tuple[Rule, ...]

    def explanation(self) -> str:
        """One line: which rules matched, which won, and the arithmetic."""
        _, steps = self.rule.fee_steps(self.price.amount, self.price.currency)
        others = ", ".join(rule.label for rule in self.matched[1:]) or "none"
        return (
            f"rule {self.rule.label} won ({self.rule.scope_text}); also matched: {others}; "
            f"{'; '.join(steps)} {self.price.currency}"
        )

    def commission(self) -> Commission:
        """The ``Commission`` the hook returns, carrying the rule id and version."""
        rule = self.rule
        fixed_only = rule.rate_bps == 0 and rule.fixed.get(self.price.currency, 0) > 0
        return Commission(
            amount=self.fee,
            rule_id=rule.id,
            rule_version=rule.version,
            rate_bps=None if fixed_only else rule.rate_bps,
            explanation=self.explanation(),
        )


def monthly_volume(order: Order) -> int:
    """The order's ``monthly_volume`` attribute (0 when missing).

    Raises:
        InvalidInput: when it is present but not a non-negative integer.
    """
    raw = order.attributes.get(MONTHLY_VOLUME)
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise InvalidInput(
            f"order.attributes[{MONTHLY_VOLUME!r}] must be a non-negative integer of minor "
            f"units, got {raw!r}",
            field=f"attributes.{MONTHLY_VOLUME}",
        )
    return raw


def order_instant(order: Order) -> datetime:
    """When the order is priced, as an aware datetime (a naive one is taken as UTC)."""
    at = order.occurred_at
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class RuleSet:
    """Validated, indexed rules; build one with :func:`compile_rules`.

    Immutable once built (the per-key-set lookup plans are a memo), so it can
    be shared across threads and cached per config.
    """

    def __init__(
        self, rules: Sequence[Rule], roles: Sequence[str], shapes: Iterable[_Shape]
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.roles: tuple[str, ...] = tuple(roles)
        self._role_set = frozenset(self.roles)
        self._shapes: tuple[_Shape, ...] = tuple(
            sorted(shapes, key=lambda shape: (-len(shape.keys), shape.keys))
        )
        self._plans: dict[frozenset[str], tuple[_Shape, ...]] = {}
        digest = hashlib.sha256()
        for rule in self.rules:
            digest.update(f"{rule.id}\0{rule.version}\0".encode())
        digest.update("\0".join(self.roles).encode())
        self.fingerprint: str = digest.hexdigest()[:16]
        """Identity of the rule set's content (ids, versions, roles), for caches and logs."""

    def __len__(self) -> int:
        return len(self.rules)

    # ------------------------------------------------------------ order -> scope values

    def order_scope(self, order: Order, currency: str) -> dict[str, str]:
        """The order's values for every scope key it has (roles from its beneficiaries)."""
        values = {"plugin": order.plugin, "currency": currency}
        if order.kind:
            values["kind"] = order.kind
        attributes = order.attributes
        for name in ("service_type", "tier"):
            value = attributes.get(name)
            if value is not None:
                values[name] = value if isinstance(value, str) else str(value)
        role_set = self._role_set
        for role, account in order.beneficiaries.items():
            if role in role_set and account:
                values[role] = account
        return values

    def _plan(self, present: frozenset[str]) -> tuple[_Shape, ...]:
        plan = self._plans.get(present)
        if plan is None:
            plan = tuple(shape for shape in self._shapes if shape.key_set <= present)
            self._plans[present] = plan
        return plan

    # ------------------------------------------------------------ lookup

    def candidates(self, values: Mapping[str, str]) -> list[Rule]:
        """Every rule whose scope matches ``values`` (dates and volume not checked)."""
        found: list[Rule] = []
        for shape in self._plan(frozenset(values)):
            found.extend(shape.buckets.get(shape.bucket_key(values), ()))
        found.sort(key=_RANK)
        return found

    def matching(self, values: Mapping[str, str], at: datetime, volume: int) -> list[Rule]:
        """Every rule that applies (scope, dates and volume tier), winner first."""
        matched: list[Rule] = []
        for shape in self._plan(frozenset(values)):
            bucket = shape.buckets.get(shape.bucket_key(values))
            if bucket is None:
                continue
            for rule in bucket:
                if (
                    rule.effective_from <= at < rule.effective_to
                    and volume >= rule.min_monthly_volume
                ):
                    matched.append(rule)
        if len(matched) > 1:
            matched.sort(key=_RANK)
        return matched

    def quote(self, order: Order, price: Money) -> Quote:
        """The winning rule and fee for ``order`` priced at ``price``."""
        currency = price.currency
        matched = self.matching(
            self.order_scope(order, currency), order_instant(order), monthly_volume(order)
        )
        if not matched:  # compile_rules guarantees a default for all time
            raise ConfigError("plugins.commission_rules.rules", "no rule applies (no default?)")
        rule = matched[0]
        return Quote(rule, Money(rule.fee(price.amount, currency), currency), price, tuple(matched))

    def fee(self, order: Order, price: Money) -> int:
        """Just the fee in minor units (what :meth:`quote` computes)."""
        return self.quote(order, price).fee.amount


_RANK = attrgetter("rank")


# ---------------------------------------------------------------- compile


def compile_rules(
    specs: Sequence[RuleSpec],
    *,
    roles: Sequence[str] = DEFAULT_ROLES,
    key: str = "rules",
) -> RuleSet:
    """Validate a whole rule set and build its index.

    Args:
        specs: the rules as written, in source order.
        roles: beneficiary roles usable as scope keys.
        key: the dotted key of the list in its source, for messages
            (``plugins.commission_rules.rules``); rule ``i`` is ``<key>[i]``.

    Raises:
        ConfigError: naming the rule and field: any per-rule problem (see
            ``parse_rule``), two versions of one rule in force at once, no
            default rule for some period, or two equally specific rules that
            can match the same order at the same time with nothing more
            specific covering them.
    """
    rules = [
        parse_rule(spec, position=index, roles=roles, key=f"{key}[{index}]")
        for index, spec in enumerate(specs)
    ]
    _check_versions(rules, key)
    _check_default(rules, key)
    by_shape: dict[_ShapeKeys, dict[Any, list[Rule]]] = defaultdict(lambda: defaultdict(list))
    for rule in rules:
        by_shape[tuple(name for name, _ in rule.scope)][_rule_bucket_key(rule)].append(rule)
    shapes = [
        _Shape(
            keys=keys,
            key_set=frozenset(keys),
            bucket_key=_bucket_key_of(keys),
            buckets={
                value: tuple(
                    sorted(bucket, key=lambda r: (-r.min_monthly_volume, r.effective_from))
                )
                for value, bucket in buckets.items()
            },
        )
        for keys, buckets in by_shape.items()
    ]
    _check_ambiguity(rules, shapes, key)
    return RuleSet(rules, roles, shapes)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _when(start: datetime, end: datetime) -> str:
    if start == FOREVER_START and end == FOREVER_END:
        return "at any time"
    if start == FOREVER_START:
        return f"until {end.isoformat()}"
    if end == FOREVER_END:
        return f"from {start.isoformat()} on"
    return f"from {start.isoformat()} to {end.isoformat()}"


def _check_versions(rules: Sequence[Rule], key: str) -> None:
    """Entries sharing an id are versions over time: distinct and never in force together."""
    by_id: dict[str, list[Rule]] = defaultdict(list)
    for rule in rules:
        by_id[rule.id].append(rule)
    for versions in by_id.values():
        ordered = sorted(versions, key=lambda r: (r.effective_from, r.position))
        for earlier, later in pairwise(ordered):
            first, second = sorted((earlier, later), key=lambda r: r.position)
            if earlier.version == later.version:
                raise ConfigError(
                    f"{key}[{second.position}]",
                    f"rule {second.id!r} repeats {_short(key)}[{first.position}] exactly",
                )
            if later.effective_from < earlier.effective_to:
                raise ConfigError(
                    f"{key}[{second.position}].effective_from",
                    f"rule {second.id!r} is also {_short(key)}[{first.position}] and both "
                    f"versions are in force {_when(later.effective_from, earlier.effective_to)}; "
                    "versions of one rule must follow each other in time",
                )


def _check_default(rules: Sequence[Rule], key: str) -> None:
    """An unscoped rule without volume tier must be in force at every instant."""
    defaults = sorted(
        (r for r in rules if not r.scope and not r.min_monthly_volume),
        key=lambda r: r.effective_from,
    )
    if not defaults:
        raise ConfigError(
            key,
            "no default rule: add one with an empty scope and no volume tier, e.g. "
            '{ id = "default", rate_bps = 1000 }, so every order has a rule',
        )
    cursor = FOREVER_START
    for rule in defaults:
        if rule.effective_from > cursor:
            break
        cursor = max(cursor, rule.effective_to)
    if cursor < FOREVER_END:
        following = [r.effective_from for r in defaults if r.effective_from > cursor]
        gap_end = min(following, default=FOREVER_END)
        raise ConfigError(
            key,
            f"no default rule (empty scope, no volume tier) is in force "
            f"{_when(cursor, gap_end)}; the default must cover all time",
        )


def _check_ambiguity(rules: Sequence[Rule], shapes: Sequence[_Shape], key: str) -> None:
    """Refuse two rules of equal precedence that one order could match at one instant."""
    groups: dict[tuple[int, int], dict[_ShapeKeys, list[Rule]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for rule in rules:
        groups[rule.precedence][tuple(name for name, _ in rule.scope)].append(rule)
    shapes_by_keys = {shape.keys: shape for shape in shapes}
    for (count, threshold), by_shape in sorted(groups.items()):
        ordered = sorted(by_shape)
        for first_index, first_keys in enumerate(ordered):
            for second_keys in ordered[first_index:]:
                shared = frozenset(first_keys) & frozenset(second_keys)
                others: dict[tuple[str, ...], list[Rule]] = defaultdict(list)
                for rule in by_shape[second_keys]:
                    others[_project(rule, shared)].append(rule)
                for first in by_shape[first_keys]:
                    for second in others.get(_project(first, shared), ()):
                        if first_keys == second_keys and second.position <= first.position:
                            continue
                        _check_pair(
                            first,
                            second,
                            count=count,
                            threshold=threshold,
                            shapes=shapes_by_keys,
                            key=key,
                        )


def _project(rule: Rule, keys: frozenset[str]) -> tuple[str, ...]:
    return tuple(value for name, value in rule.scope if name in keys)


def _check_pair(
    first: Rule,
    second: Rule,
    *,
    count: int,
    threshold: int,
    shapes: Mapping[_ShapeKeys, _Shape],
    key: str,
) -> None:
    start = max(first.effective_from, second.effective_from)
    end = min(first.effective_to, second.effective_to)
    if start >= end:
        return
    union = dict(first.scope) | dict(second.scope)
    gap = _uncovered(union, count=count, threshold=threshold, start=start, end=end, shapes=shapes)
    if gap is None:
        return
    earlier, later = sorted((first, second), key=lambda r: r.position)
    where = ", ".join(f"{name}={value}" for name, value in sorted(union.items())) or "any scope"
    tier = f", volume tier {threshold}" if threshold else ""
    raise ConfigError(
        f"{key}[{later.position}].scope",
        f"rule {later.id!r} and rule {earlier.id!r} ({_short(key)}[{earlier.position}]) are "
        f"equally specific ({count} scope keys{tier}) and both apply to orders with {where} "
        f"{_when(*gap)}; narrow one of them, separate their dates, or add a more specific "
        "rule for that combination",
    )


def _uncovered(
    union: Mapping[str, str],
    *,
    count: int,
    threshold: int,
    start: datetime,
    end: datetime,
    shapes: Mapping[_ShapeKeys, _Shape],
) -> tuple[datetime, datetime] | None:
    """The first period in ``[start, end)`` where no more specific rule always wins.

    A rule covers the ambiguous orders when its scope is a subset of ``union``
    (so it matches all of them), it has more scope keys than ``count`` (so it
    outranks both), and its volume tier is at most ``threshold`` (so it
    matches whenever both do).
    """
    windows: list[tuple[datetime, datetime]] = []
    for keys, shape in shapes.items():
        if len(keys) <= count or not shape.key_set <= union.keys():
            continue
        for rule in shape.buckets.get(shape.bucket_key(union), ()):
            if rule.min_monthly_volume <= threshold:
                windows.append((rule.effective_from, rule.effective_to))
    cursor = start
    for window_start, window_end in sorted(windows):
        if window_start > cursor:
            return (cursor, min(window_start, end))
        cursor = max(cursor, window_end)
        if cursor >= end:
            return None
    return (cursor, end) if cursor < end else None
