"""Infrastructure the engine runs on: embedded PostgreSQL and NATS, database administration."""
