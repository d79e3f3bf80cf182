"""Matching one Stripe balance's transactions to the ledger lines of the same account (pure).

The rule, for a balance transaction on Stripe account ``A`` (``platform`` or
``acct_...``) with ``amount``, ``fee`` and ``net = amount - fee``:

- It is matched by a ledger transaction whose ``stripe_object_id`` is one of the
  balance transaction's *candidate ids* (its ``source`` first, then the objects
  it derives from, see ``engine.reconciliation.links``) and which has, on the
  ledger account named ``A`` in the same currency, one entry equal to ``amount``
  and, when ``fee`` is not zero, another entry equal to ``-fee`` (the fee's
  other side is wherever the business model put it: ``platform:stripe_fees``
  for Stripe's processing fee, the platform's own ``application_fee`` line for
  a destination charge's application fee). A ledger that posts one entry of
  ``net`` instead matches too. Each ledger entry matches at most one balance
  transaction.
- When no ledger transaction matches exactly, the first candidate ledger
  transaction that still has unmatched entries on ``A`` is paired with it as an
  ``amount_mismatch`` (its closest entries are consumed, so the difference is
  reported once, not as a missing pair).
- Otherwise the balance transaction is ``missing_in_ledger``.
- Ledger entries on ``A`` that no balance transaction claimed are reported per
  ledger transaction and currency as ``missing_in_stripe``.

Matching runs in two passes (every exact match first, then the mismatches), so
a wrong amount on one line never steals the line another balance transaction
matches exactly. Nothing here does I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from engine.core.money import Money, is_known_currency

__all__ = [
    "MATCHED",
    "MISMATCH",
    "MISSING_IN_LEDGER",
    "MISSING_IN_STRIPE",
    "PROBLEMS",
    "BalanceTxn",
    "ItemResult",
    "LedgerLine",
    "leftover_items",
    "match_account",
    "match_exact",
    "pair_mismatches",
]

Status = Literal["matched", "missing_in_ledger", "missing_in_stripe", "amount_mismatch"]

MATCHED: Final = "matched"
MISSING_IN_LEDGER: Final = "missing_in_ledger"
MISSING_IN_STRIPE: Final = "missing_in_stripe"
MISMATCH: Final = "amount_mismatch"
PROBLEMS: Final[tuple[str, ...]] = (MISSING_IN_LEDGER, MISSING_IN_STRIPE, MISMATCH)


@dataclass(frozen=True, slots=True)
class BalanceTxn:
    """One Stripe balance transaction, with the object ids it may be recorded under.

    Attributes:
        account: the ledger account of the Stripe balance (``platform`` or ``acct_...``).
        candidates: ``source`` first, then the objects it derives from.
    """

    id: str
    account: str
    type: str
    source: str
    amount: int
    fee: int
    currency: str
    created: int = 0
    candidates: tuple[str, ...] = ()

    @property
    def net(self) -> int:
        """What the transaction changed the balance by."""
        return self.amount - self.fee


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One ledger entry on a Stripe balance's ledger account, with its transaction's ids."""

    entry_id: int
    transaction_id: int
    key: str
    kind: str
    stripe_object_id: str
    account: str
    currency: str
    amount: int


@dataclass(frozen=True, slots=True)
class ItemResult:
    """How one balance transaction (or one group of unclaimed ledger lines) reconciled.

    ``txn`` is ``None`` for ``missing_in_stripe``; ``lines`` are the ledger
    entries matched or left over. ``ledger_amount``/``ledger_fee`` say what the
    ledger holds in Stripe's terms (gross and fee), for the report.
    """

    status: Status
    account: str
    currency: str
    txn: BalanceTxn | None = None
    lines: tuple[LedgerLine, ...] = ()
    ledger_amount: int | None = None
    ledger_fee: int | None = None
    detail: str = ""

    @property
    def ledger_net(self) -> int | None:
        """The ledger's net effect for this item, when it has one."""
        if self.ledger_amount is None:
            return None
        return self.ledger_amount - (self.ledger_fee or 0)

    @property
    def ledger_transaction(self) -> LedgerLine | None:
        """The first matched ledger line (its transaction id and key name the posting)."""
        return self.lines[0] if self.lines else None

    @property
    def item_key(self) -> str:
        """Stable identity of the item within a run."""
        if self.txn is not None:
            return f"stripe:{self.txn.account}:{self.txn.id}"
        first = self.lines[0]
        return f"ledger:{self.account}:{first.transaction_id}:{self.currency}"


