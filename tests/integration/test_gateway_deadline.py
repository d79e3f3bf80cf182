"""The gateway bounds every Stripe call, so a webhook handler cannot hang on one past its lease."""

from __future__ import annotations

import asyncio

import pytest

from engine.core.errors import GatewayError
from engine.gateway import StripeGateway, call_deadline


def test_the_call_deadline_counts_every_try_and_every_retry_sleep() -> None:
    assert call_deadline(15, 2) == 55  # the defaults: below the default 60 s lease
    assert call_deadline(2, 0) == 2


async def test_a_stripe_that_never_answers_is_a_gateway_error_not_a_hang() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # hold the connection open, say nothing

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateway = StripeGateway(
        "sk_test_silent", f"http://127.0.0.1:{port}", max_network_retries=0, timeout_seconds=0.3
    )
    try:
        with pytest.raises(GatewayError, match=r"did not answer accounts\.retrieve") as raised:
            await gateway.retrieve_account("acct_silent")
        assert raised.value.extra["stripe_code"] == "timeout"
        assert accepted  # the request reached the silent server
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
