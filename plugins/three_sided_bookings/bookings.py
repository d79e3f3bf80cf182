"""The booking service: create bookings, take transitions, run timers, read and reconcile.

The business logic behind ``/v1/three_sided_bookings/bookings`` (no HTTP here).
A transition is one database transaction: lock the booking, resolve the
transition in the configured process (``IllegalTransition`` with the current
state and the allowed actions otherwise), run its actions (the engine's money
calls, which call Stripe with idempotency keys, record and post; the booking's
own rows), move the state, append to the
audit trail and set the next timer. Notifications go out after the commit.
A timed transition that is due at once (settlement after completion) runs
right after, in its own transaction, so a failed settlement leaves the booking
``completed`` with its timer due, for the timer runner to retry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from engine.core.authentication import CustomerAction
from engine.core.errors import (
    Conflict,
    FieldNotApplicable,
    IllegalTransition,
    InvalidInput,
    MarketplaceError,
    NotFound,
    PaymentActionRequired,
)
from engine.core.money import Money, apply_rate
from engine.payments import movements
from engine.payments.payability import require_payable
from engine.payments.pricing import MONTHLY_VOLUME, monthly_volume
from engine.services import Services
from plugins.three_sided_bookings.actions import ACTION_FIELDS, ACTION_IMPLEMENTATIONS
from plugins.three_sided_bookings.catalog import share_terms
from plugins.three_sided_bookings.config import PLUGIN, ThreeSidedBookingsConfig
from plugins.three_sided_bookings.context import ActionParams, BookingContext, Notices
from plugins.three_sided_bookings.payments import (
    action_json,
    collected,
    ensure_customer,
    release_held_transfers,
)
from plugins.three_sided_bookings.process import PREVIOUS_STATE, SAME_STATE, Facts, ProcessSpec
from plugins.three_sided_bookings.schemas import (
    BookingStripeIds,
    BookingView,
    NewBooking,
    SplitLegView,
    SplitView,
    TransitionView,
)
from plugins.three_sided_bookings.split import SplitCalculationService
from plugins.three_sided_bookings.store import (
    BookingRecord,
    Connection,
    jsonb,
    load_booking,
    load_charges,
    lock_booking,
)

__all__ = ["BookingService", "Clock", "Outcome"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

STRIPE_MINIMUM: Final = 50
"""Stripe's smallest charge in minor units (the sandbox applies it to every currency)."""

