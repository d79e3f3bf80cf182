"""Payouts to the bank: recorded and posted once per movement, the status only moving forward.

A payout (a connected account's or the platform's own) is recorded in
``marketplace_payouts`` and posted ``payout:<po>`` (the balance to its bank) as
soon as the engine learns of it, from a ``payout.*`` event (``apply_payout``)
or from Stripe (``refresh_payouts``: the payouts created since the account's last
refresh and the open ones it knows, read with no connection held and then applied in
one short transaction; ``refresh_all_payouts`` for every account,
run by the workers every ``[worker] payout_refresh_seconds`` and by ``marketplace
payouts refresh``). Its status moves forward only, in
``PAYOUT_STATUS_ORDER``, compared inside the one ``UPDATE``:

====  ================  ================================================
rank  status            reached by
====  ================  ================================================
0     ``pending``       created, not yet submitted to the bank
1     ``in_transit``    submitted
2     ``paid``          arrived (a bank may still return it: ``failed``)
3     ``failed``,       final: the funds came back to the balance
      ``canceled``
====  ================  ================================================

A status of a higher rank replaces a lower one; the same or a lower rank
changes nothing. So a late ``payout.paid`` never turns a failed payout back,
and a late ``payout.failed`` never turns a canceled one into a failure. The
funds' return (``payout_failure:<po>`` or ``payout_cancel:<po>``) is posted
only when the status reported is the one on record, so a payout comes back
once, the way its record says.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import asyncpg

from engine.core.contributions import PeriodicTask
from engine.core.errors import InvalidInput, MarketplaceError, NotFound
from engine.core.ledger import PLATFORM, Ledger, stripe_time
from engine.core.money import Money
from engine.core.postings import payout_posting, payout_return_posting
from engine.gateway import StripeGateway

__all__ = [
    "PAYOUT_REFRESH_TASK",
    "PAYOUT_STATUS_ORDER",
    "AppliedPayout",
    "PayoutRecord",
    "account_payouts",
    "apply_payout",
    "payout",
    "payout_refresh_task",
    "refresh_all_payouts",
    "refresh_payouts",
]

log = logging.getLogger(__name__)

PAYOUT_STATUS_ORDER: Final[Mapping[str, int]] = MappingProxyType(
    {"pending": 0, "in_transit": 1, "paid": 2, "failed": 3, "canceled": 3}
)
"""Each payout status's rank: a status only ever moves to a higher rank."""

_RETURNED: Final = frozenset({"failed", "canceled"})


@dataclass(frozen=True, slots=True)
class PayoutRecord:
    """One payout from an account's balance to its bank, as the engine recorded it.

    ``id`` is the engine's row id (a stable cursor); ``account_id`` is
    ``platform`` for the platform's own payouts; ``failure_code`` is set when
    Stripe reported the payout failed.
    """

    id: int
    stripe_payout_id: str
    account_id: str
    amount: Money
    status: str
    failure_code: str | None
    failure_message: str
    arrival_date: int


@dataclass(frozen=True, slots=True)
class AppliedPayout:
    """A payout as recorded after ``apply_payout``; ``returned``: this call posted the return
    of its funds (a failure or a cancel, the first time)."""

    record: PayoutRecord
    returned: bool


_COLUMNS = (
    "id, stripe_payout_id, account_id, amount, currency, status, failure_code, "
    "failure_message, arrival_date"
)


def _record(row: Mapping[str, Any]) -> PayoutRecord:
    return PayoutRecord(
        id=int(row["id"]),
        stripe_payout_id=str(row["stripe_payout_id"]),
        account_id=str(row["account_id"]),
        amount=Money(int(row["amount"]), str(row["currency"])),
        status=str(row["status"]),
        failure_code=row["failure_code"],
        failure_message=str(row["failure_message"]),
        arrival_date=int(row["arrival_date"]),
    )


async def account_payouts(
    db: asyncpg.Connection | asyncpg.Pool,
    account_id: str,
    *,
    before: int | None = None,
    limit: int = 20,
) -> list[PayoutRecord]:
    """The account's payouts, newest first: at most ``limit``, with ``id`` below ``before``.

    Raises:
        InvalidInput: ``limit`` is not positive (``field="limit"``).
    """
    if limit < 1:
        raise InvalidInput("limit must be positive", field="limit")
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM marketplace_payouts "  # noqa: S608 - constant columns
        "WHERE account_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
        account_id,
        before,
        limit,
    )
    return [_record(row) for row in rows]


