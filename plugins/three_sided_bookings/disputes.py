"""Disputes on a booking's charges: record, assemble and submit evidence, act on the outcome.

``charge.dispute.created`` puts the booking in ``disputed`` and records the
dispute; its balance transactions (funds withdrawn, Stripe's dispute fee, funds
reinstated) and a lost dispute's final loss are the engine's postings, made by
its dispute handler (``engine.core.postings``) before this plugin's. The evidence is
built from the booking itself (service date, service, provider, venue, the
booking record with its audit trail, the customer communication and the
cancellation policy) and submitted with ``POST /v1/disputes/{id}``
(``evidence[...]``, ``submit=true``). ``charge.dispute.closed`` records the
outcome and, on a loss when configured, reverses the provider's and venue's shares.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

from engine.core.errors import Conflict, NotFound
from engine.core.money import Money
from plugins.three_sided_bookings.context import BookingContext
from plugins.three_sided_bookings.payments import reverse_all_shares
from plugins.three_sided_bookings.store import BookingRecord, Connection

__all__ = [
    "assemble_evidence",
    "record_dispute",
    "record_outcome",
    "submit_evidence",
]

_MAX_TEXT: Final = 20_000  # Stripe's limit on a free-text evidence field
_PDF_LINES: Final = 70  # what fits one A4 page at 11 pt leading


def _dispute(ctx: BookingContext) -> dict[str, Any]:
    dispute = ctx.params.dispute
    if dispute is None:
        raise Conflict("a dispute transition needs the Stripe dispute")
    return dispute


async def record_dispute(ctx: BookingContext) -> None:
    """Remember a new dispute, submit evidence when configured."""
    dispute = _dispute(ctx)
    booking = ctx.booking
    charge_id = await ctx.conn.fetchval(
        "SELECT id FROM three_sided_bookings_charges WHERE stripe_charge_id = $1",
        dispute.get("charge"),
    )
    if charge_id is None:
        raise NotFound(f"dispute {dispute['id']} is not on a charge of booking {booking.id}")
    await ctx.conn.execute(
        """
        INSERT INTO three_sided_bookings_disputes
            (booking, charge, stripe_dispute_id, amount, currency, reason, status, evidence,
             evidence_submitted_at, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, '{}'::jsonb, NULL, now(), now())
        ON CONFLICT (stripe_dispute_id) DO NOTHING
        """,
        booking.id,
        charge_id,
        dispute["id"],
        int(dispute["amount"]),
        str(dispute["currency"]),
        str(dispute.get("reason") or ""),
        str(dispute.get("status") or "needs_response"),
    )
    ctx.record("dispute", {"id": dispute["id"], "amount": dispute["amount"]})
    if ctx.config.auto_submit_evidence:
        await submit_evidence(ctx, dispute_id=str(dispute["id"]))


async def _open_dispute_id(conn: Connection, booking_id: int) -> str:
    found = await conn.fetchval(
        "SELECT stripe_dispute_id FROM three_sided_bookings_disputes "
        "WHERE booking = $1 AND status NOT IN ('won', 'lost') ORDER BY id DESC LIMIT 1",
        booking_id,
    )
    if found is None:
        raise Conflict(f"booking {booking_id} has no open dispute")
    return str(found)


def _policy_text(booking: BookingRecord) -> str:
    policy = booking.policy
    windows = sorted(policy.get("windows", []), key=lambda w: w[0], reverse=True)
    lines = [
        f"Cancelled at least {hours} hours before the start: "
        f"{fee_bps / 100:g}% of the price is kept."
        for hours, fee_bps in windows
    ]
    lines.append(
        f"No-show or cancellation after the start: "
        f"{int(policy.get('no_show_fee_bps', 10_000)) / 100:g}% of the price is kept."
    )
    return "\n".join(lines)


async def assemble_evidence(
    conn: Connection, booking: BookingRecord, statement: str
) -> dict[str, str]:
    """The dispute evidence, from the booking: Stripe's ``evidence[...]`` text fields."""
    names = await conn.fetchrow(
        """
        SELECT p.display_name AS provider, v.display_name AS venue, v.address AS address,
               s.duration_minutes AS duration
        FROM three_sided_bookings_providers p, three_sided_bookings_venues v,
             three_sided_bookings_services s
        WHERE p.id = $1 AND v.id = $2 AND s.id = $3
        """,
        booking.provider_id,
        booking.venue_id,
        booking.service_id,
    )
    transitions = await conn.fetch(
        "SELECT transition, from_state, to_state, actor, created_at "
        "FROM three_sided_bookings_transitions WHERE booking = $1 ORDER BY id",
        booking.id,
    )
    price = Money(booking.amount, booking.currency).format()
    record = [
        f"Booking {booking.id} ({booking.reference}), made {booking.created_at.isoformat()}",
        f"Service: {booking.service_name} ({booking.service_type}, {names['duration']} min)",
        f"Provider: {names['provider']}; venue: {names['venue']} {names['address']}".rstrip(),
        f"Scheduled: {booking.starts_at.isoformat()} to {booking.ends_at.isoformat()}",
        f"Price: {price}; payment: {booking.payment_model}",
        "History:",
        *(
            f"  {row['created_at'].isoformat()} {row['transition']} by {row['actor']}: "
            f"{row['from_state']} -> {row['to_state']}"
            for row in transitions
        ),
        "Customer communication:",
        *(
            f"  {message.get('at', '')} {message.get('author', '')}: {message.get('text', '')}"
            for message in booking.communication
        ),
    ]
    if statement:
        record += ["Statement:", statement]
    return {
        "customer_name": booking.customer_name,
        "customer_email_address": booking.customer_email,
        "service_date": booking.starts_at.date().isoformat(),
        "product_description": (
            f"{booking.service_name}, {names['duration']} minutes, by {names['provider']} "
            f"at {names['venue']}"
        ),
        "cancellation_policy_disclosure": _policy_text(booking),
        "uncategorized_text": "\n".join(record)[:_MAX_TEXT],
    }


