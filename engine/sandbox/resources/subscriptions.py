"""Subscriptions: billing periods, renewals, proration, pause_collection and cancellation.

Periods follow the billing cycle anchor: calendar months and years keep the anchor's
day and time of day, clamped to the month's end (Jan 31 -> Feb 28 -> Mar 31); days
and weeks are fixed lengths. A subscription lives in its customer's clock domain
(the global clock, or the customer's test clock), and its next renewal is a job in
that domain's job heap: the heap is the per-clock index of subscriptions by renewal
time, and a clock advance steps through due jobs in time order with the clock set to
each one's moment. So one large advance renews period after period, in order, each
invoice created, finalised and charged at its own time (funds availability, retries
and test-clock isolation follow for free), with no scan over subscriptions.

Proration is Stripe's: on a price or quantity change the unused time of the old item
is credited and the remaining time of the new item charged, by seconds of the current
period (`amount * remaining / period`, rounded half up to a minor unit). With
`create_prorations` (the default) the two proration items wait for the next renewal
invoice; `always_invoice` invoices them at once; `none` skips them. Changing the
billing interval restarts the period and invoices the new one at once, as Stripe does.

Shape (the sandbox's one API version): the current period lives on each subscription
item (`current_period_start`/`_end`), not on the subscription; the sandbox keeps it
beside the subscription (`period_of`) and copies it onto every item.
"""

from __future__ import annotations

import calendar
import copy
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.sandbox.errors import StripeError, invalid, missing_param
from engine.sandbox.events import emit
from engine.sandbox.ledger import round_half_up
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.common import destination_account, domain_of
from engine.sandbox.resources.invoices import (
    FINALIZE_JOB,
    add_line,
    add_pending_item,
    collect,
    drop_pending_items,
    end_subscription,
    finalize,
    line_description,
    mark_uncollectible,
    new_invoice,
    open_intent,
    publish_draft,
    sync_intent,
    take_pending_items,
    void,
)
from engine.sandbox.resources.products import new_price
from engine.sandbox.resources.transfers import require_transfers_capability
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, Params, embedded_list, page, to_bool, to_int

DAY = 86_400
RENEW_JOB = "billing_renew"
CANCEL_AT_JOB = "billing_cancel_at"
EXPIRE_JOB = "billing_incomplete_expiry"
INCOMPLETE_WINDOW = 23 * 3600
"""An `incomplete` subscription whose first invoice is unpaid after 23 hours expires."""
PRORATION_BEHAVIORS = ("create_prorations", "always_invoice", "none")
PAYMENT_BEHAVIORS = ("allow_incomplete", "error_if_incomplete", "default_incomplete")
PAUSE_BEHAVIORS = ("void", "keep_as_draft", "mark_uncollectible")
ENDED = ("canceled", "incomplete_expired")
_UNSUPPORTED = (
    "add_invoice_items",
    "backdate_start_date",
    "billing_cycle_anchor",
    "billing_cycle_anchor_config",
    "billing_schedules",
    "billing_thresholds",
    "days_until_due",
    "discounts",
    "trial_end",
    "trial_from_plan",
    "trial_period_days",
)


# -- billing periods -------------------------------------------------------------------


def period_boundary(anchor: int, recurring: Obj, n: int) -> int:
    """The start of the `n`-th period after `anchor` (n = 0 is the anchor itself)."""
    count = int(recurring["interval_count"]) * n
    interval = recurring["interval"]
    if interval == "day":
        return anchor + count * DAY
    if interval == "week":
        return anchor + count * 7 * DAY
    months = count * (12 if interval == "year" else 1)
    start = datetime.fromtimestamp(anchor, UTC)
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return int(start.replace(year=year, month=month, day=day).timestamp())


def prorate(amount: int, start: int, end: int, at: int) -> int:
    """The share of `amount` (one whole period) for the time from `at` to `end`."""
    if end <= start:
        return 0
    return round_half_up(amount * (end - max(at, start)), end - start)


def _recurring_key(price: Obj) -> tuple[str, int]:
    recurring = price["recurring"]
    return str(recurring["interval"]), int(recurring["interval_count"])


def period_of(state: SandboxState, subscription: Obj) -> tuple[int, int]:
    """The subscription's current period (start, end), which its items show."""
    start, end = state.private(subscription["id"])["period"]
    return int(start), int(end)


def _set_period(state: SandboxState, subscription: Obj, start: int, end: int) -> None:
    state.private(subscription["id"])["period"] = (start, end)
    for item in subscription["items"]["data"]:
        item["current_period_start"] = start
        item["current_period_end"] = end


def _schedule_renewal(state: SandboxState, subscription: Obj) -> None:
    domain = domain_of(state, subscription["id"])
    due = period_of(state, subscription)[1]
    state.schedule(domain, due, RENEW_JOB, f"{subscription['id']}@{due}")


