"""Products and prices: the catalogue subscriptions and invoices bill from.

A price is one-off (`type=one_time`) or recurring (`recurring[interval]` day / week /
month / year, `recurring[interval_count]`); only `per_unit` prices with a
`unit_amount` are supported. Prices are never deleted, only archived
(`active=false`), as with Stripe. Each product keeps the ids of its prices beside
it, so `GET /v1/prices?product=...` reads that index instead of every price.
"""

from __future__ import annotations

from typing import Any

from engine.sandbox.errors import invalid
from engine.sandbox.events import emit
from engine.sandbox.objects import build, new_id
from engine.sandbox.resources.common import copy_fields
from engine.sandbox.routing import Route
from engine.sandbox.state import SandboxState
from engine.sandbox.wire import Call, Obj, Params, page, to_bool, to_int

INTERVALS = ("day", "week", "month", "year")
MAX_INTERVAL = {"day": 1095, "week": 156, "month": 36, "year": 3}
"""Stripe's longest billing period per interval (three years)."""
_PRODUCT_FIELDS = ("description", "statement_descriptor", "unit_label", "url", "tax_code")


# -- products ------------------------------------------------------------------------


def create_product(call: Call) -> Obj:
    state = call.state
    product_id = call.str_("id") or new_id("prod", 14)
    if product_id in state.objects:
        raise invalid(
            f"Product already exists: {product_id}", param="id", code="resource_already_exists"
        )
    product = _new_product(state, call.account, call.req_str("name"), call.params)
    product["id"] = product_id
    state.put(product, call.account, "product")
    emit(state, "product.created", product, account=call.account)
    price_data = call.dict_("default_price_data")
    if price_data:
        price = new_price(call, {**price_data, "product": product_id}, "default_price_data")
        product["default_price"] = price["id"]
        emit(
            state,
            "product.updated",
            product,
            account=call.account,
            previous={"default_price": None},
        )
    return product


def _new_product(state: SandboxState, account: str, name: str, params: Params) -> Obj:
    now = state.now()
    product = build(
        "product",
        "",
        now,
        active=to_bool(params.get("active", True), "active"),
        default_price=None,
        description=None,
        images=[str(i) for i in _as_list(params.get("images"))],
        marketing_features=[],
        metadata=_metadata(params.get("metadata")),
        name=name,
        package_dimensions=None,
        shippable=None,
        type=str(params.get("type") or "service"),
        updated=now,
    )
    copy_fields(product, params, _PRODUCT_FIELDS)
    if params.get("shippable") not in (None, ""):
        product["shippable"] = to_bool(params["shippable"], "shippable")
    return product


def retrieve_product(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "product")


def update_product(call: Call) -> Obj:
    state = call.state
    product = state.get(call.args[0], call.account, "product")
    previous = copy_fields(product, call.params, (*_PRODUCT_FIELDS, "name"))
    if call.has("active"):
        active = call.bool_("active")
        if active != product["active"]:
            previous["active"] = product["active"]
            product["active"] = active
    if call.has("default_price"):
        price_id = call.str_("default_price")
        if price_id:
            price = state.get(price_id, call.account, "price", "default_price")
            if price["product"] != product["id"]:
                raise invalid(
                    "The default price must belong to this product.", param="default_price"
                )
        previous["default_price"] = product["default_price"]
        product["default_price"] = price_id or None
    if call.has("metadata"):
        previous["metadata"] = product["metadata"]
        product["metadata"] = call.metadata(product["metadata"])
    if call.has("images"):
        previous["images"] = product["images"]
        product["images"] = [str(i) for i in call.list_("images")]
    product["updated"] = state.now()
    emit(state, "product.updated", product, account=call.account, previous=previous)
    return product


def delete_product(call: Call) -> Obj:
    state = call.state
    product = state.get(call.args[0], call.account, "product")
    if state.private(product["id"]).get("prices"):
        raise invalid(
            "This product cannot be deleted because it has one or more user-created prices.",
            code="resource_in_use",
        )
    state.delete(product["id"])
    emit(state, "product.deleted", product, account=call.account)
    return build("deleted_product", product["id"], 0)


