"""Piccolo migrations of the course_sales app, applied in name order after its tables exist."""
