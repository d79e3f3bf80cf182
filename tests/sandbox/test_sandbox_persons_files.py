"""The hosted onboarding page's bank account, Persons of company accounts, and file uploads."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
import stripe

from engine.sandbox.testing import RunningSandbox

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def upload(client: Any, content: bytes, name: str, purpose: str, **options: Any) -> Any:
    handle = io.BytesIO(content)
    handle.name = name
    return client.v1.files.create(params={"purpose": purpose, "file": handle}, options=options)


def express_account(client: Any, country: str = "US") -> Any:
    return client.v1.accounts.create(
        params={
            "type": "express",
            "country": country,
            "capabilities": {
                "card_payments": {"requested": True},
                "transfers": {"requested": True},
            },
        }
    )


def onboarding_page(client: Any, account: str) -> str:
    link = client.v1.account_links.create(
        params={
            "account": account,
            "type": "account_onboarding",
            "refresh_url": "https://example.com/refresh",
            "return_url": "https://example.com/back",
        }
    )
    return str(link.url)


@pytest.mark.parametrize(
    ("typed", "last4", "payout"),
    [
        ("000111111116", "1116", "failed"),
        ("DE89370400440532013000", "3000", "paid"),
        ("FR89370400440532013002", "3002", "failed"),
    ],
)
def test_onboarding_page_takes_the_testers_bank_account(
    sandbox: RunningSandbox, client: Any, typed: str, last4: str, payout: str
) -> None:
    currency = "usd" if typed.isdigit() else "eur"
    account = express_account(client, "US" if currency == "usd" else "DE")
    page = httpx.get(onboarding_page(client, account.id))
    assert 'name="account_number"' in page.text
    link = page.text.split('name="link" value="', 1)[1].split('"', 1)[0]
    done = httpx.post(
        f"{sandbox.url}/_sandbox/accounts/{account.id}/complete_onboarding",
        data={"return_url": "https://example.com/back", "link": link, "account_number": typed},
    )
    assert done.status_code == 303
    account = client.v1.accounts.retrieve(account.id)
    assert account.payouts_enabled
    banks = account.external_accounts.data
    assert [b.last4 for b in banks] == [last4]
    assert banks[0].currency == currency
    client.v1.payment_intents.create(
        params={
            "amount": 5_000,
            "currency": currency,
            "payment_method": "pm_card_bypassPending",
            "confirm": True,
            "transfer_data": {"destination": account.id},
        }
    )
    connected = sandbox.client(stripe_account=account.id)
    made = connected.v1.payouts.create(params={"amount": 1_000, "currency": currency})
    sandbox.advance(3 * 86_400)
    assert connected.v1.payouts.retrieve(made.id).status == payout


def test_onboarding_page_refuses_a_real_looking_account(
    sandbox: RunningSandbox, client: Any
) -> None:
    account = express_account(client)
    httpx.get(onboarding_page(client, account.id))
    refused = httpx.post(
        f"{sandbox.url}/_sandbox/accounts/{account.id}/complete_onboarding",
        data={"link": "x", "account_number": "123456789012"},
    )
    assert refused.status_code == 400
    assert "not a test bank account" in refused.text
    assert "DE89370400440532013000" in refused.text
    assert not client.v1.accounts.retrieve(account.id).charges_enabled


def test_company_account_needs_a_verified_representative(
    sandbox: RunningSandbox, client: Any
) -> None:
    company = client.v1.accounts.create(
        params={
            "type": "custom",
            "country": "US",
            "business_type": "company",
            "capabilities": {"transfers": {"requested": True}},
            "company": {"name": "Spa Co", "tax_id": "000000000"},
            "business_profile": {"url": "https://spa.example"},
            "tos_acceptance": {"date": 1_700_000_000, "ip": "127.0.0.1"},
            "external_account": "btok_us_verified",
        }
    )
    assert "representative.first_name" in company.requirements.currently_due
    person = client.v1.accounts.persons.create(
        company.id,
        params={
            "first_name": "Rita",
            "last_name": "Rep",
            "dob": {"day": 2, "month": 3, "year": 1980},
            "relationship": {"representative": True, "title": "Director"},
        },
    )
    assert person.verification.status == "unverified"
    company = client.v1.accounts.retrieve(company.id)
    assert company.requirements.currently_due == [f"{person.id}.verification.document"]
    document = upload(client, PDF, "passport.pdf", "dispute_evidence")
    with pytest.raises(stripe.InvalidRequestError):  # evidence is not an identity document
        client.v1.accounts.persons.update(
            company.id, person.id, params={"verification": {"document": {"front": document.id}}}
        )
    passport = upload(client, PDF, "passport.pdf", "identity_document", stripe_account=company.id)
    verified = client.v1.accounts.persons.update(
        company.id, person.id, params={"verification": {"document": {"front": passport.id}}}
    )
    assert verified.verification.status == "verified"
    company = client.v1.accounts.retrieve(company.id)
    assert company.charges_enabled or company.requirements.currently_due == []
    listed = client.v1.accounts.persons.list(
        company.id, params={"relationship": {"representative": True}}
    )
    assert [p.id for p in listed.data] == [person.id]
    types = [e.type for e in sandbox.client(stripe_account=company.id).v1.events.list().data]
    assert {"person.created", "person.updated"} <= set(types)


def test_files_upload_and_serve_their_bytes(sandbox: RunningSandbox, client: Any) -> None:
    receipt = upload(client, PDF, "receipt.pdf", "dispute_evidence")
    assert (receipt.type, receipt.size, receipt.filename) == ("pdf", len(PDF), "receipt.pdf")
    assert receipt.id.startswith("file_")
    contents = httpx.get(receipt.url, headers={"Authorization": "Bearer sk_test_x"})
    assert (contents.status_code, contents.content) == (200, PDF)
    assert contents.headers["content-type"] == "application/pdf"
    assert httpx.get(receipt.url).status_code == 401
    with pytest.raises(stripe.InvalidRequestError) as wrong_type:
        upload(client, b"plain words", "notes.txt", "dispute_evidence")
    assert wrong_type.value.code == "file_type_invalid"
    listed = client.v1.files.list(params={"purpose": "dispute_evidence"})
    assert [f.id for f in listed.data] == [receipt.id]
    dispute_pi = client.v1.payment_intents.create(
        params={
            "amount": 3_000,
            "currency": "usd",
            "payment_method": "pm_card_createDispute",
            "confirm": True,
        }
    )
    dispute = client.v1.disputes.list(params={"payment_intent": dispute_pi.id}).data[0]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.disputes.update(dispute.id, params={"evidence": {"receipt": "file_missing"}})
    updated = client.v1.disputes.update(
        dispute.id,
        params={"evidence": {"receipt": receipt.id, "uncategorized_text": "winning_evidence"}},
    )
    assert updated.evidence.receipt == receipt.id
    assert updated.evidence_details.submission_method == "manual"
