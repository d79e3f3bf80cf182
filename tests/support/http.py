"""Small HTTP assertions shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

import httpx


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of a response that must have ``status`` (else the body is shown)."""
    assert response.status_code == status, response.text
    return response.json()
