"""One-time payments to a creator (tips, pay-per-view) and their refunds.

A payment is one destination charge made by the engine (``movements.charge``):
``transfer_data[destination]`` is the creator's account and
``application_fee_amount`` the commission the hooks priced; the engine records
its payment and posts it (``charge:<ch>``: the charge, the transfer and the
application fee). Once Stripe says it succeeded (the API call's answer, or
``payment_intent.succeeded`` if the API process died first or the fan
authenticated) the plugin's row is settled once.

A refund (``movements.refund_destination_charge``) passes ``reverse_transfer``
and ``refund_application_fee``, so Stripe pulls the creator's share and the
platform's fee back in proportion; the engine reads back what it reversed and
posts it as it is.

A card that asks for authentication leaves the payment ``requires_action`` with
the ``customer_action`` (client secret, next action) in its view; it is settled by
``payment_intent.succeeded`` once the fan has authenticated, or marked ``failed``
by ``payment_intent.payment_failed`` (``payment_failed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from engine.core.authentication import CustomerAction
from engine.core.errors import (
    CardDeclined,
    Conflict,
    InvalidInput,
    NotFound,
    PaymentActionRequired,
)
from engine.core.money import Money, normalize_currency
from engine.core.orders import Commission, LifecycleEvent
from engine.payments import movements
from engine.payments.pricing import PricedOrder
from engine.payments.records import advance_status_sql, lock_charge_movements
from plugins.creator_subscriptions.config import PLUGIN
from plugins.creator_subscriptions.env import (
    Env,
    creator_by_account,
    money_scope,
    require_selling,
)
from plugins.creator_subscriptions.fans import action_json, fan_row, stored_action
from plugins.creator_subscriptions.pricing import one_time_order, priced
from plugins.creator_subscriptions.schemas import (
    NewOneTimePayment,
    NewRefund,
    OneTimePaymentView,
    RefundView,
)

__all__ = [
    "KINDS",
    "PAYMENT_METADATA",
    "create_one_time_payment",
    "get_one_time_payment",
    "payment_failed",
    "refund_one_time_payment",
    "settle_one_time_payment",
]

KINDS = ("tip", "ppv")
PAYMENT_METADATA = f"{PLUGIN}_payment_id"
"""Metadata key on PaymentIntents naming our payment id."""


def payment_view(row: asyncpg.Record) -> OneTimePaymentView:
    """The API view of a payment row."""
    return OneTimePaymentView(
        id=int(row["id"]),
        kind=str(row["kind"]),
        fan_id=int(row["fan"]),
        creator_account_id=str(row["account_id"]),
        item_ref=str(row["item_ref"]),
        amount=int(row["amount"]),
        currency=str(row["currency"]),
        application_fee=int(row["application_fee"]),
        creator_earnings=int(row["creator_earnings"]),
        status=str(row["status"]),
        amount_refunded=int(row["amount_refunded"]),
        payment_intent_id=row["payment_intent_id"],
        charge_id=str(row["charge_id"] or "") or None,
        transfer_id=str(row["transfer_id"] or "") or None,
        application_fee_id=str(row["application_fee_id"] or "") or None,
        rule_id=str(row["rule_id"]),
        rule_version=int(row["rule_version"]),
        customer_action=stored_action(row["customer_action"]),
    )


async def _payment_row(conn: asyncpg.Connection, payment_id: int, *, lock: bool = False) -> Any:
    query = "SELECT * FROM creator_subscriptions_payments WHERE id = $1"
    row = await conn.fetchrow(query + (" FOR UPDATE" if lock else ""), payment_id)
    if row is None:
        raise NotFound(f"no payment {payment_id}")
    return row


async def get_one_time_payment(env: Env, payment_id: int) -> OneTimePaymentView:
    """One tip or pay-per-view payment."""
    async with env.pool.acquire() as conn:
        return payment_view(await _payment_row(conn, payment_id))


async def create_one_time_payment(
    env: Env, kind: str, new: NewOneTimePayment, *, operation: str | None = None
) -> OneTimePaymentView:
    """Charge the fan's default payment method; the creator gets the amount less the fee.

    ``operation`` is the request's identity (API key + ``Idempotency-Key``): a
    retry after an error of ours repeats the same PaymentIntent creation, so
    the fan is charged once.

    Raises:
        AccountNotReady: the creator cannot take charges yet (409).
        CardDeclined: the card was declined (402); the payment is kept as ``failed``.
    """
    if kind not in KINDS:
        raise InvalidInput(f"unknown payment kind {kind!r}", field="kind")
    if operation is not None:
        async with env.pool.acquire() as conn:
            earlier = await conn.fetchrow(
                "SELECT * FROM creator_subscriptions_payments WHERE operation = $1", operation
            )
        if earlier is not None:
            return await _retry(env, earlier, kind, new)
    config = env.config
    async with env.pool.acquire() as conn:
        creator = await creator_by_account(conn, new.creator_account_id)
        await require_selling(conn, creator)
        fan = await fan_row(conn, new.fan_id)
        if not fan["default_payment_method"] or not fan["stripe_customer_id"]:
            raise Conflict(f"fan {new.fan_id} has no payment method", field="fan_id")
        currency = normalize_currency(new.currency or creator.default_currency)
        amount = Money(new.amount, currency)
        if not config.min_one_time_amount <= amount.amount <= config.max_one_time_amount:
            raise InvalidInput(
                f"a {kind} must be between {config.min_one_time_amount} and "
                f"{config.max_one_time_amount} minor units",
                field="amount",
            )
        async with conn.transaction():
            inserted = await conn.fetchrow(
                """
                INSERT INTO creator_subscriptions_payments
                    (kind, fan, creator, account_id, item_ref, note, amount, currency,
                     status, operation, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, now(), now())
                RETURNING id, uid
                """,
                kind,
                fan["id"],
                creator.id,
                creator.account_id,
                new.item_ref,
                new.note,
                amount.amount,
                currency,
                operation,
            )
            payment_id = int(inserted["id"])
            order = one_time_order(
                kind=kind,
                account_id=creator.account_id,
                amount=amount,
                reference=f"{PLUGIN}:payment:{payment_id}",
                item_ref=new.item_ref,
            )
            pricing = await priced(env, conn, order)
            await conn.execute(
                """
                UPDATE creator_subscriptions_payments
                SET amount = $2, application_fee = $3, creator_earnings = $4, rule_id = $5,
                    rule_version = $6
                WHERE id = $1
                """,
                payment_id,
                pricing.price.amount,
                pricing.commission.amount.amount,
                (pricing.price - pricing.commission.amount).amount,
                pricing.commission.rule_id,
                pricing.commission.rule_version,
            )
    return await _charge(
        env,
        payment_id,
        str(inserted["uid"]),
        customer=str(fan["stripe_customer_id"]),
        payment_method=str(fan["default_payment_method"]),
        display_name=creator.display_name,
    )


async def _retry(env: Env, earlier: Any, kind: str, new: NewOneTimePayment) -> OneTimePaymentView:
    """The same request again: answer with its payment, or finish its Stripe call."""
    if (earlier["kind"], int(earlier["fan"]), earlier["account_id"]) != (
        kind,
        new.fan_id,
        new.creator_account_id,
    ):
        raise Conflict("this operation paid another creator, fan or kind", field="operation")
    if earlier["status"] not in {"pending"} or earlier["payment_intent_id"]:
        return payment_view(earlier)
    async with env.pool.acquire() as conn:
        fan = await fan_row(conn, int(earlier["fan"]))
        creator = await creator_by_account(conn, str(earlier["account_id"]))
    return await _charge(
        env,
        int(earlier["id"]),
        str(earlier["uid"]),
        customer=str(fan["stripe_customer_id"]),
        payment_method=str(fan["default_payment_method"]),
        display_name=creator.display_name,
    )


async def _charge(
    env: Env,
    payment_id: int,
    uid: str,
    *,
    customer: str,
    payment_method: str,
    display_name: str,
) -> OneTimePaymentView:
    """Charge a priced payment row through the engine; settle it if it succeeded.

    ``movements.charge`` makes the destination charge (the creator's account as
    ``transfer_data[destination]``, the priced commission as
    ``application_fee_amount``), records the engine's payment with its split
    and posts it once captured; this keeps the plugin's row in step.
    """
    async with env.pool.acquire() as conn:
        row = await _payment_row(conn, payment_id)
    kind = str(row["kind"])
    account_id = str(row["account_id"])
    reference = f"{PLUGIN}:payment:{payment_id}"
    action: CustomerAction | None = None
    try:
        async with env.pool.acquire() as conn, conn.transaction():
            # Locked first, as payment_intent.succeeded's handler does before settling.
            await _payment_row(conn, payment_id, lock=True)
            charged = await movements.charge(
                money_scope(env, conn, reference),
                _priced_row(env, row),
                operation=(uid,),
                payment_method=payment_method,
                account_id=account_id,
                customer=customer,
                destination=account_id,
                description=f"{kind} for {display_name}",
                metadata={
                    "plugin": PLUGIN,
                    PAYMENT_METADATA: str(payment_id),
                    "kind": kind,
                    "creator_account": account_id,
                },
                kind=kind,
            )
        intent: Mapping[str, Any] = charged.intent
    except PaymentActionRequired as waiting:
        # The fan authenticates; payment_intent.succeeded settles it (record_charge).
        action = waiting.action
        intent = {"id": waiting.action.intent_id, "status": "requires_action"}
    except CardDeclined as exc:
        async with env.pool.acquire() as conn:
            await conn.execute(
                "UPDATE creator_subscriptions_payments SET status = 'failed', failure_code = $2, "
                "updated_at = now() WHERE id = $1",
                payment_id,
                str(exc.extra.get("decline_code") or exc.code),
            )
        raise
    async with env.pool.acquire() as conn:
        await conn.execute(
            """
            UPDATE creator_subscriptions_payments
            SET payment_intent_id = $2,
                status = CASE WHEN $3::jsonb IS NULL THEN status ELSE 'requires_action' END,
                customer_action = $3::jsonb, updated_at = now()
            WHERE id = $1 AND status = 'pending'
            """,
            payment_id,
            intent["id"],
            action_json(action),
        )
        if intent.get("status") == "succeeded":
            async with conn.transaction():
                notices = await settle_one_time_payment(env, conn, intent)
            for notice in notices:
                env.plugins.notify_lifecycle(notice)
        return payment_view(await _payment_row(conn, payment_id))


def _priced_row(env: Env, row: Any) -> PricedOrder:
    """A payment row's price, commission and split, as priced when it was created."""
    order = one_time_order(
        kind=str(row["kind"]),
        account_id=str(row["account_id"]),
        amount=Money(int(row["amount"]), str(row["currency"])),
        reference=f"{PLUGIN}:payment:{row['id']}",
        item_ref=str(row["item_ref"]),
    )
    commission = Commission(
        amount=Money(int(row["application_fee"]), str(row["currency"])),
        rule_id=str(row["rule_id"]),
        rule_version=int(row["rule_version"]),
    )
    split = env.plugins.split(order, order.amount, commission)
    return PricedOrder(order=order, price=order.amount, commission=commission, split=split)


