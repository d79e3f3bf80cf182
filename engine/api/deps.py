"""Dependencies the controllers ask for by name: ``services``, ``principal``, ``account_service``.

The ``Services`` container lives in ``app.state["services"]`` (put there by
``create_app`` or, for ``create_app_from_settings``, by the lifespan), so the
app object itself holds no connection of its own.
"""

from __future__ import annotations

from typing import Any, Final

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from engine.accounts import AccountService
from engine.api.auth import Principal, principal_of
from engine.services import Services

__all__ = ["SERVICES_STATE_KEY", "dependencies", "services_from_state"]

SERVICES_STATE_KEY: Final = "services"


def services_from_state(state: State) -> Services:
    """The running ``Services`` (the app's lifespan must have started them)."""
    services = state.get(SERVICES_STATE_KEY)
    if not isinstance(services, Services):
        raise RuntimeError("the API's services are not started (app.state['services'])")
    return services


def provide_services(state: State) -> Services:
    """Dependency ``services``."""
    return services_from_state(state)


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Dependency ``principal``: the authenticated caller."""
    return principal_of(request)


def provide_account_service(
    services: NamedDependency[Services], request: Request[Any, Any, Any]
) -> AccountService:
    """Dependency ``account_service``; onboarding links return to ``engine.public_url``."""
    public_url = services.settings.engine.public_url or str(request.base_url)
    return AccountService(
        services.db.pool,
        services.gateway,
        public_url=public_url,
        roles=services.plugins.account_roles(),
    )


def dependencies() -> dict[str, Provide]:
    """App-level dependencies."""
    return {
        "services": Provide(provide_services, sync_to_thread=False),
        "principal": Provide(provide_principal, sync_to_thread=False),
        "account_service": Provide(provide_account_service, sync_to_thread=False),
    }
