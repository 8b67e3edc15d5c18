"""PostgreSQL via psycopg2: the production engine, safe for many writer processes."""

from __future__ import annotations

import re
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from homeserver.config.model import DatabaseConfig
from storage.engines.base import Engine

_STREAM = re.compile(r"^[a-z_]+$")


class PostgresEngine(Engine):
    name = "postgres"
    module = psycopg2

    def __init__(self, config: DatabaseConfig) -> None:
        self._config = config
        self.schema = config.schema

    def connect_kwargs(self) -> dict[str, Any]:
        c = self._config
        kwargs: dict[str, Any] = {"host": c.host, "port": c.port, "user": c.user,
                                  "dbname": c.database, "application_name": "parley"}
        if c.password:
            kwargs["password"] = c.password
        return kwargs

    def on_connect(self, conn: Any) -> None:
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_READ_COMMITTED)
        cur = conn.cursor()
        if self.schema:
            try:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                conn.commit()
            except psycopg2.errors.UniqueViolation:
                conn.rollback()  # another connection created it at the same moment
            cur.execute(f'SET search_path TO "{self.schema}"')
        cur.close()
        conn.commit()

    def convert_sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def next_stream_sql(self, stream: str) -> str:
        if not _STREAM.match(stream):
            raise ValueError(f"bad stream name {stream!r}")
        return f"SELECT nextval('{stream}_stream_seq')"

    def next_streams_sql(self, stream: str, n: int) -> str | None:
        # One row per position; another process may take values in between.
        return f"{self.next_stream_sql(stream)} FROM generate_series(1, {int(n)})"

    def migration_lock_sql(self) -> str | None:
        # Held until the migration's transaction ends; several workers may start at once.
        # Keyed by the schema too: deployments (and test schemas) sharing one database
        # do not wait for each other's migrations.
        return "SELECT pg_advisory_xact_lock(7306015, hashtext(current_schema()))"
