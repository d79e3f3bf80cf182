"""The request each refund was made for (``operation``: API key + ``Idempotency-Key``).

A refund request retried finds its refund by it instead of refunding again. A
database whose tables were made before the column gets it here; a new one already
has it (``ADD COLUMN IF NOT EXISTS``), so the migration is a no-op there. Plain SQL
(``STATEMENTS``), run by ``migrate`` on its own connection.
"""

from __future__ import annotations

STATEMENTS = (
    "ALTER TABLE creator_subscriptions_refunds "
    "ADD COLUMN IF NOT EXISTS operation VARCHAR(255) UNIQUE DEFAULT NULL",
    "ALTER TABLE creator_subscriptions_invoice_refunds "
    "ADD COLUMN IF NOT EXISTS operation VARCHAR(255) UNIQUE DEFAULT NULL",
)
