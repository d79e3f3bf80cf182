"""``/v1/three_sided_bookings/...``: the plugin's HTTP API (Litestar controllers).

- Catalogue (admin writes; admin and service keys read): services, providers,
  venues, provider agreements, venue terms, payout schedules.
- Bookings: service keys (an integration client acting for its customers)
  create bookings and see the ones they created; provider and venue keys
  (``account`` scope) see and act on the bookings of their account only; admin
  keys see everything. Someone else's booking is a 404, exactly like a missing one.
- Actions: ``POST /bookings/{id}/actions/{action}`` takes a transition of the
  booking process as the caller's actor (customer, provider, venue, admin);
  an action the state does not allow is a ``409 illegal_transition`` problem
  with the current ``state`` and the ``allowed`` actions.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get, patch, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from engine.api.auth import Principal, requires_scope
from engine.api.idempotency import IdempotencyKeyHeader
from engine.api.pagination import Cursor, Limit, decode_cursor, encode_cursor
from engine.api.problems import problem_responses
from engine.core.errors import NotFound
from engine.services import Services
from plugins.three_sided_bookings.bookings import BookingService
from plugins.three_sided_bookings.catalog import Catalog
from plugins.three_sided_bookings.context import ActionParams
from plugins.three_sided_bookings.reconciliation import reconcile
from plugins.three_sided_bookings.schemas import (
    AgreementInput,
    AgreementView,
    BookingAction,
    BookingList,
    BookingView,
    MessageInput,
    NewBooking,
    NewProvider,
    NewService,
    NewVenue,
    PayoutScheduleInput,
    PayoutScheduleView,
    ProviderView,
    Reconciliation,
    ServiceUpdate,
    ServiceView,
    TransitionView,
    VenueTermsInput,
    VenueTermsView,
    VenueView,
)
from plugins.three_sided_bookings.store import BookingRecord

__all__ = ["ROUTES", "BookingController", "CatalogController", "TimerController"]

BASE = "/v1/three_sided_bookings"

AccountId = Annotated[str, PathParameter(pattern=r"^acct_[A-Za-z0-9]{1,60}$")]
# Ids travel as strings with a digits pattern (not ``{id:int}`` routes) so any
# path reaches the auth middleware: a request without a key is a 401 whatever the id.
RowId = Annotated[
    str, PathParameter(pattern=r"^[1-9][0-9]{0,8}$", description="the row's id", examples=None)
]
BookingId = Annotated[
    str,
    PathParameter(pattern=r"^[1-9][0-9]{0,17}$", description="the booking's id", examples=None),
]
ActionName = Annotated[
    str, PathParameter(pattern=r"^[a-z_]{1,64}$", description="a transition of the process")
]

_READ = (400, 401, 403, 404)
_WRITE = (400, 401, 403, 404, 409, 413, 422, 502)
_MONEY = (400, 401, 402, 403, 404, 409, 413, 422, 502)


def _actor(principal: Principal, booking: BookingRecord) -> str:
    """The process actor this caller is for ``booking`` (404 when it may not see it)."""
    if principal.scope == "admin":
        return "admin"
    if principal.scope == "service" and booking.created_by == principal.key_id:
        return "customer"
    if principal.scope == "account" and principal.account_id is not None:
        if principal.account_id == booking.provider_account:
            return "provider"
        if principal.account_id == booking.venue_account:
            return "venue"
    raise NotFound(f"no booking {booking.id}")


class CatalogController(Controller):
    """Services, providers, venues and their terms (admin writes)."""

    path = BASE
    tags = ["three_sided_bookings"]

    @post(
        "/services",
        operation_id="tsbCreateService",
        summary="Create a bookable service",
        guards=[requires_scope()],
        responses=problem_responses(*_WRITE),
    )
    async def create_service(
        self, data: JSONBody[NewService], services: NamedDependency[Services]
    ) -> ServiceView:
        """Add a bookable service (price in minor units of its currency)."""
        return await Catalog(services).create_service(data)

    @get(
        "/services",
        operation_id="tsbListServices",
        summary="List services",
        guards=[requires_scope("service")],
        responses=problem_responses(*_READ),
    )
    async def list_services(self, services: NamedDependency[Services]) -> list[ServiceView]:
        """Every service, on sale or withdrawn, oldest first (admin and service keys)."""
        return await Catalog(services).list_services()

    @get(
        "/services/{service_id:str}",
        operation_id="tsbGetService",
        summary="Get a service",
        guards=[requires_scope("service")],
        responses=problem_responses(*_READ),
    )
    async def get_service(
        self, service_id: RowId, services: NamedDependency[Services]
    ) -> ServiceView:
        """One service with its price, duration and whether it is on sale."""
        return await Catalog(services).get_service(int(service_id))

    @patch(
        "/services/{service_id:str}",
        operation_id="tsbUpdateService",
        summary="Re-price, rename or withdraw a service",
        guards=[requires_scope()],
        responses=problem_responses(*_WRITE),
    )
    async def update_service(
        self, service_id: RowId, data: JSONBody[ServiceUpdate], services: NamedDependency[Services]
    ) -> ServiceView:
        """Change a service's price, name or availability."""
        return await Catalog(services).update_service(int(service_id), data)

    @post(
        "/providers",
        operation_id="tsbCreateProvider",
        summary="Register a provider (or update it)",
        guards=[requires_scope()],
        responses={
            200: ResponseSpec(ProviderView, description="the provider existed: updated"),
            **problem_responses(*_WRITE),
        },
    )
    async def create_provider(
        self, data: JSONBody[NewProvider], services: NamedDependency[Services]
    ) -> Response[ProviderView]:
        """Register a provider on its onboarded connected account."""
        view, created = await Catalog(services).add_provider(data)
        return Response(view, status_code=201 if created else 200)

    @get(
        "/providers",
        operation_id="tsbListProviders",
        summary="List providers",
        guards=[requires_scope("service")],
        responses=problem_responses(*_READ),
    )
    async def list_providers(self, services: NamedDependency[Services]) -> list[ProviderView]:
        """Every provider and its connected account, oldest first (admin and service keys)."""
        return await Catalog(services).list_providers()

    @put(
        "/providers/{provider_id:str}/agreements",
        operation_id="tsbSetAgreement",
        summary="Set a provider's share for a service type",
        guards=[requires_scope()],
        responses=problem_responses(*_WRITE),
    )
    async def set_agreement(
        self,
        provider_id: RowId,
        data: JSONBody[AgreementInput],
        services: NamedDependency[Services],
    ) -> AgreementView:
        """Set the provider's share of the net for a service type (``*``: the others)."""
        return await Catalog(services).set_agreement(int(provider_id), data)

    @get(
        "/providers/{provider_id:str}/agreements",
        operation_id="tsbListAgreements",
        summary="List a provider's agreements",
        guards=[requires_scope()],
        responses=problem_responses(*_READ),
    )
    async def agreements(
        self, provider_id: RowId, services: NamedDependency[Services]
    ) -> list[AgreementView]:
        """The provider's agreements, one per service type, each with its version (admin)."""
        return await Catalog(services).agreements(int(provider_id))

    @post(
        "/venues",
        operation_id="tsbCreateVenue",
        summary="Register a venue (or update it)",
        guards=[requires_scope()],
        responses={
            200: ResponseSpec(VenueView, description="the venue existed: updated"),
            **problem_responses(*_WRITE),
        },
    )
    async def create_venue(
        self, data: JSONBody[NewVenue], services: NamedDependency[Services]
    ) -> Response[VenueView]:
        """Register a venue on its onboarded connected account."""
        view, created = await Catalog(services).add_venue(data)
        return Response(view, status_code=201 if created else 200)

    @get(
        "/venues",
        operation_id="tsbListVenues",
        summary="List venues",
        guards=[requires_scope("service")],
        responses=problem_responses(*_READ),
    )
    async def list_venues(self, services: NamedDependency[Services]) -> list[VenueView]:
        """Every venue and its connected account, oldest first (admin and service keys)."""
        return await Catalog(services).list_venues()

    @put(
        "/venues/{venue_id:str}/terms",
        operation_id="tsbSetVenueTerms",
        summary="Set how a venue is paid",
        guards=[requires_scope()],
        responses=problem_responses(*_WRITE),
    )
    async def set_venue_terms(
        self, venue_id: RowId, data: JSONBody[VenueTermsInput], services: NamedDependency[Services]
    ) -> VenueTermsView:
        """Set how the venue is paid: a rate of the net, or a fixed fee per currency."""
        return await Catalog(services).set_venue_terms(int(venue_id), data)

    @get(
        "/venues/{venue_id:str}/terms",
        operation_id="tsbGetVenueTerms",
        summary="Get a venue's terms",
        guards=[requires_scope()],
        responses=problem_responses(*_READ),
    )
    async def venue_terms(
        self, venue_id: RowId, services: NamedDependency[Services]
    ) -> VenueTermsView:
        """The venue's terms and their version; 404 while the default applies (admin)."""
        return await Catalog(services).venue_terms(int(venue_id))

    @put(
        "/payout-schedules/{account_id:str}",
        operation_id="tsbSetPayoutSchedule",
        summary="Set a provider's or venue's payout schedule",
        guards=[requires_scope()],
        responses=problem_responses(*_WRITE),
    )
    async def set_payout_schedule(
        self,
        account_id: AccountId,
        data: JSONBody[PayoutScheduleInput],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> PayoutScheduleView:
        """Set a provider's or venue's payout schedule on Stripe."""
        return await Catalog(services).set_payout_schedule(account_id, data, actor=principal.actor)

    @get(
        "/payout-schedules/{account_id:str}",
        operation_id="tsbGetPayoutSchedule",
        summary="Get an account's payout schedule",
        responses=problem_responses(*_READ),
    )
    async def payout_schedule(
        self,
        account_id: AccountId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> PayoutScheduleView:
        """The schedule last set (an account key sees its own only)."""
        principal.ensure_visible(account_id)
        return await Catalog(services).payout_schedule(account_id)


class BookingController(Controller):
    """Bookings, their actions, audit trail and reconciliation."""

    path = f"{BASE}/bookings"
    tags = ["three_sided_bookings"]

    @post(
        "/",
        operation_id="tsbCreateBooking",
        summary="Book a service (and pay, with a payment method)",
        guards=[requires_scope("service")],
        responses=problem_responses(*_MONEY),
    )
    async def create_booking(
        self,
        data: JSONBody[NewBooking],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> BookingView:
        """Book a service; with ``payment_method`` it is paid (or authorised) at once.

        A declined card answers ``402 card_declined`` naming the ``booking_id``,
        which stays ``pending_payment`` for a ``pay`` action with another card.
        """
        bookings = BookingService(services)
        actor = "admin" if principal.scope == "admin" else "customer"
        booking = await bookings.create(
            data, created_by=principal.key_id, actor=actor, actor_id=principal.actor
        )
        return await bookings.view(booking, _actor(principal, booking))

    @get(
        "/",
        operation_id="tsbListBookings",
        summary="List bookings the caller may see",
        responses=problem_responses(*_READ),
    )
    async def list_bookings(
        self,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        limit: Limit = 20,
        cursor: Cursor = None,
        in_state: Annotated[
            str | None,
            QueryParameter(
                name="state", required=False, pattern=r"^[a-z_]{1,64}$", description="a state"
            ),
        ] = None,
    ) -> BookingList:
        """Bookings the caller may see: its own account's, its own clients', or all (admin)."""
        bookings = BookingService(services)
        account = principal.account_id if principal.scope == "account" else None
        creator = principal.key_id if principal.scope == "service" else None
        if principal.scope == "account" and account is None:
            return BookingList(data=[], next_cursor=None)
        records, next_after = await bookings.list_records(
            account_id=account,
            created_by=creator,
            state=in_state,
            after=decode_cursor(cursor),
            limit=limit,
        )
        actor = "admin" if principal.scope == "admin" else None
        return BookingList(
            data=[await bookings.view(record, actor) for record in records],
            next_cursor=encode_cursor(next_after),
        )

    @get(
        "/{booking_id:str}",
        operation_id="tsbGetBooking",
        summary="Get a booking and the actions the caller may take",
        responses=problem_responses(*_READ),
    )
    async def get_booking(
        self,
        booking_id: BookingId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> BookingView:
        """One booking, with the actions the caller may take now."""
        bookings = BookingService(services)
        booking = await bookings.get_record(int(booking_id))
        return await bookings.view(booking, _actor(principal, booking))

    @post(
        "/{booking_id:str}/actions/{action:str}",
        operation_id="tsbBookingAction",
        summary="Take an action on a booking (pay, confirm, complete, cancel, refund ...)",
        status_code=200,
        responses=problem_responses(*_MONEY),
    )
    async def take_action(
        self,
        *,
        booking_id: BookingId,
        action: ActionName,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        data: JSONBody[BookingAction | None] = None,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> BookingView:
        """Take an action (``pay``, ``confirm``, ``complete``, ``cancel``, ``no_show``,
        ``refund`` with an optional ``amount``, ``submit_evidence`` ...).

        Answers ``409 illegal_transition`` with ``state`` and ``allowed`` when
        the booking's state does not allow it for the caller. With an
        ``Idempotency-Key``, a transition the booking already took for this key
        (and API key) is not taken again, even once the response is no longer
        replayed, and the refunds it makes are keyed by the request.
        """
        bookings = BookingService(services)
        booking = await bookings.get_record(int(booking_id))
        actor = _actor(principal, booking)
        body = data or BookingAction()
        params = ActionParams(
            payment_method=body.payment_method,
            amount=body.amount,
            reason=body.reason,
            statement=body.statement,
            request=None if idempotency_key is None else f"{principal.key_id}:{idempotency_key}",
        )
        updated = await bookings.act(
            int(booking_id), action, actor, actor_id=principal.actor, params=params
        )
        return await bookings.view(updated, actor)

    @get(
        "/{booking_id:str}/transitions",
        operation_id="tsbBookingTransitions",
        summary="A booking's audit trail",
        responses=problem_responses(*_READ),
    )
    async def transitions(
        self,
        booking_id: BookingId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> list[TransitionView]:
        """The audit trail: every transition, by whom, when, with its data."""
        bookings = BookingService(services)
        _actor(principal, await bookings.get_record(int(booking_id)))
        return await bookings.transitions(int(booking_id))

    @post(
        "/{booking_id:str}/messages",
        operation_id="tsbBookingMessage",
        summary="Record a customer message on a booking",
        responses=problem_responses(*_WRITE),
    )
    async def add_message(
        self,
        booking_id: BookingId,
        data: JSONBody[MessageInput],
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
    ) -> BookingView:
        """Record a message of the customer communication (kept as dispute evidence)."""
        bookings = BookingService(services)
        actor = _actor(principal, await bookings.get_record(int(booking_id)))
        booking = await bookings.add_message(int(booking_id), actor, data.text)
        return await bookings.view(booking, actor)

    @get(
        "/{booking_id:str}/reconciliation",
        operation_id="tsbBookingReconciliation",
        summary="A booking's Stripe objects against its ledger",
        guards=[requires_scope("account")],
        responses=problem_responses(*_READ, 502),
    )
    async def reconciliation(
        self,
        booking_id: BookingId,
        services: NamedDependency[Services],
        principal: NamedDependency[Principal],
        check: Annotated[bool, QueryParameter(required=False)] = False,
    ) -> Reconciliation:
        """Every Stripe object of the booking and its ledger; ``check`` asks Stripe too.

        An admin, or the provider's or venue's own key for its bookings (another
        booking is a 404, like a missing one)."""
        booking = await BookingService(services).get_record(int(booking_id))
        _actor(principal, booking)
        return await reconcile(services, int(booking_id), check_stripe=check)


class TimerController(Controller):
    """Run the due timed transitions now (also a task and a CLI command)."""

    path = f"{BASE}/timers"
    tags = ["three_sided_bookings"]

    @post(
        "/run",
        operation_id="tsbRunTimers",
        summary="Run the booking timers that are due",
        status_code=200,
        guards=[requires_scope()],
        responses=problem_responses(*_READ),
    )
    async def run(self, services: NamedDependency[Services]) -> list[dict[str, Any]]:
        """Take every timed transition that is due (expiry, auto-complete, settlement retry)."""
        done = await BookingService(services).run_due_timers()
        return [
            {"booking_id": booking, "transition": name, "outcome": outcome}
            for booking, name, outcome in done
        ]


ROUTES: tuple[type[Controller], ...] = (CatalogController, BookingController, TimerController)
"""What ``register_routes`` contributes."""
