"""Money in integer minor units, the currency table, parsing/formatting, and allocation.

Every amount on a money path is an ``int`` of the currency's smallest unit plus a
lowercase ISO 4217 code. Rates are ``Decimal`` or basis points, never ``float``.
``allocate`` is the one function that divides an amount: splits, proportional
refunds and transfer reversals all go through it, so no cent is ever lost or made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from typing import Self

from engine.core.errors import CurrencyMismatch, InvalidAmount, UnknownCurrency

__all__ = [
    "ZERO_DECIMAL_CURRENCIES",
    "Money",
    "allocate",
    "apply_rate",
    "currency_exponent",
    "is_known_currency",
    "normalize_currency",
]

# Stripe's zero-decimal list (amounts are whole units): stripe.com/docs/currencies.
ZERO_DECIMAL_CURRENCIES: frozenset[str] = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905 - a word list reads best as one string
)

# ISO 4217 exponents that are not 2. Stripe treats a few differently from ISO
# (e.g. ISK and UGX are zero-decimal for Stripe); Stripe's list wins because
# amounts go to Stripe as they are.
_THREE_DECIMAL: frozenset[str] = frozenset("bhd iqd jod kwd lyd omr tnd".split())  # noqa: SIM905

# ISO 4217 active codes (2-decimal unless listed above). Kept explicit so an
# unknown currency is refused rather than silently assumed to have 2 decimals.
_ISO_4217: frozenset[str] = frozenset(
    """
    aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob bov
    brl bsd btn bwp byn bzd cad cdf che chf chw clf clp cny cop cou crc cuc cup cve
    czk djf dkk dop dzd egp ern etb eur fjd fkp gbp gel ghs gip gmd gnf gtq gyd hkd
    hnl hrk htg huf idr ils inr iqd irr isk jmd jod jpy kes kgs khr kmf kpw krw kwd
    kyd kzt lak lbp lkr lrd lsl lyd mad mdl mga mkd mmk mnt mop mru mur mvr mwk mxn
    mxv myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd
    rub rwf sar sbd scr sdg sek sgd shp sle sll sos srd ssp stn svc syp szl thb tjs
    tmt tnd top try ttd twd tzs uah ugx usd usn uyi uyu uyw uzs ved ves vnd vuv wst
    xaf xcd xof xpf yer zar zmw zwl
    """.split()  # noqa: SIM905
)


def normalize_currency(code: str) -> str:
    """Return the lowercase currency code, or raise ``UnknownCurrency``."""
    lowered = code.strip().lower()
    if lowered not in _ISO_4217:
        raise UnknownCurrency(code)
    return lowered


def is_known_currency(code: str) -> bool:
    """Whether ``code`` (any case) is an ISO 4217 currency the engine accepts."""
    return code.strip().lower() in _ISO_4217


def currency_exponent(code: str) -> int:
    """Number of decimal places of the currency's minor unit, as Stripe counts them."""
    currency = normalize_currency(code)
    if currency in ZERO_DECIMAL_CURRENCIES:
        return 0
    if currency in _THREE_DECIMAL:
        return 3
    return 2


@dataclass(frozen=True, slots=True, order=False)
class Money:
    """An amount in integer minor units of one currency (``Money(1050, "gbp")`` is £10.50)."""

    amount: int
    currency: str

    def __post_init__(self) -> None:
        # bool is an int subclass; True pence is a bug, not an amount.
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise InvalidAmount(f"amount must be an integer of minor units, got {self.amount!r}")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def zero(cls, currency: str) -> Self:
        """The zero amount in ``currency``."""
        return cls(0, currency)

    @classmethod
    def parse(cls, text: str, currency: str) -> Self:
        """Parse a major-unit decimal string (``"10.50"``) into minor units.

        More decimal places than the currency has is an error, never a rounding.
        """
        exponent = currency_exponent(currency)
        try:
            value = Decimal(text.strip())
        except InvalidOperation as exc:
            raise InvalidAmount(f"not a decimal amount: {text!r}") from exc
        if not value.is_finite():
            raise InvalidAmount(f"not a finite amount: {text!r}")
        minor = value.scaleb(exponent)
        if minor != minor.to_integral_value():
            raise InvalidAmount(
                f"{text!r} has more than {exponent} decimal places for {currency.lower()}"
            )
        return cls(int(minor), currency)

    def format(self) -> str:
        """Major units with the currency's decimals and code: ``"10.50 GBP"``."""
        exponent = currency_exponent(self.currency)
        sign = "-" if self.amount < 0 else ""
        whole, frac = divmod(abs(self.amount), 10**exponent)
        body = f"{whole}.{frac:0{exponent}d}" if exponent else str(whole)
        return f"{sign}{body} {self.currency.upper()}"

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise CurrencyMismatch(self.currency, other.currency)

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def is_zero(self) -> bool:
        """Whether the amount is zero."""
        return self.amount == 0

    def allocate(self, weights: Sequence[int | Decimal]) -> list[Money]:
        """Split this amount by ``weights``; see :func:`allocate`."""
        return [Money(part, self.currency) for part in allocate(self.amount, weights)]

    def __str__(self) -> str:
        return self.format()


def allocate(total: int, weights: Sequence[int | Decimal]) -> list[int]:
    """Divide ``total`` minor units in proportion to ``weights`` (largest remainder).

    The parts always sum to ``total``; each part is within one minor unit of its
    exact share ``total * w / sum(weights)``; zero weights get zero. Leftover
    units go to the largest fractional remainders, ties to the earliest weight,
    so the result is deterministic. A negative ``total`` is allocated as the
    negation of allocating its absolute value (refunds of negative amounts).

    Args:
        total: the amount to divide, in minor units.
        weights: non-negative integers or Decimals, not all zero.

    Returns:
        One integer per weight, in the same order.
    """
    if not isinstance(total, int) or isinstance(total, bool):
        raise InvalidAmount(f"total must be an integer of minor units, got {total!r}")
    if not weights:
        raise InvalidAmount("allocate needs at least one weight")
    exact = [Decimal(w) for w in weights]
    if any(w < 0 or not w.is_finite() for w in exact):
        raise InvalidAmount("allocation weights must be finite and non-negative")
    weight_sum = sum(exact, Decimal(0))
    if weight_sum == 0:
        raise InvalidAmount("allocation weights must not all be zero")
    if total < 0:
        return [-part for part in allocate(-total, weights)]

    # Exact rational arithmetic: Decimal division would round at 28 digits.
    fractions = [Fraction(w) for w in exact]
    fraction_sum = sum(fractions, Fraction(0))
    floors: list[int] = []
    remainders: list[Fraction] = []
    for weight in fractions:
        share = weight * total / fraction_sum
        floor = share.numerator // share.denominator
        floors.append(floor)
        remainders.append(share - floor)
    leftover = total - sum(floors)
    # Largest remainder first; earlier index wins ties (stable sort).
    order = sorted(range(len(exact)), key=lambda i: remainders[i], reverse=True)
    for index in order[:leftover]:
        floors[index] += 1
    return floors


def apply_rate(amount: int, basis_points: int | Decimal) -> int:
    """``amount * basis_points / 10_000`` rounded half-up to a whole minor unit."""
    exact = Decimal(amount) * Decimal(basis_points) / Decimal(10_000)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