@dataclass
class _Book:
    """The unmatched ledger lines of one ledger account, found by Stripe object id."""

    open: dict[int, list[LedgerLine]] = field(default_factory=dict)
    by_object: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, lines: Iterable[LedgerLine]) -> _Book:
        book = cls()
        for line in sorted(lines, key=lambda item: (item.transaction_id, item.entry_id)):
            if not line.amount:
                continue  # a zero entry moves nothing and has nothing to match
            if line.transaction_id not in book.open:
                book.open[line.transaction_id] = []
                if line.stripe_object_id:
                    book.by_object[line.stripe_object_id].append(line.transaction_id)
            book.open[line.transaction_id].append(line)
        return book

    def candidates(self, txn: BalanceTxn) -> Iterable[list[LedgerLine]]:
        """Open lines in ``txn``'s currency of each candidate ledger transaction, in order."""
        seen: set[int] = set()
        for object_id in txn.candidates:
            for transaction_id in self.by_object.get(object_id, ()):
                if transaction_id in seen:
                    continue
                seen.add(transaction_id)
                lines = [
                    line
                    for line in self.open.get(transaction_id, ())
                    if line.currency == txn.currency
                ]
                if lines:
                    yield lines

    def consume(self, chosen: Sequence[LedgerLine]) -> None:
        for line in chosen:
            remaining = self.open[line.transaction_id]
            remaining.remove(line)

    def leftovers(self) -> list[list[LedgerLine]]:
        groups: dict[tuple[int, str], list[LedgerLine]] = defaultdict(list)
        for lines in self.open.values():
            for line in lines:
                groups[(line.transaction_id, line.currency)].append(line)
        return [groups[key] for key in sorted(groups)]


def _money(amount: int, currency: str) -> str:
    """``-1.50 USD``; an unknown currency code shows the minor units as they are."""
    if not is_known_currency(currency):
        return f"{amount} {currency} (minor units)"
    return Money(amount, currency).format()


def _exact(txn: BalanceTxn, lines: Sequence[LedgerLine]) -> tuple[LedgerLine, ...] | None:
    """The lines of one ledger transaction that record ``txn`` exactly, if any."""
    gross = next((line for line in lines if line.amount == txn.amount), None)
    if txn.fee == 0:
        return None if gross is None else (gross,)
    if gross is not None:
        fee = next((line for line in lines if line is not gross and line.amount == -txn.fee), None)
        if fee is not None:
            return (gross, fee)
    net = next((line for line in lines if line.amount == txn.net), None)
    return None if net is None else (net,)


def _closest(lines: Sequence[LedgerLine], target: int) -> LedgerLine | None:
    """The line with ``target``'s sign nearest to it (first in posting order on ties)."""
    same_sign = [line for line in lines if (line.amount > 0) == (target > 0)]
    if not same_sign:
        return None
    return min(same_sign, key=lambda line: abs(line.amount - target))


def _mismatch(txn: BalanceTxn, lines: Sequence[LedgerLine]) -> ItemResult | None:
    gross = _closest(lines, txn.amount)
    if gross is None:
        return None
    rest = [line for line in lines if line is not gross]
    fee_line = _closest(rest, -txn.fee) if txn.fee else None
    chosen = (gross,) if fee_line is None else (gross, fee_line)
    ledger_fee = -fee_line.amount if fee_line is not None else 0
    differences = []
    if gross.amount != txn.amount:
        differences.append(
            f"amount {_money(gross.amount, txn.currency)} in the ledger, "
            f"{_money(txn.amount, txn.currency)} at Stripe"
        )
    if ledger_fee != txn.fee:
        differences.append(
            f"fee {_money(ledger_fee, txn.currency)} in the ledger, "
            f"{_money(txn.fee, txn.currency)} at Stripe"
        )
    return ItemResult(
        status=MISMATCH,
        account=txn.account,
        currency=txn.currency,
        txn=txn,
        lines=chosen,
        ledger_amount=gross.amount,
        ledger_fee=ledger_fee,
        detail=f"{txn.type} {txn.source or txn.id}: " + "; ".join(differences),
    )


def _matched(account: str, txn: BalanceTxn, chosen: tuple[LedgerLine, ...]) -> ItemResult:
    return ItemResult(
        status=MATCHED,
        account=account,
        currency=txn.currency,
        txn=txn,
        lines=chosen,
        ledger_amount=txn.amount if len(chosen) == 2 or not txn.fee else txn.net,
        ledger_fee=txn.fee if len(chosen) == 2 else 0,
    )


