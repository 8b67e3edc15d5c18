"""Database engines: the differences between SQLite and PostgreSQL, in one place."""

from __future__ import annotations

from homeserver.config.model import DatabaseConfig
from storage.engines.base import Engine
from storage.engines.postgres import PostgresEngine
from storage.engines.sqlite import SqliteEngine


def create_engine(config: DatabaseConfig) -> Engine:
    if config.engine == "sqlite":
        return SqliteEngine(config)
    if config.engine == "postgres":
        return PostgresEngine(config)
    raise ValueError(f"unknown database engine {config.engine!r}")


__all__ = ["Engine", "create_engine", "SqliteEngine", "PostgresEngine"]
