"""Transfers to connected accounts (+ reversals) and application fees (+ refunds).

A transfer leaves the platform as a `transfer` balance transaction and lands on
the destination as a payment (`py_`, a charge object owned by the connected
account) with a `payment` balance transaction. With `source_transaction`, both
sides stay pending until the source charge's funds are available.
"""

from __future__ import annotations

from engine.sandbox.errors import StripeError, invalid
from engine.sandbox.events import emit
from engine.sandbox.ledger import add_txn, available, fee_detail
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.common import destination_account, require_platform
from engine.sandbox.routing import Route
from engine.sandbox.state import GLOBAL, SandboxState
from engine.sandbox.wire import Call, Obj, embedded_list, page


def application_id(state: SandboxState) -> str:
    """The platform's Connect application id (`ca_...`)."""
    private = state.private(state.platform_id)
    if "application" not in private:
        private["application"] = new_id("ca", 32)
    return str(private["application"])


def require_transfers_capability(account: Obj, param: str) -> None:
    if account["capabilities"].get("transfers") != "active":
        raise invalid(
            "Your destination account needs to have at least one of the following "
            "capabilities enabled: transfers, crypto_transfers, legacy_payments",
            param=param,
            code="insufficient_capabilities_for_transfer",
        )


def make_transfer(
    state: SandboxState,
    *,
    amount: int,
    currency: str,
    destination: str,
    source_charge: Obj | None,
    transfer_group: str | None,
    description: str | None = None,
    metadata: Obj | None = None,
    available_on: int | None = None,
    domain: str = GLOBAL,
    application_fee: int = 0,
) -> Obj:
    """Move `amount` from the platform to `destination`; returns the `tr_`."""
    platform = state.platform_id
    transfer_id = new_id("tr")
    now = state.now(domain)
    payment_id = new_id("py")
    transfer = build(
        "transfer",
        transfer_id,
        now,
        amount=amount,
        amount_reversed=0,
        currency=currency,
        description=description,
        destination=destination,
        destination_payment=payment_id,
        metadata=metadata or {},
        reversals=embedded_list([], f"/v1/transfers/{transfer_id}/reversals"),
        reversed=False,
        source_transaction=source_charge["id"] if source_charge else None,
        source_type="card",
        transfer_group=transfer_group,
    )
    out = add_txn(
        state,
        platform,
        amount=-amount,
        currency=currency,
        type_="transfer",
        source=transfer_id,
        available_on=available_on,
        domain=domain,
    )
    transfer["balance_transaction"] = out["id"]
    state.put(transfer, platform, "transfer")
    fee_details = (
        [fee_detail(application_fee, currency, "application_fee", "Application fee")]
        if application_fee
        else []
    )
    if fee_details:
        fee_details[0]["application"] = application_id(state)
    incoming = add_txn(
        state,
        destination,
        amount=amount,
        currency=currency,
        type_="payment",
        source=payment_id,
        fee_details=fee_details,
        available_on=available_on,
        domain=domain,
    )
    payment = build(
        "charge",
        payment_id,
        now,
        amount=amount,
        amount_captured=amount,
        amount_refunded=0,
        balance_transaction=incoming["id"],
        captured=True,
        currency=currency,
        paid=True,
        payment_method=None,
        payment_method_details={"stripe_account": {}, "type": "stripe_account"},
        refunds=embedded_list([], f"/v1/charges/{payment_id}/refunds"),
        source_transfer=transfer_id,
        status="succeeded",
        transfer_group=transfer_group,
        calculated_statement_descriptor=None,
    )
    state.put(payment, destination, "charge")
    if domain:
        state.private(payment_id)["domain"] = domain
    emit(state, "transfer.created", transfer, account=platform)
    return transfer