async def payout(
    db: asyncpg.Connection | asyncpg.Pool, stripe_payout_id: str
) -> PayoutRecord | None:
    """The payout recorded under Stripe's ``po_...``, or None."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM marketplace_payouts "  # noqa: S608 - constant columns
        "WHERE stripe_payout_id = $1",
        stripe_payout_id,
    )
    return None if row is None else _record(row)


def _rank_sql(expression: str) -> str:
    whens = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in PAYOUT_STATUS_ORDER.items())
    return f"(CASE {expression} {whens} ELSE 0 END)"


_MOVES = f"{_rank_sql('EXCLUDED.status')} > {_rank_sql('p.status')}"

_UPSERT = f"""
INSERT INTO marketplace_payouts AS p
    (stripe_payout_id, account_id, amount, currency, status, failure_code,
     failure_message, arrival_date, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now())
ON CONFLICT (stripe_payout_id) DO UPDATE SET
    status = CASE WHEN {_MOVES} THEN EXCLUDED.status ELSE p.status END,
    failure_code = CASE WHEN {_MOVES} OR EXCLUDED.status = p.status
                        THEN COALESCE(EXCLUDED.failure_code, p.failure_code)
                        ELSE p.failure_code END,
    failure_message = CASE WHEN ({_MOVES} OR EXCLUDED.status = p.status)
                                AND EXCLUDED.failure_message <> ''
                           THEN EXCLUDED.failure_message ELSE p.failure_message END,
    arrival_date = CASE WHEN EXCLUDED.arrival_date > 0
                        THEN EXCLUDED.arrival_date ELSE p.arrival_date END,
    updated_at = now()
RETURNING {_COLUMNS}
"""  # noqa: S608 - built from this module's constant status names only


async def _returned_at(
    gateway: StripeGateway, payout_: Mapping[str, Any], account: str
) -> datetime:
    """When Stripe returned a failed or canceled payout's funds: the ``created`` of the
    balance transaction that did (``failure_balance_transaction``, set for both)."""
    txn = payout_.get("failure_balance_transaction")
    if isinstance(txn, Mapping):
        return stripe_time(txn.get("created"))
    if isinstance(txn, str) and txn:
        found = await gateway.call(
            "balance_transactions",
            "retrieve",
            txn,
            account=None if account == PLATFORM else account,
        )
        return stripe_time(found.get("created"))
    # Stripe always links that balance transaction; without it the payout's own
    # time is the nearest Stripe time there is.
    return stripe_time(payout_.get("created"))


async def apply_payout(
    conn: asyncpg.Connection,
    gateway: StripeGateway,
    ledger: Ledger,
    payout_: Mapping[str, Any],
    *,
    account: str,
) -> AppliedPayout:
    """Record Stripe's payout (status forward only) and post it, in the caller's transaction.

    ``payout:<po>`` is posted at the payout's ``created``; when the status on
    record is ``failed`` or ``canceled`` and Stripe reports that same status, the
    funds' return (``payout_failure:<po>``/``payout_cancel:<po>``) at the time
    Stripe returned them. Applying the same payout again changes nothing.

    Args:
        conn: a connection inside the caller's transaction.
        gateway: reads the return's balance transaction when it is not expanded (a
            Stripe call inside the caller's transaction; ``refresh_payouts`` reads
            its payouts with it expanded, so it makes none).
        ledger: the engine's ledger.
        payout_: Stripe's payout (an event's object, or one listed).
        account: the ``acct_...`` whose balance paid out, or ``platform``.
    """
    status = str(payout_.get("status") or "pending")
    if status not in PAYOUT_STATUS_ORDER:
        raise InvalidInput(
            f"unknown payout status {status!r}; known: {sorted(PAYOUT_STATUS_ORDER)}",
            field="status",
        )
    amount = Money(int(payout_.get("amount") or 0), str(payout_.get("currency") or "usd"))
    payout_id = str(payout_["id"])
    created = stripe_time(payout_.get("created"))
    row = await conn.fetchrow(
        _UPSERT,
        payout_id,
        account,
        amount.amount,
        amount.currency,
        status,
        payout_.get("failure_code"),
        str(payout_.get("failure_message") or ""),
        int(payout_.get("arrival_date") or 0),
        created,
    )
    record = _record(row)  # an upsert always returns its row
    await ledger.post(payout_posting(account, payout_id, amount, occurred_at=created), conn=conn)
    if status not in _RETURNED or record.status != status:
        return AppliedPayout(record, returned=False)
    returned = await ledger.post(
        payout_return_posting(
            account,
            payout_id,
            amount,
            status=status,
            occurred_at=await _returned_at(gateway, payout_, account),
            failure_code=str(payout_.get("failure_code") or ""),
        ),
        conn=conn,
    )
    return AppliedPayout(record, returned=returned)


_OPEN: Final = ("pending", "in_transit")
"""Statuses a payout leaves without the refresh's list bringing it again."""

