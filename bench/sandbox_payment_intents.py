"""Bench: create-and-confirm PaymentIntents through the stripe SDK against the sandbox.

Runs the sandbox in-process (uvicorn thread) and loops `payment_intents.create(...,
confirm=True)` for about five seconds. Last line: `bench: sandbox_payment_intents_per_s N`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.sandbox.testing import running_sandbox

DURATION_S = 5.0


def main() -> None:
    with running_sandbox() as sandbox:
        client = sandbox.client()
        params = {
            "amount": 2_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        }
        for _ in range(50):  # warm-up: connections, schema caches
            client.v1.payment_intents.create(params=params)  # type: ignore[arg-type]
        count = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < DURATION_S:
            intent = client.v1.payment_intents.create(params=params)  # type: ignore[arg-type]
            if intent.status != "succeeded":
                raise SystemExit(f"unexpected status {intent.status}")
            count += 1
        rate = count / elapsed
        print(f"{count} payment intents in {elapsed:.2f} s")
        print(f"bench: sandbox_payment_intents_per_s {rate:.0f}")


if __name__ == "__main__":
    main()
