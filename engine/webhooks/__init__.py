"""Stripe webhook intake: signature verification, the durable inbox and per-account mailboxes."""