async def payment_failed(conn: asyncpg.Connection, intent: Mapping[str, Any]) -> bool:
    """A payment that waited for the fan failed (authentication failed, or a decline after it).

    Marks it ``failed`` with the reason; returns whether a payment of ours changed.
    """
    metadata = intent.get("metadata") or {}
    if metadata.get("plugin") != PLUGIN or not metadata.get(PAYMENT_METADATA):
        return False
    error = intent.get("last_payment_error") or {}
    code = str(error.get("decline_code") or error.get("code") or "payment_failed")
    status = await conn.execute(
        """
        UPDATE creator_subscriptions_payments
        SET status = 'failed', failure_code = $2, customer_action = NULL, updated_at = now()
        WHERE id = $1 AND status = 'requires_action'
        """,
        int(metadata[PAYMENT_METADATA]),
        code,
    )
    return str(status).endswith(" 1")


_SUCCEEDED = advance_status_sql("status", "'succeeded'")
"""``succeeded`` unless the status is already further on (refunded, disputed ...)."""


async def settle_one_time_payment(
    env: Env, conn: asyncpg.Connection, intent: Mapping[str, Any]
) -> list[LifecycleEvent]:
    """Post a succeeded PaymentIntent of ours once (inside the caller's transaction).

    Returns the lifecycle events to announce after commit (none if it was
    already settled, or is not ours).
    """
    metadata = intent.get("metadata") or {}
    if metadata.get("plugin") != PLUGIN or not metadata.get(PAYMENT_METADATA):
        return []
    payment_id = int(metadata[PAYMENT_METADATA])
    charge_id = intent.get("latest_charge")
    if isinstance(charge_id, Mapping):
        charge_id = charge_id.get("id")
    # The charge's movements first, then our row: the engine's dispute and refund
    # handlers hold the charge's lock when they reach our row, so taking the two the
    # other way round deadlocks with a dispute handled while the tip settles.
    await lock_charge_movements(conn, str(charge_id or ""))
    row = await conn.fetchrow(
        "SELECT * FROM creator_subscriptions_payments WHERE id = $1 FOR UPDATE", payment_id
    )
    if row is None or row["charge_id"]:
        return []  # not ours, or settled already (the charge id is recorded when settled)
    reference = f"{PLUGIN}:payment:{payment_id}"
    # Posted once, and the engine's payment recorded with the commission priced at
    # creation (its rule id and version): history does not change when rules do.
    facts = await movements.post_destination_charge(
        money_scope(env, conn, reference),
        str(charge_id),
        kind=str(row["kind"]),
        description=f"{row['kind']} to {row['account_id']}",
        priced=_priced_row(env, row),
        customer=str(intent.get("customer") or ""),
    )
    # A refund or dispute handled before this settle has moved the status on already
    # (webhooks._payment_of_charge): it only moves forward, never back to 'succeeded'.
    await conn.execute(
        f"""
        UPDATE creator_subscriptions_payments
        SET status = CASE WHEN status = 'failed' THEN 'succeeded' ELSE {_SUCCEEDED} END,
            payment_intent_id = $2, charge_id = $3, transfer_id = $4,
            application_fee = $5, creator_earnings = $6, stripe_fee = $7,
            application_fee_id = $8, customer_action = NULL, updated_at = now()
        WHERE id = $1
        """,  # noqa: S608 - _SUCCEEDED is built from the engine's constant status names
        payment_id,
        intent["id"],
        facts.charge_id,
        facts.transfer_id,
        facts.platform_fee.amount,
        facts.account_share.amount,
        facts.stripe_fee.amount,
        facts.application_fee_id,
    )
    return [
        LifecycleEvent(
            f"{PLUGIN}.{row['kind']}.succeeded",
            subject_id=reference,
            account_id=facts.destination,
            data={
                "amount": facts.amount.amount,
                "currency": facts.amount.currency,
                "application_fee": facts.platform_fee.amount,
                "creator_earnings": facts.account_share.amount,
                "fan_id": int(row["fan"]),
            },
        )
    ]