# -- items -----------------------------------------------------------------------------


@dataclass
class ItemChange:
    """One requested item: an existing item changed or deleted, or a new one."""

    item: Obj | None
    price: Obj
    quantity: int
    deleted: bool = False
    metadata: Obj | None = None
    """`items[i][metadata]` as sent (merged into the item's metadata), if any."""


def _plan(price: Obj) -> Obj:
    """The legacy `plan` view of a recurring price that Stripe still embeds in items."""
    recurring = price["recurring"]
    return {
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": price["billing_scheme"],
        "created": price["created"],
        "currency": price["currency"],
        "id": price["id"],
        "interval": recurring["interval"],
        "interval_count": recurring["interval_count"],
        "livemode": False,
        "metadata": price["metadata"],
        "meter": None,
        "nickname": price["nickname"],
        "object": "plan",
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": recurring["usage_type"],
    }


def _merged(current: Obj, updates: Obj) -> Obj:
    """Stripe's metadata update: merge; an empty value removes the key; `{}` from `""` clears."""
    if not updates:
        return {}
    result = dict(current)
    for key, value in updates.items():
        if value == "":
            result.pop(key, None)
        else:
            result[key] = value
    return result


def _new_item(
    state: SandboxState, subscription: Obj, price: Obj, quantity: int, metadata: Obj | None
) -> Obj:
    start, end = period_of(state, subscription)
    item = build(
        "subscription_item",
        new_id("si", 14),
        state.now(domain_of(state, subscription["id"])),
        billing_thresholds=None,
        current_period_end=end,
        current_period_start=start,
        discounts=[],
        metadata=_merged({}, metadata or {}),
        plan=_plan(price),
        price=price,
        quantity=quantity,
        subscription=subscription["id"],
        tax_rates=[],
    )
    state.put(item, state.owner_of(subscription["id"]), "subscription_item", listed=False)
    return item


def _item_price(call: Call, entry: Params, index: int) -> Obj | None:
    state = call.state
    if entry.get("price"):
        return state.get(str(entry["price"]), call.account, "price", f"items[{index}][price]")
    data = entry.get("price_data")
    if isinstance(data, dict):
        return new_price(call, data, f"items[{index}][price_data]")
    return None


def _item_changes(call: Call, subscription: Obj | None) -> list[ItemChange]:
    changes: list[ItemChange] = []
    existing = {i["id"]: i for i in subscription["items"]["data"]} if subscription else {}
    for index, entry in enumerate(call.list_("items")):
        if not isinstance(entry, dict):
            raise invalid("Invalid array", param="items")
        item = None
        if entry.get("id"):
            item = existing.get(str(entry["id"]))
            if item is None:
                raise invalid(
                    f"No such subscription item: '{entry['id']}'",
                    param=f"items[{index}][id]",
                    code="resource_missing",
                )
        price = _item_price(call, entry, index) or (item["price"] if item else None)
        if price is None:
            raise invalid(
                f"Missing required param: items[{index}][price].",
                param=f"items[{index}][price]",
                code="parameter_missing",
            )
        if price["type"] != "recurring":
            raise invalid(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param=f"items[{index}][price]",
            )
        if not price["active"]:
            raise invalid(
                "The price specified is inactive. This field only accepts active prices.",
                param=f"items[{index}][price]",
            )
        raw_quantity = entry.get("quantity")
        quantity = (
            to_int(raw_quantity, f"items[{index}][quantity]")
            if raw_quantity not in (None, "")
            else (item["quantity"] if item else 1)
        )
        if quantity < 0:
            raise invalid("Quantity must be non-negative.", param=f"items[{index}][quantity]")
        deleted = to_bool(entry.get("deleted", False), f"items[{index}][deleted]")
        raw_metadata = entry.get("metadata")
        metadata: Obj | None
        if raw_metadata == "":
            metadata = {}
        elif raw_metadata is None or isinstance(raw_metadata, dict):
            metadata = raw_metadata
        else:
            raise invalid("Invalid hash", param=f"items[{index}][metadata]")
        changes.append(ItemChange(item, price, quantity, deleted, metadata))
    return changes


def _check_compatible(prices: list[Obj]) -> None:
    if not prices:
        raise invalid("A subscription needs at least one item.", param="items")
    currencies = {p["currency"] for p in prices}
    if len(currencies) > 1:
        raise invalid("All prices on a subscription must have the same currency.", param="items")
    if len({_recurring_key(p) for p in prices}) > 1:
        raise invalid(
            "All prices on a subscription must have the same `recurring.interval` "
            "and `recurring.interval_count`.",
            param="items",
        )


# -- money parameters ---------------------------------------------------------------------


def _percent(value: Any, param: str) -> Decimal:
    try:
        percent = Decimal(str(value))
    except InvalidOperation:
        raise invalid(f"Invalid decimal: {value}", param=param) from None
    if not percent.is_finite() or not Decimal(0) <= percent <= Decimal(100):
        raise invalid("The percentage must be between 0 and 100.", param=param)
    return percent


