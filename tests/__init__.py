"""Parley's trial suite: unit tests, HTTP-level tests on SQLite and PostgreSQL, end-to-end."""