def refund_view(row: asyncpg.Record) -> RefundView:
    """The API view of a refund row."""
    return RefundView(
        id=int(row["id"]),
        stripe_refund_id=row["stripe_refund_id"],
        amount=int(row["amount"]),
        currency=str(row["currency"]),
        transfer_reversed=int(row["transfer_reversed"]),
        fee_refunded=int(row["fee_refunded"]),
        status=str(row["status"]),
    )


async def refund_one_time_payment(
    env: Env, payment_id: int, new: NewRefund, *, operation: str | None = None
) -> RefundView:
    """Refund (part of) a payment, reversing the creator's transfer and the fee in proportion.

    The payment row is locked for the whole operation, so concurrent refunds of
    one payment are applied one after the other and each reads exactly what it
    reversed. ``operation`` is the request's identity (API key +
    ``Idempotency-Key``): the refund's key is ``<reference>:refund:<uid>:request:
    <operation>`` and the request retried is answered with its refund; without
    it the key is ``<reference>:refund:<uid>:<n>`` (the payment's n-th refund).

    Raises:
        Conflict: the payment cannot be refunded, or ``operation`` refunded
            another payment (409).
    """
    async with env.pool.acquire() as conn, conn.transaction():
        row = await _payment_row(conn, payment_id, lock=True)
        if operation is not None:
            earlier = await conn.fetchrow(
                "SELECT * FROM creator_subscriptions_refunds WHERE operation = $1", operation
            )
            if earlier is not None:
                if int(earlier["payment"]) != payment_id:
                    raise Conflict("this operation refunded another payment", field="operation")
                return refund_view(earlier)
        if row["status"] not in {"succeeded", "partially_refunded"}:
            raise Conflict(f"payment {payment_id} is {row['status']}", status=row["status"])
        remaining = int(row["amount"]) - int(row["amount_refunded"])
        amount = remaining if new.amount is None else new.amount
        if not 0 < amount <= remaining:
            raise InvalidInput(
                f"refund amount {amount} exceeds the refundable {remaining}", field="amount"
            )
        sequence = await conn.fetchval(
            "SELECT count(*) + 1 FROM creator_subscriptions_refunds WHERE payment = $1", payment_id
        )
        reference = f"{PLUGIN}:payment:{payment_id}"
        currency = str(row["currency"])
        facts, refund = await movements.refund_destination_charge(
            money_scope(env, conn, reference),
            charge_id=str(row["charge_id"]),
            amount=Money(amount, currency),
            destination=str(row["account_id"]),
            application_fee_id=str(row["application_fee_id"] or ""),
            operation=(row["uid"], sequence)
            if operation is None
            else (row["uid"], "request", operation),
            refunded_before=Money(int(row["amount_refunded"]), currency),
            fee_refunded_before=Money(int(row["fee_refunded"]), currency),
            reason=new.reason,
            metadata={"plugin": PLUGIN, PAYMENT_METADATA: str(payment_id)},
        )
        refunded_total = int(row["amount_refunded"]) + facts.amount.amount
        refund_row = await conn.fetchrow(
            """
            INSERT INTO creator_subscriptions_refunds
                (payment, stripe_refund_id, amount, currency, transfer_reversed, fee_refunded,
                 reason, status, operation, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
            ON CONFLICT (stripe_refund_id) DO UPDATE SET status = EXCLUDED.status
            RETURNING *
            """,
            payment_id,
            facts.refund_id,
            facts.amount.amount,
            currency,
            facts.transfer_reversed.amount,
            facts.fee_refunded.amount,
            new.reason or "",
            str(refund.get("status") or "succeeded"),
            operation,
        )
        await conn.execute(
            """
            UPDATE creator_subscriptions_payments
            SET amount_refunded = $2, fee_refunded = fee_refunded + $3,
                amount_reversed = amount_reversed + $4,
                status = CASE WHEN $2 >= amount THEN 'refunded' ELSE 'partially_refunded' END,
                updated_at = now()
            WHERE id = $1
            """,
            payment_id,
            refunded_total,
            facts.fee_refunded.amount,
            facts.transfer_reversed.amount,
        )
    env.plugins.notify_lifecycle(
        LifecycleEvent(
            f"{PLUGIN}.{row['kind']}.refunded",
            subject_id=reference,
            account_id=str(row["account_id"]),
            data={
                "amount": facts.amount.amount,
                "currency": currency,
                "transfer_reversed": facts.transfer_reversed.amount,
                "fee_refunded": facts.fee_refunded.amount,
            },
        )
    )
    return refund_view(refund_row)
