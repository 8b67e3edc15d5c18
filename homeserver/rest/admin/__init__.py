"""Admin API servlets (Synapse-compatible paths under /_synapse/admin)."""
