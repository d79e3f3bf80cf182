"""``marketplace reconcile``: run a reconciliation, printing progress per account and the findings.

Exit status: 0 when every item matched, 3 when the run found problems (each
is also an alert on the admin panel), 1 on an error (``marketplace`` prints it).
``--every SECONDS`` keeps running, for a side process or a container when the
worker does not schedule the task. Runs are incremental (only the balance
transactions newer than the last reconciled one are listed); ``--full`` lists
everything again, from a clean slate.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any, Final, TextIO

from engine.reconciliation.service import AccountProgress, ReconciliationRun

__all__ = ["EXIT_PROBLEMS", "configure", "run"]

EXIT_PROBLEMS: Final = 3


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument(
        "--every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep running, one run every SECONDS (default: once)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="forget what earlier runs reconciled and list every balance transaction again",
    )
    parser.add_argument(
        "--show",
        type=int,
        default=50,
        metavar="N",
        help="print at most N problem items (default 50)",
    )


def _progress(out: TextIO) -> Any:
    def report(step: AccountProgress) -> None:
        prefix = f"[{step.position}/{step.total}] {step.account}:"
        if step.error:
            print(f"{prefix} not reconciled: {step.error}", file=out, flush=True)
            return
        print(
            f"{prefix} {step.balance_transactions} balance transactions, "
            f"{step.matched} matched, {step.problems} problem(s)",
            file=out,
            flush=True,
        )

    return report


def print_run(run: ReconciliationRun, out: TextIO, *, show: int = 50) -> None:
    """The run's summary and its first ``show`` problems."""
    counts = ", ".join(f"{status} {count}" for status, count in sorted(run.counts.items()))
    print(
        f"run {run.id} {run.status} ({run.mode}): {run.balance_transactions} balance "
        f"transactions listed over "
        f"{len(run.accounts)} account(s), {run.ledger_rows_read} ledger rows read; "
        f"{counts or 'nothing to reconcile'}; "
        f"{run.new_alerts} new alert(s)",
        file=out,
    )
    for item in run.problem_items()[:show]:
        print(f"  {item.status:<17} {item.account:<24} {item.detail}", file=out)
    hidden = len(run.problem_items()) - show
    if hidden > 0:
        print(f"  ... and {hidden} more (see the admin panel)", file=out)


def run(
    args: argparse.Namespace, settings: Any, plugins: Any = None, *, out: TextIO | None = None
) -> int:
    """Run once (or every ``--every`` seconds); return the exit status of the last run."""
    import sys

    from engine.reconciliation.service import run_reconciliation
    from engine.services import Services

    stream = out or sys.stdout

    async def main() -> int:
        services = await Services.start(settings, plugins=plugins, connect_nats=False)
        try:
            while True:
                result = await run_reconciliation(
                    services, progress=_progress(stream), trigger="cli", full=args.full
                )
                print_run(result, stream, show=args.show)
                if args.every <= 0:
                    return EXIT_PROBLEMS if result.problems else 0
                await asyncio.sleep(args.every)
        finally:
            await services.close()

    return asyncio.run(main())
