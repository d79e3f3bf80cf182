"""``/v1/creator_subscriptions/...``: creators, tiers, fans, subscriptions, tips, earnings.

Scopes (``engine.api.auth``): ``service`` keys (the integrating app) onboard
creators and act for fans; an ``account`` key belongs to one creator and sees
and manages only that creator's tiers, subscribers and earnings (another
creator's data is a 404, exactly like a missing one); ``admin`` keys see
everything, including which creators' payouts are failing. Every error is a
problem response with a stable ``code`` (``account_not_ready`` when a creator
cannot sell yet). POSTs that move money honour ``Idempotency-Key``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.auth import Principal, requires_scope
from engine.api.idempotency import IdempotencyKeyHeader
from engine.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from engine.api.problems import problem_responses
from engine.services import Services
from plugins.creator_subscriptions import (
    creators,
    earnings,
    fans,
    invoice_refunds,
    one_time,
    subscriptions,
    tiers,
)
from plugins.creator_subscriptions.env import Env
from plugins.creator_subscriptions.schemas import (
    Balance,
    ChangeTier,
    CreatorView,
    FanView,
    InvoiceRefundView,
    InvoiceView,
    NewCreator,
    NewFan,
    NewOneTimePayment,
    NewPaymentMethod,
    NewRefund,
    NewSubscription,
    NewTier,
    OnboardingView,
    OneTimePaymentView,
    PayoutsPage,
    RefundView,
    SubscribersPage,
    SubscriptionView,
    TierUpdate,
    TierView,
    TransactionsPage,
)

__all__ = [
    "CONTROLLERS",
    "CreatorController",
    "FanController",
    "PaymentController",
    "SubscriptionController",
    "TierController",
]

PREFIX = "/v1/creator_subscriptions"
TAGS = ["creator_subscriptions"]
_READ = (400, 401, 403, 404)
_WRITE = (400, 401, 403, 404, 409, 413, 422, 502)
_PAY = (*_WRITE, 402)

AccountId = Annotated[
    str, PathParameter(pattern=r"^acct_[A-Za-z0-9]{1,60}$", description="The creator's account")
]
SerialId = Annotated[int, PathParameter(ge=1, le=2**31 - 1, description="Our id")]
BigId = Annotated[int, PathParameter(ge=1, le=2**63 - 1, description="Our id")]


class CreatorList(msgspec.Struct, frozen=True, kw_only=True):
    """A page of creators; pass ``next_cursor`` as ``cursor`` for the next one."""

    data: list[CreatorView]
    next_cursor: str | None


class InvoiceList(msgspec.Struct, frozen=True, kw_only=True):
    """A page of a creator's subscription invoices."""

    data: list[InvoiceView]
    next_cursor: str | None