_RETURN_EXPANDED: Final = "failure_balance_transaction"
"""Expanded in the refresh's reads, so applying a failed or canceled payout needs no
read of its returning balance transaction (``_returned_at``) inside the transaction."""


@dataclass(frozen=True, slots=True)
class _PayoutsRead:
    """What a refresh read from Stripe for one account, before applying any of it."""

    payouts: list[Mapping[str, Any]]
    """Listed and retrieved, oldest first."""
    listed_from: int | None
    """The ``created`` of the newest payout listed: the account's next ``created[gte]``."""


async def _read_payouts(
    pool: asyncpg.Pool, gateway: StripeGateway, account: str, *, full: bool
) -> _PayoutsRead:
    """The account's payouts from Stripe that a refresh applies; no connection is held
    while Stripe answers (each of the two reads of the engine's tables is one pooled
    statement, outside any transaction)."""
    stripe_account = None if account == PLATFORM else account
    since = None
    if not full:
        since = await pool.fetchval(
            "SELECT listed_from FROM marketplace_payout_refresh WHERE account_id = $1", account
        )
    params: dict[str, Any] = {"expand": [f"data.{_RETURN_EXPANDED}"]}
    if since is not None:
        params["created"] = {"gte": int(since)}
    found = await gateway.list_all("payouts", params=params, account=stripe_account)
    listed = {str(item["id"]) for item in found}
    open_ids = await pool.fetch(
        "SELECT stripe_payout_id FROM marketplace_payouts "
        "WHERE account_id = $1 AND status = ANY($2::text[]) ORDER BY id",
        account,
        list(_OPEN),
    )
    for row in open_ids:
        payout_id = str(row["stripe_payout_id"])
        if payout_id in listed:
            continue
        try:
            found.append(
                await gateway.call(
                    "payouts",
                    "retrieve",
                    payout_id,
                    params={"expand": [_RETURN_EXPANDED]},
                    account=stripe_account,
                )
            )
        except NotFound:
            # A record Stripe does not know (made by hand, or another Stripe account's):
            # left as it is rather than failing the account's refresh at every run.
            log.warning("payout %s of %s is not at Stripe; left as recorded", payout_id, account)
    return _PayoutsRead(
        payouts=sorted(found, key=lambda item: (int(item.get("created") or 0), item["id"])),
        listed_from=max(
            (int(item.get("created") or 0) for item in found if item["id"] in listed),
            default=None,
        ),
    )


async def _apply_read(
    conn: asyncpg.Connection,
    gateway: StripeGateway,
    ledger: Ledger,
    account: str,
    read: _PayoutsRead,
) -> list[AppliedPayout]:
    """Apply what ``_read_payouts`` found, oldest first, then move the account's cursor
    forward (never back: ``GREATEST``), in the caller's transaction."""
    applied = [
        await apply_payout(conn, gateway, ledger, item, account=account) for item in read.payouts
    ]
    if read.listed_from is not None:
        await conn.execute(
            """
            INSERT INTO marketplace_payout_refresh (account_id, listed_from, refreshed_at)
            VALUES ($1, $2, now())
            ON CONFLICT (account_id) DO UPDATE SET
                listed_from = GREATEST(marketplace_payout_refresh.listed_from, $2),
                refreshed_at = now()
            """,
            account,
            read.listed_from,
        )
    return applied


