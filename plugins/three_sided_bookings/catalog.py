"""The catalogue as data: services, providers, venues, agreements, venue terms, payout schedules.

The business logic behind the admin endpoints (no HTTP here). Providers and
venues link to connected accounts the engine onboarded (``/v1/accounts``).
Agreements and terms carry a version that grows with each change; a booking
stores the terms it was priced with, so editing them never changes history.
Payout schedules are set on Stripe (``POST /v1/accounts/{id}`` with
``settings[payouts][schedule]``) and remembered here.
"""

from __future__ import annotations

import json
from typing import Any

from engine.core.errors import InvalidInput, NotFound
from engine.core.money import normalize_currency
from engine.gateway import idempotency_key
from engine.services import Services
from plugins.three_sided_bookings.config import PLUGIN, ThreeSidedBookingsConfig
from plugins.three_sided_bookings.schemas import (
    AgreementInput,
    AgreementView,
    NewProvider,
    NewService,
    NewVenue,
    PayoutScheduleInput,
    PayoutScheduleView,
    ProviderView,
    ServiceUpdate,
    ServiceView,
    VenueTermsInput,
    VenueTermsView,
    VenueView,
)
from plugins.three_sided_bookings.split import ShareTerms
from plugins.three_sided_bookings.store import Connection, jsonb

__all__ = ["Catalog", "share_terms"]

ANY_TYPE = "*"


def _service_view(row: Any) -> ServiceView:
    return ServiceView(
        id=row["id"],
        name=row["name"],
        service_type=row["service_type"],
        duration_minutes=row["duration_minutes"],
        price=row["price"],
        currency=row["currency"],
        active=row["active"],
    )


def _agreement_view(row: Any) -> AgreementView:
    return AgreementView(
        provider_id=row["provider"],
        service_type=row["service_type"],
        rate_bps=row["rate_bps"],
        version=row["version"],
        updated_at=row["updated_at"],
    )


def _terms_view(row: Any) -> VenueTermsView:
    return VenueTermsView(
        venue_id=row["venue"],
        kind=row["kind"],
        rate_bps=row["rate_bps"],
        fixed={str(k): int(v) for k, v in (jsonb(row["fixed"]) or {}).items()},
        version=row["version"],
        updated_at=row["updated_at"],
    )


def _schedule_view(row: Any) -> PayoutScheduleView:
    return PayoutScheduleView(
        account_id=row["account_id"],
        interval=row["interval"],
        delay_days=row["delay_days"],
        weekly_anchor=row["weekly_anchor"],
        monthly_anchor=row["monthly_anchor"],
        version=row["version"],
        updated_by=row["updated_by"],
        updated_at=row["updated_at"],
    )


async def share_terms(
    conn: Connection,
    *,
    provider_id: int,
    venue_id: int,
    service_type: str,
    currency: str,
    default_provider_bps: int,
) -> ShareTerms:
    """The terms a new booking is priced with: the provider's agreement for the service
    type (else its ``*`` agreement, else ``default_provider_bps``) and the venue's terms
    (else the rest of the net)."""
    agreement = await conn.fetchrow(
        """
        SELECT rate_bps, service_type, version FROM three_sided_bookings_provider_agreements
        WHERE provider = $1 AND service_type IN ($2, '*')
        ORDER BY (service_type = '*') LIMIT 1
        """,
        provider_id,
        service_type,
    )
    terms = await conn.fetchrow(
        "SELECT kind, rate_bps, fixed, version FROM three_sided_bookings_venue_terms "
        "WHERE venue = $1",
        venue_id,
    )
    provider_bps = default_provider_bps
    provider_rule = "default"
    if agreement is not None:
        provider_bps = int(agreement["rate_bps"])
        provider_rule = f"agreement:{agreement['service_type']}@{agreement['version']}"
    venue_bps: int | None = None
    venue_fixed: int | None = None
    venue_rule = "default"
    if terms is not None:
        venue_rule = f"{terms['kind']}@{terms['version']}"
        if terms["kind"] == "rate":
            venue_bps = int(terms["rate_bps"])
        else:
            fixed = jsonb(terms["fixed"]) or {}
            if currency not in fixed:
                raise InvalidInput(
                    f"the venue has no fixed fee in {currency}", field="venue_id", currency=currency
                )
            venue_fixed = int(fixed[currency])
    return ShareTerms(
        provider_bps=provider_bps,
        venue_bps=venue_bps,
        venue_fixed=venue_fixed,
        provider_rule=provider_rule,
        venue_rule=venue_rule,
    )