def reverse_transfer(
    state: SandboxState,
    transfer: Obj,
    amount: int,
    *,
    source_refund: str | None = None,
    description: str | None = None,
    metadata: Obj | None = None,
) -> Obj:
    """Pull `amount` of a transfer back to the platform; returns the `trr_`."""
    platform = state.platform_id
    destination = transfer["destination"]
    currency = transfer["currency"]
    reversal_id = new_id("trr")
    payment = state.objects.get(transfer["destination_payment"])
    refund_id = new_id("pyr")
    back = add_txn(
        state,
        platform,
        amount=amount,
        currency=currency,
        type_="transfer_refund",
        source=reversal_id,
    )
    taken = add_txn(
        state,
        destination,
        amount=-amount,
        currency=currency,
        type_="payment_refund",
        source=refund_id,
    )
    if payment is not None:
        payment_refund = build(
            "refund",
            refund_id,
            state.now(),
            amount=amount,
            balance_transaction=taken["id"],
            charge=payment["id"],
            currency=currency,
            destination_details=None,
            status="succeeded",
        )
        state.put(payment_refund, destination, "refund")
        payment["amount_refunded"] += amount
        payment["refunded"] = payment["amount_refunded"] >= payment["amount"]
        payment["refunds"]["data"].insert(0, payment_refund)
    reversal = build(
        "transfer_reversal",
        reversal_id,
        state.now(),
        amount=amount,
        balance_transaction=back["id"],
        currency=currency,
        destination_payment_refund=refund_id if payment is not None else None,
        metadata=metadata or {},
        source_refund=source_refund,
        transfer=transfer["id"],
    )
    state.put(reversal, platform, "transfer_reversal")
    previous = {"amount_reversed": transfer["amount_reversed"], "reversed": transfer["reversed"]}
    transfer["amount_reversed"] += amount
    transfer["reversed"] = transfer["amount_reversed"] >= transfer["amount"]
    transfer["reversals"]["data"].insert(0, reversal)
    emit(state, "transfer.reversed", transfer, account=platform, previous=previous)
    return reversal


def create_application_fee(
    state: SandboxState,
    *,
    amount: int,
    currency: str,
    payer: str,
    charge_id: str,
    originating: str | None,
    available_on: int | None,
    domain: str = GLOBAL,
) -> Obj:
    """Record an application fee the platform collected from `payer`."""
    platform = state.platform_id
    fee_id = new_id("fee")
    txn = add_txn(
        state,
        platform,
        amount=amount,
        currency=currency,
        type_="application_fee",
        source=fee_id,
        available_on=available_on,
        domain=domain,
    )
    fee = build(
        "application_fee",
        fee_id,
        state.now(domain),
        account=payer,
        amount=amount,
        amount_refunded=0,
        application=application_id(state),
        balance_transaction=txn["id"],
        charge=charge_id,
        currency=currency,
        fee_source={"charge": charge_id, "type": "charge"},
        originating_transaction=originating,
        refunded=False,
        refunds=embedded_list([], f"/v1/application_fees/{fee_id}/refunds"),
    )
    state.put(fee, platform, "application_fee")
    emit(state, "application_fee.created", fee, account=platform)
    return fee


def refund_application_fee(
    state: SandboxState, fee: Obj, amount: int, metadata: Obj | None = None
) -> Obj:
    """Return `amount` of an application fee to the account that paid it."""
    platform = state.platform_id
    refund_id = new_id("fr")
    currency = fee["currency"]
    txn = add_txn(
        state,
        platform,
        amount=-amount,
        currency=currency,
        type_="application_fee_refund",
        source=refund_id,
    )
    add_txn(
        state,
        fee["account"],
        amount=amount,
        currency=currency,
        type_="application_fee_refund",
        source=refund_id,
    )
    refund = build(
        "fee_refund",
        refund_id,
        state.now(),
        amount=amount,
        balance_transaction=txn["id"],
        currency=currency,
        fee=fee["id"],
        metadata=metadata or {},
    )
    state.put(refund, platform, "fee_refund")
    previous = {"amount_refunded": fee["amount_refunded"], "refunded": fee["refunded"]}
    fee["amount_refunded"] += amount
    fee["refunded"] = fee["amount_refunded"] >= fee["amount"]
    fee["refunds"]["data"].insert(0, refund)
    emit(state, "application_fee.refunded", fee, account=platform, previous=previous)
    return refund


# -- transfers API ---------------------------------------------------------------------


