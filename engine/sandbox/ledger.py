"""Money movements: balance transactions, per-account balances and Stripe's processing fee.

The processing fee is deterministic so ledgers reconcile exactly: 2.9% of the
amount (rounded half up) plus 30 minor units in 2-decimal currencies; 3-decimal
currencies add 300; zero-decimal currencies pay the percentage only. It is charged
on the balance transaction of the account where the charge lives (the platform for
destination charges and separate charges and transfers). `SandboxOptions.stripe_fee`
turns it off.
"""

from __future__ import annotations

from typing import Any

from engine.sandbox.events import emit
from engine.sandbox.objects import build, new_id
from engine.sandbox.state import GLOBAL, SandboxState
from engine.sandbox.wire import Obj

ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])

_REPORTING = {
    "charge": "charge",
    "payment": "charge",
    "refund": "refund",
    "payment_refund": "refund",
    "transfer": "transfer",
    "transfer_refund": "transfer_reversal",
    "application_fee": "platform_earning",
    "application_fee_refund": "platform_earning_refund",
    "adjustment": "dispute",
    "payout": "payout",
    "payout_failure": "payout_reversal",
}


def round_half_up(numerator: int, denominator: int) -> int:
    """`numerator / denominator` rounded half up, in integers (no floats near money)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), denominator)
    if remainder * 2 >= denominator:
        quotient += 1
    return sign * quotient


def scale_minor(amount_2dp: int, currency: str) -> int:
    """Scale a 2-decimal minor-unit constant (e.g. 30 cents) to `currency`."""
    if currency in ZERO_DECIMAL:
        return amount_2dp // 100
    if currency in THREE_DECIMAL:
        return amount_2dp * 10
    return amount_2dp


def stripe_fee(state: SandboxState, amount: int, currency: str) -> int:
    """The sandbox's processing fee for a charge of `amount`."""
    if not state.options.stripe_fee or amount <= 0:
        return 0
    percent = round_half_up(amount * state.options.fee_percent_bp, 10_000)
    fixed = 0 if currency in ZERO_DECIMAL else scale_minor(state.options.fee_fixed, currency)
    return percent + fixed


def fee_detail(amount: int, currency: str, type_: str, description: str) -> Obj:
    return {
        "amount": amount,
        "application": None,
        "currency": currency,
        "description": description,
        "type": type_,
    }


def add_txn(
    state: SandboxState,
    account: str,
    *,
    amount: int,
    currency: str,
    type_: str,
    source: str | None,
    fee_details: list[Obj] | None = None,
    available_on: int | None = None,
    domain: str = GLOBAL,
    description: str | None = None,
) -> Obj:
    """Record a movement on `account`'s balance; pending until `available_on`."""
    now = state.now(domain)
    details = fee_details or []
    fee = sum(int(d["amount"]) for d in details)
    available_at = now if available_on is None else available_on
    status = "available" if available_at <= now else "pending"
    txn = build(
        "balance_transaction",
        new_id("txn"),
        now,
        amount=amount,
        available_on=available_at,
        currency=currency,
        description=description,
        fee=fee,
        fee_details=details,
        net=amount - fee,
        reporting_category=_REPORTING.get(type_, type_),
        source=source,
        status=status,
        type=type_,
    )
    state.put(txn, account, "balance_transaction")
    bucket = state.store.balances.setdefault(account, {}).setdefault(currency, [0, 0])
    if status == "available":
        bucket[0] += amount - fee
    else:
        bucket[1] += amount - fee
        state.schedule(domain, available_at, "txn_available", txn["id"])
    return txn


def make_available(state: SandboxState, txn_id: str) -> None:
    """Job: a pending balance transaction's funds become available."""
    txn = state.find(txn_id)
    if txn is None or txn["status"] != "pending":
        return
    account = state.owner_of(txn_id)
    txn["status"] = "available"
    bucket = state.store.balances.setdefault(account, {}).setdefault(txn["currency"], [0, 0])
    bucket[1] -= txn["net"]
    bucket[0] += txn["net"]
    state.dirty = True
    emit(state, "balance.available", balance_object(state, account), account=account)


def available(state: SandboxState, account: str, currency: str) -> int:
    return state.store.balances.get(account, {}).get(currency, [0, 0])[0]


def balance_object(state: SandboxState, account: str) -> Obj:
    """`GET /v1/balance` for `account`."""
    buckets = state.store.balances.get(account) or {"usd": [0, 0]}
    return build(
        "balance",
        "",
        0,
        available=[_amount(c, v[0]) for c, v in sorted(buckets.items())],
        pending=[_amount(c, v[1]) for c, v in sorted(buckets.items())],
        connect_reserved=[{"amount": 0, "currency": c} for c in sorted(buckets)],
    )


def _amount(currency: str, amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": currency, "source_types": {"card": amount}}
