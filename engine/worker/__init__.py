"""Workers: taskiq over NATS JetStream draining per-account mailboxes, and the sweeper."""