def create_transfer(call: Call) -> Obj:
    require_platform(call)
    state = call.state
    amount = call.req_int("amount")
    currency = call.req_str("currency").lower()
    destination = destination_account(call, call.req_str("destination"), "destination")
    require_transfers_capability(destination, "destination")
    if amount <= 0:
        raise invalid("Invalid positive integer", param="amount", code="parameter_invalid_integer")
    source_id = call.str_("source_transaction")
    source = None
    available_on = None
    domain = GLOBAL
    if source_id:
        source = state.get(source_id, state.platform_id, "charge", "source_transaction")
        if source["status"] != "succeeded" or not source["captured"]:
            raise invalid("The source transaction has not succeeded.", param="source_transaction")
        if source["currency"] != currency:
            raise invalid(
                f"The currency of source_transaction's balance transaction ({source['currency']})"
                f" must be the same as the transfer currency ({currency})",
                param="currency",
            )
        already = int(state.private(source_id).get("transferred", 0))
        if already + amount > source["amount_captured"] - _refunded(state, source):
            raise invalid(
                "Transfer amount exceeds the available amount of the source transaction.",
                param="amount",
                code="amount_too_large",
            )
        state.private(source_id)["transferred"] = already + amount
        txn = state.objects[source["balance_transaction"]]
        available_on = int(txn["available_on"])
        domain = str(state.private(source_id).get("domain", GLOBAL))
    elif available(state, state.platform_id, currency) < amount:
        raise StripeError(
            400,
            "You have insufficient available funds in your Stripe account. Try adding funds "
            "directly to your available balance by creating Charges using the "
            "4000000000000077 Testmode card. For more details, see "
            "https://stripe.com/docs/testing#available-balance",
            code="balance_insufficient",
        )
    return make_transfer(
        state,
        amount=amount,
        currency=currency,
        destination=destination["id"],
        source_charge=source,
        transfer_group=call.str_("transfer_group"),
        description=call.str_("description"),
        metadata=call.metadata(),
        available_on=available_on,
        domain=domain,
    )


def _refunded(state: SandboxState, charge: Obj) -> int:
    return int(state.private(charge["id"]).get("refunded_captured", 0))


def retrieve_transfer(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "transfer")


def update_transfer(call: Call) -> Obj:
    transfer = call.state.get(call.args[0], call.account, "transfer")
    previous: Obj = {}
    if call.has("description"):
        previous["description"] = transfer["description"]
        transfer["description"] = call.str_("description") or None
    if call.has("metadata"):
        previous["metadata"] = transfer["metadata"]
        transfer["metadata"] = call.metadata(transfer["metadata"])
    emit(call.state, "transfer.updated", transfer, account=call.account, previous=previous)
    return transfer


def list_transfers(call: Call) -> Obj:
    destination = call.str_("destination")
    group = call.str_("transfer_group")
    return page(
        call,
        call.state.listed(call.account, "transfer"),
        "/v1/transfers",
        keep=lambda t: (
            (destination is None or t["destination"] == destination)
            and (group is None or t["transfer_group"] == group)
        ),
        position=call.state.store.position,
    )


def create_reversal(call: Call) -> Obj:
    state = call.state
    transfer = state.get(call.args[0], call.account, "transfer")
    remaining = transfer["amount"] - transfer["amount_reversed"]
    amount = call.int_("amount")
    amount = remaining if amount is None else amount
    if amount <= 0 or amount > remaining:
        raise invalid(
            f"You have already reversed this transfer or the amount ({amount}) is greater "
            f"than the amount remaining ({remaining}).",
            param="amount",
            code="amount_too_large" if amount > 0 else "parameter_invalid_integer",
        )
    reversal = reverse_transfer(
        state,
        transfer,
        amount,
        description=call.str_("description"),
        metadata=call.metadata(),
    )
    if call.bool_("refund_application_fee"):
        payment = state.objects.get(transfer["destination_payment"])
        fee_id = payment.get("application_fee") if payment else None
        fee = state.objects.get(fee_id) if fee_id else None
        if fee is not None:
            share = min(
                fee["amount"] - fee["amount_refunded"],
                amount * fee["amount"] // max(transfer["amount"], 1),
            )
            if share > 0:
                refund_application_fee(state, fee, share)
    return reversal


def _reversal(call: Call) -> tuple[Obj, Obj]:
    transfer = call.state.get(call.args[0], call.account, "transfer")
    reversal = call.state.get(call.args[1], call.account, "transfer_reversal")
    if reversal["transfer"] != transfer["id"]:
        raise invalid(f"No such transfer reversal: '{call.args[1]}'", code="resource_missing")
    return transfer, reversal