def _apply_money_params(call: Call, subscription: Obj, previous: Obj) -> None:
    """`application_fee_percent`, `transfer_data` and `on_behalf_of` (create and update)."""
    state = call.state
    private = state.private(subscription["id"])
    if call.has("transfer_data"):
        previous["transfer_data"] = subscription["transfer_data"]
        data = call.dict_("transfer_data")
        if not data:
            subscription["transfer_data"] = None
            private["transfer_percent"] = None
        else:
            if call.connected:
                raise invalid(
                    "transfer_data cannot be used on a direct charge.", param="transfer_data"
                )
            dest_id = data.get("destination")
            if not dest_id:
                raise missing_param("transfer_data[destination]")
            dest = destination_account(call, str(dest_id), "transfer_data[destination]")
            require_transfers_capability(dest, "transfer_data[destination]")
            amount_percent = None
            if data.get("amount_percent") not in (None, ""):
                amount_percent = _percent(data["amount_percent"], "transfer_data[amount_percent]")
            subscription["transfer_data"] = {
                "amount_percent": float(amount_percent) if amount_percent is not None else None,
                "destination": dest["id"],
            }
            private["transfer_percent"] = (
                str(amount_percent) if amount_percent is not None else None
            )
    if call.has("application_fee_percent"):
        previous["application_fee_percent"] = subscription["application_fee_percent"]
        raw = call.params["application_fee_percent"]
        if raw == "":
            subscription["application_fee_percent"] = None
            private["fee_percent"] = None
        else:
            percent = _percent(raw, "application_fee_percent")
            subscription["application_fee_percent"] = float(percent)
            private["fee_percent"] = str(percent)
    if private.get("fee_percent") is not None:
        if not call.connected and not subscription["transfer_data"]:
            raise invalid(
                "Can only apply an application_fee_percent when the subscription is created "
                "as a direct charge (with the Stripe-Account header) or with "
                "`transfer_data[destination]`.",
                param="application_fee_percent",
            )
        if private.get("transfer_percent") is not None:
            # PaymentIntents refuse application_fee_amount with transfer_data[amount] too.
            raise invalid(
                "You cannot use both application_fee_percent and transfer_data[amount_percent].",
                param="application_fee_percent",
            )
    if call.has("on_behalf_of"):
        previous["on_behalf_of"] = subscription["on_behalf_of"]
        obo = call.str_("on_behalf_of")
        subscription["on_behalf_of"] = (
            destination_account(call, obo, "on_behalf_of")["id"] if obo else None
        )


def _check_payment_method(call: Call, customer_id: str) -> str | None:
    pm_id = call.str_("default_payment_method")
    if not pm_id:
        return None
    pm = call.state.find(pm_id)
    if (
        pm is None
        or call.state.store.kind.get(pm_id) != "payment_method"
        or pm["customer"] != customer_id
    ):
        raise invalid(
            f"The customer does not have a payment method with the ID {pm_id}. The "
            "payment method must be attached to the customer.",
            param="default_payment_method",
            code="resource_missing",
        )
    return pm_id


def _reject_unsupported(call: Call, *, update: bool = False) -> None:
    for name in _UNSUPPORTED:
        value = call.params.get(name)
        if update and name == "billing_cycle_anchor" and value in ("now", "unchanged"):
            continue
        if value not in (None, ""):
            raise invalid(f"The sandbox does not support `{name}` on subscriptions.", param=name)
    method = call.str_("collection_method")
    if method not in (None, "charge_automatically"):
        raise invalid(
            "The sandbox supports collection_method=charge_automatically only.",
            param="collection_method",
        )


# -- create ------------------------------------------------------------------------------


