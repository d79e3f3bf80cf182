"""The reconciliation's matching rules on hand-made data (pure: no database, no Stripe).

Kept beside the stack test so each rule the month-long scenario relies on has
a small case of its own: a destination charge's four balance transactions
against one posting, fees on their own line or netted, a changed amount
reported once, postings Stripe never saw, and the relations that lead a
``py_``, ``pyr_`` or ``fr_`` back to the posting's object.
"""

from __future__ import annotations

from itertools import count

from engine.reconciliation.links import Links
from engine.reconciliation.matching import BalanceTxn, LedgerLine, match_account

_ids = count(1)


def line(tx: int, account: str, amount: int, object_id: str, key: str = "") -> LedgerLine:
    return LedgerLine(
        entry_id=next(_ids),
        transaction_id=tx,
        key=key or f"posting:{tx}",
        kind="charge",
        stripe_object_id=object_id,
        account=account,
        currency="usd",
        amount=amount,
    )


def txn(
    txn_id: str, account: str, kind: str, source: str, amount: int, *, fee: int = 0, **extra: object
) -> BalanceTxn:
    candidates = extra.get("candidates", (source,))
    assert isinstance(candidates, tuple)
    return BalanceTxn(
        id=txn_id,
        account=account,
        type=kind,
        source=source,
        amount=amount,
        fee=fee,
        currency="usd",
        created=int(str(extra.get("created", 0))),
        candidates=candidates,
    )


def destination_charge_lines(
    tx: int, charge: int, stripe_fee: int, app_fee: int
) -> list[LedgerLine]:
    """The platform's lines of a creator_subscriptions destination-charge posting."""
    return [
        line(tx, "platform", charge, "ch_1"),
        line(tx, "platform", -stripe_fee, "ch_1"),
        line(tx, "platform", -charge, "ch_1"),
        line(tx, "platform", app_fee, "ch_1"),
    ]


def statuses(results: list) -> list[str]:  # type: ignore[type-arg]
    return [result.status for result in results]


def test_a_destination_charge_matches_line_by_line_on_both_balances() -> None:
    platform = [
        txn("txn_c", "platform", "charge", "ch_1", 1000, fee=59, created=1),
        txn("txn_t", "platform", "transfer", "tr_1", -1000, candidates=("tr_1", "ch_1"), created=2),
        txn(
            "txn_f",
            "platform",
            "application_fee",
            "fee_1",
            100,
            candidates=("fee_1", "ch_1"),
            created=3,
        ),
    ]
    results = match_account("platform", platform, destination_charge_lines(7, 1000, 59, 100))
    assert statuses(results) == ["matched"] * 3
    assert results[0].ledger_amount == 1000
    assert results[0].ledger_fee == 59
    connected = [
        txn(
            "txn_p", "acct_1", "payment", "py_1", 1000, fee=100, candidates=("py_1", "tr_1", "ch_1")
        )
    ]
    lines = [line(7, "acct_1", 1000, "ch_1"), line(7, "acct_1", -100, "ch_1")]
    assert statuses(match_account("acct_1", connected, lines)) == ["matched"]


def test_a_fee_may_be_netted_into_one_line() -> None:
    results = match_account(
        "platform",
        [txn("txn_c", "platform", "charge", "ch_1", 1000, fee=59)],
        [line(1, "platform", 941, "ch_1")],
    )
    assert statuses(results) == ["matched"]


def test_a_changed_amount_is_one_mismatch_and_leaves_nothing_over() -> None:
    lines = destination_charge_lines(7, 1000, 59, 100)
    lines[1] = line(7, "platform", -60, "ch_1")  # the Stripe fee recorded one cent too high
    platform = [
        txn("txn_c", "platform", "charge", "ch_1", 1000, fee=59, created=1),
        txn("txn_t", "platform", "transfer", "tr_1", -1000, candidates=("tr_1", "ch_1"), created=2),
        txn(
            "txn_f",
            "platform",
            "application_fee",
            "fee_1",
            100,
            candidates=("fee_1", "ch_1"),
            created=3,
        ),
    ]
    results = match_account("platform", platform, lines)
    assert statuses(results) == ["amount_mismatch", "matched", "matched"]
    assert (results[0].ledger_amount, results[0].ledger_fee) == (1000, 60)
    assert "fee 0.60 USD in the ledger, 0.59 USD at Stripe" in results[0].detail


