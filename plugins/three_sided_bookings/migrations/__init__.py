"""Piccolo migrations of the three_sided_bookings app (after the initial tables)."""
