"""Soak: start ``marketplace up`` on a fresh data directory many times in a row.

Each start must come up with a draining worker and stop cleanly (see
tests/support/up_runs.py). Prints one line per start and a summary; exits 1
on the first failure, with its log.

    .venv/bin/python scripts/up_soak.py --runs 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.up_runs import UpRunFailed, start_drain_stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="up-soak-") as scratch:
        for run in range(1, args.runs + 1):
            try:
                result = start_drain_stop(Path(scratch) / f"run-{run}")
            except UpRunFailed as failure:
                print(f"run {run}/{args.runs}: FAILED\n{failure}")
                return 1
            print(
                f"run {run}/{args.runs}: ready after {result.ready_after:.1f} s, "
                f"event drained after {result.drained_after:.1f} s, stopped cleanly"
            )
    print(f"up soak: {args.runs} of {args.runs} starts came up with a draining worker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