def list_products(call: Call) -> Obj:
    active = call.params.get("active")
    want_active = None if active is None else to_bool(active, "active")
    ids = {str(i) for i in call.list_("ids")} or None
    shippable = call.params.get("shippable")
    want_shippable = None if shippable is None else to_bool(shippable, "shippable")
    type_ = call.str_("type")
    url = call.str_("url")

    def keep(product: Obj) -> bool:
        return (
            (want_active is None or product["active"] == want_active)
            and (ids is None or product["id"] in ids)
            and (want_shippable is None or product["shippable"] == want_shippable)
            and (type_ is None or product["type"] == type_)
            and (url is None or product["url"] == url)
        )

    return page(
        call,
        call.state.listed(call.account, "product"),
        "/v1/products",
        keep=keep,
        position=call.state.store.position,
    )


# -- prices --------------------------------------------------------------------------


def create_price(call: Call) -> Obj:
    return new_price(call, call.params, "")


def new_price(call: Call, params: Params, prefix: str) -> Obj:
    """Validate price parameters (top level, or nested under `prefix`) and store the price."""
    state = call.state

    def name(key: str) -> str:
        return f"{prefix}[{key}]" if prefix else key

    currency = str(params.get("currency") or "").lower()
    if not currency:
        raise invalid(
            f"Missing required param: {name('currency')}.",
            param=name("currency"),
            code="parameter_missing",
        )
    if params.get("billing_scheme", "per_unit") != "per_unit":
        raise invalid("The sandbox supports per_unit prices only.", param=name("billing_scheme"))
    amount = _unit_amount(params, name)
    product_id = _price_product(call, params, name)
    recurring = _recurring(params.get("recurring"), name("recurring"))
    price_id = new_id("price")
    price = build(
        "price",
        price_id,
        state.now(),
        active=to_bool(params.get("active", True), name("active")),
        billing_scheme="per_unit",
        currency=currency,
        custom_unit_amount=None,
        lookup_key=params.get("lookup_key") or None,
        metadata=_metadata(params.get("metadata")),
        nickname=params.get("nickname") or None,
        product=product_id,
        recurring=recurring,
        tax_behavior=params.get("tax_behavior") or "unspecified",
        tiers_mode=None,
        transform_quantity=None,
        type="recurring" if recurring else "one_time",
        unit_amount=amount,
        unit_amount_decimal=str(amount),
    )
    state.put(price, call.account, "price")
    state.private(product_id).setdefault("prices", []).append(price_id)
    emit(state, "price.created", price, account=call.account)
    return price


def _unit_amount(params: Params, name: Any) -> int:
    raw = params.get("unit_amount")
    if raw in (None, ""):
        raw = params.get("unit_amount_decimal")
        if raw in (None, ""):
            raise invalid(
                f"Missing required param: {name('unit_amount')}.",
                param=name("unit_amount"),
                code="parameter_missing",
            )
        if "." in str(raw).rstrip("0").rstrip("."):
            raise invalid(
                "The sandbox supports whole-unit amounts only.", param=name("unit_amount_decimal")
            )
        raw = str(raw).split(".", 1)[0]
    amount = to_int(raw, name("unit_amount"))
    if amount < 0:
        raise invalid("This value must be greater than or equal to 0.", param=name("unit_amount"))
    return amount


def _price_product(call: Call, params: Params, name: Any) -> str:
    state = call.state
    product_id = params.get("product")
    if product_id:
        return str(state.get(str(product_id), call.account, "product", name("product"))["id"])
    data = params.get("product_data")
    if not isinstance(data, dict) or not data.get("name"):
        raise invalid(
            "You must specify either `product` or `product_data` when creating a price.",
            param=name("product"),
            code="parameter_missing",
        )
    product = _new_product(state, call.account, str(data["name"]), data)
    product["id"] = str(data.get("id") or new_id("prod", 14))
    state.put(product, call.account, "product")
    emit(state, "product.created", product, account=call.account)
    return str(product["id"])


