"""One commission rule: validation from its written form, its version, and its fee arithmetic.

Everything here is pure and integer-exact: rates are ``Decimal`` basis points
turned into an integer ratio once, amounts are integer minor units, and the
fee is ``clamp(round_half_up(price * bps / 10000) + fixed, minimum, maximum)``
clamped again into ``[0, price]``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from engine.core.errors import ConfigError
from engine.core.money import is_known_currency, normalize_currency
from plugins.commission_rules.schemas import Amounts, RuleSpec

__all__ = [
    "DEFAULT_ROLES",
    "FIXED_SCOPE_KEYS",
    "FOREVER_END",
    "FOREVER_START",
    "Rule",
    "check_roles",
    "content_version",
    "parse_rule",
    "scope_keys",
]

FIXED_SCOPE_KEYS: tuple[str, ...] = ("plugin", "kind", "service_type", "tier", "currency")
"""Scope keys every order has or may have; beneficiary roles are added to these."""

DEFAULT_ROLES: tuple[str, ...] = ("creator", "provider", "venue")
"""Beneficiary roles usable as scope keys unless the config names others."""

FOREVER_START = datetime.min.replace(tzinfo=UTC)
FOREVER_END = datetime.max.replace(tzinfo=UTC)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_MAX_BPS = Decimal(10_000)
_BPS_DENOMINATOR = 10_000


def scope_keys(roles: Iterable[str]) -> tuple[str, ...]:
    """Every scope key a rule may use: the fixed ones, then the beneficiary roles."""
    return FIXED_SCOPE_KEYS + tuple(role for role in roles if role not in FIXED_SCOPE_KEYS)


def check_roles(roles: Sequence[str], *, key: str) -> None:
    """Refuse a role list with a non-identifier, a fixed scope key, or a repeat.

    Raises:
        ConfigError: naming ``<key>[i]``.
    """
    for index, role in enumerate(roles):
        if not role.isidentifier() or role in FIXED_SCOPE_KEYS:
            raise ConfigError(
                f"{key}[{index}]",
                f"{role!r} cannot be a role: a role is an identifier other than "
                f"{', '.join(FIXED_SCOPE_KEYS)}",
            )
        if role in roles[:index]:
            raise ConfigError(f"{key}[{index}]", f"{role!r} is listed twice")


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule, ready to price orders.

    ``version`` is derived from the rule's pricing content (rate, amounts,
    scope, volume tier, dates), so it changes exactly when what the rule
    charges changes; ``(id, version)`` is recorded with every priced
    transaction. ``position`` is the rule's index in its source list, used in
    messages (``rules[3]``).
    """

    id: str
    version: int
    position: int
    rate_bps: Decimal
    fixed: Mapping[str, int]
    minimum: Mapping[str, int]
    maximum: Mapping[str, int]
    scope: tuple[tuple[str, str], ...]
    min_monthly_volume: int
    effective_from: datetime
    effective_to: datetime
    description: str = ""
    # Derived once (the hot path reads them per order): the rate as an exact
    # integer ratio (fee part = amount * rate_num / rate_den), the sort rank
    # (precedence descending, then source order) and the display strings.
    rate_num: int = field(init=False, repr=False, compare=False)
    rate_den: int = field(init=False, repr=False, compare=False)
    rank: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    label: str = field(init=False, repr=False, compare=False)
    """``"<id> v<version>"``, how explanations name the rule."""
    scope_text: str = field(init=False, repr=False, compare=False)
    """``"plugin=x, venue=y"`` or ``"(default: no scope)"``."""
    rate_text: str = field(init=False, repr=False, compare=False)
    """The rate in basis points as written canonically (``"1250.5"``)."""

    def __post_init__(self) -> None:
        numerator, denominator = self.rate_bps.as_integer_ratio()
        derived = {
            "rate_num": numerator,
            "rate_den": denominator * _BPS_DENOMINATOR,
            "rank": (-len(self.scope), -self.min_monthly_volume, self.position),
            "label": f"{self.id} v{self.version}",
            "scope_text": ", ".join(f"{key}={value}" for key, value in self.scope)
            or "(default: no scope)",
            "rate_text": format(self.rate_bps.normalize(), "f"),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @property
    def specificity(self) -> int:
        """How many scope keys the rule sets (more wins)."""
        return len(self.scope)

    @property
    def precedence(self) -> tuple[int, int]:
        """``(specificity, volume threshold)``: the larger wins."""
        return (len(self.scope), self.min_monthly_volume)

    def in_force(self, at: datetime) -> bool:
        """Whether ``effective_from <= at < effective_to``."""
        return self.effective_from <= at < self.effective_to

    def fee(self, amount: int, currency: str) -> int:
        """The fee in minor units for a price of ``amount`` in ``currency``.

        Half-up rounding of the percentage part is done in integers
        (``floor((2·a·n + d) / 2d)``), so it is exact for any amount.
        """
        fee = (2 * amount * self.rate_num + self.rate_den) // (2 * self.rate_den)
        fee += self.fixed.get(currency, 0)
        low = self.minimum.get(currency)
        if low is not None and fee < low:
            fee = low
        high = self.maximum.get(currency)
        if high is not None and fee > high:
            fee = high
        if fee > amount:
            return amount
        return max(fee, 0)

    def fee_steps(self, amount: int, currency: str) -> tuple[int, tuple[str, ...]]:
        """The same fee as :meth:`fee`, with each step of the arithmetic in words."""
        fee = (2 * amount * self.rate_num + self.rate_den) // (2 * self.rate_den)
        steps = [f"{amount} x {self.rate_text} bps / 10000 = {fee} (rounded half-up)"]
        fixed = self.fixed.get(currency, 0)
        if fixed:
            steps.append(f"+ fixed {fixed} = {fee + fixed}")
            fee += fixed
        low = self.minimum.get(currency)
        if low is not None:
            raised = max(fee, low)
            steps.append(
                f"minimum {low}: {fee} -> {raised}" if raised != fee else f"minimum {low}: ok"
            )
            fee = raised
        high = self.maximum.get(currency)
        if high is not None:
            lowered = min(fee, high)
            steps.append(
                f"maximum {high}: {fee} -> {lowered}" if lowered != fee else f"maximum {high}: ok"
            )
            fee = lowered
        bounded = min(max(fee, 0), amount)
        if bounded != fee:
            steps.append(f"clamped into [0, price {amount}]: {fee} -> {bounded}")
        steps.append(f"fee = {bounded}")
        return bounded, tuple(steps)

    def content(self) -> dict[str, object]:
        """The rule's pricing content as plain JSON values (what ``version`` hashes)."""
        return {
            "rate_bps": self.rate_text,
            "fixed": dict(sorted(self.fixed.items())),
            "minimum": dict(sorted(self.minimum.items())),
            "maximum": dict(sorted(self.maximum.items())),
            "scope": dict(self.scope),
            "min_monthly_volume": self.min_monthly_volume,
            "effective_from": _instant(self.effective_from),
            "effective_to": _instant(self.effective_to),
        }

    def to_spec(self) -> RuleSpec:
        """The rule's canonical written form (per-currency tables, UTC instants).

        Parsing it gives back the same rule and version: this is what the
        database keeps for every version.
        """
        rate = self.rate_bps.normalize()
        return RuleSpec(
            id=self.id,
            description=self.description,
            rate_bps=int(rate) if rate == rate.to_integral_value() else self.rate_text,
            fixed=dict(self.fixed) or None,
            minimum=dict(self.minimum) or None,
            maximum=dict(self.maximum) or None,
            scope=dict(self.scope),
            min_monthly_volume=self.min_monthly_volume or None,
            effective_from=None if self.effective_from == FOREVER_START else self.effective_from,
            effective_to=None if self.effective_to == FOREVER_END else self.effective_to,
        )


def _instant(moment: datetime) -> str | None:
    if moment in (FOREVER_START, FOREVER_END):
        return None
    return moment.astimezone(UTC).isoformat()


def content_version(content: Mapping[str, object]) -> int:
    """A stable positive 31-bit version number for the rule content.

    The first four bytes of SHA-256 over canonical JSON, so it fits a
    PostgreSQL ``integer`` column, is the same on every machine, and changes
    whenever the content does (a collision between two versions of one rule
    has odds of about one in two billion).
    """
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF or 1


class _RuleProblem:
    """Builds ``ConfigError``s naming the rule (by position and id) and the field."""

    def __init__(self, key: str, rule_id: str) -> None:
        self.key = key
        self.rule_id = rule_id

    def __call__(self, field_path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.key}.{field_path}", f"rule {self.rule_id!r}: {problem}")


def parse_rule(spec: RuleSpec, *, position: int, roles: Iterable[str], key: str) -> Rule:
    """Validate one written rule and turn it into a ``Rule``.

    Args:
        spec: the rule as written.
        position: its index in the source list (for messages).
        roles: beneficiary roles allowed as scope keys.
        key: the dotted key of the rule in its source (``plugins.commission_rules.rules[3]``).

    Raises:
        ConfigError: naming ``<key>.<field>`` and the rule id: an empty or
            malformed id, a rate over 100 % or negative, a negative amount,
            minimum over maximum, an unknown currency, an unknown scope key,
            a volume tier without a currency scope, a date without a UTC
            offset, or ``effective_to`` not after ``effective_from``.
    """
    rule_id = spec.id.strip()
    problem = _RuleProblem(key, rule_id or "?")
    if not _ID.fullmatch(rule_id):
        raise problem(
            "id", "an id is 1-100 letters, digits, '.', '_', ':' or '-', starting alphanumeric"
        )
    scope = _parse_scope(spec.scope, roles, problem)
    currency = dict(scope).get("currency")
    rate = _parse_rate(spec.rate_bps, problem)
    fixed = _parse_amounts(spec.fixed, "fixed", currency, problem)
    minimum = _parse_amounts(spec.minimum, "minimum", currency, problem)
    maximum = _parse_amounts(spec.maximum, "maximum", currency, problem)
    for code in sorted(set(minimum) & set(maximum)):
        if minimum[code] > maximum[code]:
            raise problem(
                "maximum" if isinstance(spec.maximum, int) else f"maximum.{code}",
                f"minimum {minimum[code]} is greater than maximum {maximum[code]} ({code})",
            )
    volume = spec.min_monthly_volume or 0
    if volume < 0:
        raise problem("min_monthly_volume", f"a volume tier cannot be negative ({volume})")
    if volume and currency is None:
        raise problem(
            "min_monthly_volume",
            "a volume tier needs scope.currency (volumes are compared in that currency's "
            "minor units)",
        )
    start = _parse_instant(spec.effective_from, "effective_from", problem) or FOREVER_START
    end = _parse_instant(spec.effective_to, "effective_to", problem) or FOREVER_END
    if end <= start:
        raise problem(
            "effective_to",
            f"effective_to {end.isoformat()} must be after effective_from {start.isoformat()}",
        )
    draft = Rule(
        id=rule_id,
        version=0,
        position=position,
        rate_bps=rate,
        fixed=MappingProxyType(fixed),
        minimum=MappingProxyType(minimum),
        maximum=MappingProxyType(maximum),
        scope=scope,
        min_monthly_volume=volume,
        effective_from=start,
        effective_to=end,
        description=spec.description,
    )
    return replace(draft, version=content_version(draft.content()))


def _parse_scope(
    raw: Mapping[str, str], roles: Iterable[str], problem: _RuleProblem
) -> tuple[tuple[str, str], ...]:
    known = scope_keys(roles)
    parsed: dict[str, str] = {}
    for name, written in raw.items():
        if name not in known:
            raise problem(
                f"scope.{name}", f"unknown scope key {name!r} (known: {', '.join(known)})"
            )
        value = written.strip()
        if not value:
            raise problem(f"scope.{name}", "a scope value cannot be empty")
        if name == "currency":
            if not is_known_currency(value):
                raise problem("scope.currency", f"unknown currency {value!r}")
            value = normalize_currency(value)
        parsed[name] = value
    return tuple(sorted(parsed.items()))


def _parse_rate(raw: int | str, problem: _RuleProblem) -> Decimal:
    try:
        rate = Decimal(raw.strip()) if isinstance(raw, str) else Decimal(raw)
    except InvalidOperation:
        raise problem("rate_bps", f"not a number of basis points: {raw!r}") from None
    if not rate.is_finite():
        raise problem("rate_bps", f"not a finite number of basis points: {raw!r}")
    if rate < 0:
        raise problem("rate_bps", f"a rate cannot be negative ({raw} bps)")
    if rate > _MAX_BPS:
        raise problem("rate_bps", f"rate {raw} bps is over 100 % (10000 bps)")
    return rate


def _parse_amounts(
    raw: Amounts | None, name: str, currency: str | None, problem: _RuleProblem
) -> dict[str, int]:
    noun = "fixed fee" if name == "fixed" else name
    if raw is None:
        return {}
    if isinstance(raw, int):
        if currency is None:
            raise problem(
                name,
                f"a single {noun} amount needs scope.currency; otherwise give one per "
                f"currency, e.g. {name} = {{ gbp = {raw}, eur = {raw} }}",
            )
        if raw < 0:
            raise problem(name, f"a {noun} cannot be negative ({raw})")
        return {currency: raw}
    parsed: dict[str, int] = {}
    for code, amount in raw.items():
        if not is_known_currency(code):
            raise problem(f"{name}.{code}", f"unknown currency {code!r}")
        normalized = normalize_currency(code)
        if currency is not None and normalized != currency:
            raise problem(
                f"{name}.{code}",
                f"the rule is scoped to {currency}, so a {normalized} amount can never apply",
            )
        if amount < 0:
            raise problem(f"{name}.{code}", f"a {noun} cannot be negative ({amount})")
        if normalized in parsed:
            raise problem(f"{name}.{code}", f"{normalized} is given twice")
        parsed[normalized] = amount
    return parsed


def _parse_instant(raw: datetime | None, name: str, problem: _RuleProblem) -> datetime | None:
    if raw is None:
        return None
    if raw.tzinfo is None or raw.utcoffset() is None:
        raise problem(
            name, f"{raw.isoformat()} needs a UTC offset, e.g. {raw.isoformat()}Z or +01:00"
        )
    return raw.astimezone(UTC)
