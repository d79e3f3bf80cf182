"""Run the test suite with the sandbox's clock started on the calendar's awkward dates.

Every test's time comes from the sandbox's clocks (``MARKETPLACE_SANDBOX_START``
sets where a new sandbox's global clock starts; test clocks start from it), so
the suite must pass whatever the date. This runs pytest once per date:

- 31 January, 23:30 UTC (a month end before a short month; midnight payouts soon)
- 29 February 2028 (a leap day; a yearly anniversary that does not exist)
- 31 December, 23:59 UTC (year end; the daily payout run a minute away)
- the last Sunday of March 2027, 00:30 UTC (the night European clocks change)

    .venv/bin/python scripts/date_matrix.py                # the whole suite
    .venv/bin/python scripts/date_matrix.py tests/e2e -x   # arguments go to pytest
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

DATES = (
    "2027-01-31T23:30:00Z",
    "2028-02-29T12:00:00Z",
    "2026-12-31T23:59:00Z",
    "2027-03-28T00:30:00Z",
)
ROOT = Path(__file__).resolve().parent.parent


def main(arguments: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments]
    failed = []
    for date in DATES:
        began = time.monotonic()
        env = {**os.environ, "MARKETPLACE_SANDBOX_START": date}
        result = subprocess.run(
            pytest, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"{date}: exit {result.returncode} in {time.monotonic() - began:.0f} s: {summary}")
        if result.returncode != 0:
            failed.append(date)
            print(_failures(result.stdout), result.stderr[-5_000:], sep="\n")
        sys.stdout.flush()
    print(f"date matrix: {len(DATES) - len(failed)} of {len(DATES)} dates passed")
    return 1 if failed else 0


def _failures(output: str) -> str:
    """The failures' tracebacks (not the captured logs after them) and the summary."""
    start = output.find("= FAILURES =")
    if start < 0:
        return output[-20_000:]
    report = output[start : start + 12_000]
    summary = output.find("short test summary info")
    return report + ("\n..." + output[summary - 30 :] if summary > start + 12_000 else "")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
