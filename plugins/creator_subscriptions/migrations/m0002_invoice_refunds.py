"""Refunds of subscription invoices through the API (``creator_subscriptions_invoice_refunds``).

A database whose tables were made before it gets the table here; a new one already
has it (``IF NOT EXISTS``), so the migration is a no-op there. Plain SQL
(``STATEMENTS``), run by ``migrate`` on its own connection.
"""

from __future__ import annotations

STATEMENTS = (
    """
    CREATE TABLE IF NOT EXISTS creator_subscriptions_invoice_refunds (
        id BIGSERIAL PRIMARY KEY,
        invoice BIGINT REFERENCES creator_subscriptions_invoices (id)
            ON DELETE CASCADE ON UPDATE CASCADE,
        stripe_refund_id VARCHAR(64) UNIQUE DEFAULT NULL,
        amount BIGINT NOT NULL DEFAULT 0,
        currency VARCHAR(3) NOT NULL DEFAULT '',
        transfer_reversed BIGINT NOT NULL DEFAULT 0,
        fee_refunded BIGINT NOT NULL DEFAULT 0,
        reason VARCHAR(64) NOT NULL DEFAULT '',
        status VARCHAR(32) NOT NULL DEFAULT 'pending',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX IF NOT EXISTS creator_subscriptions_invoice_refunds_invoice "
    "ON creator_subscriptions_invoice_refunds (invoice)",
)
