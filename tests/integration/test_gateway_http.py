"""The gateway against the sandbox: form bodies arrive whole, and no deprecated httpx call.

The SDK's own httpx client passed the encoded body as ``data=<str>``, which
httpx deprecates: one DeprecationWarning per Stripe write, ~800 in a test run.
"""

from __future__ import annotations

import warnings

from engine.gateway import StripeGateway
from engine.sandbox.testing import running_sandbox


async def test_writes_send_their_form_body_without_deprecation_warnings() -> None:
    with running_sandbox() as sandbox:
        gateway = StripeGateway("sk_test_gateway", sandbox.url, max_network_retries=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            created = await gateway.call(
                "customers",
                "create",
                params={"email": "ada@example.com", "metadata": {"plan": "gold & silver"}},
                idempotency_key="test:customer:1",
            )
            read = await gateway.call("customers", "retrieve", created["id"])
    assert read["email"] == "ada@example.com"
    assert read["metadata"] == {"plan": "gold & silver"}
    deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert deprecations == []
