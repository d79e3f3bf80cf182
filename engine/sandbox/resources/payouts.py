"""Payouts (manual and on each account's schedule), balances and balance transactions.

A payout's fate follows the destination's test account number (TEST-VALUES.md):
`000111111116` fails with `no_account` and so on; a failed payout returns its
funds with a `payout_failure` balance transaction and emits `payout.failed`.
As at Stripe, a payout is `pending` until it is submitted to the bank (then
`in_transit`): automatic and instant payouts at once, a manual standard payout
with the next UTC midnight's batch of the global clock. Until then it can be
canceled (`POST /v1/payouts/{id}/cancel`, manual payouts only): the funds come
back with a `payout_cancel` balance transaction, linked as the payout's
`failure_balance_transaction`, and `payout.canceled` is emitted.
Automatic payouts run at each UTC midnight the global clock passes, per the
account's `settings.payouts.schedule` (daily, weekly on `weekly_anchor`, monthly
on `monthly_anchor`; `manual` never). `GET /v1/payouts` filters as Stripe's does:
`status`, `destination`, and `created` / `arrival_date` (a unix second, or
`[gt]`/`[gte]`/`[lt]`/`[lte]` bounds).
"""

from __future__ import annotations

import datetime as dt

from engine.sandbox.errors import StripeError, invalid
from engine.sandbox.events import emit
from engine.sandbox.ledger import add_txn, available, balance_object
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.accounts import (
    default_bank_account,
    payout_failure_code,
    store_bank_account,
)
from engine.sandbox.resources.common import expect_status, time_range
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, page

DAY = 86_400
FAILURE_MESSAGES = {
    "no_account": "The bank account details on file are probably incorrect. No bank account "
    "could be located with those details.",
    "account_closed": "The bank account has been closed.",
    "insufficient_funds": "Your Stripe account has insufficient funds to cover the payout.",
    "debit_not_authorized": "Debit transactions are not approved on the bank account. (Stripe "
    "requires bank accounts to be set up for both credit and debit payouts.)",
    "invalid_currency": "The bank was unable to process this payout because of its currency.",
}
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _destination(state: SandboxState, account_id: str, currency: str, requested: str | None) -> Obj:
    account = state.objects[account_id]
    if requested:
        return state.get(requested, account_id, "bank_account", "destination")
    bank = default_bank_account(state, account, currency)
    if bank is None and account_id == state.platform_id:
        bank = store_bank_account(
            state,
            account,
            {
                "account_number": "000123456789",
                "routing_number": "110000000",
                "currency": currency,
                "country": account["country"],
            },
        )
    if bank is None:
        raise invalid(
            f"You do not have a default external account for {currency}.",
            param="currency",
            code="no_external_account",
        )
    return bank


