"""Benchmark: commission fee computations per second with 1,000 rules loaded.

Run alone: ``.venv/bin/python bench/commission_rules.py [--orders N] [--seed S]``.
Builds a valid 1,000-rule set (plugins, kinds, service types, creators with
dated versions, venues, providers, volume tiers, currencies) through the real
config path, then prices random orders on one core three ways: through the
compiled index (``RuleSet.quote``), through the engine's ``Plugins.commission``
facade (pluggy + ``Commission`` with its explanation), and, on a small sample,
by a linear scan of all rules for comparison. The last line is
``bench: fee_computations_per_s N`` (the compiled index figure).
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.core.money import Money
from engine.core.orders import Order
from engine.core.plugins import build_plugins
from engine.core.settings import settings_from_mapping
from plugins.commission_rules.ruleset import RuleSet
from plugins.commission_rules.services import active_rules

TSB = "three_sided_bookings"
CS = "creator_subscriptions"
CURRENCIES = ["gbp", "eur", "usd", "jpy", "chf"]
SERVICES = [f"service_{i}" for i in range(20)]
KINDS = ["subscription", "tip", "pay_per_view"]
TIERS = ["bronze", "silver", "gold"]
SWITCH = datetime(2025, 7, 1, tzinfo=UTC)
TARGET = 1_000


def rule(rule_id: str, rate_bps: int, **fields: Any) -> dict[str, Any]:
    """One rule as the config file would hold it."""
    return {"id": rule_id, "rate_bps": rate_bps, **fields}


def build_rules(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """A valid rule set of exactly ``TARGET`` rules, and the account ids it names."""
    rules = [
        rule("default", 1000, effective_to=SWITCH),
        rule("default", 1100, effective_from=SWITCH),
        rule("subscriptions", 900, scope={"plugin": CS}),
        rule("bookings", 1200, scope={"plugin": TSB}),
    ]
    rules += [
        rule(f"service-{s}", rng.randint(1000, 1500), scope={"plugin": TSB, "service_type": s})
        for s in SERVICES
    ]
    rules += [rule(f"kind-{k}", 800, scope={"plugin": CS, "kind": k}) for k in KINDS]
    for currency in CURRENCIES:
        for step, threshold in enumerate((1_000_000, 5_000_000, 20_000_000)):
            rules.append(
                rule(
                    f"volume-{currency}-{step}",
                    700 - 100 * step,
                    min_monthly_volume=threshold,
                    scope={"plugin": CS, "currency": currency},
                )
            )
        for tier in TIERS:
            scope = {"plugin": CS, "kind": "subscription", "tier": tier, "currency": currency}
            rules.append(rule(f"tier-{tier}-{currency}", 750, scope=scope))
    venues = [f"acct_venue_{i}" for i in range(150)]
    providers = [f"acct_provider_{i}" for i in range(100)]
    for venue in venues:
        scope = {"plugin": TSB, "kind": "booking", "venue": venue}
        rules.append(rule(f"venue-{venue}", rng.randint(1000, 1500), scope=scope))
    for provider in providers:
        scope = {"plugin": TSB, "kind": "booking", "provider": provider, "currency": "gbp"}
        rules.append(
            rule(
                f"provider-{provider}",
                rng.randint(1000, 1500),
                fixed={"gbp": 30},
                minimum={"gbp": 100},
                scope=scope,
            )
        )
    for index in range(100):
        scope = {
            "plugin": TSB,
            "kind": "booking",
            "venue": venues[index],
            "service_type": SERVICES[index % len(SERVICES)],
            "currency": CURRENCIES[index % len(CURRENCIES)],
        }
        rules.append(rule(f"venue-service-{index}", 1000, scope=scope, maximum=5_000))
    creators: list[str] = []
    while len(rules) < TARGET:
        creator = f"acct_creator_{len(creators)}"
        creators.append(creator)
        scope = {"plugin": CS, "kind": "subscription", "creator": creator}
        if len(creators) % 3 == 0 and len(rules) + 2 <= TARGET:
            month = datetime(2025, rng.randint(2, 11), rng.randint(1, 28), tzinfo=UTC)
            rules.append(rule(f"creator-{creator}", 800, scope=scope, effective_to=month))
            rules.append(rule(f"creator-{creator}", 600, scope=scope, effective_from=month))
        else:
            rules.append(rule(f"creator-{creator}", rng.randint(500, 900), scope=scope))
    return rules, {"venue": venues, "provider": providers, "creator": creators}


def random_order(rng: random.Random, accounts: dict[str, list[str]]) -> Order:
    """A booking or a creator order over the accounts the rules name (and some unknown)."""
    currency = rng.choice(CURRENCIES)
    at = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(365 * 86_400))
    attributes: dict[str, Any] = {"monthly_volume": rng.choice([0, 2_000_000, 30_000_000])}
    if rng.random() < 0.5:
        beneficiaries = {
            "venue": rng.choice(accounts["venue"] + ["acct_venue_unknown"]),
            "provider": rng.choice(accounts["provider"] + ["acct_provider_unknown"] * 50),
        }
        attributes["service_type"] = rng.choice(SERVICES)
        plugin, kind = TSB, "booking"
    else:
        beneficiaries = {"creator": rng.choice(accounts["creator"] + ["acct_creator_new"])}
        if rng.random() < 0.3:
            attributes["tier"] = rng.choice(TIERS)
        plugin, kind = CS, rng.choice(KINDS)
    return Order(
        plugin=plugin,
        kind=kind,
        amount=Money(rng.randint(100, 500_000), currency),
        reference="bench",
        beneficiaries=beneficiaries,
        attributes=attributes,
        occurred_at=at,
    )


def linear_fee(ruleset: RuleSet, order: Order) -> int:
    """The baseline the index avoids: test every rule, keep the highest precedence."""
    price = order.amount
    values = ruleset.order_scope(order, price.currency)
    volume = order.attributes.get("monthly_volume", 0)
    best = None
    for candidate in ruleset.rules:
        if (
            all(values.get(key) == value for key, value in candidate.scope)
            and candidate.in_force(order.occurred_at)
            and volume >= candidate.min_monthly_volume
            and (best is None or candidate.precedence > best.precedence)
        ):
            best = candidate
    assert best is not None
    return best.fee(price.amount, price.currency)


def rate(count: int, seconds: float) -> int:
    """Operations per second."""
    return int(count / seconds) if seconds > 0 else 0


def main() -> None:
    """Build the rules, price the orders, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=200_000, help="orders to price per path")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rules, accounts = build_rules(rng)

    started = time.perf_counter()
    plugins = build_plugins(
        settings_from_mapping({"plugins": {"commission_rules": {"rules": rules}}})
    )
    ruleset = active_rules(plugins.runtime)
    load_seconds = time.perf_counter() - started
    orders = [random_order(rng, accounts) for _ in range(args.orders)]

    quote = ruleset.quote
    started = time.perf_counter()
    fees = [quote(order, order.amount).fee.amount for order in orders]
    index_seconds = time.perf_counter() - started

    commission = plugins.commission
    started = time.perf_counter()
    facade = [commission(order, order.amount).amount.amount for order in orders]
    facade_seconds = time.perf_counter() - started
    assert facade == fees, "the facade path must give the index's fees"

    sample = orders[: max(1, min(5_000, args.orders // 20))]
    started = time.perf_counter()
    linear = [linear_fee(ruleset, order) for order in sample]
    linear_seconds = time.perf_counter() - started
    assert linear == fees[: len(sample)], "the index must agree with a linear scan"

    winners = {quote(order, order.amount).rule.id.split("-")[0] for order in orders[:5_000]}
    index_rate = rate(len(orders), index_seconds)
    linear_rate = rate(len(sample), linear_seconds)
    print(
        f"rules loaded: {len(ruleset)} "
        f"(build_plugins + validate + index: {load_seconds * 1000:.0f} ms)"
    )
    print(f"winning rule families in a sample: {', '.join(sorted(winners))}")
    print(f"orders priced per path: {len(orders)}")
    print(f"compiled index (RuleSet.quote): {index_rate} fee computations/s")
    print(
        f"Plugins.commission facade (pluggy + Commission + explanation): "
        f"{rate(len(orders), facade_seconds)} fee computations/s"
    )
    print(f"linear scan of all rules (baseline, {len(sample)} orders): {linear_rate}/s")
    print(f"ratio index / linear scan: {index_rate / max(linear_rate, 1):.1f}x")
    print(f"bench: fee_computations_per_s {index_rate}")


if __name__ == "__main__":
    main()