class Catalog:
    """Admin data of the spa marketplace.

    Args:
        services: the engine's running services (database pool, gateway, plugins).
    """

    def __init__(self, services: Services) -> None:
        self._services = services

    @property
    def config(self) -> ThreeSidedBookingsConfig:
        """The plugin's validated config."""
        config: ThreeSidedBookingsConfig = self._services.plugins.runtime.config(PLUGIN)
        return config

    @property
    def _pool(self) -> Any:
        return self._services.db.pool

    # ------------------------------------------------------------ services

    async def create_service(self, data: NewService) -> ServiceView:
        """Add a service (in the default currency unless one is given)."""
        currency = normalize_currency(data.currency or self.config.default_currency)
        if currency not in self.config.currencies:
            raise InvalidInput(f"bookings are not taken in {currency}", field="currency")
        row = await self._pool.fetchrow(
            """
            INSERT INTO three_sided_bookings_services
                (name, service_type, duration_minutes, price, currency, active, created_at,
                 updated_at)
            VALUES ($1, $2, $3, $4, $5, true, now(), now()) RETURNING *
            """,
            data.name,
            data.service_type,
            data.duration_minutes,
            data.price,
            currency,
        )
        return _service_view(row)

    async def update_service(self, service_id: int, data: ServiceUpdate) -> ServiceView:
        """Change price, name or availability (bookings keep the price they were made at)."""
        row = await self._pool.fetchrow(
            """
            UPDATE three_sided_bookings_services
            SET price = COALESCE($2, price), active = COALESCE($3, active),
                name = COALESCE($4, name), updated_at = now()
            WHERE id = $1 RETURNING *
            """,
            service_id,
            data.price,
            data.active,
            data.name,
        )
        if row is None:
            raise NotFound(f"no service {service_id}")
        return _service_view(row)

    async def get_service(self, service_id: int) -> ServiceView:
        """One service."""
        row = await self._pool.fetchrow(
            "SELECT * FROM three_sided_bookings_services WHERE id = $1", service_id
        )
        if row is None:
            raise NotFound(f"no service {service_id}")
        return _service_view(row)

    async def list_services(self) -> list[ServiceView]:
        """Every service, oldest first."""
        rows = await self._pool.fetch("SELECT * FROM three_sided_bookings_services ORDER BY id")
        return [_service_view(row) for row in rows]

    # ------------------------------------------------------------ providers and venues

    async def _known_account(self, account_id: str, role: str) -> None:
        row = await self._pool.fetchrow(
            "SELECT role FROM marketplace_accounts WHERE stripe_account_id = $1", account_id
        )
        if row is None:
            raise NotFound(
                f"no connected account {account_id} (onboard it with POST /v1/accounts first)",
            )
        if row["role"] != role:
            raise InvalidInput(
                f"account {account_id} was onboarded as a {row['role']}, not a {role}",
                field="account_id",
            )

    async def add_provider(self, data: NewProvider) -> tuple[ProviderView, bool]:
        """Register a provider on its connected account (or update it); whether it is new."""
        await self._known_account(data.account_id, "provider")
        row = await self._pool.fetchrow(
            """
            INSERT INTO three_sided_bookings_providers (account_id, display_name, email, created_at)
            VALUES ($1, $2, $3, now())
            ON CONFLICT (account_id) DO UPDATE SET display_name = EXCLUDED.display_name,
                email = EXCLUDED.email
            RETURNING *, (xmax = 0) AS created
            """,
            data.account_id,
            data.display_name,
            data.email,
        )
        return ProviderView(
            id=row["id"],
            account_id=row["account_id"],
            display_name=row["display_name"],
            email=row["email"],
        ), bool(row["created"])

    async def add_venue(self, data: NewVenue) -> tuple[VenueView, bool]:
        """Register a venue on its connected account (or update it); whether it is new."""
        await self._known_account(data.account_id, "venue")
        row = await self._pool.fetchrow(
            """
            INSERT INTO three_sided_bookings_venues (account_id, display_name, address, created_at)
            VALUES ($1, $2, $3, now())
            ON CONFLICT (account_id) DO UPDATE SET display_name = EXCLUDED.display_name,
                address = EXCLUDED.address
            RETURNING *, (xmax = 0) AS created
            """,
            data.account_id,
            data.display_name,
            data.address,
        )
        return VenueView(
            id=row["id"],
            account_id=row["account_id"],
            display_name=row["display_name"],
            address=row["address"],
        ), bool(row["created"])

    async def list_providers(self) -> list[ProviderView]:
        """Every provider."""
        rows = await self._pool.fetch("SELECT * FROM three_sided_bookings_providers ORDER BY id")
        return [
            ProviderView(
                id=r["id"],
                account_id=r["account_id"],
                display_name=r["display_name"],
                email=r["email"],
            )
            for r in rows
        ]

    async def list_venues(self) -> list[VenueView]:
        """Every venue."""
        rows = await self._pool.fetch("SELECT * FROM three_sided_bookings_venues ORDER BY id")
        return [
            VenueView(
                id=r["id"],
                account_id=r["account_id"],
                display_name=r["display_name"],
                address=r["address"],
            )
            for r in rows
        ]

    async def _exists(self, table: str, row_id: int, what: str) -> None:
        found = await self._pool.fetchval(f"SELECT 1 FROM {table} WHERE id = $1", row_id)  # noqa: S608
        if found is None:
            raise NotFound(f"no {what} {row_id}")

    # ------------------------------------------------------------ agreements and terms

    async def set_agreement(self, provider_id: int, data: AgreementInput) -> AgreementView:
        """Set a provider's rate for a service type (``*``: every other type)."""
        await self._exists("three_sided_bookings_providers", provider_id, "provider")
        row = await self._pool.fetchrow(
            """
            INSERT INTO three_sided_bookings_provider_agreements
                (key, provider, service_type, rate_bps, version, updated_at)
            VALUES ($1, $2, $3, $4, 1, now())
            ON CONFLICT (key) DO UPDATE SET rate_bps = EXCLUDED.rate_bps,
                version = three_sided_bookings_provider_agreements.version + 1,
                updated_at = now()
            RETURNING *
            """,
            f"{provider_id}:{data.service_type}",
            provider_id,
            data.service_type,
            data.rate_bps,
        )
        return _agreement_view(row)

    async def agreements(self, provider_id: int) -> list[AgreementView]:
        """A provider's agreements."""
        await self._exists("three_sided_bookings_providers", provider_id, "provider")
        rows = await self._pool.fetch(
            "SELECT * FROM three_sided_bookings_provider_agreements WHERE provider = $1 "
            "ORDER BY service_type",
            provider_id,
        )
        return [_agreement_view(row) for row in rows]

    async def set_venue_terms(self, venue_id: int, data: VenueTermsInput) -> VenueTermsView:
        """Set how a venue is paid: a rate of the net, or fixed fees per currency."""
        await self._exists("three_sided_bookings_venues", venue_id, "venue")
        if data.kind == "rate" and data.rate_bps is None:
            raise InvalidInput("rate terms need rate_bps", field="rate_bps")
        if data.kind == "fixed" and not data.fixed:
            raise InvalidInput("fixed terms need an amount per currency", field="fixed")
        fixed = {normalize_currency(code): amount for code, amount in data.fixed.items()}
        row = await self._pool.fetchrow(
            """
            INSERT INTO three_sided_bookings_venue_terms
                (venue, kind, rate_bps, fixed, version, updated_at)
            VALUES ($1, $2, $3, $4::jsonb, 1, now())
            ON CONFLICT (venue) DO UPDATE SET kind = EXCLUDED.kind,
                rate_bps = EXCLUDED.rate_bps, fixed = EXCLUDED.fixed,
                version = three_sided_bookings_venue_terms.version + 1, updated_at = now()
            RETURNING *
            """,
            venue_id,
            data.kind,
            data.rate_bps if data.kind == "rate" else None,
            json.dumps(fixed if data.kind == "fixed" else {}),
        )
        return _terms_view(row)

    async def venue_terms(self, venue_id: int) -> VenueTermsView:
        """A venue's terms."""
        row = await self._pool.fetchrow(
            "SELECT * FROM three_sided_bookings_venue_terms WHERE venue = $1", venue_id
        )
        if row is None:
            raise NotFound(f"venue {venue_id} has no terms (the default applies)")
        return _terms_view(row)

    # ------------------------------------------------------------ payout schedules

    async def set_payout_schedule(
        self, account_id: str, data: PayoutScheduleInput, *, actor: str
    ) -> PayoutScheduleView:
        """Set a provider's or venue's payout schedule on Stripe, then remember it."""
        known = await self._pool.fetchval(
            "SELECT 1 FROM three_sided_bookings_providers WHERE account_id = $1 UNION ALL "
            "SELECT 1 FROM three_sided_bookings_venues WHERE account_id = $1",
            account_id,
        )
        if known is None:
            raise NotFound(f"{account_id} is neither a provider's nor a venue's account")
        schedule: dict[str, Any] = {"interval": data.interval}
        if data.delay_days is not None:
            schedule["delay_days"] = data.delay_days
        if data.interval == "weekly":
            schedule["weekly_anchor"] = data.weekly_anchor or "monday"
        if data.interval == "monthly":
            schedule["monthly_anchor"] = data.monthly_anchor or 1
        async with self._pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(
                """
                INSERT INTO three_sided_bookings_payout_schedules
                    (account_id, interval, delay_days, weekly_anchor, monthly_anchor, version,
                     updated_by, updated_at)
                VALUES ($1, $2, $3, $4, $5, 1, $6, now())
                ON CONFLICT (account_id) DO UPDATE SET interval = EXCLUDED.interval,
                    delay_days = EXCLUDED.delay_days, weekly_anchor = EXCLUDED.weekly_anchor,
                    monthly_anchor = EXCLUDED.monthly_anchor,
                    version = three_sided_bookings_payout_schedules.version + 1,
                    updated_by = EXCLUDED.updated_by, updated_at = now()
                RETURNING version
                """,
                account_id,
                data.interval,
                schedule.get("delay_days"),
                schedule.get("weekly_anchor"),
                schedule.get("monthly_anchor"),
                actor,
            )
            # The version makes each change its own Stripe operation: setting daily,
            # weekly, then daily again within 24 h must not replay the first answer.
            await self._services.gateway.call(
                "accounts",
                "update",
                account_id,
                params={"settings": {"payouts": {"schedule": schedule}}},
                idempotency_key=idempotency_key("account", account_id, "payout_schedule", version),
            )
            row = await conn.fetchrow(
                "SELECT * FROM three_sided_bookings_payout_schedules WHERE account_id = $1",
                account_id,
            )
        return _schedule_view(row)

    async def payout_schedule(self, account_id: str) -> PayoutScheduleView:
        """The schedule last set for an account."""
        row = await self._pool.fetchrow(
            "SELECT * FROM three_sided_bookings_payout_schedules WHERE account_id = $1",
            account_id,
        )
        if row is None:
            raise NotFound(f"no payout schedule set for {account_id}")
        return _schedule_view(row)
