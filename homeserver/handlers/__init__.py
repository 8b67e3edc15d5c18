"""Handlers hold the logic behind the REST servlets; they call stores, never SQL."""