def record_pdf(title: str, lines: list[str]) -> bytes:
    """A one-page PDF of text lines (Stripe takes dispute evidence files as PDF, JPEG or PNG).

    Written by hand (Helvetica, one text object), so no PDF library is needed; long
    records are cut at what fits one page, the full text being in ``uncategorized_text``.
    """

    def escape(text: str) -> str:
        ascii_text = text.encode("latin-1", "replace").decode("latin-1")
        return ascii_text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    shown = [title, "", *lines][:_PDF_LINES]
    text = "".join(f"({escape(line[:110])}) Tj T* " for line in shown)
    stream = f"BT /F1 9 Tf 11 TL 40 800 Td {text}ET".encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


async def submit_evidence(ctx: BookingContext, *, dispute_id: str | None = None) -> None:
    """Assemble the evidence and submit it to Stripe (``submit=true``).

    The booking's record (history, communication, statement) also goes as a PDF
    file upload (``uncategorized_file``), the way Stripe takes documents.
    """
    booking = ctx.booking
    dispute_id = dispute_id or await _open_dispute_id(ctx.conn, booking.id)
    evidence = await assemble_evidence(ctx.conn, booking, ctx.params.statement)
    payload: dict[str, str] = {key: value for key, value in evidence.items() if value}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    uploaded = await ctx.gateway.upload_file(
        record_pdf(
            f"Booking {booking.id}: record for dispute {dispute_id}",
            evidence["uncategorized_text"].splitlines(),
        ),
        filename=f"booking-{booking.id}-record.pdf",
        purpose="dispute_evidence",
        key=f"booking:{booking.id}:dispute:{dispute_id}:evidence_file:{digest}",
    )
    payload["uncategorized_file"] = str(uploaded["id"])
    evidence["uncategorized_file"] = str(uploaded["id"])
    updated = await ctx.gateway.call(
        "disputes",
        "update",
        dispute_id,
        params={
            "evidence": payload,
            "submit": True,
            "metadata": {"booking_id": str(booking.id)},
        },
        idempotency_key=f"booking:{booking.id}:dispute:{dispute_id}:evidence:{digest}",
    )
    await ctx.conn.execute(
        """
        UPDATE three_sided_bookings_disputes
        SET evidence = $2::jsonb, evidence_submitted_at = now(), status = $3, updated_at = now()
        WHERE stripe_dispute_id = $1
        """,
        dispute_id,
        json.dumps(evidence),
        str(updated.get("status") or "under_review"),
    )
    ctx.record("evidence_submitted", dispute_id)


async def record_outcome(ctx: BookingContext) -> None:
    """Record a closed dispute's outcome; on a loss, reverse shares if configured."""
    dispute = _dispute(ctx)
    status = str(dispute.get("status"))
    await ctx.conn.execute(
        "UPDATE three_sided_bookings_disputes SET status = $2, updated_at = now() "
        "WHERE stripe_dispute_id = $1",
        dispute["id"],
        status,
    )
    ctx.record("dispute_outcome", {"id": dispute["id"], "status": status})
    if status != "lost":
        return
    if ctx.config.reverse_shares_on_lost_dispute:
        await reverse_all_shares(ctx, cause=str(dispute["id"]))