def _missing_in_ledger(account: str, txn: BalanceTxn) -> ItemResult:
    return ItemResult(
        status=MISSING_IN_LEDGER,
        account=account,
        currency=txn.currency,
        txn=txn,
        detail=(
            f"{txn.type} {txn.source or txn.id} of {_money(txn.amount, txn.currency)} "
            "has no ledger entry"
        ),
    )


def _ordered(txns: Iterable[BalanceTxn]) -> list[BalanceTxn]:
    return sorted(txns, key=lambda txn: (txn.created, txn.id))


def match_exact(
    account: str, txns: Sequence[BalanceTxn], lines: Iterable[LedgerLine]
) -> tuple[list[ItemResult], list[BalanceTxn]]:
    """The first pass: each balance transaction a ledger transaction records exactly.

    Returns:
        The ``matched`` results (oldest first) and the transactions left
        unmatched (oldest first), for ``pair_mismatches``.
    """
    book = _Book.of(lines)
    matched: list[ItemResult] = []
    left: list[BalanceTxn] = []
    for txn in _ordered(txns):
        for candidate in book.candidates(txn):
            chosen = _exact(txn, candidate)
            if chosen is not None:
                book.consume(chosen)
                matched.append(_matched(account, txn, chosen))
                break
        else:
            left.append(txn)
    return matched, left


def pair_mismatches(
    account: str, txns: Sequence[BalanceTxn], lines: Iterable[LedgerLine]
) -> list[ItemResult]:
    """The second pass, over what ``match_exact`` left: a mismatch, or missing in the ledger.

    ``lines`` are the ledger lines no exact match claimed. Each mismatch
    consumes the lines it is paired with (its ``lines``), so the difference is
    reported once.
    """
    book = _Book.of(lines)
    found: list[ItemResult] = []
    for txn in _ordered(txns):
        for candidate in book.candidates(txn):
            mismatch = _mismatch(txn, candidate)
            if mismatch is not None:
                book.consume(mismatch.lines)
                found.append(mismatch)
                break
        else:
            found.append(_missing_in_ledger(account, txn))
    return found


def leftover_items(account: str, lines: Iterable[LedgerLine]) -> list[ItemResult]:
    """``missing_in_stripe``: one result per ledger transaction and currency of unclaimed lines."""
    found: list[ItemResult] = []
    for group in _Book.of(lines).leftovers():
        first = group[0]
        total = sum(line.amount for line in group)
        found.append(
            ItemResult(
                status=MISSING_IN_STRIPE,
                account=account,
                currency=first.currency,
                lines=tuple(group),
                ledger_amount=total,
                ledger_fee=0,
                detail=(
                    f"ledger {first.kind} {first.key} moves {_money(total, first.currency)} on "
                    f"{account} that no Stripe balance transaction"
                    f"{' of ' + first.stripe_object_id if first.stripe_object_id else ''} shows"
                ),
            )
        )
    return found


def match_account(
    account: str, txns: Sequence[BalanceTxn], lines: Iterable[LedgerLine]
) -> list[ItemResult]:
    """Reconcile one Stripe balance's transactions with its ledger account's lines, in memory.

    The three passes (``match_exact``, ``pair_mismatches``, ``leftover_items``)
    over one set of transactions and lines; the service runs the same passes
    page by page against the database.

    Args:
        account: the ledger account (``platform`` or ``acct_...``).
        txns: every balance transaction of that Stripe balance (any order).
        lines: every ledger entry on ``account``.

    Returns:
        One result per balance transaction (oldest first), then one
        ``missing_in_stripe`` result per ledger transaction and currency with
        unclaimed lines.
    """
    lines = list(lines)
    matched, left = match_exact(account, txns, lines)
    claimed = {id(line) for item in matched for line in item.lines}
    open_lines = [line for line in lines if id(line) not in claimed]
    others = pair_mismatches(account, left, open_lines)
    consumed = claimed | {id(line) for item in others for line in item.lines}
    by_txn = {item.txn.id: item for item in [*matched, *others] if item.txn is not None}
    found = [by_txn[txn.id] for txn in _ordered(txns)]
    return found + leftover_items(account, [line for line in lines if id(line) not in consumed])
