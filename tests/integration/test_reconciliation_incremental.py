"""Incremental reconciliation: each run lists only what is new, page by page, and still finds all.

A creator's tips are reconciled with pages of two balance transactions; a
ledger posting no Stripe movement backs is found. After one more tip and a
charge made directly in Stripe (whose posting is then lost), the second run
lists exactly the new balance transactions (counted in the sandbox's request
log, which records what the engine asked and how many objects each list
returned), never holds more than a page, and reports the new charge beside
the earlier posting, which it did not list again. A full run lists everything
once more and finds the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.http import ok
from support.stack import Stack, running_stack

from engine.core.ledger import CUSTOMERS, Entry, Posting, stripe_time
from engine.core.money import Money
from engine.reconciliation.service import AccountProgress, ReconciliationRun, run_reconciliation
from engine.reconciliation.store import find_run, list_alerts, start_run

C = "/v1/creator_subscriptions"
PAGE = 2
LIST_PATH = "/v1/balance_transactions"


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=("commission_rules", "creator_subscriptions"),
    ) as running:
        yield running


async def tip(stack: Stack, creator: str, ref: str, amount: int) -> None:
    body = {"external_ref": ref, "name": ref, "payment_method": "pm_card_visa"}
    fan = ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"]
    ok(
        await stack.http.post(
            f"{C}/payments/tips",
            json={"fan_id": fan, "creator_account_id": creator, "amount": amount},
        ),
        201,
    )


def requests_since(stack: Stack, seq: int) -> list[dict[str, Any]]:
    """The balance-transaction list requests the sandbox received after request ``seq``."""
    answer = stack.sandbox.control("GET", f"/_sandbox/requests?path={LIST_PATH}&after={seq}")
    found: list[dict[str, Any]] = answer["data"]
    return found


def last_seq(stack: Stack) -> int:
    data = stack.sandbox.control("GET", "/_sandbox/requests")["data"]
    return int(data[-1]["seq"]) if data else 0


async def balance_transaction_count(stack: Stack, account: str | None) -> int:
    def count() -> int:
        client = stack.stripe(stripe_account=account)
        return sum(
            1 for _ in client.v1.balance_transactions.list(params={"limit": 100}).auto_paging_iter()
        )

    return await asyncio.to_thread(count)


def findings(run: ReconciliationRun) -> list[tuple[str, str]]:
    return sorted((item.status, item.account) for item in run.problem_items())


async def test_a_second_run_lists_only_new_transactions_a_page_at_a_time_and_finds_everything(
    stack: Stack,
) -> None:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "ada", "display_name": "Ada"}), 201
    )
    ada = created["creator"]["account_id"]
    stack.sandbox.control("POST", f"/_sandbox/accounts/{ada}/complete_onboarding")
    await stack.settle()
    for number, amount in enumerate((2500, 1200, 800)):
        await tip(stack, ada, f"fan-{number}", amount)
    await stack.settle()
    # A posting on Ada's balance that no Stripe movement backs.
    ghost = Posting.transfer(
        "test:ghost",
        "adjustment",
        CUSTOMERS,
        ada,
        Money(500, "usd"),
        occurred_at=stripe_time(int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])),
        stripe_object_id="ch_ghost",
    )
    assert await stack.services.ledger.post(ghost)
    totals = {
        "platform": await balance_transaction_count(stack, None),
        ada: await balance_transaction_count(stack, ada),
    }
    assert totals["platform"] >= 3 * PAGE  # enough for several pages

    mark = last_seq(stack)
    steps: list[AccountProgress] = []
    first = await run_reconciliation(stack.services, page_size=PAGE, progress=steps.append)
    asked = requests_since(stack, mark)
    assert first.status == "completed"
    assert findings(first) == [("missing_in_stripe", ada)]
    assert first.counts["matched"] == sum(totals.values())
    # Page by page: no request asked for more than a page, none returned more,
    # and no account ever held more than one page of transactions.
    assert all(f"limit={PAGE}" in request["query"] for request in asked)
    assert max(request["listed"] for request in asked) == PAGE
    assert sum(request["listed"] for request in asked) == sum(totals.values())
    by_account = {step.account: step for step in steps}
    assert by_account["platform"].pages >= 3
    assert {step.most_held for step in steps} == {PAGE}
    assert by_account[ada].balance_transactions == totals[ada]

    # New movements after the first run: one more tip, and a charge made directly
    # on the platform in Stripe (the engine posts it from its events), whose posting
    # is then lost (injected).
    await tip(stack, ada, "fan-late", 900)
    intent = await asyncio.to_thread(
        stack.stripe().v1.payment_intents.create,
        params={
            "amount": 321,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        },
    )
    await stack.settle()
    pool = stack.services.db.pool
    lost = await pool.fetchval(
        "SELECT id FROM marketplace_ledger_transactions WHERE idempotency_key = $1",
        f"charge:{intent['latest_charge']}",
    )
    assert lost is not None
    await pool.execute("DELETE FROM marketplace_ledger_entries WHERE ledger_transaction = $1", lost)
    await pool.execute("DELETE FROM marketplace_ledger_transactions WHERE id = $1", lost)
    grown = {
        "platform": await balance_transaction_count(stack, None),
        ada: await balance_transaction_count(stack, ada),
    }
    new = {account: grown[account] - totals[account] for account in grown}
    assert new["platform"] >= 3
    assert new[ada] >= 1

    mark = last_seq(stack)
    steps = []
    second = await run_reconciliation(stack.services, page_size=PAGE, progress=steps.append)
    asked = requests_since(stack, mark)
    # Only the new transactions were listed, from each account's cursor.
    assert all("ending_before=" in request["query"] for request in asked)
    for account, count in new.items():
        stripe_account = None if account == "platform" else account
        listed = sum(r["listed"] for r in asked if r["account"] == stripe_account)
        assert listed == count, (account, asked)
    assert second.balance_transactions == sum(new.values())
    assert second.counts["matched"] == sum(new.values()) - 1
    assert max(step.most_held for step in steps) <= PAGE
    # The new charge is found, and so is the earlier posting Stripe never showed.
    assert findings(second) == [("missing_in_ledger", "platform"), ("missing_in_stripe", ada)]
    [missing] = [item for item in second.problem_items() if item.status == "missing_in_ledger"]
    assert missing.txn is not None
    assert (missing.txn.source, missing.txn.amount) == (intent["latest_charge"], 321)
    assert sorted(alert.status for alert in await list_alerts(stack.services.db.pool)) == [
        "missing_in_ledger",
        "missing_in_stripe",
    ]

    # Nothing new: a third run lists nothing and the findings stay.
    mark = last_seq(stack)
    third = await run_reconciliation(stack.services, page_size=PAGE)
    assert sum(request["listed"] for request in requests_since(stack, mark)) == 0
    assert third.balance_transactions == 0
    assert findings(third) == findings(second)
    assert third.new_alerts == 0

    # A full run lists every transaction again and finds the same.
    mark = last_seq(stack)
    full = await run_reconciliation(stack.services, full=True)
    asked = requests_since(stack, mark)
    assert full.mode == "full"
    assert sum(request["listed"] for request in asked) == sum(grown.values())
    assert full.counts["matched"] == sum(grown.values()) - 1
    assert findings(full) == findings(second)
    assert full.new_alerts == 0


async def test_a_matched_entry_changed_later_is_matched_again_and_reported(stack: Stack) -> None:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "bea", "display_name": "Bea"}), 201
    )
    bea = created["creator"]["account_id"]
    stack.sandbox.control("POST", f"/_sandbox/accounts/{bea}/complete_onboarding")
    await stack.settle()
    await tip(stack, bea, "fan", 1500)
    await stack.settle()
    clean = await run_reconciliation(stack.services, page_size=PAGE)
    assert clean.problems == 0, [item.detail for item in clean.problem_items()]

    pool = stack.services.db.pool
    entry = await pool.fetchrow(
        "SELECT id, amount FROM marketplace_ledger_entries WHERE account = $1 AND amount > 0",
        bea,
    )
    await pool.execute(
        "UPDATE marketplace_ledger_entries SET amount = amount + 7 WHERE id = $1", entry["id"]
    )
    changed = await run_reconciliation(stack.services, page_size=PAGE)
    assert changed.balance_transactions == 0  # nothing new at Stripe
    assert [step.reopened for step in changed.accounts if step.account == bea] == [1]
    [item] = changed.problem_items()
    assert (item.status, item.account) == ("amount_mismatch", bea)
    assert item.ledger_amount is not None
    assert item.txn is not None
    assert item.ledger_amount == item.txn.amount + 7

    await pool.execute(
        "UPDATE marketplace_ledger_entries SET amount = $2 WHERE id = $1",
        entry["id"],
        entry["amount"],
    )
    mended = await run_reconciliation(stack.services, page_size=PAGE)
    assert mended.problems == 0
    assert await list_alerts(stack.services.db.pool) == []


async def test_a_cursor_stripe_no_longer_knows_lists_that_account_from_the_beginning(
    stack: Stack,
) -> None:
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "cy", "display_name": "Cy"}), 201
    )
    cy = created["creator"]["account_id"]
    stack.sandbox.control("POST", f"/_sandbox/accounts/{cy}/complete_onboarding")
    await stack.settle()
    await tip(stack, cy, "fan", 1100)
    await stack.settle()
    assert (await run_reconciliation(stack.services, page_size=PAGE)).problems == 0
    total = await balance_transaction_count(stack, None)
    # As after pointing the engine at another Stripe account: the cursor names nothing there.
    await stack.services.db.pool.execute(
        "UPDATE marketplace_reconciliation_cursors SET balance_transaction_id = 'txn_gone' "
        "WHERE account = 'platform'"
    )
    # And a run a stopped process left "running": the next run, holding the lock, closes it.
    async with stack.services.db.pool.acquire() as conn:
        stale = await start_run(conn, "test")
    mark = last_seq(stack)
    again = await run_reconciliation(stack.services, page_size=PAGE)
    closed = await find_run(stack.services.db.pool, stale)
    assert closed is not None
    assert (closed.status, closed.error) == (
        "failed",
        "interrupted: the process running it stopped",
    )
    asked = [r for r in requests_since(stack, mark) if r["account"] is None]
    assert asked[0]["status"] == 400
    assert "ending_before=txn_gone" in asked[0]["query"]
    assert sum(r["listed"] or 0 for r in asked) == total  # listed again from the start
    assert again.status == "completed"
    assert again.problems == 0
    assert again.counts.get("matched", 0) == 0  # all were matched before: nothing new matched


async def test_the_ledger_check_reads_only_new_changed_and_open_lines(stack: Stack) -> None:
    """The ledger side of an incremental run reads new, changed and open lines only.

    Triggers note every ledger entry inserted, changed or deleted; a run reads
    the claims of the noted entries and looks for unclaimed lines among them, and
    then forgets those it need not read again. So a run after nothing happened
    reads only the line still open (a posting Stripe never showed); a run after
    one more tip, one entry changed and one deleted reads those and their
    transactions' lines, however long the ledger; a full run reads it all.
    """
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "dee", "display_name": "Dee"}), 201
    )
    dee = created["creator"]["account_id"]
    stack.sandbox.control("POST", f"/_sandbox/accounts/{dee}/complete_onboarding")
    await stack.settle()
    for number in range(12):
        await tip(stack, dee, f"fan-{number}", 1000 + number)
    await stack.settle()
    ghost = Posting.transfer(
        "test:ghost",
        "adjustment",
        CUSTOMERS,
        dee,
        Money(500, "usd"),
        occurred_at=stripe_time(int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])),
        stripe_object_id="ch_ghost",
    )
    assert await stack.services.ledger.post(ghost)
    pool = stack.services.db.pool

    async def lines_on(*accounts: str) -> int:
        count = await pool.fetchval(
            "SELECT count(*) FROM marketplace_ledger_entries "
            "WHERE account = ANY($1::text[]) AND amount <> 0",
            list(accounts),
        )
        return int(count)

    first = await run_reconciliation(stack.services, page_size=PAGE)
    assert findings(first) == [("missing_in_stripe", dee)]
    everything = await lines_on("platform", dee)
    assert first.ledger_rows_read >= everything  # the first run reads every line
    stored = await find_run(pool, first.id)
    assert stored is not None
    assert stored.ledger_rows_read == first.ledger_rows_read

    # Nothing new: the only line read is the ghost's, still open.
    quiet = await run_reconciliation(stack.services, page_size=PAGE)
    assert findings(quiet) == findings(first)
    assert quiet.ledger_rows_read == 1
    assert [step.ledger_rows_read for step in quiet.accounts if step.account == dee] == [1]

    # One more tip, one matched entry of Dee's changed and another deleted.
    before = int(await pool.fetchval("SELECT max(id) FROM marketplace_ledger_entries"))
    await tip(stack, dee, "fan-late", 900)
    await stack.settle()
    new_lines = int(
        await pool.fetchval(
            "SELECT count(*) FROM marketplace_ledger_entries "
            "WHERE id > $1 AND account = ANY($2::text[]) AND amount <> 0",
            before,
            ["platform", dee],
        )
    )
    assert new_lines >= 2
    changed, deleted = await pool.fetch(
        "SELECT e.* FROM marketplace_ledger_entries e "
        "JOIN marketplace_ledger_transactions t ON t.id = e.ledger_transaction "
        "WHERE e.account = $1 AND e.amount > 0 AND e.id <= $2 AND t.kind <> 'adjustment' "
        "ORDER BY e.id LIMIT 2",
        dee,
        before,
    )
    await pool.execute(
        "UPDATE marketplace_ledger_entries SET amount = amount + 7 WHERE id = $1", changed["id"]
    )
    await pool.execute("DELETE FROM marketplace_ledger_entries WHERE id = $1", deleted["id"])

    second = await run_reconciliation(stack.services, page_size=PAGE)
    # Found: the changed entry, the payment whose entry is gone, the line its
    # posting left behind, and the ghost.
    assert sorted(item.status for item in second.problem_items()) == [
        "amount_mismatch",
        "missing_in_ledger",
        "missing_in_stripe",
        "missing_in_stripe",
    ]
    [step] = [step for step in second.accounts if step.account == dee]
    assert step.reopened == 2
    # Read: the new tip's lines, the two claims checked, the re-opened transactions'
    # lines and the ghost's, each by at most the three steps that look at lines: a
    # bound set by what changed, not by the ledger's length (the first run read it all).
    assert second.ledger_rows_read <= 3 * (new_lines + 2 + 2 + 1)
    assert second.ledger_rows_read < everything / 2

    # Mended by hand: that run matches again what it re-opened; the next reads only
    # the ghost's line.
    await pool.execute(
        "UPDATE marketplace_ledger_entries SET amount = amount - 7 WHERE id = $1", changed["id"]
    )
    await pool.execute(
        "INSERT INTO marketplace_ledger_entries "
        "(id, ledger_transaction, account, amount, currency) VALUES ($1, $2, $3, $4, $5)",
        *(
            deleted[column]
            for column in ("id", "ledger_transaction", "account", "amount", "currency")
        ),
    )
    mended = await run_reconciliation(stack.services, page_size=PAGE)
    assert findings(mended) == [("missing_in_stripe", dee)]
    assert (await run_reconciliation(stack.services, page_size=PAGE)).ledger_rows_read == 1

    # A full run reads the whole ledger again, and finds the same.
    full = await run_reconciliation(stack.services, page_size=PAGE, full=True)
    assert findings(full) == findings(mended)
    assert full.ledger_rows_read >= await lines_on("platform", dee)


async def test_an_account_only_the_ledger_names_is_reconciled_on_every_run(stack: Stack) -> None:
    """An ``acct_...`` the ledger names but the engine never created is still reconciled.

    Found without reading the ledger: by its notes until a run reconciled it, then
    by its cursor (or its notes again while Stripe will not list it).
    """
    stranger = "acct_1stranger000000"
    posting = Posting.transfer(
        "test:stranger",
        "adjustment",
        CUSTOMERS,
        stranger,
        Money(700, "usd"),
        occurred_at=stripe_time(int(stack.sandbox.control("GET", "/_sandbox/clock")["now"])),
        stripe_object_id="ch_stranger",
    )
    assert await stack.services.ledger.post(posting)
    for full in (False, False, True, False):
        run = await run_reconciliation(stack.services, page_size=PAGE, full=full)
        [step] = [step for step in run.accounts if step.account == stranger]
        assert step.error  # the sandbox, like Stripe, does not know the account
        assert run.status == "incomplete"


async def test_a_posting_whose_lines_span_pages_is_reported_once_in_full(stack: Stack) -> None:
    """Unclaimed lines are read a page of noted entries at a time; a ledger transaction
    whose lines fall in two pages is still one ``missing_in_stripe`` item, whole."""
    created = ok(
        await stack.http.post(f"{C}/creators", json={"handle": "eve", "display_name": "Eve"}), 201
    )
    eve = created["creator"]["account_id"]
    stack.sandbox.control("POST", f"/_sandbox/accounts/{eve}/complete_onboarding")
    await stack.settle()
    at = stripe_time(int(stack.sandbox.control("GET", "/_sandbox/clock")["now"]))
    usd = "usd"
    ghost = Posting(
        key="test:spread",
        kind="adjustment",
        entries=(
            Entry(CUSTOMERS, Money(-250, usd)),
            Entry(eve, Money(500, usd)),
            Entry(eve, Money(-100, usd)),
            Entry(eve, Money(-150, usd)),
        ),
        occurred_at=at,
        stripe_object_id="ch_spread",
    )
    assert await stack.services.ledger.post(ghost)
    for full in (False, False, True):
        run = await run_reconciliation(stack.services, page_size=PAGE, full=full)
        [item] = run.problem_items()
        assert (item.status, item.account, item.ledger_amount) == ("missing_in_stripe", eve, 250)
        assert sorted(line.amount for line in item.lines) == [-150, -100, 500]
