"""HTML for the dashboards: the Jinja2 environment (autoescaping on) and response helpers.

Every page goes through ``render``: templates from this package's
``templates/`` with HTML autoescaping, ``StrictUndefined`` so a missing value
fails loudly in tests, and a strict Content-Security-Policy (no scripts at all,
styles only from ``/dashboard/static``). Pages are never cached: they show
money and carry CSRF tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Response
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response import Redirect

from engine.core.money import Money
from engine.notifier.messages import payout_failure_reason

__all__ = ["SECURITY_HEADERS", "build_environment", "redirect", "render_page"]

TEMPLATES: Final = Path(__file__).parent / "templates"

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Login links carry their token in the path: never send it to another site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _money(amount: int | None, currency: str) -> str:
    return "-" if amount is None else Money(int(amount), currency).format()


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _failure(code: str | None) -> tuple[str, str]:
    return payout_failure_reason(code or "")


def build_environment() -> Environment:
    """The template environment: autoescaped HTML, strict about undefined names."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["money"] = _money
    environment.filters["when"] = _when
    environment.globals["failure_reason"] = _failure
    return environment


def render_page(
    environment: Environment,
    template: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    cookies: Sequence[Cookie] = (),
) -> Response[str]:
    """A page rendered from ``template`` with the security headers."""
    html = environment.get_template(template).render(**context)
    return Response(
        content=html,
        status_code=status_code,
        media_type=MediaType.HTML,
        headers=dict(SECURITY_HEADERS),
        cookies=list(cookies),
    )


def redirect(path: str, *, cookies: Sequence[Cookie] = ()) -> Redirect:
    """A 303 "see other" to a dashboard path (after a form, or to sign in)."""
    return Redirect(
        path=path, status_code=303, headers=dict(SECURITY_HEADERS), cookies=list(cookies)
    )