def retrieve_reversal(call: Call) -> Obj:
    return _reversal(call)[1]


def update_reversal(call: Call) -> Obj:
    reversal = _reversal(call)[1]
    reversal["metadata"] = call.metadata(reversal["metadata"])
    return reversal


def list_reversals(call: Call) -> Obj:
    transfer = call.state.get(call.args[0], call.account, "transfer")
    ids = [r["id"] for r in reversed(transfer["reversals"]["data"])]
    return page(call, ids, f"/v1/transfers/{transfer['id']}/reversals")


# -- application fees API ------------------------------------------------------------


def retrieve_fee(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "application_fee")


def list_fees(call: Call) -> Obj:
    charge = call.str_("charge")
    return page(
        call,
        call.state.listed(call.account, "application_fee"),
        "/v1/application_fees",
        keep=None
        if charge is None
        else lambda f: charge in (f["charge"], f["originating_transaction"]),
        position=call.state.store.position,
    )


def create_fee_refund(call: Call) -> Obj:
    fee = call.state.get(call.args[0], call.account, "application_fee")
    remaining = fee["amount"] - fee["amount_refunded"]
    amount = call.int_("amount")
    amount = remaining if amount is None else amount
    if amount <= 0 or amount > remaining:
        raise invalid(
            f"Refund amount ({amount}) is greater than unrefunded amount on fee ({remaining})",
            param="amount",
            code="amount_too_large",
        )
    return refund_application_fee(call.state, fee, amount, call.metadata())


def _fee_refund(call: Call) -> Obj:
    fee = call.state.get(call.args[0], call.account, "application_fee")
    refund = call.state.get(call.args[1], call.account, "fee_refund")
    if refund["fee"] != fee["id"]:
        raise invalid(f"No such fee refund: '{call.args[1]}'", code="resource_missing")
    return refund


def retrieve_fee_refund(call: Call) -> Obj:
    return _fee_refund(call)


def update_fee_refund(call: Call) -> Obj:
    refund = _fee_refund(call)
    refund["metadata"] = call.metadata(refund["metadata"])
    return refund


def list_fee_refunds(call: Call) -> Obj:
    fee = call.state.get(call.args[0], call.account, "application_fee")
    ids = [r["id"] for r in reversed(fee["refunds"]["data"])]
    return page(call, ids, f"/v1/application_fees/{fee['id']}/refunds")


ROUTES = (
    Route("POST", "/v1/transfers", create_transfer, "TransferCreateParams"),
    Route("GET", "/v1/transfers", list_transfers, "TransferListParams"),
    Route("GET", "/v1/transfers/{}", retrieve_transfer, "TransferRetrieveParams"),
    Route("POST", "/v1/transfers/{}", update_transfer, "TransferUpdateParams"),
    Route("POST", "/v1/transfers/{}/reversals", create_reversal, "TransferReversalCreateParams"),
    Route("GET", "/v1/transfers/{}/reversals", list_reversals, "TransferReversalListParams"),
    Route(
        "GET", "/v1/transfers/{}/reversals/{}", retrieve_reversal, "TransferReversalRetrieveParams"
    ),
    Route("POST", "/v1/transfers/{}/reversals/{}", update_reversal, "TransferReversalUpdateParams"),
    Route("GET", "/v1/application_fees", list_fees, "ApplicationFeeListParams"),
    Route("GET", "/v1/application_fees/{}", retrieve_fee, "ApplicationFeeRetrieveParams"),
    Route(
        "POST",
        "/v1/application_fees/{}/refunds",
        create_fee_refund,
        "ApplicationFeeRefundCreateParams",
    ),
    Route(
        "GET", "/v1/application_fees/{}/refunds", list_fee_refunds, "ApplicationFeeRefundListParams"
    ),
    Route(
        "GET",
        "/v1/application_fees/{}/refunds/{}",
        retrieve_fee_refund,
        "ApplicationFeeRefundRetrieveParams",
    ),
    Route(
        "POST",
        "/v1/application_fees/{}/refunds/{}",
        update_fee_refund,
        "ApplicationFeeRefundUpdateParams",
    ),
)
