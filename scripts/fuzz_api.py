"""The long fuzz run of the whole API: schemathesis over every operation, admin and account keys.

    python scripts/fuzz_api.py --requests 10000            # about 10,000 generated requests
    python scripts/fuzz_api.py --requests 2000 --seed 7    # another seed, other requests
    python scripts/fuzz_api.py --only "PATCH /v1/three_sided_bookings/services/{service_id}"

Starts its own embedded PostgreSQL and NATS in a temporary directory (or uses
``MARKETPLACE_TEST_DATABASE_URL`` / ``MARKETPLACE_TEST_NATS_URL``) and the
offline Stripe sandbox, and runs the real app in-process. Requests are spread
evenly over operations, generation modes (valid, invalid) and keys; passes with
the next seeds follow until ``--requests`` have been sent. Prints::

    fuzz: requests N
    fuzz: 5xx K
    fuzz: failed checks F

and every failed check (a 5xx, or a response the OpenAPI does not declare), and
ends non-zero when there was any. ``make test`` runs a short version
(``tests/contract/test_openapi_schemathesis.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.fuzz import (  # noqa: E402
    ADMIN_KEY,
    MODES,
    Report,
    fuzz,
    fuzz_app,
    fuzz_settings,
    migrated,
    new_stream_name,
    operation_count,
    seed_objects,
)

from engine.sandbox.testing import running_sandbox  # noqa: E402
from engine.testing.infra import services_for_tests  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="at least this many")
    parser.add_argument("--seed", type=int, default=1, help="the first pass's seed")
    parser.add_argument("--only", action="append", default=[], help="'METHOD /path' only")
    parser.add_argument("--show", type=int, default=30, help="failed checks to print")
    args = parser.parse_args()
    # Stopped with SIGTERM, the embedded PostgreSQL and NATS are still stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The API logs every refused webhook and failed Stripe call; the summary is what counts.
    logging.basicConfig(level=logging.CRITICAL)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="fuzz-api-") as root,
        services_for_tests(Path(root)) as urls,
        running_sandbox() as sandbox,
    ):
        stream = new_stream_name()
        settings = fuzz_settings(urls.database_url, urls.nats_url, stream, sandbox.url)
        asyncio.run(migrated(settings))
        report = Report()
        with fuzz_app(settings) as app:
            seeds = seed_objects(app, sandbox)
            keys = {"admin": ADMIN_KEY, "account": seeds.account_key}
            runs = max(1, operation_count(app, args.only) * len(MODES) * len(keys))
            seed = args.seed
            while report.requests < args.requests:
                before = report.requests
                # Spread what is left over every run (operation, mode, key).
                per_run = math.ceil((args.requests - report.requests) / runs)
                fuzz(
                    app,
                    keys,
                    examples=dict.fromkeys(keys, per_run),
                    seed=seed,
                    report=report,
                    only=args.only,
                    path_ids=seeds.path_ids,
                )
                print(
                    f"pass seed={seed}: {report.requests - before} requests"
                    f" ({report.requests} so far, {len(report.failures)} failed checks)",
                    flush=True,
                )
                if report.requests == before:
                    break  # nothing left to generate
                seed += 1
    for failure in report.failures[: args.show]:
        print(f"FAILED {failure}")
    for line in report.summary():
        print(line)
    print(f"fuzz: {time.monotonic() - started:.0f} s")
    return 1 if report.failures or report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