def test_an_amount_line_changed_is_paired_with_its_balance_transaction() -> None:
    lines = destination_charge_lines(7, 1000, 59, 100)
    lines[0] = line(7, "platform", 1100, "ch_1")
    platform = [
        txn("txn_c", "platform", "charge", "ch_1", 1000, fee=59, created=1),
        txn("txn_t", "platform", "transfer", "tr_1", -1000, candidates=("tr_1", "ch_1"), created=2),
    ]
    results = match_account("platform", platform, lines)
    # The transfer keeps its exact line; the charge takes the changed one; the
    # application fee's line (no balance transaction given) is left over.
    assert statuses(results) == ["amount_mismatch", "matched", "missing_in_stripe"]
    assert results[0].ledger_amount == 1100
    assert results[2].ledger_amount == 100


def test_postings_stripe_never_saw_are_grouped_per_posting() -> None:
    lines = [
        line(1, "acct_1", 500, "ch_9", key="a"),
        line(1, "acct_1", -50, "ch_9", key="a"),
        line(2, "acct_1", 70, "", key="b"),
    ]
    results = match_account("acct_1", [], lines)
    assert statuses(results) == ["missing_in_stripe", "missing_in_stripe"]
    assert [result.ledger_amount for result in results] == [450, 70]
    assert results[0].item_key == "ledger:acct_1:1:usd"


def test_a_payout_and_its_failure_share_an_object_and_match_by_sign() -> None:
    lines = [
        line(1, "acct_1", -800, "po_1", key="payout:po_1"),
        line(2, "acct_1", 800, "po_1", key="payout_failure:po_1"),
    ]
    stripe = [
        txn("txn_1", "acct_1", "payout", "po_1", -800, created=1),
        txn("txn_2", "acct_1", "payout_failure", "po_1", 800, created=2),
        txn("txn_3", "acct_1", "payout", "po_2", -300, created=3),
    ]
    results = match_account("acct_1", stripe, lines)
    assert statuses(results) == ["matched", "matched", "missing_in_ledger"]
    assert [result.lines[0].key for result in results[:2]] == ["payout:po_1", "payout_failure:po_1"]


def test_links_lead_derived_objects_back_to_the_posted_one() -> None:
    links = Links()
    links.learn({"object": "charge", "id": "ch_1", "payment_intent": "pi_1", "transfer": "tr_1"})
    links.learn(
        {
            "object": "transfer",
            "id": "tr_1",
            "source_transaction": "ch_1",
            "destination_payment": "py_1",
        }
    )
    links.learn(
        {
            "object": "application_fee",
            "id": "fee_1",
            "charge": "py_1",
            "originating_transaction": "ch_1",
        }
    )
    links.learn({"object": "refund", "id": "re_1", "charge": "ch_1"})
    links.learn(
        {
            "object": "transfer_reversal",
            "id": "trr_1",
            "transfer": "tr_1",
            "source_refund": "re_1",
            "destination_payment_refund": "pyr_1",
        }
    )
    links.learn({"object": "fee_refund", "id": "fr_1", "fee": "fee_1"})
    assert links.candidates("py_1")[:3] == ("py_1", "tr_1", "ch_1")
    assert links.candidates("pyr_1")[:3] == ("pyr_1", "trr_1", "re_1")
    assert links.candidates("fee_1")[:2] == ("fee_1", "ch_1")
    assert links.candidates("fr_1")[:2] == ("fr_1", "re_1")
    assert links.candidates("po_1") == ("po_1",)
    assert links.candidates("") == ()