class CancelSubscription(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Cancel now, or when the paid period ends."""

    at_period_end: bool = False


def _env(services: Services) -> Env:
    return Env.of(services)


def _operation(principal: Principal, key: str | None) -> str | None:
    return None if key is None else f"{principal.key_id}:{key}"


def _recode(cursor: str | None) -> str | None:
    """A service-level cursor (a row id) as the API's opaque cursor."""
    return encode_cursor(int(cursor)) if cursor else None


def _before(cursor: str | None) -> int | None:
    return decode_cursor(cursor) or None


class CreatorController(Controller):
    """Creators: onboarding, tiers, and what they earn."""

    path = f"{PREFIX}/creators"
    tags = TAGS
    guards = [requires_scope("service", "account")]

    @post(
        "/",
        operation_id="creatorSubscriptionsOnboardCreator",
        summary="Onboard a creator (Express account + onboarding link)",
        guards=[requires_scope("service")],
        responses=problem_responses(*_WRITE),
    )
    async def onboard(
        self,
        data: JSONBody[NewCreator],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> OnboardingView:
        """Create the creator's Express account; they can sell once Stripe enables charges."""
        return await creators.onboard_creator(
            _env(services),
            data,
            operation=_operation(principal, idempotency_key),
            actor=principal.actor,
        )

    @get(
        "/",
        operation_id="creatorSubscriptionsListCreators",
        summary="List creators",
        responses=problem_responses(400, 401, 403),
    )
    async def list_creators(
        self,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = 20,
        cursor: Cursor = None,
        payout_failed: Annotated[
            bool | None,
            QueryParameter(description="Only creators whose last payout failed", required=False),
        ] = None,
    ) -> CreatorList:
        """All creators for admin and service keys (filter failing payouts); yours for a creator."""
        env = _env(services)
        if principal.scope == "account" and principal.account_id is not None:
            if decode_cursor(cursor):
                return CreatorList(data=[], next_cursor=None)
            return CreatorList(
                data=[await creators.get_creator(env, principal.account_id)], next_cursor=None
            )
        page, next_after = await creators.list_creators(
            env, after=decode_cursor(cursor), limit=limit, payout_failed=payout_failed
        )
        return CreatorList(data=page, next_cursor=encode_cursor(next_after))

    @get(
        "/{account_id:str}",
        operation_id="creatorSubscriptionsGetCreator",
        summary="Get a creator",
        responses=problem_responses(*_READ),
    )
    async def get_creator(
        self,
        account_id: AccountId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> CreatorView:
        """The creator and whether they can sell and be paid out."""
        principal.ensure_visible(account_id, what="creator")
        return await creators.get_creator(_env(services), account_id)

    @post(
        "/{account_id:str}/onboarding-link",
        operation_id="creatorSubscriptionsOnboardingLink",
        summary="A fresh onboarding link",
        responses=problem_responses(*_WRITE),
    )
    async def onboarding_link(
        self,
        account_id: AccountId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> OnboardingView:
        """Links are single-use and expire; this makes another."""
        principal.ensure_visible(account_id, what="creator")
        return await creators.onboarding_link(
            _env(services), account_id, operation=_operation(principal, idempotency_key)
        )

    @get(
        "/{account_id:str}/tiers",
        operation_id="creatorSubscriptionsListTiers",
        summary="A creator's tiers",
        responses=problem_responses(*_READ),
    )
    async def list_tiers(
        self,
        account_id: AccountId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        include_archived: Annotated[
            bool, QueryParameter(description="Archived tiers too", required=False)
        ] = False,
    ) -> list[TierView]:
        """Tiers on sale, cheapest first (archived ones on request)."""
        principal.ensure_visible(account_id, what="creator")
        return await tiers.list_tiers(_env(services), account_id, include_archived=include_archived)

    @post(
        "/{account_id:str}/tiers",
        operation_id="creatorSubscriptionsCreateTier",
        summary="Create a tier",
        responses=problem_responses(*_WRITE),
    )
    async def create_tier(
        self,
        account_id: AccountId,
        data: JSONBody[NewTier],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> TierView:
        """A Stripe product and recurring price for the creator's new tier."""
        principal.ensure_visible(account_id, what="creator")
        return await tiers.create_tier(_env(services), account_id, data)

    @get(
        "/{account_id:str}/balance",
        operation_id="creatorSubscriptionsBalance",
        summary="A creator's balance (Stripe and ledger)",
        responses=problem_responses(*_READ, 502),
    )
    async def balance(
        self,
        account_id: AccountId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> Balance:
        """Available and pending per currency from Stripe, beside the ledger's balance."""
        principal.ensure_visible(account_id, what="creator")
        return await earnings.balance(_env(services), account_id)

    @get(
        "/{account_id:str}/transactions",
        operation_id="creatorSubscriptionsTransactions",
        summary="A creator's ledger transactions",
        responses=problem_responses(*_READ),
    )
    async def transactions(
        self,
        account_id: AccountId,
        *,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = 50,
        cursor: Cursor = None,
        kind: Annotated[
            list[Annotated[str, msgspec.Meta(pattern=r"^[a-z_]{1,64}$")]] | None,
            QueryParameter(description="Only these kinds (subscription_invoice, tip, ppv ...)"),
        ] = None,
        since: Annotated[
            datetime | None, QueryParameter(description="From this instant", required=False)
        ] = None,
        until: Annotated[
            datetime | None, QueryParameter(description="Before this instant", required=False)
        ] = None,
    ) -> TransactionsPage:
        """Newest first, one line per ledger transaction with its net effect on the balance."""
        principal.ensure_visible(account_id, what="creator")
        page = await earnings.transactions(
            _env(services),
            account_id,
            before=_before(cursor),
            limit=limit,
            kinds=kind or (),
            since=since,
            until=until,
        )
        return msgspec.structs.replace(page, next_cursor=_recode(page.next_cursor))

    @get(
        "/{account_id:str}/subscribers",
        operation_id="creatorSubscriptionsSubscribers",
        summary="A creator's subscribers",
        responses=problem_responses(*_READ),
    )
    async def subscribers(
        self,
        account_id: AccountId,
        *,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = 50,
        cursor: Cursor = None,
        status: Annotated[
            str | None,
            QueryParameter(
                description="Only this status", pattern=r"^[a-z_]{1,64}$", required=False
            ),
        ] = None,
        tier_id: Annotated[
            int | None,
            QueryParameter(description="Only this tier", ge=1, le=2**31 - 1, required=False),
        ] = None,
    ) -> SubscribersPage:
        """Oldest first; filter by status or tier."""
        principal.ensure_visible(account_id, what="creator")
        page = await earnings.subscribers(
            _env(services),
            account_id,
            after=decode_cursor(cursor),
            limit=limit,
            status=status,
            tier_id=tier_id,
        )
        return msgspec.structs.replace(page, next_cursor=_recode(page.next_cursor))

    @get(
        "/{account_id:str}/invoices",
        operation_id="creatorSubscriptionsInvoices",
        summary="A creator's subscription invoices",
        responses=problem_responses(*_READ),
    )
    async def invoices(
        self,
        account_id: AccountId,
        *,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = 50,
        cursor: Cursor = None,
        subscription_id: Annotated[
            int | None,
            QueryParameter(
                description="Only this subscription", ge=1, le=2**63 - 1, required=False
            ),
        ] = None,
    ) -> InvoiceList:
        """Oldest first, each with the platform fee and the creator's earnings."""
        principal.ensure_visible(account_id, what="creator")
        views, next_after = await earnings.invoices(
            _env(services),
            account_id,
            after=decode_cursor(cursor),
            limit=limit,
            subscription_id=subscription_id,
        )
        return InvoiceList(data=views, next_cursor=encode_cursor(next_after))

    @get(
        "/{account_id:str}/payouts",
        operation_id="creatorSubscriptionsPayouts",
        summary="A creator's payouts and payout failures",
        responses=problem_responses(*_READ),
    )
    async def payouts(
        self,
        account_id: AccountId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> PayoutsPage:
        """Newest first; ``payout_failure_code`` is set while the last payout failed."""
        principal.ensure_visible(account_id, what="creator")
        page = await earnings.payouts(
            _env(services), account_id, before=_before(cursor), limit=limit
        )
        return msgspec.structs.replace(page, next_cursor=_recode(page.next_cursor))


async def _visible_tier(env: Env, principal: Principal, tier_id: int) -> TierView:
    tier = await tiers.get_tier(env, tier_id)
    principal.ensure_visible(tier.creator_account_id, what="tier", ref=tier_id)
    return tier


class TierController(Controller):
    """One tier: read, re-price or rename, archive."""

    path = f"{PREFIX}/tiers"
    tags = TAGS
    guards = [requires_scope("service", "account")]

    @get(
        "/{tier_id:int}",
        operation_id="creatorSubscriptionsGetTier",
        summary="Get a tier",
        responses=problem_responses(*_READ),
    )
    async def get_tier(
        self,
        tier_id: SerialId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> TierView:
        """The tier and its current Stripe price."""
        return await _visible_tier(_env(services), principal, tier_id)

    @patch(
        "/{tier_id:int}",
        operation_id="creatorSubscriptionsUpdateTier",
        summary="Rename or re-price a tier",
        responses=problem_responses(*_WRITE),
    )
    async def update_tier(
        self,
        tier_id: SerialId,
        data: JSONBody[TierUpdate],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> TierView:
        """A new price applies to new subscribers; existing ones keep theirs."""
        env = _env(services)
        await _visible_tier(env, principal, tier_id)
        return await tiers.update_tier(env, tier_id, data)

    @post(
        "/{tier_id:int}/archive",
        operation_id="creatorSubscriptionsArchiveTier",
        summary="Archive a tier",
        status_code=200,
        responses=problem_responses(*_WRITE),
    )
    async def archive_tier(
        self,
        tier_id: SerialId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> TierView:
        """Stop selling it; its subscribers keep renewing on their price."""
        env = _env(services)
        await _visible_tier(env, principal, tier_id)
        return await tiers.archive_tier(env, tier_id)


class FanController(Controller):
    """Fans (Stripe customers) and their payment methods; service keys only."""

    path = f"{PREFIX}/fans"
    tags = TAGS
    guards = [requires_scope("service")]

    @post(
        "/",
        operation_id="creatorSubscriptionsRegisterFan",
        summary="Register a fan",
        responses={
            200: ResponseSpec(FanView, description="a fan with this external_ref existed"),
            **problem_responses(*_PAY),
        },
    )
    async def register(
        self,
        data: JSONBody[NewFan],
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[FanView]:
        """Create (or find by ``external_ref``) the fan's customer; attach the payment method.

        ``201`` for a new fan, ``200`` for one found by its ``external_ref``."""
        view, created = await fans.register_fan(_env(services), data)
        return Response(view, status_code=201 if created else 200)

    @get(
        "/{fan_id:int}",
        operation_id="creatorSubscriptionsGetFan",
        summary="Get a fan",
        responses=problem_responses(*_READ),
    )
    async def get_fan(self, fan_id: SerialId, services: NamedDependency[Services]) -> FanView:
        """The fan and whether they have a payment method."""
        env = _env(services)
        async with env.pool.acquire() as conn:
            return fans.fan_view(await fans.fan_row(conn, fan_id))

    @post(
        "/{fan_id:int}/payment-method",
        operation_id="creatorSubscriptionsUpdateFanCard",
        summary="Give a fan a new card",
        status_code=200,
        responses=problem_responses(*_PAY),
    )
    async def update_card(
        self,
        fan_id: SerialId,
        data: JSONBody[NewPaymentMethod],
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> FanView:
        """Save the card (a SetupIntent) and make it the default of the fan and of every live
        subscription of theirs; an open (past-due) invoice is paid with it at once, so a fan
        in dunning recovers now. A card that needs the fan's authentication is returned with
        its ``customer_action`` and takes effect once it succeeds."""
        return await fans.set_payment_method(_env(services), fan_id, data.payment_method)


class SubscriptionController(Controller):
    """Subscriptions: fans act through service keys; a creator may read their own."""

    path = f"{PREFIX}/subscriptions"
    tags = TAGS
    # Account keys read their own objects; every write needs a service key.
    guards = [requires_scope("service", "account")]

    @post(
        "/",
        operation_id="creatorSubscriptionsSubscribe",
        summary="Subscribe a fan to a tier",
        guards=[requires_scope("service")],
        responses=problem_responses(*_PAY),
    )
    async def subscribe(
        self,
        data: JSONBody[NewSubscription],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> SubscriptionView:
        """Charges the first period now; ``409 account_not_ready`` until the creator can sell."""
        return await subscriptions.subscribe(
            _env(services), data, operation=_operation(principal, idempotency_key)
        )

    @get(
        "/{subscription_id:int}",
        operation_id="creatorSubscriptionsGetSubscription",
        summary="Get a subscription",
        responses=problem_responses(*_READ),
    )
    async def get_subscription(
        self,
        subscription_id: BigId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> SubscriptionView:
        """As mirrored from Stripe."""
        view = await subscriptions.get_subscription(_env(services), subscription_id)
        principal.ensure_visible(view.creator_account_id, what="subscription", ref=subscription_id)
        return view

    @post(
        "/{subscription_id:int}/change-tier",
        operation_id="creatorSubscriptionsChangeTier",
        summary="Upgrade or downgrade (prorated)",
        status_code=200,
        guards=[requires_scope("service")],
        responses=problem_responses(*_PAY),
    )
    async def change_tier(
        self,
        subscription_id: BigId,
        data: JSONBody[ChangeTier],
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> SubscriptionView:
        """Upgrades invoice the prorated difference now; downgrades credit the next renewal."""
        return await subscriptions.change_tier(_env(services), subscription_id, data)

    @post(
        "/{subscription_id:int}/pause",
        operation_id="creatorSubscriptionsPause",
        summary="Pause collection",
        status_code=200,
        guards=[requires_scope("service")],
        responses=problem_responses(*_WRITE),
    )
    async def pause(
        self,
        subscription_id: BigId,
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> SubscriptionView:
        """Renewals are not charged until resumed."""
        return await subscriptions.pause_subscription(_env(services), subscription_id)

    @post(
        "/{subscription_id:int}/resume",
        operation_id="creatorSubscriptionsResume",
        summary="Resume collection",
        status_code=200,
        guards=[requires_scope("service")],
        responses=problem_responses(*_WRITE),
    )
    async def resume(
        self,
        subscription_id: BigId,
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> SubscriptionView:
        """Charge again from the next renewal."""
        return await subscriptions.resume_subscription(_env(services), subscription_id)

    @post(
        "/{subscription_id:int}/cancel",
        operation_id="creatorSubscriptionsCancel",
        summary="Cancel now or at period end",
        status_code=200,
        guards=[requires_scope("service")],
        responses=problem_responses(*_WRITE),
    )
    async def cancel(
        self,
        subscription_id: BigId,
        services: NamedDependency[Services],
        data: JSONBody[CancelSubscription | None] = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> SubscriptionView:
        """``at_period_end`` keeps the paid period; otherwise it ends now."""
        at_end = data.at_period_end if data is not None else False
        return await subscriptions.cancel_subscription(
            _env(services), subscription_id, at_period_end=at_end
        )

    @post(
        "/{subscription_id:int}/keep",
        operation_id="creatorSubscriptionsKeep",
        summary="Undo a cancellation at period end",
        status_code=200,
        guards=[requires_scope("service")],
        responses=problem_responses(*_WRITE),
    )
    async def keep(
        self,
        subscription_id: BigId,
        services: NamedDependency[Services],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> SubscriptionView:
        """The subscription renews again."""
        return await subscriptions.keep_subscription(_env(services), subscription_id)


class PaymentController(Controller):
    """Tips and pay-per-view purchases, and their refunds."""

    path = f"{PREFIX}/payments"
    tags = TAGS
    # Account keys read their own objects; every write needs a service key.
    guards = [requires_scope("service", "account")]

    @post(
        "/tips",
        operation_id="creatorSubscriptionsTip",
        summary="Tip a creator",
        guards=[requires_scope("service")],
        responses=problem_responses(*_PAY),
    )
    async def tip(
        self,
        data: JSONBody[NewOneTimePayment],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> OneTimePaymentView:
        """One destination charge: the creator gets the tip less the platform fee."""
        return await one_time.create_one_time_payment(
            _env(services), "tip", data, operation=_operation(principal, idempotency_key)
        )

    @post(
        "/ppv",
        operation_id="creatorSubscriptionsPayPerView",
        summary="Buy a pay-per-view item",
        guards=[requires_scope("service")],
        responses=problem_responses(*_PAY),
    )
    async def pay_per_view(
        self,
        data: JSONBody[NewOneTimePayment],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> OneTimePaymentView:
        """Like a tip, for ``item_ref``."""
        return await one_time.create_one_time_payment(
            _env(services), "ppv", data, operation=_operation(principal, idempotency_key)
        )

    @get(
        "/{payment_id:int}",
        operation_id="creatorSubscriptionsGetPayment",
        summary="Get a tip or pay-per-view payment",
        responses=problem_responses(*_READ),
    )
    async def get_payment(
        self,
        payment_id: BigId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> OneTimePaymentView:
        """The payment and its split."""
        view = await one_time.get_one_time_payment(_env(services), payment_id)
        principal.ensure_visible(view.creator_account_id, what="payment", ref=payment_id)
        return view

    @post(
        "/{payment_id:int}/refunds",
        operation_id="creatorSubscriptionsRefund",
        summary="Refund a tip or pay-per-view payment",
        guards=[requires_scope("service")],
        responses=problem_responses(*_WRITE),
    )
    async def refund(
        self,
        payment_id: BigId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[NewRefund | None] = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> RefundView:
        """The creator's share and the platform fee are reversed in proportion."""
        return await one_time.refund_one_time_payment(
            _env(services),
            payment_id,
            data or NewRefund(),
            operation=_operation(principal, idempotency_key),
        )


class InvoiceController(Controller):
    """Refunds of paid subscription invoices."""

    path = f"{PREFIX}/invoices"
    tags = TAGS
    guards = [requires_scope("service")]

    @post(
        "/{invoice_id:str}/refunds",
        operation_id="creatorSubscriptionsRefundInvoice",
        summary="Refund a paid subscription invoice",
        responses=problem_responses(*_WRITE),
    )
    async def refund(
        self,
        invoice_id: Annotated[
            str, PathParameter(pattern=r"^in_[A-Za-z0-9]{1,60}$", description="Stripe's invoice id")
        ],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[NewRefund | None] = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> InvoiceRefundView:
        """The creator's share and the platform fee are reversed in proportion."""
        return await invoice_refunds.refund_invoice(
            _env(services),
            invoice_id,
            data or NewRefund(),
            operation=_operation(principal, idempotency_key),
        )


CONTROLLERS: tuple[type[Controller], ...] = (
    CreatorController,
    TierController,
    FanController,
    SubscriptionController,
    PaymentController,
    InvoiceController,
)
