"""The JSON API beside the dashboards, over HTTP: balances, statements, finance, reconciliation.

An account's own key reads its own balance and statement; another account's
reads exactly like an unknown one (404). The statement's lines carry Stripe's
time of each movement and page by cursor. The finance figures put each
movement in the period of Stripe's time of it (a payment refunded forty days
later counts in two months) and are the very figures the admin panel shows.
Reconciliation runs start through the API (409 while one runs), and their
findings read as the admin page lists them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from support.stack import Stack, running_stack

from engine.core.money import Money

C = "/v1/creator_subscriptions"
DAY = 86_400
LOCK = 727_275  # the reconciliation runs' advisory lock (engine.reconciliation.service)
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def stack(fresh_database_url: str, nats_url: str, unique_name: str) -> AsyncIterator[Stack]:
    async with running_stack(
        fresh_database_url,
        nats_url,
        unique_name.upper(),
        plugins=("commission_rules", "creator_subscriptions"),
    ) as running:
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    return body


def fields_of(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])} | (
        {body["field"]} if "field" in body else set()
    )


async def creator(stack: Stack, handle: str) -> str:
    body = {"handle": handle, "display_name": handle.title()}
    account = str(
        ok(await stack.http.post(f"{C}/creators", json=body), 201)["creator"]["account_id"]
    )
    stack.sandbox.control("POST", f"/_sandbox/accounts/{account}/complete_onboarding")
    await stack.settle()
    return account


async def tip(stack: Stack, account: str, ref: str, amount: int) -> dict[str, Any]:
    body = {"external_ref": ref, "name": ref, "payment_method": "pm_card_visa"}
    fan = ok(await stack.http.post(f"{C}/fans", json=body), 201)["id"]
    paid: dict[str, Any] = ok(
        await stack.http.post(
            f"{C}/payments/tips",
            json={"fan_id": fan, "creator_account_id": account, "amount": amount},
        ),
        201,
    )
    await stack.settle()
    return paid


async def stripe_created(stack: Stack, resource: str, object_id: str) -> datetime:
    found = await asyncio.to_thread(getattr(stack.stripe().v1, resource).retrieve, object_id)
    return datetime.fromtimestamp(int(found["created"]), UTC)


async def charge_of(stack: Stack, payment: dict[str, Any]) -> str:
    intent = await asyncio.to_thread(
        stack.stripe().v1.payment_intents.retrieve, payment["payment_intent_id"]
    )
    return str(intent["latest_charge"])


async def every_page(client: httpx.AsyncClient, url: str, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = ok(await client.get(url, params=query))
        found += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("the pages never ended")


async def test_own_key_sees_its_own_balance_and_statement_in_stripe_time(stack: Stack) -> None:
    ada = await creator(stack, "ada")
    bob = await creator(stack, "bob")
    first = await tip(stack, ada, "fan-1", 2500)
    await tip(stack, ada, "fan-2", 1200)
    await tip(stack, bob, "fan-3", 900)
    await stack.advance(40 * DAY)  # a month later by Stripe's clock (payouts run too)
    late = await tip(stack, ada, "fan-4", 700)

    ada_api = stack.client_for(await stack.create_key("account", ada))
    balance = ok(await ada_api.get(f"/v1/accounts/{ada}/balance"))
    [usd] = balance["balances"]
    assert balance["stripe_unavailable"] is False
    assert usd["currency"] == "usd"
    assert usd["ledger"] == usd["available"] + usd["pending"]  # the ledger is Stripe's balance
    assert usd["ledger"] > 0

    # Another account's reads exactly as an unknown one.
    for suffix in ("balance", "statement"):
        other = problem(await ada_api.get(f"/v1/accounts/{bob}/{suffix}"), 404, "not_found")
        unknown = problem(
            await ada_api.get(f"/v1/accounts/acct_unknown123/{suffix}"), 404, "not_found"
        )
        assert other["detail"].replace(bob, "X") == unknown["detail"].replace(
            "acct_unknown123", "X"
        )
        assert other.keys() == unknown.keys()
        ok(await stack.http.get(f"/v1/accounts/{bob}/{suffix}"))  # the admin key sees all
        problem(await stack.http.get(f"/v1/accounts/acct_unknown123/{suffix}"), 404, "not_found")

    # The statement: newest first, Stripe's time of each movement, paged by cursor.
    whole = ok(await ada_api.get(f"/v1/accounts/{ada}/statement", params={"limit": 100}))
    lines = whole["data"]
    assert whole["next_cursor"] is None
    assert [line["id"] for line in lines] == sorted((line["id"] for line in lines), reverse=True)
    paged = await every_page(ada_api, f"/v1/accounts/{ada}/statement", limit=2)
    assert paged == lines
    first_charge = await charge_of(stack, first)
    [charged] = [line for line in lines if line["stripe_object_id"] == first_charge]
    assert datetime.fromisoformat(charged["occurred_at"]) == await stripe_created(
        stack, "charges", first_charge
    )
    assert charged["amount"] > 0

    # The period filter reads Stripe's time: only the tip made forty days on.
    late_charge = await charge_of(stack, late)
    late_day = (await stripe_created(stack, "charges", late_charge)).date()
    recent = ok(
        await ada_api.get(
            f"/v1/accounts/{ada}/statement",
            params={"since": late_day.isoformat(), "until": late_day.isoformat()},
        )
    )
    assert late_charge in {line["stripe_object_id"] for line in recent["data"]}
    assert first_charge not in {line["stripe_object_id"] for line in recent["data"]}
    assert all(
        datetime.fromisoformat(line["occurred_at"]).date() == late_day for line in recent["data"]
    )
    same_kind = ok(
        await ada_api.get(f"/v1/accounts/{ada}/statement", params={"kind": charged["kind"]})
    )
    assert {line["kind"] for line in same_kind["data"]} == {charged["kind"]}
    assert first_charge in {line["stripe_object_id"] for line in same_kind["data"]}
    early = ok(
        await ada_api.get(
            f"/v1/accounts/{ada}/statement",
            params={
                "until": (await stripe_created(stack, "charges", first_charge)).date().isoformat()
            },
        )
    )
    assert late_charge not in {line["stripe_object_id"] for line in early["data"]}
    assert first_charge in {line["stripe_object_id"] for line in early["data"]}

    # Bad input is a problem naming the parameter.
    statement = f"/v1/accounts/{ada}/statement"
    for params, status, code, field in (
        ({"since": "2026-13-01"}, 422, "validation_error", "since"),
        ({"limit": "0"}, 422, "validation_error", "limit"),
        ({"limit": "x"}, 422, "validation_error", "limit"),
        ({"kind": "Bad Kind"}, 422, "validation_error", "kind"),
        ({"currency": "dollars"}, 422, "validation_error", "currency"),
        ({"cursor": "not-ours"}, 400, "invalid_input", "cursor"),
        ({"since": "2026-02-02", "until": "2026-02-01"}, 400, "invalid_input", "until"),
    ):
        body = problem(await ada_api.get(statement, params=params), status, code)
        assert field in fields_of(body), body
    problem(await ada_api.get("/v1/accounts/not-an-account/balance"), 422, "validation_error")

    # An account key has no platform figures nor reconciliation.
    problem(await ada_api.get("/v1/finance/figures"), 403, "forbidden")
    problem(await ada_api.get("/v1/reconciliation/runs"), 403, "forbidden")
    problem(await ada_api.post("/v1/reconciliation/runs", json={}), 403, "forbidden")


def _panel_rows(html: str) -> list[list[str]]:
    table = re.search(r'data-testid="finance">(.*?)</table>', html, re.S)
    assert table, html
    body = re.search(r"<tbody>(.*?)</tbody>", table.group(1), re.S)
    assert body
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S):
        cells = [cell.strip() for cell in re.findall(r"<td[^>]*>([^<]*)</td>", row)]
        if len(cells) == 8:
            rows.append(cells)
    return rows


def _panel_totals(html: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in re.findall(r"<t[dh][^>]*>([^<]*)</t[dh]>", row)]
        for row in re.findall(r'data-testid="finance-total">(.*?)</tr>', html, re.S)
    ]


def _as_panel(figure: dict[str, Any]) -> list[str]:
    def money(amount: int) -> str:
        return Money(amount, figure["currency"]).format()

    return [
        figure["period"],
        figure["plugin"],
        str(figure["payments"]),
        money(figure["volume"]),
        money(figure["commission"]),
        money(figure["refunded"]),
        str(figure["disputes"]),
        money(figure["disputed"]),
    ]


async def admin_browser(stack: Stack) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=stack.url, timeout=30, follow_redirects=False)
    stack._clients.append(client)
    form = await client.get("/dashboard/sign-in")
    token = CSRF.search(form.text)
    assert token, form.text
    signed = await client.post(
        "/dashboard/sign-in", data={"api_key": stack.admin_key, "csrf_token": token.group(1)}
    )
    assert signed.status_code == 303, signed.text
    return client


async def test_finance_figures_follow_stripes_time_and_equal_the_panel(stack: Stack) -> None:
    ada = await creator(stack, "ada")
    paid = await tip(stack, ada, "fan-1", 2500)
    await stack.advance(40 * DAY)
    refund = ok(
        await stack.http.post(f"{C}/payments/{paid['id']}/refunds", json={"amount": 1000}), 201
    )
    await tip(stack, ada, "fan-2", 1200)
    await stack.settle()

    charged = await stripe_created(stack, "charges", await charge_of(stack, paid))
    refunds = await asyncio.to_thread(
        stack.stripe().v1.refunds.list, params={"charge": await charge_of(stack, paid)}
    )
    [stripe_refund] = refunds["data"]
    refunded = datetime.fromtimestamp(int(stripe_refund["created"]), UTC)
    assert refund  # the API answered with the refund
    paid_month = date(charged.year, charged.month, 1).isoformat()
    refund_month = date(refunded.year, refunded.month, 1).isoformat()
    assert paid_month != refund_month

    figures = ok(await stack.http.get("/v1/finance/figures", params={"period": "month"}))
    assert (figures["period"], figures["periods"]) == ("month", 12)
    by_month = {
        row["period"]: row for row in figures["data"] if row["plugin"] == "creator_subscriptions"
    }
    # The payment counts when charged, its refund when refunded.
    assert (by_month[paid_month]["payments"], by_month[paid_month]["volume"]) == (1, 2500)
    assert by_month[paid_month]["refunded"] == 0
    assert (by_month[refund_month]["refunds"], by_month[refund_month]["refunded"]) == (1, 1000)
    assert by_month[paid_month]["commission"] > 0
    [total] = [row for row in figures["totals"] if row["plugin"] == "creator_subscriptions"]
    assert (total["payments"], total["volume"], total["refunded"]) == (2, 3700, 1000)

    # One query, two renderings: the JSON is what the panel shows, per period and in total.
    admin = await admin_browser(stack)
    for period in ("month", "week", "day"):
        page = await admin.get("/dashboard/admin", params={"period": period})
        assert page.status_code == 200, page.text
        json_figures = ok(await stack.http.get("/v1/finance/figures", params={"period": period}))
        assert _panel_rows(page.text) == [_as_panel(row) for row in json_figures["data"]]
        totals = _panel_totals(page.text)
        assert [row[1:] for row in totals] == [_as_panel(row)[1:] for row in json_figures["totals"]]
        assert [row[0] for row in totals] == [
            f"Total since {row['period']}" for row in json_figures["totals"]
        ]
        assert json_figures["data"], period

    # Strict inputs.
    for params, field in (({"period": "year"}, "period"), ({"periods": "0"}, "periods")):
        body = problem(
            await stack.http.get("/v1/finance/figures", params=params), 422, "validation_error"
        )
        assert field in fields_of(body), body
    service = stack.client_for(await stack.create_key("service"))
    assert ok(await service.get("/v1/finance/figures")) == ok(
        await stack.http.get("/v1/finance/figures")
    )


async def test_reconciliation_runs_and_findings_through_the_api(stack: Stack) -> None:
    ada = await creator(stack, "ada")
    await tip(stack, ada, "fan-1", 2500)
    # A charge made directly in Stripe.
    intent = await asyncio.to_thread(
        stack.stripe().v1.payment_intents.create,
        params={
            "amount": 150,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
        },
    )
    await stack.settle()
    # The engine posts a charge made directly in Stripe from its events; its posting is
    # then lost (injected), which reconciliation finds.
    lost = await stack.services.db.pool.fetchval(
        "SELECT id FROM marketplace_ledger_transactions WHERE idempotency_key = $1",
        f"charge:{intent['latest_charge']}",
    )
    assert lost is not None
    await stack.services.db.pool.execute(
        "DELETE FROM marketplace_ledger_entries WHERE ledger_transaction = $1", lost
    )
    await stack.services.db.pool.execute(
        "DELETE FROM marketplace_ledger_transactions WHERE id = $1", lost
    )
    pool = stack.services.db.pool

    started = ok(await stack.http.post("/v1/reconciliation/runs", json={}), 202)
    assert started["mode"] == "incremental"
    assert started["trigger"].startswith("api:")
    async with pool.acquire() as conn:  # taken once the run has let go: it has finished
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK)
        # While a run (here, this lock) is going, another cannot start.
        busy = problem(await stack.http.post("/v1/reconciliation/runs", json={}), 409, "conflict")
        assert "already in progress" in busy["detail"]
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK)
    run = ok(await stack.http.get(f"/v1/reconciliation/runs/{started['id']}"))
    assert run["status"] == "completed", run
    assert run["finished_at"] is not None
    assert (run["missing_in_ledger"], run["problems"]) == (1, 1)
    assert run["balance_transactions"] == run["matched"] + 1

    findings = ok(await stack.http.get(f"/v1/reconciliation/runs/{run['id']}/findings"))
    [finding] = findings["data"]
    assert findings["next_cursor"] is None
    assert (finding["status"], finding["account"]) == ("missing_in_ledger", "platform")
    assert (finding["stripe_source"], finding["stripe_amount"]) == (intent["latest_charge"], 150)
    empty = ok(
        await stack.http.get(
            f"/v1/reconciliation/runs/{run['id']}/findings", params={"status": "missing_in_stripe"}
        )
    )
    assert empty["data"] == []
    by_account = ok(
        await stack.http.get(
            f"/v1/reconciliation/runs/{run['id']}/findings", params={"account": "platform"}
        )
    )
    assert by_account["data"] == [finding]

    # A full run, started by the admin key; the list is newest first and pages by cursor.
    full = ok(await stack.http.post("/v1/reconciliation/runs", json={"full": True}), 202)
    assert full["mode"] == "full"
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK)
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK)
    newest = ok(await stack.http.get("/v1/reconciliation/runs", params={"limit": 1}))
    assert [item["id"] for item in newest["data"]] == [full["id"]]
    assert newest["data"][0]["status"] == "completed"
    assert newest["data"][0]["balance_transactions"] == run["balance_transactions"]
    older = ok(
        await stack.http.get(
            "/v1/reconciliation/runs", params={"limit": 1, "cursor": newest["next_cursor"]}
        )
    )
    assert [item["id"] for item in older["data"]] == [run["id"]]
    assert older["next_cursor"] is None

    # The admin page lists the same runs and the same finding.
    admin = await admin_browser(stack)
    page = await admin.get("/dashboard/admin/reconciliation")
    assert page.status_code == 200, page.text
    assert intent["latest_charge"] in page.text
    rows = re.findall(r"<tr>\s*<td>#(\d+)</td>(.*?)</tr>", page.text, re.S)
    modes = {
        int(run_id): re.findall(r'<td class="text">([^<]*)</td>', cells)[1]
        for run_id, cells in rows
    }
    assert modes == {run["id"]: "incremental", full["id"]: "full"}

    service = stack.client_for(await stack.create_key("service"))
    assert ok(await service.get("/v1/reconciliation/runs"))["data"][0]["id"] == full["id"]
    problem(await service.post("/v1/reconciliation/runs", json={}), 403, "forbidden")

    problem(await stack.http.get("/v1/reconciliation/runs/999999"), 404, "not_found")
    problem(await stack.http.get("/v1/reconciliation/runs/999999/findings"), 404, "not_found")
    for params, field in (({"status": "matched"}, "status"), ({"account": "bob"}, "account")):
        body = problem(
            await stack.http.get(f"/v1/reconciliation/runs/{run['id']}/findings", params=params),
            422,
            "validation_error",
        )
        assert field in fields_of(body), body
    body = problem(
        await stack.http.post("/v1/reconciliation/runs", json={"full": 1}), 422, "validation_error"
    )
    assert "full" in fields_of(body)
    body = problem(
        await stack.http.post("/v1/reconciliation/runs", json={"everything": True}),
        422,
        "validation_error",
    )
    assert "everything" in fields_of(body)