def _recurring(raw: Any, param: str) -> Obj | None:
    if raw in (None, ""):
        return None
    if not isinstance(raw, dict):
        raise invalid(f"Invalid hash: {param}", param=param)
    interval = raw.get("interval")
    if interval not in INTERVALS:
        raise invalid(
            f"Invalid {param}[interval]: must be one of day, week, month, or year",
            param=f"{param}[interval]",
        )
    count = to_int(raw.get("interval_count", 1), f"{param}[interval_count]")
    if not 1 <= count <= MAX_INTERVAL[interval]:
        raise invalid("The maximum billing period is 3 years.", param=f"{param}[interval_count]")
    usage_type = raw.get("usage_type") or "licensed"
    if usage_type != "licensed":
        raise invalid(
            "The sandbox supports licensed recurring prices only.", param=f"{param}[usage_type]"
        )
    return {
        "interval": interval,
        "interval_count": count,
        "meter": None,
        "trial_period_days": None,
        "usage_type": usage_type,
    }


def retrieve_price(call: Call) -> Obj:
    return call.state.get(call.args[0], call.account, "price")


def update_price(call: Call) -> Obj:
    state = call.state
    price = state.get(call.args[0], call.account, "price")
    previous = copy_fields(price, call.params, ("nickname", "lookup_key", "tax_behavior"))
    if call.has("active"):
        active = call.bool_("active")
        if active != price["active"]:
            previous["active"] = price["active"]
            price["active"] = active
    if call.has("metadata"):
        previous["metadata"] = price["metadata"]
        price["metadata"] = call.metadata(price["metadata"])
    emit(state, "price.updated", price, account=call.account, previous=previous)
    return price


def list_prices(call: Call) -> Obj:
    state = call.state
    active = call.params.get("active")
    want_active = None if active is None else to_bool(active, "active")
    currency = call.str_("currency")
    type_ = call.str_("type")
    lookup_keys = {str(k) for k in call.list_("lookup_keys")} or None
    recurring = call.dict_("recurring")
    interval = recurring.get("interval")
    product_id = call.str_("product")
    ids = state.listed(call.account, "price")
    position: dict[str, int] | None = state.store.position
    if product_id:
        state.get(product_id, call.account, "product", "product")
        ids = state.private(product_id).get("prices", [])
        position = None

    def keep(price: Obj) -> bool:
        return (
            (want_active is None or price["active"] == want_active)
            and (currency is None or price["currency"] == currency.lower())
            and (type_ is None or price["type"] == type_)
            and (lookup_keys is None or price["lookup_key"] in lookup_keys)
            and (interval is None or (price["recurring"] or {}).get("interval") == interval)
        )

    return page(call, ids, "/v1/prices", keep=keep, position=position)


# -- helpers -------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value in (None, ""):
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def _metadata(raw: Any) -> Obj:
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if v != ""}


def price_label(state: SandboxState, price: Obj) -> str:
    """The product's name for invoice line descriptions."""
    product = state.find(price["product"])
    return str(product["name"]) if product is not None else str(price["product"])


ROUTES = (
    Route("POST", "/v1/products", create_product, "ProductCreateParams"),
    Route("GET", "/v1/products", list_products, "ProductListParams"),
    Route("GET", "/v1/products/{}", retrieve_product, "ProductRetrieveParams"),
    Route("POST", "/v1/products/{}", update_product, "ProductUpdateParams"),
    Route("DELETE", "/v1/products/{}", delete_product, "ProductDeleteParams"),
    Route("POST", "/v1/prices", create_price, "PriceCreateParams"),
    Route("GET", "/v1/prices", list_prices, "PriceListParams"),
    Route("GET", "/v1/prices/{}", retrieve_price, "PriceRetrieveParams"),
    Route("POST", "/v1/prices/{}", update_price, "PriceUpdateParams"),
)
