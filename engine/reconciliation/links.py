"""Which Stripe object ids a balance transaction may be recorded under in the ledger (pure).

Business models post one ledger transaction per business movement and name it
by one Stripe object (``stripe_object_id``): a destination charge's posting is
named by the charge although Stripe shows it as four balance transactions (the
platform's ``charge``, ``transfer`` and ``application_fee``, the connected
account's ``payment``); a refund's posting is named by the ``re_`` although
Stripe adds ``transfer_refund``, ``payment_refund`` and
``application_fee_refund`` transactions. So each balance transaction gets a
list of *candidate ids*: its ``source`` first, then the objects that source
derives from, nearest first:

============================  ==============================================
source                        then
============================  ==============================================
``tr_`` transfer              its ``source_transaction`` charge
``py_`` payment (connected)   the transfer that created it, then its charge
``trr_`` transfer reversal    the refund that caused it, the transfer
``pyr_`` payment refund       the reversal that caused it, then as ``trr_``
``fee_`` application fee      its charge (platform's, then the ``py_``)
``fr_`` fee refund            the refunds of the fee's charge, the fee
``re_`` refund / ``du_``      their charge
``ch_`` charge                its PaymentIntent
============================  ==============================================

The relations come from the platform's own balance transactions with
``expand[]=data.source`` (a connected account's ``py_``/``pyr_`` are found
through the platform's transfers and reversals, so connected accounts need no
expansion). A reconciliation run learns them page by page and keeps them as
rows (``edges`` / ``from_edges``), so a later run, which fetches only newer
transactions, still knows how an earlier transfer relates to its charge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PARENT", "Edge", "Links", "object_id"]

PARENT = "parent"
_REFUND = "refund"
_FEE = "fee"

Edge = tuple[str, str, str, int]
"""``(child, relation, parent, position)``: one stored relation (see ``Links.edges``)."""

_MAX_DEPTH = 4


def object_id(value: Any) -> str:
    """The id of an expandable field (an id string or an expanded object)."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


@dataclass
class Links:
    """Relations between Stripe objects, learnt from expanded balance transaction sources."""

    parents: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    refunds_of_charge: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    fee_of_fee_refund: dict[str, str] = field(default_factory=dict)

    def edges(self) -> list[Edge]:
        """Every relation known, as rows to store (``from_edges`` reads them back).

        ``parent``: ``child`` derives from ``parent`` (nearest first, by
        ``position``); ``refund``: ``parent`` is a refund of charge ``child``;
        ``fee``: fee refund ``child`` returns application fee ``parent``.
        """
        rows: list[Edge] = []
        for child, parents in self.parents.items():
            if not child:
                continue
            rows += [(child, PARENT, parent, i) for i, parent in enumerate(parents)]
        for charge, refunds in self.refunds_of_charge.items():
            rows += [(charge, _REFUND, refund, i) for i, refund in enumerate(refunds)]
        rows += [(refund, _FEE, fee, 0) for refund, fee in self.fee_of_fee_refund.items()]
        return rows

    @classmethod
    def from_edges(cls, rows: Iterable[Edge]) -> Links:
        """The relations of stored ``edges`` (in ``position`` order per child)."""
        links = cls()
        for child, relation, parent, _ in sorted(rows, key=lambda row: (row[0], row[1], row[3])):
            if relation == PARENT:
                links._link(child, parent)
            elif relation == _REFUND:
                if parent not in links.refunds_of_charge[child]:
                    links.refunds_of_charge[child].append(parent)
            elif relation == _FEE:
                links.fee_of_fee_refund[child] = parent
        return links

    def _link(self, child: str, *parents: str) -> None:
        known = self.parents[child]
        for parent in parents:
            if parent and parent != child and parent not in known:
                known.append(parent)

    def learn(self, source: Any) -> None:
        """Record what an expanded ``source`` object says about its relations."""
        if not isinstance(source, Mapping):
            return
        kind = str(source.get("object") or "")
        own = object_id(source)
        if kind == "transfer":
            self._link(own, object_id(source.get("source_transaction")))
            self._link(object_id(source.get("destination_payment")), own)
        elif kind == "transfer_reversal":
            self._link(
                own, object_id(source.get("source_refund")), object_id(source.get("transfer"))
            )
            self._link(object_id(source.get("destination_payment_refund")), own)
        elif kind == "application_fee":
            # ``charge`` is the payment on the connected account (``py_``) for a
            # destination charge; ``originating_transaction`` the platform's charge.
            self._link(
                own,
                object_id(source.get("originating_transaction")),
                object_id(source.get("charge")),
            )
        elif kind == "fee_refund":
            self.fee_of_fee_refund[own] = object_id(source.get("fee"))
        elif kind == "refund":
            charge = object_id(source.get("charge"))
            self._link(own, charge)
            if charge and own not in self.refunds_of_charge[charge]:
                self.refunds_of_charge[charge].append(own)
        elif kind == "dispute":
            self._link(own, object_id(source.get("charge")))
        elif kind == "charge":
            self._link(own, object_id(source.get("payment_intent")))
            self._link(object_id(source.get("transfer")), own)

    def _direct(self, object_key: str) -> list[str]:
        found = list(self.parents.get(object_key, ()))
        fee = self.fee_of_fee_refund.get(object_key)
        if fee:
            # A fee refund names only its fee; the refund that caused it is one
            # of the refunds of the fee's charge.
            refunds = [
                refund
                for ancestor in self.candidates(fee)
                for refund in self.refunds_of_charge.get(ancestor, ())
            ]
            found += [*refunds, fee]
        return found

    def candidates(self, source: str) -> tuple[str, ...]:
        """``source`` then its ancestors, breadth first (nearest relation first)."""
        if not source:
            return ()
        order = [source]
        frontier = [source]
        for _ in range(_MAX_DEPTH):
            following: list[str] = []
            for current in frontier:
                for parent in self._direct(current):
                    if parent and parent not in order:
                        order.append(parent)
                        following.append(parent)
            frontier = following
        return tuple(order)