async def refresh_payouts(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    ledger: Ledger,
    account: str,
    *,
    full: bool = False,
) -> list[AppliedPayout]:
    """Apply the payouts of ``account`` (``platform``: the platform's own) Stripe has and
    the engine may not: incrementally.

    For payouts whose events were lost or not yet delivered. Stripe's list is read
    from the ``created`` of the newest payout the account's last refresh listed
    (``created[gte]``, kept in ``marketplace_payout_refresh``; everything the first
    time, or with ``full``), and each payout the engine holds as ``pending`` or
    ``in_transit`` that the list did not bring is retrieved: a payout created
    since is found, an open one follows its status, and a final one older than the
    last listing is not read again. So each refresh reads what changed, not the
    account's whole history. Returns what was applied, oldest first.

    Stripe is read first with no connection held (each read of the engine's tables a
    pooled statement outside any transaction; a failed or canceled payout's
    ``failure_balance_transaction`` comes expanded), then everything read is applied
    in one short transaction of its own: each payout as ``apply_payout`` would (oldest
    first; statuses only move forward and postings are made once, so an event applied
    between the read and this transaction, or later, changes nothing more), then the
    account's cursor (only ever forward). When that transaction fails, nothing of the
    account is applied and its cursor stays: the next refresh reads the same again.

    A ``paid`` payout is not read again: a bank returning it later is Stripe's
    ``payout.failed`` event (or a ``full`` refresh).

    Args:
        pool: the engine's pool (not a connection: no transaction may be open while
            Stripe answers).
        gateway: reads Stripe's payouts of the account.
        ledger: the engine's ledger.
        account: the ``acct_...`` whose payouts to refresh, or ``platform``.
        full: read the account's whole list, not only what changed since its last refresh.
    """
    read = await _read_payouts(pool, gateway, account, full=full)
    async with pool.acquire() as conn, conn.transaction():
        return await _apply_read(conn, gateway, ledger, account, read)


PAYOUT_REFRESH_TASK: Final = "engine.payouts.refresh"
"""The workers' periodic task that runs ``refresh_all_payouts`` (``[worker]
payout_refresh_seconds``)."""


async def refresh_all_payouts(
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    ledger: Ledger,
    accounts: Sequence[str] | None = None,
    *,
    full: bool = False,
) -> dict[str, list[AppliedPayout]]:
    """``refresh_payouts`` for each of ``accounts`` (default: the platform and every
    connected account the engine knows), one after the other: each account's reads of
    Stripe with no connection held, then what they found applied in a short transaction
    of its own (``full``: each account's whole list, not only what changed since its
    last refresh).

    So payouts whose events were lost converge on Stripe's status (and are
    posted, once). One account's failure (Stripe refusing the list, a conflict)
    is logged and the next account goes on; nothing of it was applied and it is tried
    again the next time.
    Returns what was applied, by account (a failed account is left out).
    """
    if accounts is None:
        rows = await pool.fetch(
            "SELECT stripe_account_id FROM marketplace_accounts ORDER BY stripe_account_id"
        )
        accounts = [PLATFORM, *(str(row["stripe_account_id"]) for row in rows)]
    applied: dict[str, list[AppliedPayout]] = {}
    for account in accounts:
        try:
            applied[account] = await refresh_payouts(pool, gateway, ledger, account, full=full)
        except MarketplaceError:
            log.exception("refreshing the payouts of %s failed", account)
    return applied


def payout_refresh_task(every_seconds: float) -> PeriodicTask:
    """The engine's periodic task refreshing every account's payouts from Stripe."""

    async def run(services: Any) -> None:
        applied = await refresh_all_payouts(services.db.pool, services.gateway, services.ledger)
        log.info(
            "payouts refreshed from Stripe: %d account(s), %d payout(s)",
            len(applied),
            sum(len(found) for found in applied.values()),
        )

    return PeriodicTask(PAYOUT_REFRESH_TASK, every_seconds, run)