def create_subscription(call: Call) -> Obj:
    state = call.state
    customer = state.get(call.req_str("customer"), call.account, "customer", "customer")
    _reject_unsupported(call)
    behavior = call.str_("payment_behavior") or "allow_incomplete"
    if behavior not in PAYMENT_BEHAVIORS:
        raise invalid(f"Invalid payment_behavior: {behavior}", param="payment_behavior")
    changes = _item_changes(call, None)
    prices = [c.price for c in changes]
    _check_compatible(prices)
    currency = prices[0]["currency"]
    if call.str_("currency") not in (None, currency):
        raise invalid("The currency must match the prices' currency.", param="currency")
    pm_id = _check_payment_method(call, customer["id"])
    domain = domain_of(state, customer["id"])
    now = state.now(domain)
    sub_id = new_id("sub")
    subscription = _build(call, sub_id, now=now, customer=customer, currency=currency)
    subscription["default_payment_method"] = pm_id
    private = state.private(sub_id)
    private.update(cycle=0, invoices=[], pending=[], creating=True)
    _set_period(state, subscription, now, period_boundary(now, prices[0]["recurring"], 1))
    if domain:
        private["domain"] = domain
    _apply_money_params(call, subscription, {})
    _apply_cancellation(call, subscription, {}, now)
    state.put(subscription, call.account, "subscription")
    for change in changes:
        item = _new_item(state, subscription, change.price, change.quantity, change.metadata)
        subscription["items"]["data"].append(item)
    state.private(customer["id"]).setdefault("subscriptions", []).append(sub_id)
    if customer["currency"] is None:
        customer["currency"] = currency

    invoice = _period_invoice(state, subscription, "subscription_create", now, now)
    subscription["latest_invoice"] = invoice["id"]
    finalize(state, invoice)
    if behavior == "default_incomplete" and invoice["amount_remaining"] > 0:
        open_intent(state, invoice)
    else:
        error = collect(state, invoice, base_url=call.base_url)
        if error is not None and behavior == "error_if_incomplete":
            void(state, invoice)
            state.private(customer["id"])["subscriptions"].remove(sub_id)
            state.delete(sub_id)
            raise error
    private.pop("creating", None)
    if subscription["status"] == "incomplete":
        state.schedule(domain, now + INCOMPLETE_WINDOW, EXPIRE_JOB, sub_id)
    _schedule_renewal(state, subscription)
    emit(state, "customer.subscription.created", subscription, account=call.account)
    return subscription


