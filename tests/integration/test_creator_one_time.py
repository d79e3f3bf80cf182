"""creator_subscriptions services on real PostgreSQL and the sandbox: onboarding gate, tiers,
tips and pay-per-view with their refunds; the ledger mirrors Stripe to the cent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from engine.core.errors import AccountNotReady, CardDeclined, Conflict, GatewayError
from engine.core.settings import settings_from_mapping
from engine.sandbox.testing import RunningSandbox, running_sandbox
from engine.services import Services
from plugins.creator_subscriptions.creators import account_service, onboard_creator
from plugins.creator_subscriptions.env import Env
from plugins.creator_subscriptions.fans import register_fan
from plugins.creator_subscriptions.one_time import (
    create_one_time_payment,
    refund_one_time_payment,
)
from plugins.creator_subscriptions.schemas import (
    NewCreator,
    NewFan,
    NewOneTimePayment,
    NewRefund,
    NewTier,
    TierUpdate,
)
from plugins.creator_subscriptions.tiers import archive_tier, create_tier, list_tiers, update_tier

RULES = {
    "rules": [
        {"id": "default", "rate_bps": 1000},
        {
            "id": "tips",
            "rate_bps": 500,
            "scope": {"plugin": "creator_subscriptions", "kind": "tip"},
        },
    ]
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as running:
        yield running


@pytest.fixture
async def env(fresh_database_url: str, sandbox: RunningSandbox) -> AsyncIterator[Env]:
    settings = settings_from_mapping(
        {
            "database": {"url": fresh_database_url, "pool_max": 5},
            "stripe": {"api_base": sandbox.url, "max_network_retries": 0},
            "engine": {"public_url": "http://marketplace.test"},
            "plugins": {
                "enabled": ["commission_rules", "creator_subscriptions"],
                "commission_rules": RULES,
            },
        }
    )
    services = await Services.start(settings, connect_nats=False)
    try:
        yield Env.of(services)
    finally:
        await services.close()


async def onboarded_creator(env: Env, sandbox: RunningSandbox, handle: str) -> str:
    """A creator whose Express onboarding is complete and mirrored (as account.updated would)."""
    view = await onboard_creator(
        env, NewCreator(handle=handle, display_name=handle.title()), operation=None, actor="test"
    )
    account_id = view.creator.account_id
    sandbox.control("POST", f"/_sandbox/accounts/{account_id}/complete_onboarding")
    await account_service(env).refresh(account_id)
    return account_id


def sandbox_balance(sandbox: RunningSandbox, account: str | None) -> int:
    """Available + pending in usd, as Stripe reports it."""
    balance: Any = sandbox.client(stripe_account=account).v1.balance.retrieve()
    amounts = [*balance["available"], *balance["pending"]]
    return sum(int(item["amount"]) for item in amounts if item["currency"] == "usd")


async def test_selling_waits_for_charges_enabled(env: Env, sandbox: RunningSandbox) -> None:
    view = await onboard_creator(
        env, NewCreator(handle="early", display_name="Early"), operation=None, actor="test"
    )
    assert view.onboarding_url
    assert not view.creator.charges_enabled
    account_id = view.creator.account_id
    tier = await create_tier(env, account_id, NewTier(name="Fan", amount=500))
    assert tier.stripe_price_id
    assert tier.stripe_product_id
    fan, _ = await register_fan(
        env, NewFan(external_ref="fan-early", payment_method="pm_card_visa")
    )
    with pytest.raises(AccountNotReady) as caught:
        await create_one_time_payment(
            env, "tip", NewOneTimePayment(fan_id=fan.id, creator_account_id=account_id, amount=300)
        )
    assert caught.value.code == "account_not_ready"
    assert caught.value.status == 409


async def test_tier_reprice_and_archive_keep_old_prices(env: Env, sandbox: RunningSandbox) -> None:
    account_id = await onboarded_creator(env, sandbox, "tiers")
    gold = await create_tier(env, account_id, NewTier(name="Gold", amount=1500, interval="month"))
    await create_tier(env, account_id, NewTier(name="Yearly", amount=15000, interval="year"))
    repriced = await update_tier(env, gold.id, TierUpdate(amount=1800, name="Gold+"))
    assert repriced.stripe_price_id != gold.stripe_price_id
    assert (repriced.name, repriced.amount) == ("Gold+", 1800)
    stripe = sandbox.client()
    old = stripe.v1.prices.retrieve(str(gold.stripe_price_id))
    assert not old["active"]
    new = stripe.v1.prices.retrieve(str(repriced.stripe_price_id))
    assert (new["active"], new["unit_amount"], new["recurring"]["interval"]) == (
        True,
        1800,
        "month",
    )
    archived = await archive_tier(env, gold.id)
    assert archived.archived
    assert not stripe.v1.prices.retrieve(str(repriced.stripe_price_id))["active"]
    assert not stripe.v1.products.retrieve(str(gold.stripe_product_id))["active"]
    assert [tier.name for tier in await list_tiers(env, account_id)] == ["Yearly"]
    listed = await list_tiers(env, account_id, include_archived=True)
    assert len(listed) == 2


async def test_tip_refund_and_ledger_mirror_stripe(env: Env, sandbox: RunningSandbox) -> None:
    account_id = await onboarded_creator(env, sandbox, "tipped")
    fan, _ = await register_fan(
        env, NewFan(external_ref="fan-1", email="f@example.com", payment_method="pm_card_visa")
    )
    platform_before = sandbox_balance(sandbox, None)

    tip = await create_one_time_payment(
        env,
        "tip",
        NewOneTimePayment(fan_id=fan.id, creator_account_id=account_id, amount=1001),
    )
    assert tip.status == "succeeded"
    assert (tip.application_fee, tip.rule_id) == (50, "tips")  # 5 % of 10.01, half up
    assert tip.creator_earnings + tip.application_fee == tip.amount == 1001
    ppv = await create_one_time_payment(
        env,
        "ppv",
        NewOneTimePayment(
            fan_id=fan.id, creator_account_id=account_id, amount=2500, item_ref="video:9"
        ),
    )
    assert (ppv.application_fee, ppv.rule_id) == (250, "default")

    intent = sandbox.client().v1.payment_intents.retrieve(str(tip.payment_intent_id))
    assert intent["application_fee_amount"] == 50
    assert intent["transfer_data"]["destination"] == account_id

    ledger = env.ledger
    assert (await ledger.balances(account_id))["usd"] == sandbox_balance(sandbox, account_id)
    assert (await ledger.balances(account_id))["usd"] == 951 + 2250

    refund = await refund_one_time_payment(env, ppv.id, NewRefund(amount=1000))
    assert (refund.amount, refund.transfer_reversed, refund.fee_refunded) == (1000, 1000, 100)
    rest = await refund_one_time_payment(env, ppv.id, NewRefund())
    assert (rest.amount, rest.transfer_reversed, rest.fee_refunded) == (1500, 1500, 150)

    assert (await ledger.balances(account_id))["usd"] == sandbox_balance(sandbox, account_id)
    assert (await ledger.balances(account_id))["usd"] == 951
    platform_delta = sandbox_balance(sandbox, None) - platform_before
    assert (await ledger.balances("platform"))["usd"] == platform_delta
    assert await ledger.unbalanced_transactions() == []
    async with env.pool.acquire() as conn:
        kinds = await conn.fetch(
            "SELECT kind, count(*) AS n FROM marketplace_ledger_transactions GROUP BY kind"
        )
        recorded = await conn.fetchval(
            "SELECT count(*) FROM marketplace_payments WHERE plugin = 'creator_subscriptions' "
            "AND stripe_charge_id IS NOT NULL"
        )
    # Each refund is the engine's three postings: the refund, the reversal, the fee refund.
    assert {row["kind"]: row["n"] for row in kinds} == {
        "tip": 1,
        "ppv": 1,
        "refund": 2,
        "reversal": 2,
        "application_fee_refund": 2,
    }
    assert recorded == 2


async def test_declined_tip_is_recorded_and_moves_nothing(
    env: Env, sandbox: RunningSandbox
) -> None:
    account_id = await onboarded_creator(env, sandbox, "declined")
    fan, _ = await register_fan(
        env, NewFan(external_ref="fan-broke", payment_method="pm_card_chargeCustomerFail")
    )
    with pytest.raises(CardDeclined):
        await create_one_time_payment(
            env, "tip", NewOneTimePayment(fan_id=fan.id, creator_account_id=account_id, amount=500)
        )
    async with env.pool.acquire() as conn:
        status = await conn.fetchval("SELECT status FROM creator_subscriptions_payments")
        postings = await conn.fetchval("SELECT count(*) FROM marketplace_ledger_transactions")
    assert (status, postings) == ("failed", 0)


async def test_a_retried_request_charges_once(env: Env, sandbox: RunningSandbox) -> None:
    account_id = await onboarded_creator(env, sandbox, "retried")
    fan, _ = await register_fan(
        env, NewFan(external_ref="fan-retry", payment_method="pm_card_visa")
    )
    tip = NewOneTimePayment(fan_id=fan.id, creator_account_id=account_id, amount=800)
    sandbox.control("POST", "/_sandbox/faults", status=500, count=1)
    with pytest.raises(GatewayError):
        await create_one_time_payment(env, "tip", tip, operation="key_1:request-7")
    async with env.pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM creator_subscriptions_payments") == "pending"
    first = await create_one_time_payment(env, "tip", tip, operation="key_1:request-7")
    again = await create_one_time_payment(env, "tip", tip, operation="key_1:request-7")
    assert first.status == again.status == "succeeded"
    assert first.id == again.id
    intents: Any = sandbox.client().v1.payment_intents.list(
        params={"customer": str(fan.stripe_customer_id), "limit": 100}
    )
    for_this = [intent["id"] for intent in intents.to_dict()["data"]]
    assert for_this == [first.payment_intent_id]  # one PaymentIntent: the fan paid once
    with pytest.raises(Conflict):
        await create_one_time_payment(env, "ppv", tip, operation="key_1:request-7")


async def test_a_refund_request_retried_is_one_refund_and_two_requests_are_two(
    env: Env, sandbox: RunningSandbox
) -> None:
    """A refund's key comes from the request (API key + Idempotency-Key), not a count of
    the refunds before it: a request retried after it committed refunds nothing more."""
    account_id = await onboarded_creator(env, sandbox, "refunded")
    fan, _ = await register_fan(
        env, NewFan(external_ref="fan-refunds", payment_method="pm_card_visa")
    )
    tip = await create_one_time_payment(
        env, "tip", NewOneTimePayment(fan_id=fan.id, creator_account_id=account_id, amount=2000)
    )
    refunded = []
    views = []
    for request in ("key_1:refund-a", "key_1:refund-a", "key_1:refund-b"):
        views.append(
            await refund_one_time_payment(env, tip.id, NewRefund(amount=500), operation=request)
        )
        async with env.pool.acquire() as conn:
            refunded.append(
                await conn.fetchval(
                    "SELECT amount_refunded FROM creator_subscriptions_payments WHERE id = $1",
                    tip.id,
                )
            )
    assert refunded == [500, 500, 1000]
    assert views[0] == views[1] != views[2]
    refunds: Any = sandbox.client().v1.refunds.list(params={"charge": str(tip.charge_id)})
    assert sorted(r["amount"] for r in refunds.to_dict()["data"]) == [500, 500]
    other = await create_one_time_payment(
        env, "tip", NewOneTimePayment(fan_id=fan.id, creator_account_id=account_id, amount=700)
    )
    with pytest.raises(Conflict):  # the request refunded another payment
        await refund_one_time_payment(env, other.id, NewRefund(), operation="key_1:refund-a")
    assert (await env.ledger.balances(account_id))["usd"] == sandbox_balance(sandbox, account_id)