_MAX_CHAINED: Final = 5


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A transition taken: the booking after it, and what to notify once committed."""

    booking: BookingRecord
    notices: Notices


async def _already_taken(
    conn: Connection, booking_id: int, name: str, request: str | None, *, relative: bool
) -> bool:
    """Whether the booking already took transition ``name`` for ``request`` (a retry),
    or, for a transition refunding an amount relative to what the booking holds
    (``relative``: ``refund_amount``), its refunds for ``request`` are recorded (its
    own transaction was lost after Stripe refunded).

    Raises:
        Conflict: the request took another transition of this booking.
    """
    if request is None:
        return False
    taken = await conn.fetchval(
        "SELECT transition FROM three_sided_bookings_transitions "
        "WHERE booking = $1 AND data->>'request' = $2 ORDER BY id LIMIT 1",
        booking_id,
        request,
    )
    if taken is not None and taken != name:
        raise Conflict(
            f"this request took the transition {taken!r} of booking {booking_id}",
            field="Idempotency-Key",
        )
    if taken is None and relative:
        # Its transaction rolled back after Stripe refunded, and Stripe's events recorded
        # the refund and reversals under the request's keys (``refund_made_in_stripe``,
        # ``reversals_made_in_stripe``): the money moved once and the booking shows it;
        # running it again would refund the amount again from what already counts it.
        # (A transition collecting to an absolute target, a cancellation's fee, runs
        # again: it finds the refund done and does the rest.)
        suffix = f":request:{request}"
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM three_sided_bookings_refunds WHERE booking = $1 "
                "AND idempotency_key LIKE $2 AND right(idempotency_key, length($3)) = $3 "
                "LIMIT 1",
                booking_id,
                f"booking:{booking_id}:refund:%",
                suffix,
            )
        )
    return taken is not None


class BookingService:
    """Bookings of the spa marketplace.

    Args:
        services: the engine's running services.
        clock: the time source (tests pass a fixed or moving clock).
    """

    def __init__(self, services: Services, *, clock: Clock | None = None) -> None:
        self._services = services
        self._clock = clock or _utc_now

    @property
    def config(self) -> ThreeSidedBookingsConfig:
        """The plugin's validated config."""
        config: ThreeSidedBookingsConfig = self._services.plugins.runtime.config(PLUGIN)
        return config

    @property
    def process(self) -> ProcessSpec:
        """The booking process in force."""
        return self.config.process

    def now(self) -> datetime:
        """The service's current time (of bookings on no test clock)."""
        return self._clock()

    async def clock_time(self, test_clock: str | None) -> datetime:
        """The time of a booking's payments: its Stripe test clock's, else ``now()``.

        A booking whose customer is on a test clock (test mode) lives on that
        clock: its timers, state times and guards read it, as Stripe's charges,
        refunds and payouts of the booking do.
        """
        if not test_clock:
            return self.now()
        clock = await self._services.gateway.call(
            "test_helpers.test_clocks", "retrieve", test_clock
        )
        return datetime.fromtimestamp(int(clock["frozen_time"]), UTC)

    async def now_for(self, booking: BookingRecord) -> datetime:
        """The current time of ``booking`` (see ``clock_time``)."""
        return await self.clock_time(booking.test_clock)

    @property
    def _pool(self) -> Any:
        return self._services.db.pool

    def context(
        self,
        conn: Connection,
        booking: BookingRecord,
        *,
        actor: str = "system",
        params: ActionParams | None = None,
        now: datetime | None = None,
    ) -> BookingContext:
        """A context for actions on ``booking`` inside ``conn``'s transaction.

        ``now`` is the booking's time (``now_for``); the service's clock when omitted
        (a booking on no test clock).
        """
        return BookingContext(
            services=self._services,
            config=self.config,
            conn=conn,
            booking=booking,
            now=now or self.now(),
            actor=actor,
            params=params or ActionParams(),
        )

    # ------------------------------------------------------------ create

    async def create(
        self,
        data: NewBooking,
        *,
        created_by: str = "",
        actor: str = "customer",
        actor_id: str | None = None,
    ) -> BookingRecord:
        """Create a booking in the process's initial state, priced and split once.

        ``created_by`` is the API key id whose bookings a service key lists;
        ``actor_id`` names the caller in the audit trail (``created_by`` when not given).

        With ``data.payment_method`` the ``pay`` transition is taken in the same
        transaction: a create whose payment fails (a declined or unknown card)
        creates nothing and answers the payment's error; the customer books again
        with another card. A payment that waits for the customer's authentication
        is not a failure: the booking is created with its ``customer_action``.
        """
        audit_id = created_by if actor_id is None else actor_id
        test_clock = data.customer.test_clock
        try:
            now = await self.clock_time(test_clock)
        except NotFound:
            raise InvalidInput(f"no test clock {test_clock}", field="customer.test_clock") from None
        config = self.config
        async with self._pool.acquire() as conn:
            service = await conn.fetchrow(
                "SELECT * FROM three_sided_bookings_services WHERE id = $1", data.service_id
            )
            provider = await conn.fetchrow(
                "SELECT * FROM three_sided_bookings_providers WHERE id = $1", data.provider_id
            )
            venue = await conn.fetchrow(
                "SELECT * FROM three_sided_bookings_venues WHERE id = $1", data.venue_id
            )
            if service is None or not service["active"]:
                raise NotFound(f"no bookable service {data.service_id}", field="service_id")
            if provider is None:
                raise NotFound(f"no provider {data.provider_id}", field="provider_id")
            if venue is None:
                raise NotFound(f"no venue {data.venue_id}", field="venue_id")
            # Nothing is created for a provider or venue who cannot be paid (409).
            await require_payable(
                conn,
                {"provider": str(provider["account_id"]), "venue": str(venue["account_id"])},
            )
            starts_at = data.starts_at
            if starts_at.tzinfo is None:
                raise InvalidInput("starts_at needs a UTC offset", field="starts_at")
            if starts_at <= now:
                raise InvalidInput("starts_at is in the past", field="starts_at")
            currency = str(service["currency"])
            if currency not in config.currencies:
                raise InvalidInput(f"bookings are not taken in {currency}", field="service_id")
            value = Money(int(service["price"]), currency)
            deposit = self._deposit(data.payment_model, value)
            terms = await share_terms(
                conn,
                provider_id=provider["id"],
                venue_id=venue["id"],
                service_type=str(service["service_type"]),
                currency=currency,
                default_provider_bps=config.provider_share_bps,
            )
            volume = await monthly_volume(conn, str(provider["account_id"]), currency, at=now)
            async with conn.transaction():
                booking_id = int(
                    await conn.fetchval(
                        "SELECT nextval(pg_get_serial_sequence("
                        "'three_sided_bookings_bookings', 'id'))"
                    )
                )
                quote = SplitCalculationService(self._services.plugins, PLUGIN).quote(
                    reference=f"booking:{booking_id}",
                    value=value,
                    service_type=str(service["service_type"]),
                    provider_account=str(provider["account_id"]),
                    venue_account=str(venue["account_id"]),
                    terms=terms,
                    occurred_at=now,
                    attributes={"payment_model": data.payment_model, MONTHLY_VOLUME: volume},
                )
                process = self.process
                policy = {
                    "windows": [[w.hours_before, w.fee_bps] for w in config.windows()],
                    "no_show_fee_bps": config.no_show_fee_bps,
                }
                ends_at = starts_at + timedelta(minutes=int(service["duration_minutes"]))
                await conn.execute(
                    """
                    INSERT INTO three_sided_bookings_bookings
                        (id, service, provider, venue, service_type, service_name,
                         provider_account, venue_account, customer_name, customer_email,
                         customer_reference, payment_model, state, previous_state,
                         state_entered_at, process_name, process_version, starts_at, ends_at,
                         amount, currency, deposit_amount, split, policy, transfer_group,
                         timer_at, timer_name, communication, created_by, created_at,
                         updated_at, test_clock)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, '', $14,
                            $15, $16, $17, $18, $19, $20, $21, $22::jsonb, $23::jsonb, $24,
                            NULL, '', '[]'::jsonb, $25, $14, $14, $26)
                    """,
                    booking_id,
                    service["id"],
                    provider["id"],
                    venue["id"],
                    service["service_type"],
                    service["name"],
                    provider["account_id"],
                    venue["account_id"],
                    data.customer.name,
                    data.customer.email,
                    data.customer.reference,
                    data.payment_model,
                    process.initial,
                    now,
                    process.name,
                    process.version,
                    starts_at,
                    ends_at,
                    value.amount,
                    currency,
                    deposit,
                    json.dumps(quote.split_json()),
                    json.dumps(policy),
                    f"booking:{booking_id}",
                    created_by,
                    test_clock,
                )
                booking = await load_booking(conn, booking_id)
                await self._audit(
                    conn,
                    booking,
                    "create",
                    "",
                    process.initial,
                    actor,
                    audit_id,
                    {"split": quote.split_json(), "deposit": deposit},
                    at=now,
                )
                booking = await self._set_timer(conn, booking)
                if test_clock:
                    # Its customer on the clock from the start, so every payment is.
                    await ensure_customer(self.context(conn, booking, now=now))
                    booking = await load_booking(conn, booking.id)
                notices = Notices(self._services)
                notices.lifecycle(
                    "booking.created",
                    booking.reference,
                    amount=booking.amount,
                    currency=booking.currency,
                    payment_model=booking.payment_model,
                )
                if data.payment_method:
                    # The first payment belongs to the create: if it fails (a declined
                    # or unknown card), the transaction rolls back and nothing exists.
                    try:
                        outcome = await self.act_in(
                            conn,
                            booking.id,
                            "pay",
                            "customer",
                            actor_id=audit_id,
                            params=ActionParams(payment_method=data.payment_method),
                        )
                    except PaymentActionRequired as waiting:
                        booking, waiting_notices = await self._remember_action(
                            conn, booking.id, "pay", waiting.action
                        )
                        notices.extend(waiting_notices)
                    else:
                        booking = outcome.booking
                        notices.extend(outcome.notices)
        notices.send()
        return await self._run_due_now(booking)

    def _deposit(self, payment_model: str, value: Money) -> int:
        if payment_model != "deposit":
            return 0
        deposit = apply_rate(value.amount, self.config.deposit_bps)
        balance = value.amount - deposit
        if deposit < STRIPE_MINIMUM or 0 < balance < STRIPE_MINIMUM:
            raise InvalidInput(
                f"a deposit of {deposit} and a balance of {balance} {value.currency}: each "
                f"must be at least {STRIPE_MINIMUM} minor units",
                field="payment_model",
            )
        return deposit

    # ------------------------------------------------------------ transitions

    async def act(
        self,
        booking_id: int,
        name: str,
        actor: str,
        *,
        actor_id: str = "",
        params: ActionParams | None = None,
    ) -> BookingRecord:
        """Take transition ``name`` as ``actor``; then any timed transition due at once.

        A payment the customer must authenticate first (3D Secure) leaves the booking
        where it was with its ``customer_action``; the transition is taken when the
        authenticated payment succeeds (``payment_intent.succeeded``).

        Raises:
            IllegalTransition: not allowed from the current state for this actor
                (409, with ``state`` and ``allowed``).
        """
        async with self._pool.acquire() as conn:
            try:
                outcome = await self.act_in(
                    conn, booking_id, name, actor, actor_id=actor_id, params=params
                )
            except PaymentActionRequired as waiting:
                return await self._await_customer(conn, booking_id, name, waiting.action)
        outcome.notices.send()
        return await self._run_due_now(outcome.booking)

    async def _await_customer(
        self, conn: Connection, booking_id: int, name: str, action: CustomerAction
    ) -> BookingRecord:
        """Remember what the customer must authenticate, and which transition it completes."""
        booking, notices = await self._remember_action(conn, booking_id, name, action)
        notices.send()
        return booking

    async def _remember_action(
        self, conn: Connection, booking_id: int, name: str, action: CustomerAction
    ) -> tuple[BookingRecord, Notices]:
        """``_await_customer`` inside the caller's transaction; the notices to send after it."""
        await conn.execute(
            """
            UPDATE three_sided_bookings_bookings
            SET customer_action = $2::jsonb, action_transition = $3, updated_at = now()
            WHERE id = $1
            """,
            booking_id,
            action_json(action),
            name,
        )
        booking = await load_booking(conn, booking_id)
        notices = Notices(self._services)
        notices.lifecycle(
            "booking.action_required",
            booking.reference,
            transition=name,
            intent=action.intent_id,
            reason=action.reason,
            state=booking.state,
        )
        return booking, notices

    async def act_in(
        self,
        conn: Connection,
        booking_id: int,
        name: str,
        actor: str,
        *,
        actor_id: str = "",
        params: ActionParams | None = None,
    ) -> Outcome:
        """Take a transition inside ``conn`` (a savepoint when already in a transaction).

        The caller sends ``outcome.notices`` after its own commit (a webhook
        handler passes them to ``ctx.after_commit``).
        """
        params = params or ActionParams()
        async with conn.transaction():
            booking = await lock_booking(conn, booking_id)
            relative = any(
                "refund_amount" in t.actions for t in self.process.transitions if t.name == name
            )
            if await _already_taken(conn, booking_id, name, params.request, relative=relative):
                return Outcome(booking=booking, notices=Notices(self._services))
            charges = await load_charges(conn, booking_id)
            now = await self.now_for(booking)
            facts = Facts(
                now=now,
                starts_at=booking.starts_at,
                ends_at=booking.ends_at,
                payment_model=booking.payment_model,
                collected=collected(charges),
                requested_amount=params.amount,
                grace=timedelta(minutes=self.config.start_grace_minutes),
                hold_horizon=timedelta(days=self.config.off_session_after_days),
            )
            transition = self.process.resolve(name, booking.state, actor, facts)
            _refuse_unused_fields(name, booking.state, transition.actions, params)
            target = transition.to
            if target == PREVIOUS_STATE:
                target = booking.previous_state or self.process.initial
            elif target == SAME_STATE:
                target = booking.state
            ctx = self.context(conn, booking, actor=actor, params=params, now=now)
            if params.reason:
                ctx.record("reason", params.reason)
            if params.request is not None:
                ctx.record("request", params.request)
            for action in transition.actions:
                await ACTION_IMPLEMENTATIONS[action](ctx)
            booking = await ctx.reload()
            await self._audit(
                conn, booking, name, booking.state, target, actor, actor_id, ctx.data, at=now
            )
            if target != booking.state:
                await conn.execute(
                    """
                    UPDATE three_sided_bookings_bookings
                    SET state = $2, previous_state = $3, state_entered_at = $4, updated_at = $4
                    WHERE id = $1
                    """,
                    booking.id,
                    target,
                    booking.state,
                    now,
                )
            booking = await self._set_timer(conn, await load_booking(conn, booking.id))
        ctx.notify.lifecycle(
            f"booking.{name}",
            booking.reference,
            state=booking.state,
            actor=actor,
            amount=booking.amount,
            currency=booking.currency,
        )
        return Outcome(booking=booking, notices=ctx.notify)

    async def _audit(  # noqa: PLR0917 - one audit row's columns, in order
        self,
        conn: Connection,
        booking: BookingRecord,
        name: str,
        from_state: str,
        to_state: str,
        actor: str,
        actor_id: str,
        data: dict[str, Any],
        *,
        at: datetime,
    ) -> None:
        await conn.execute(
            """
            INSERT INTO three_sided_bookings_transitions
                (booking, transition, from_state, to_state, actor, actor_id, data, created_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
            """,
            booking.id,
            name,
            from_state,
            to_state,
            actor,
            actor_id,
            json.dumps(data, default=str),
            at,
        )

    async def _set_timer(self, conn: Connection, booking: BookingRecord) -> BookingRecord:
        """Point the booking at its next timed transition (or none)."""
        due: list[tuple[datetime, str]] = []
        for transition in self.process.timed(booking.state):
            if transition.timer is None:
                continue
            moment = transition.timer.due(
                entered=booking.state_entered_at,
                created=booking.created_at,
                starts=booking.starts_at,
                ends=booking.ends_at,
            )
            due.append((moment, transition.name))
        when: datetime | None = None
        name = ""
        if due:
            when, name = min(due)
        await conn.execute(
            "UPDATE three_sided_bookings_bookings SET timer_at = $2, timer_name = $3 WHERE id = $1",
            booking.id,
            when,
            name,
        )
        return await load_booking(conn, booking.id)

    async def _run_due_now(self, booking: BookingRecord) -> BookingRecord:
        """Take timed transitions that are already due (settlement after completion)."""
        for _ in range(_MAX_CHAINED):
            if booking.timer_at is None or booking.timer_at > await self.now_for(booking):
                return booking
            try:
                booking = await self.act(booking.id, booking.timer_name, "system")
            except MarketplaceError:
                # The booking keeps its due timer; the timer runner retries it.
                log.warning("timed %s of booking %s failed", booking.timer_name, booking.id)
                return await self.get_record(booking.id)
        return booking

    async def run_due_in(self, conn: Connection, booking: BookingRecord) -> Notices:
        """Inside ``conn``: take timed transitions already due (after a webhook's transition).

        Each runs in its own savepoint; one that fails is rolled back alone and
        left to the timer runner, so the event that caused it still commits.
        """
        notices = Notices(self._services)
        for _ in range(_MAX_CHAINED):
            if booking.timer_at is None or booking.timer_at > await self.now_for(booking):
                break
            try:
                outcome = await self.act_in(conn, booking.id, booking.timer_name, "system")
            except MarketplaceError as error:
                log.warning(
                    "timed %s of booking %s failed: %s", booking.timer_name, booking.id, error
                )
                break
            notices.extend(outcome.notices)
            booking = outcome.booking
        return notices

    async def run_due_timers(self, *, limit: int = 100) -> list[tuple[int, str, str]]:
        """Take every timed transition due now, after retrying held shares that can be paid.

        Returns ``(booking, transition, outcome)`` per transition taken, and
        ``(transfer, "release_held", "paid")`` per held share paid.
        """
        done: list[tuple[int, str, str]] = []
        for transfer_id in await self.retry_held():
            done.append((transfer_id, "release_held", "paid"))
        rows = list(
            await self._pool.fetch(
                "SELECT id, timer_name FROM three_sided_bookings_bookings "
                "WHERE test_clock IS NULL AND timer_at <= $1 ORDER BY timer_at LIMIT $2",
                self.now(),
                limit,
            )
        )
        # Bookings on a test clock are due by their clock's time, not this machine's.
        clocks = await self._pool.fetch(
            "SELECT DISTINCT test_clock FROM three_sided_bookings_bookings "
            "WHERE test_clock IS NOT NULL AND timer_at IS NOT NULL"
        )
        for clock in clocks:
            try:
                clock_now = await self.clock_time(str(clock["test_clock"]))
            except MarketplaceError as error:  # deleted (Stripe removes old test clocks)
                log.warning("test clock %s: %s", clock["test_clock"], error)
                continue
            rows += await self._pool.fetch(
                "SELECT id, timer_name FROM three_sided_bookings_bookings "
                "WHERE test_clock = $3 AND timer_at <= $1 ORDER BY timer_at LIMIT $2",
                clock_now,
                limit,
                clock["test_clock"],
            )
        for row in rows:
            try:
                booking = await self.act(row["id"], row["timer_name"], "system")
                done.append((row["id"], row["timer_name"], booking.state))
            except IllegalTransition as refused:
                # The booking moved on (another runner) or a guard does not hold: drop it.
                async with self._pool.acquire() as conn:
                    await self._set_timer(conn, await load_booking(conn, row["id"]))
                done.append((row["id"], row["timer_name"], f"skipped: {refused.detail}"))
            except MarketplaceError as error:
                log.warning(
                    "timed %s of booking %s failed: %s", row["timer_name"], row["id"], error
                )
                done.append((row["id"], row["timer_name"], f"failed: {error.detail}"))
        return done

    async def retry_held(self) -> list[int]:
        """Retry every held share whose account can receive funds now (the timer runner's
        safety net for a release that failed when ``account.updated`` arrived)."""
        held = await movements.held_shares(self._pool, plugin=PLUGIN)
        paid: list[int] = []
        for account_id in dict.fromkeys(share.destination for share in held):
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    released, notices = await self.release_held(conn, account_id)
                notices.send()
            paid += released
        return paid

    async def release_held(self, conn: Connection, account_id: str) -> tuple[list[int], Notices]:
        """Retry the shares held for an account that can receive funds again."""
        notices = Notices(self._services)
        paid = await release_held_transfers(self.context, conn, account_id, notices)
        return paid, notices

    # ------------------------------------------------------------ reading

    async def get_record(self, booking_id: int) -> BookingRecord:
        """The stored booking."""
        return await load_booking(self._pool, booking_id)

    async def view(self, booking: BookingRecord, actor: str | None = None) -> BookingView:
        """The API view of a booking (``allowed_actions`` for ``actor``)."""
        money = await self._pool.fetchrow(
            """
            SELECT
              (SELECT COALESCE(sum(captured - refunded), 0) FROM three_sided_bookings_charges
                 WHERE booking = $1) AS collected,
              (SELECT COALESCE(sum(refunded), 0) FROM three_sided_bookings_charges
                 WHERE booking = $1) AS refunded,
              (SELECT COALESCE(sum(amount), 0) FROM three_sided_bookings_transfers
                 WHERE booking = $1 AND status = 'held') AS held,
              (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                  'kind', kind, 'payment_intent', stripe_payment_intent_id,
                  'charge', stripe_charge_id, 'status', status, 'amount', amount,
                  'captured', captured, 'refunded', refunded) ORDER BY id), '[]'::jsonb)
                 FROM three_sided_bookings_charges WHERE booking = $1) AS charges,
              (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                  'role', role, 'account_id', account_id, 'transfer', stripe_transfer_id,
                  'amount', amount, 'amount_reversed', amount_reversed, 'status', status)
                  ORDER BY id), '[]'::jsonb)
                 FROM three_sided_bookings_transfers WHERE booking = $1) AS transfers,
              (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                  'refund', r.stripe_refund_id, 'charge', c.stripe_charge_id,
                  'amount', r.amount, 'status', r.status) ORDER BY r.id), '[]'::jsonb)
                 FROM three_sided_bookings_refunds r
                 JOIN three_sided_bookings_charges c ON c.id = r.charge
                 WHERE r.booking = $1) AS refunds,
              (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                  'reversal', v.stripe_reversal_id, 'transfer', t.stripe_transfer_id,
                  'amount', v.amount, 'reason', v.reason) ORDER BY v.id), '[]'::jsonb)
                 FROM three_sided_bookings_reversals v
                 JOIN three_sided_bookings_transfers t ON t.id = v.transfer
                 WHERE v.booking = $1) AS reversals
            """,
            booking.id,
        )
        split = booking.split
        return BookingView(
            id=booking.id,
            reference=booking.reference,
            state=booking.state,
            allowed_actions=self.process.allowed(booking.state, actor),
            payment_model=booking.payment_model,
            service_id=booking.service_id,
            service_name=booking.service_name,
            service_type=booking.service_type,
            provider_id=booking.provider_id,
            provider_account=booking.provider_account,
            venue_id=booking.venue_id,
            venue_account=booking.venue_account,
            customer_name=booking.customer_name,
            customer_email=booking.customer_email,
            customer_reference=booking.customer_reference,
            starts_at=booking.starts_at,
            ends_at=booking.ends_at,
            amount=booking.amount,
            currency=booking.currency,
            deposit_amount=booking.deposit_amount,
            collected=int(money["collected"]),
            refunded=int(money["refunded"]),
            held=int(money["held"]),
            split=SplitView(
                total=int(split["total"]),
                currency=str(split["currency"]),
                rule_id=str(split.get("rule_id", "")),
                rule_version=int(split.get("rule_version", 1)),
                provider_terms=str(split.get("provider_terms", "")),
                venue_terms=str(split.get("venue_terms", "")),
                legs=[
                    SplitLegView(
                        role=str(leg["role"]),
                        account_id=leg.get("account_id"),
                        amount=int(leg["amount"]),
                    )
                    for leg in split["legs"]
                ],
            ),
            transfer_group=booking.transfer_group,
            test_clock=booking.test_clock,
            stripe=msgspec.convert(
                {
                    name: jsonb(money[name])
                    for name in ("charges", "transfers", "refunds", "reversals")
                },
                BookingStripeIds,
            ),
            created_at=booking.created_at,
            updated_at=booking.updated_at,
            action_required=booking.customer_action is not None,
            customer_action=(
                None
                if booking.customer_action is None
                else msgspec.convert(booking.customer_action, CustomerAction)
            ),
        )

    async def list_records(
        self,
        *,
        account_id: str | None = None,
        created_by: str | None = None,
        state: str | None = None,
        after: int = 0,
        limit: int = 20,
    ) -> tuple[list[BookingRecord], int | None]:
        """A page of bookings (one account's, one client's, or all), oldest first."""
        rows = await self._pool.fetch(
            """
            SELECT * FROM three_sided_bookings_bookings
            WHERE id > $1
              AND ($2::text IS NULL OR provider_account = $2 OR venue_account = $2)
              AND ($3::text IS NULL OR created_by = $3)
              AND ($4::text IS NULL OR state = $4)
            ORDER BY id LIMIT $5
            """,
            after,
            account_id,
            created_by,
            state,
            limit + 1,
        )
        records = [BookingRecord.from_row(row) for row in rows[:limit]]
        return records, (records[-1].id if len(rows) > limit else None)

    async def transitions(self, booking_id: int) -> list[TransitionView]:
        """The audit trail, oldest first."""
        rows = await self._pool.fetch(
            "SELECT * FROM three_sided_bookings_transitions WHERE booking = $1 ORDER BY id",
            booking_id,
        )
        return [
            TransitionView(
                transition=row["transition"],
                from_state=row["from_state"],
                to_state=row["to_state"],
                actor=row["actor"],
                actor_id=row["actor_id"],
                data=jsonb(row["data"]) or {},
                created_at=row["created_at"],
            )
            for row in rows
        ]

    async def add_message(self, booking_id: int, author: str, text: str) -> BookingRecord:
        """Append to the customer communication (kept as dispute evidence)."""
        message = {"at": self.now().isoformat(), "author": author, "text": text}
        row = await self._pool.fetchrow(
            """
            UPDATE three_sided_bookings_bookings
            SET communication = communication || $2::jsonb, updated_at = now()
            WHERE id = $1 RETURNING *
            """,
            booking_id,
            json.dumps([message]),
        )
        if row is None:
            raise NotFound(f"no booking {booking_id}")
        return BookingRecord.from_row(row)


def _refuse_unused_fields(name: str, state: str, actions: list[str], params: ActionParams) -> None:
    """A field this transition would ignore is a 422 naming it, before anything moves.

    ``complete {"amount": 7000}`` used to capture the full price as if the amount
    were not there; now the caller learns which fields the action reads here.
    """
    given = {
        "payment_method": params.payment_method is not None,
        "amount": params.amount is not None,
        "statement": bool(params.statement),
    }
    usable = set().union(*(ACTION_FIELDS.get(action, frozenset()) for action in actions))
    for field, present in given.items():
        if present and field not in usable:
            takes = ", ".join(sorted(usable | {"reason"}))
            raise FieldNotApplicable(
                f"{field} is not used by {name} in state {state} (it takes: {takes})",
                field=field,
                action=name,
                state=state,
            )