def create_payout_object(
    state: SandboxState,
    account_id: str,
    *,
    amount: int,
    currency: str,
    bank: Obj,
    automatic: bool,
    method: str = "standard",
    description: str | None = None,
    metadata: Obj | None = None,
    statement_descriptor: str | None = None,
) -> Obj:
    """Take `amount` out of `account_id`'s available balance towards `bank`."""
    payout_id = new_id("po")
    now = state.now()
    txn = add_txn(
        state,
        account_id,
        amount=-amount,
        currency=currency,
        type_="payout",
        source=payout_id,
        description=description or "STRIPE PAYOUT",
    )
    arrival = now if method == "instant" else (now // DAY + 2) * DAY
    payout = build(
        "payout",
        payout_id,
        now,
        amount=amount,
        arrival_date=arrival,
        automatic=automatic,
        balance_transaction=txn["id"],
        currency=currency,
        description=description or "STRIPE PAYOUT",
        destination=bank["id"],
        metadata=metadata or {},
        method=method,
        reconciliation_status="not_applicable" if not automatic else "in_progress",
        statement_descriptor=statement_descriptor,
        status="pending",
        type="bank_account",
        trace_id={"status": "pending", "value": None},
    )
    state.put(payout, account_id, "payout")
    state.private(payout_id)["failure_code"] = payout_failure_code(
        str(state.private(bank["id"]).get("account_number", ""))
    )
    emit(state, "payout.created", payout, account=account_id)
    submitted = now if automatic or method == "instant" else (now // DAY + 1) * DAY
    state.schedule("", submitted, "payout_process", payout_id)
    return payout


def process_payout(state: SandboxState, payout_id: str) -> None:
    """Job: the bank accepts the payout (in transit) or rejects it (test account numbers)."""
    payout = state.find(payout_id)
    if payout is None or payout["status"] != "pending":
        return
    account_id = state.owner_of(payout_id)
    previous = {"status": payout["status"]}
    code = state.private(payout_id).get("failure_code")
    if code:
        txn = add_txn(
            state,
            account_id,
            amount=payout["amount"],
            currency=payout["currency"],
            type_="payout_failure",
            source=payout_id,
            description="Payout failure",
        )
        payout.update(
            status="failed",
            failure_code=code,
            failure_message=FAILURE_MESSAGES.get(code, "The payout failed."),
            failure_balance_transaction=txn["id"],
            reconciliation_status="completed",
        )
        emit(state, "payout.updated", payout, account=account_id, previous=previous)
        emit(state, "payout.failed", payout, account=account_id)
        _mark_errored(state, account_id, str(payout["destination"]))
        return
    payout["status"] = "in_transit"
    emit(state, "payout.updated", payout, account=account_id, previous=previous)
    state.schedule("", max(payout["arrival_date"], state.now()), "payout_paid", payout_id)


def _mark_errored(state: SandboxState, account_id: str, bank_id: str) -> None:
    """Stripe's rule: a bank account a payout failed to is ``errored``, and scheduled
    payouts stop until the account's bank details are updated."""
    account = state.objects.get(account_id)
    if account is None:
        return
    for bank in account["external_accounts"]["data"]:
        if bank["id"] == bank_id and bank.get("status") != "errored":
            previous = {"status": bank.get("status")}
            bank["status"] = "errored"
            emit(
                state,
                "account.external_account.updated",
                bank,
                account=account_id,
                previous=previous,
            )


def payout_paid(state: SandboxState, payout_id: str) -> None:
    """Job: the payout reached the bank on its arrival date."""
    payout = state.find(payout_id)
    if payout is None or payout["status"] != "in_transit":
        return
    account_id = state.owner_of(payout_id)
    previous = {"status": "in_transit"}
    payout.update(
        status="paid",
        reconciliation_status="completed",
        trace_id={"status": "supported", "value": new_id("trace", 12)},
    )
    emit(state, "payout.updated", payout, account=account_id, previous=previous)
    emit(state, "payout.paid", payout, account=account_id)


def run_schedules(state: SandboxState, moment: str) -> None:
    """Job handler for each UTC midnight: automatic payouts of available balances."""
    when = int(moment)
    day = dt.datetime.fromtimestamp(when, dt.UTC)
    for account_id in list(state.store.connected):
        account = state.objects.get(account_id)
        if account is None or not account["payouts_enabled"]:
            continue
        schedule = account["settings"]["payouts"]["schedule"]
        interval = schedule.get("interval", "daily")
        if interval == "manual":
            continue
        if interval == "weekly" and _WEEKDAYS[day.weekday()] != schedule.get(
            "weekly_anchor", "monday"
        ):
            continue
        if interval == "monthly" and day.day != int(schedule.get("monthly_anchor", 1)):
            continue
        for currency, bucket in sorted(state.store.balances.get(account_id, {}).items()):
            if bucket[0] <= 0:
                continue
            bank = default_bank_account(state, account, currency)
            if bank is None or bank.get("status") == "errored":
                continue  # stopped until the bank details are updated
            included = _unpaid_available(state, account_id)
            payout = create_payout_object(
                state, account_id, amount=bucket[0], currency=currency, bank=bank, automatic=True
            )
            state.private(payout["id"])["txns"] = [
                t for t in included if state.objects[t]["currency"] == currency
            ]


def _unpaid_available(state: SandboxState, account_id: str) -> list[str]:
    """Available transactions not yet swept by an automatic payout."""
    private = state.private(account_id)
    ids = state.listed(account_id, "balance_transaction")
    mark = int(private.get("payout_mark", 0))
    included: list[str] = []
    new_mark = None
    for index in range(mark, len(ids)):
        txn = state.objects.get(ids[index])
        if txn is None:
            continue
        if txn["status"] == "available":
            if not state.private(ids[index]).get("paid_out"):
                included.append(ids[index])
                state.private(ids[index])["paid_out"] = True
        elif new_mark is None:
            new_mark = index
    private["payout_mark"] = len(ids) if new_mark is None else new_mark
    return included


# -- API ---------------------------------------------------------------------------------


def create_payout(call: Call) -> Obj:
    state = call.state
    amount = call.req_int("amount")
    currency = call.req_str("currency").lower()
    if amount <= 0:
        raise invalid("Invalid positive integer", param="amount", code="parameter_invalid_integer")
    account = state.objects[call.account]
    if call.connected and not account["payouts_enabled"]:
        raise invalid("Payouts are not enabled for this account.", code="payouts_not_allowed")
    bank = _destination(state, call.account, currency, call.str_("destination"))
    if available(state, call.account, currency) < amount:
        raise StripeError(
            400,
            "You have insufficient funds in your Stripe account for this transfer. Your card "
            "balance is too low. You can use the /v1/balance endpoint to view your Stripe "
            "balance (for more details, see stripe.com/docs/api#balance).",
            code="balance_insufficient",
        )
    return create_payout_object(
        state,
        call.account,
        amount=amount,
        currency=currency,
        bank=bank,
        automatic=False,
        method=call.str_("method") or "standard",
        description=call.str_("description"),
        metadata=call.metadata(),
        statement_descriptor=call.str_("statement_descriptor"),
    )


def retrieve_payout(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "payout")


def update_payout(call: Call) -> Obj:
    payout = call.state.get(call.args[0], call.account, "payout")
    previous = {"metadata": payout["metadata"]}
    payout["metadata"] = call.metadata(payout["metadata"])
    emit(call.state, "payout.updated", payout, account=call.account, previous=previous)
    return payout


def cancel_payout(call: Call) -> Obj:
    state = call.state
    payout = state.get(call.args[0], call.account, "payout")
    expect_status(payout, ("pending",), "canceled", "payout")
    if payout["automatic"]:
        raise invalid("Automatic payouts cannot be canceled.", code="payout_unexpected_state")
    txn = add_txn(
        state,
        call.account,
        amount=payout["amount"],
        currency=payout["currency"],
        type_="payout_cancel",
        source=payout["id"],
    )
    previous = {"status": payout["status"]}
    payout.update(status="canceled", failure_balance_transaction=txn["id"])
    emit(state, "payout.canceled", payout, account=call.account, previous=previous)
    return payout


def list_payouts(call: Call) -> Obj:
    status = call.str_("status")
    destination = call.str_("destination")
    created = time_range(call, "created")
    arrives = time_range(call, "arrival_date")
    return page(
        call,
        call.state.listed(call.account, "payout"),
        "/v1/payouts",
        keep=lambda p: (
            (status is None or p["status"] == status)
            and (destination is None or p["destination"] == destination)
            and created(int(p["created"]))
            and arrives(int(p["arrival_date"]))
        ),
        position=call.state.store.position,
    )


def retrieve_balance(call: Call) -> Obj:
    return balance_object(call.state, call.account)


def retrieve_balance_transaction(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "balance_transaction")


def list_balance_transactions(call: Call) -> Obj:
    state = call.state
    type_ = call.str_("type")
    source = call.str_("source")
    currency = call.str_("currency")
    payout_id = call.str_("payout")
    ids = state.listed(call.account, "balance_transaction")
    position: dict[str, int] | None = state.store.position
    if payout_id:
        payout = state.get(payout_id, call.account, "payout", "payout")
        ids = [*state.private(payout_id).get("txns", []), payout["balance_transaction"]]
        position = None
    return page(
        call,
        ids,
        "/v1/balance_transactions",
        keep=lambda t: (
            (type_ is None or t["type"] == type_)
            and (source is None or t["source"] == source)
            and (currency is None or t["currency"] == currency)
        ),
        position=position,
    )


ROUTES = (
    Route("POST", "/v1/payouts", create_payout, "PayoutCreateParams"),
    Route("GET", "/v1/payouts", list_payouts, "PayoutListParams"),
    Route("GET", "/v1/payouts/{}", retrieve_payout, "PayoutRetrieveParams"),
    Route("POST", "/v1/payouts/{}", update_payout, "PayoutUpdateParams"),
    Route("POST", "/v1/payouts/{}/cancel", cancel_payout, "PayoutCancelParams"),
    Route("GET", "/v1/balance", retrieve_balance, "BalanceRetrieveParams"),
    Route(
        "GET", "/v1/balance_transactions", list_balance_transactions, "BalanceTransactionListParams"
    ),
    Route(
        "GET",
        "/v1/balance_transactions/{}",
        retrieve_balance_transaction,
        "BalanceTransactionRetrieveParams",
    ),
)
