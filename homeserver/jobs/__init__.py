"""Background jobs: a read-only listing across every feature's own job table."""