def _build(call: Call, sub_id: str, *, now: int, customer: Obj, currency: str) -> Obj:
    return build(
        "subscription",
        sub_id,
        now,
        application=None,
        application_fee_percent=None,
        automatic_tax={"disabled_reason": None, "enabled": False, "liability": None},
        billing_cycle_anchor=now,
        billing_cycle_anchor_config=None,
        billing_mode={"flexible": None, "type": "classic"},
        billing_schedules=[],
        billing_thresholds=None,
        cancel_at=None,
        cancel_at_period_end=call.bool_("cancel_at_period_end"),
        canceled_at=None,
        cancellation_details={"comment": None, "feedback": None, "reason": None},
        collection_method="charge_automatically",
        currency=currency,
        customer=customer["id"],
        customer_account=None,
        days_until_due=None,
        default_payment_method=None,
        default_source=None,
        default_tax_rates=[],
        description=call.str_("description") or None,
        discounts=[],
        ended_at=None,
        invoice_settings={"account_tax_ids": None, "issuer": {"type": "self"}},
        items=embedded_list([], f"/v1/subscription_items?subscription={sub_id}"),
        latest_invoice=None,
        managed_payments=None,
        metadata=call.metadata(),
        next_pending_invoice_item_invoice=None,
        on_behalf_of=None,
        pause_collection=None,
        payment_settings={
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        pending_invoice_item_interval=None,
        pending_setup_intent=None,
        pending_update=None,
        schedule=None,
        start_date=now,
        status="incomplete",
        test_clock=customer["test_clock"],
        transfer_data=None,
        trial_end=None,
        trial_settings={"end_behavior": {"missing_payment_method": "create_invoice"}},
        trial_start=None,
    )


def _period_invoice(
    state: SandboxState,
    subscription: Obj,
    reason: str,
    period_start: int,
    period_end: int,
    *,
    with_items: bool = True,
) -> Obj:
    """A draft for the current period's items (and pending prorations), announced."""
    customer = state.find(subscription["customer"])
    if customer is None:
        raise invalid(f"No such customer: '{subscription['customer']}'", code="resource_missing")
    invoice = new_invoice(
        state,
        owner=state.owner_of(subscription["id"]),
        customer=customer,
        subscription=subscription,
        billing_reason=reason,
        period_start=period_start,
        period_end=period_end,
    )
    take_pending_items(state, invoice, subscription)
    if with_items:
        period = period_of(state, subscription)
        for item in subscription["items"]["data"]:
            price = item["price"]
            add_line(
                state,
                invoice,
                amount=price["unit_amount"] * item["quantity"],
                description=line_description(state, price, item["quantity"]),
                period=period,
                price=price,
                quantity=item["quantity"],
                subscription_item=item["id"],
            )
    publish_draft(state, invoice)
    return invoice


# -- read ----------------------------------------------------------------------------------


def retrieve_subscription(call: Call) -> Obj:
    subscription = call.state.get(call.args[0], call.account, "subscription")
    latest = call.state.find(subscription["latest_invoice"] or "")
    if latest is not None:
        sync_intent(call.state, latest)
    return subscription


def list_subscriptions(call: Call) -> Obj:
    state = call.state
    status = call.str_("status")
    customer_id = call.str_("customer")
    price_id = call.str_("price") or call.str_("plan")
    clock = call.str_("test_clock")
    ids: list[str] = state.listed(call.account, "subscription")
    position: dict[str, int] | None = state.store.position
    if customer_id:
        state.get(customer_id, call.account, "customer", "customer")
        ids, position = state.private(customer_id).get("subscriptions", []), None

    def status_ok(sub: Obj) -> bool:
        if status is None:
            return sub["status"] not in ENDED
        if status == "all":
            return True
        if status == "ended":
            return sub["status"] in ENDED
        return bool(sub["status"] == status)

    def keep(sub: Obj) -> bool:
        return (
            status_ok(sub)
            and (clock is None or sub["test_clock"] == clock)
            and (
                price_id is None or any(i["price"]["id"] == price_id for i in sub["items"]["data"])
            )
        )

    return page(call, ids, "/v1/subscriptions", keep=keep, position=position)


def list_subscription_items(call: Call) -> Obj:
    subscription = call.state.get(
        call.req_str("subscription"), call.account, "subscription", "subscription"
    )
    ids = [i["id"] for i in reversed(subscription["items"]["data"])]
    return page(call, ids, f"/v1/subscription_items?subscription={subscription['id']}")


def retrieve_subscription_item(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "subscription_item")


# -- update --------------------------------------------------------------------------------


def update_subscription(call: Call) -> Obj:
    state = call.state
    subscription = state.get(call.args[0], call.account, "subscription")
    if subscription["status"] in ENDED and set(call.params) - {"metadata", "cancellation_details"}:
        raise invalid(
            "A canceled subscription can only update its cancellation_details and metadata."
        )
    _reject_unsupported(call, update=True)
    previous: Obj = {}
    domain = domain_of(state, subscription["id"])
    now = state.now(domain)
    if call.has("metadata"):
        previous["metadata"] = subscription["metadata"]
        subscription["metadata"] = call.metadata(subscription["metadata"])
    if call.has("cancellation_details"):
        details = call.dict_("cancellation_details")
        previous["cancellation_details"] = dict(subscription["cancellation_details"])
        for key in ("comment", "feedback"):
            if key in details:
                subscription["cancellation_details"][key] = details[key] or None
    if subscription["status"] in ENDED:
        _announce(state, subscription, previous)
        return subscription
    if call.has("description"):
        previous["description"] = subscription["description"]
        subscription["description"] = call.str_("description") or None
    if call.has("default_payment_method"):
        previous["default_payment_method"] = subscription["default_payment_method"]
        subscription["default_payment_method"] = _check_payment_method(
            call, subscription["customer"]
        )
    _apply_money_params(call, subscription, previous)
    _apply_pause(call, subscription, previous)
    _apply_cancellation(call, subscription, previous, now)
    if call.has("items") or call.str_("billing_cycle_anchor") == "now":
        _change_items(call, subscription, previous, now)
    _announce(state, subscription, previous)
    return subscription


def _announce(state: SandboxState, subscription: Obj, previous: Obj) -> None:
    changed = {k: v for k, v in previous.items() if subscription.get(k) != v}
    if changed:
        emit(
            state,
            "customer.subscription.updated",
            subscription,
            account=state.owner_of(subscription["id"]),
            previous=changed,
        )


def _apply_pause(call: Call, subscription: Obj, previous: Obj) -> None:
    if not call.has("pause_collection"):
        return
    previous["pause_collection"] = subscription["pause_collection"]
    data = call.dict_("pause_collection")
    if not data:
        subscription["pause_collection"] = None
        return
    behavior = data.get("behavior")
    if behavior not in PAUSE_BEHAVIORS:
        raise invalid(
            "Invalid pause_collection[behavior]: must be one of keep_as_draft, "
            "mark_uncollectible, or void",
            param="pause_collection[behavior]",
        )
    resumes_at = data.get("resumes_at")
    subscription["pause_collection"] = {
        "behavior": behavior,
        "resumes_at": None
        if resumes_at in (None, "")
        else to_int(resumes_at, "pause_collection[resumes_at]"),
    }


def _apply_cancellation(call: Call, subscription: Obj, previous: Obj, now: int) -> None:
    state = call.state
    if call.has("cancel_at_period_end"):
        flag = call.bool_("cancel_at_period_end")
        previous.update(
            cancel_at_period_end=subscription["cancel_at_period_end"],
            cancel_at=subscription["cancel_at"],
            canceled_at=subscription["canceled_at"],
        )
        subscription["cancel_at_period_end"] = flag
        subscription["cancel_at"] = period_of(state, subscription)[1] if flag else None
        subscription["canceled_at"] = now if flag else None
    if call.has("cancel_at"):
        previous.update(
            cancel_at=subscription["cancel_at"], canceled_at=subscription["canceled_at"]
        )
        raw = call.params["cancel_at"]
        if raw == "":
            subscription["cancel_at"] = None
            subscription["canceled_at"] = None
        else:
            when = to_int(raw, "cancel_at")
            if when <= now:
                raise invalid("cancel_at must be in the future.", param="cancel_at")
            subscription["cancel_at"] = when
            subscription["canceled_at"] = now
            _schedule_cancel_at(state, subscription)


def _schedule_cancel_at(state: SandboxState, subscription: Obj) -> None:
    when = int(subscription["cancel_at"])
    if when != period_of(state, subscription)[1]:
        domain = domain_of(state, subscription["id"])
        state.schedule(domain, when, CANCEL_AT_JOB, f"{subscription['id']}@{when}")


def _change_items(call: Call, subscription: Obj, previous: Obj, now: int) -> None:
    """Items, quantities and `billing_cycle_anchor=now`, with prorations and their invoice.

    Applied first and rolled back if validation fails, or if the payment fails with
    `payment_behavior=error_if_incomplete` (Stripe then leaves the subscription as it was).
    """
    state = call.state
    proration = call.str_("proration_behavior") or "create_prorations"
    if proration not in PRORATION_BEHAVIORS:
        raise invalid(f"Invalid proration_behavior: {proration}", param="proration_behavior")
    payment = call.str_("payment_behavior") or "allow_incomplete"
    if payment not in (*PAYMENT_BEHAVIORS, "pending_if_incomplete"):
        raise invalid(f"Invalid payment_behavior: {payment}", param="payment_behavior")
    if payment in ("pending_if_incomplete", "default_incomplete"):
        raise invalid(
            f"The sandbox does not support payment_behavior={payment} on updates.",
            param="payment_behavior",
        )
    anchor = call.str_("billing_cycle_anchor")
    if anchor not in (None, "unchanged", "now"):
        raise invalid(
            "billing_cycle_anchor must be `now` or `unchanged` on an update.",
            param="billing_cycle_anchor",
        )
    start, end = period_of(state, subscription)
    at = call.int_("proration_date") or now
    if not start <= at <= end:
        raise invalid(
            "proration_date must be within the current billing period.", param="proration_date"
        )
    changes = _item_changes(call, subscription)
    items: list[Obj] = subscription["items"]["data"]
    snapshot = copy.deepcopy(subscription["items"])
    old_items = list(items)
    before = {i["id"]: (i["price"], i["plan"], i["quantity"], i["metadata"]) for i in old_items}
    olds = [(c.item["price"], c.item["quantity"]) if c.item else None for c in changes]
    old_key = _recurring_key(items[0]["price"])
    kept_period = (
        start,
        end,
        subscription["billing_cycle_anchor"],
        state.private(subscription["id"]).get("cycle", 0),
    )
    kept_latest = subscription["latest_invoice"]
    pending: list[str] = state.private(subscription["id"]).setdefault("pending", [])
    pending_before = len(pending)
    invoice = None
    try:
        removed = _apply_items(state, subscription, changes)
        prices = [i["price"] for i in items]
        _check_compatible(prices)
        if prices[0]["currency"] != subscription["currency"]:
            raise invalid("You cannot change the currency of a subscription.", param="items")
        new_cycle = anchor == "now" or _recurring_key(prices[0]) != old_key
        if new_cycle:
            if proration != "none":
                for item in old_items:
                    price, _, quantity, _ = before[item["id"]]
                    _prorate_item(
                        state,
                        subscription,
                        item["id"],
                        (price, quantity),
                        None,
                        period=(start, end),
                        at=at,
                    )
            subscription["billing_cycle_anchor"] = now
            state.private(subscription["id"])["cycle"] = 0
            _set_period(state, subscription, now, period_boundary(now, prices[0]["recurring"], 1))
            invoice = _period_invoice(state, subscription, "subscription_update", now, now)
        else:
            if proration != "none":
                for change, old in zip(changes, olds, strict=True):
                    assert change.item is not None
                    new = None if change.deleted else (change.price, change.quantity)
                    _prorate_item(
                        state, subscription, change.item["id"], old, new, period=(start, end), at=at
                    )
            if proration == "always_invoice" and pending:
                invoice = _period_invoice(
                    state, subscription, "subscription_update", at, at, with_items=False
                )
        if invoice is not None:
            subscription["latest_invoice"] = invoice["id"]
            finalize(state, invoice)
            error = collect(state, invoice, base_url=call.base_url)
            if error is not None and payment == "error_if_incomplete":
                raise error
    except StripeError:
        items[:] = old_items
        for item in old_items:
            item["price"], item["plan"], item["quantity"], item["metadata"] = before[item["id"]]
        subscription["billing_cycle_anchor"] = kept_period[2]
        state.private(subscription["id"])["cycle"] = kept_period[3]
        _set_period(state, subscription, kept_period[0], kept_period[1])
        subscription["latest_invoice"] = kept_latest
        if invoice is not None and invoice["status"] == "open":
            void(state, invoice)
        for item_id in pending[pending_before:]:
            state.delete(item_id)
        del pending[pending_before:]
        raise
    for item in removed:
        state.delete(item["id"])
    if period_of(state, subscription)[1] != end:
        _schedule_renewal(state, subscription)
        previous["billing_cycle_anchor"] = kept_period[2]
    previous["latest_invoice"] = kept_latest
    previous["items"] = snapshot


def _prorate_item(
    state: SandboxState,
    subscription: Obj,
    item_id: str,
    old: tuple[Obj, int] | None,
    new: tuple[Obj, int] | None,
    *,
    period: tuple[int, int],
    at: int,
) -> None:
    """Credit the unused time of `old` and charge the remaining time of `new` (price, qty)."""
    start, end = period
    if at >= end:
        return
    if old is not None and new is not None and old[0]["id"] == new[0]["id"] and old[1] == new[1]:
        return
    after = time.strftime("%d %b %Y", time.gmtime(at))
    for sign, side, words in ((-1, old, "Unused"), (1, new, "Remaining")):
        if side is None:
            continue
        price, quantity = side
        amount = prorate(price["unit_amount"] * quantity, start, end, at)
        if amount:
            add_pending_item(
                state,
                subscription,
                amount=sign * amount,
                description=f"{words} time on {_label(state, price, quantity)} after {after}",
                period=(at, end),
                price=price,
                quantity=quantity,
                subscription_item=item_id,
            )


def _label(state: SandboxState, price: Obj, quantity: int) -> str:
    product = state.find(price["product"])
    name = product["name"] if product is not None else price["product"]
    return str(name) if quantity == 1 else f"{quantity} × {name}"


def _apply_items(state: SandboxState, subscription: Obj, changes: list[ItemChange]) -> list[Obj]:
    """Change the subscription's items in place; returns the removed ones (still stored)."""
    items: list[Obj] = subscription["items"]["data"]
    removed: list[Obj] = []
    for change in changes:
        if change.item is None:
            change.item = _new_item(
                state, subscription, change.price, change.quantity, change.metadata
            )
            items.append(change.item)
            continue
        if change.deleted:
            items.remove(change.item)
            removed.append(change.item)
            continue
        if change.item["price"]["id"] != change.price["id"]:
            change.item["price"] = change.price
            change.item["plan"] = _plan(change.price)
        change.item["quantity"] = change.quantity
        if change.metadata is not None:
            change.item["metadata"] = _merged(change.item["metadata"], change.metadata)
    return removed


# -- cancel ---------------------------------------------------------------------------------


def cancel_subscription(call: Call) -> Obj:
    state = call.state
    subscription = state.get(call.args[0], call.account, "subscription")
    if subscription["status"] in ENDED:
        raise invalid(
            f"This subscription ({subscription['id']}) is already canceled.",
            code="resource_missing",
        )
    now = state.now(domain_of(state, subscription["id"]))
    details = call.dict_("cancellation_details")
    for key in ("comment", "feedback"):
        if key in details:
            subscription["cancellation_details"][key] = details[key] or None
    if call.bool_("prorate") and subscription["status"] != "incomplete":
        start, end = period_of(state, subscription)
        for item in subscription["items"]["data"]:
            _prorate_item(
                state,
                subscription,
                item["id"],
                (item["price"], item["quantity"]),
                None,
                period=(start, end),
                at=now,
            )
    pending = state.private(subscription["id"]).get("pending", [])
    if call.bool_("invoice_now") and pending:
        invoice = _period_invoice(
            state, subscription, "subscription_update", now, now, with_items=False
        )
        subscription["latest_invoice"] = invoice["id"]
        finalize(state, invoice)
        collect(state, invoice, base_url=call.base_url)
    else:
        drop_pending_items(state, subscription)
    if subscription["status"] == "incomplete":
        _void_latest(state, subscription)
    subscription["canceled_at"] = now
    end_subscription(state, subscription, reason="cancellation_requested", when=now)
    return subscription


def _void_latest(state: SandboxState, subscription: Obj) -> None:
    latest = state.find(subscription["latest_invoice"] or "")
    if latest is not None and latest["status"] == "open":
        void(state, latest)


# -- jobs ----------------------------------------------------------------------------------


def renew_job(state: SandboxState, ref: str) -> None:
    """Job: a subscription's period ended (`sub_...@period_end`): cancel or renew it."""
    sub_id, _, due_text = ref.rpartition("@")
    subscription = state.find(sub_id)
    due = int(due_text)
    if (
        subscription is None
        or period_of(state, subscription)[1] != due
        or subscription["status"] in (*ENDED, "incomplete")
    ):
        return
    if state.find(subscription["customer"]) is None:
        # Stripe cancels a deleted customer's subscriptions; the sandbox notices at renewal.
        drop_pending_items(state, subscription)
        end_subscription(state, subscription, reason="cancellation_requested", when=due)
        return
    if subscription["cancel_at_period_end"] or (
        subscription["cancel_at"] is not None and subscription["cancel_at"] <= due
    ):
        _end_at_period_end(state, subscription, due)
        return
    owner = state.owner_of(sub_id)
    private = state.private(sub_id)
    old_start = period_of(state, subscription)[0]
    previous: Obj = {"items": copy.deepcopy(subscription["items"])}
    private["cycle"] = int(private.get("cycle", 0)) + 1
    recurring = subscription["items"]["data"][0]["price"]["recurring"]
    next_end = period_boundary(
        subscription["billing_cycle_anchor"], recurring, private["cycle"] + 1
    )
    _set_period(state, subscription, due, next_end)
    pause = subscription["pause_collection"]
    if pause and pause["resumes_at"] is not None and pause["resumes_at"] <= due:
        previous["pause_collection"] = pause
        subscription["pause_collection"] = pause = None
    invoice = _period_invoice(state, subscription, "subscription_cycle", old_start, due)
    previous["latest_invoice"] = subscription["latest_invoice"]
    subscription["latest_invoice"] = invoice["id"]
    emit(state, "customer.subscription.updated", subscription, account=owner, previous=previous)
    if pause is not None:
        _collect_paused(state, invoice, pause["behavior"])
    elif subscription["status"] == "unpaid":
        invoice["auto_advance"] = False  # Stripe leaves an unpaid subscription's drafts.
    else:
        delay = state.options.invoice_finalize_delay
        invoice["automatically_finalizes_at"] = due + delay
        invoice["next_payment_attempt"] = due + delay
        state.schedule(domain_of(state, sub_id), due + delay, FINALIZE_JOB, invoice["id"])
    _schedule_renewal(state, subscription)


def _collect_paused(state: SandboxState, invoice: Obj, behavior: str) -> None:
    """pause_collection: the period's invoice is voided, left a draft, or written off."""
    if behavior == "keep_as_draft":
        invoice["auto_advance"] = False
        return
    finalize(state, invoice, apply_balance=False)
    if behavior == "void":
        void(state, invoice)
    else:
        mark_uncollectible(state, invoice)


def _end_at_period_end(state: SandboxState, subscription: Obj, due: int) -> None:
    if state.private(subscription["id"]).get("pending"):
        # Stripe collects pending prorations with the period's end when cancelling then.
        invoice = _period_invoice(
            state,
            subscription,
            "subscription_cycle",
            period_of(state, subscription)[0],
            due,
            with_items=False,
        )
        subscription["latest_invoice"] = invoice["id"]
        finalize(state, invoice)
        collect(state, invoice)
    end_subscription(state, subscription, reason="cancellation_requested", when=due)


def cancel_at_job(state: SandboxState, ref: str) -> None:
    """Job: `cancel_at` within a period has come (`sub_...@time`)."""
    sub_id, _, when = ref.rpartition("@")
    subscription = state.find(sub_id)
    if subscription is None or subscription["status"] in ENDED:
        return
    if subscription["cancel_at"] != int(when):
        return
    drop_pending_items(state, subscription)
    end_subscription(state, subscription, reason="cancellation_requested", when=int(when))


def expire_job(state: SandboxState, sub_id: str) -> None:
    """Job: an `incomplete` subscription's first invoice was not paid within 23 hours."""
    subscription = state.find(sub_id)
    if subscription is None or subscription["status"] != "incomplete":
        return
    latest = state.find(subscription["latest_invoice"] or "")
    if latest is not None:
        sync_intent(state, latest)
        if subscription["status"] != "incomplete":
            return
    _void_latest(state, subscription)
    previous = {"status": subscription["status"]}
    subscription["status"] = "incomplete_expired"
    subscription["ended_at"] = state.now(domain_of(state, sub_id))
    emit(
        state,
        "customer.subscription.deleted",
        subscription,
        account=state.owner_of(sub_id),
        previous=previous,
    )


ROUTES = (
    Route("POST", "/v1/subscriptions", create_subscription, "SubscriptionCreateParams"),
    Route("GET", "/v1/subscriptions", list_subscriptions, "SubscriptionListParams"),
    Route("GET", "/v1/subscriptions/{}", retrieve_subscription, "SubscriptionRetrieveParams"),
    Route("POST", "/v1/subscriptions/{}", update_subscription, "SubscriptionUpdateParams"),
    Route("DELETE", "/v1/subscriptions/{}", cancel_subscription, "SubscriptionCancelParams"),
    Route("GET", "/v1/subscription_items", list_subscription_items, "SubscriptionItemListParams"),
    Route(
        "GET",
        "/v1/subscription_items/{}",
        retrieve_subscription_item,
        "SubscriptionItemRetrieveParams",
    ),
)
JOBS = {RENEW_JOB: renew_job, CANCEL_AT_JOB: cancel_at_job, EXPIRE_JOB: expire_job}
