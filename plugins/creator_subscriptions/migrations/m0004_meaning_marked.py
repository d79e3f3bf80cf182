"""Whether the plugin has written the engine's ``meaning_metadata`` on a subscription in Stripe.

Subscriptions made before the plugin wrote ``marketplace_plugin`` /
``marketplace_reference`` on them carry none, so the engine would post their
invoices' charges as movements made outside it. A database made before the column
gets it here, ``false`` for every row it holds (the plugin writes the metadata at its
next startup, ``adoption.mark_subscriptions``); the plugin inserts the rows it makes
from now on as ``true`` (they are created with it), and a row a process of the
previous version inserts meanwhile is ``false``, so it is marked too. A new database
already has the column (``ADD COLUMN IF NOT EXISTS``). Plain SQL (``STATEMENTS``), run
by ``migrate``.
"""

from __future__ import annotations

STATEMENTS = (
    "ALTER TABLE creator_subscriptions_subscriptions "
    "ADD COLUMN IF NOT EXISTS meaning_marked BOOLEAN NOT NULL DEFAULT false",
)
