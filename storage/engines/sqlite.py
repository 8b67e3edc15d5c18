"""SQLite: the embedded default. One connection, WAL mode, foreign keys on."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from typing import Any

from homeserver.config.model import DatabaseConfig
from storage.engines.base import Engine

_STREAM = re.compile(r"^[a-z_]+$")


class SqliteEngine(Engine):
    name = "sqlite"
    module = sqlite3

    def __init__(self, config: DatabaseConfig) -> None:
        self.path = config.path

    def connect_kwargs(self) -> dict[str, Any]:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        return {"database": self.path, "check_same_thread": False, "timeout": 30,
                "isolation_level": "DEFERRED"}

    def on_connect(self, conn: sqlite3.Connection) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        _set_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    def convert_sql(self, sql: str) -> str:
        return sql

    def next_stream_sql(self, stream: str) -> str:
        if not _STREAM.match(stream):
            raise ValueError(f"bad stream name {stream!r}")
        return f"UPDATE stream_positions SET pos = pos + 1 WHERE stream = '{stream}' RETURNING pos"

    def next_streams_sql(self, stream: str, n: int) -> str | None:
        # One row: the highest of n consecutive positions (one writer at a time).
        return self.next_stream_sql(stream).replace("pos + 1", f"pos + {int(n)}")

    def migration_lock_sql(self) -> str | None:
        # Python's sqlite3 does not open a transaction before DDL; this does, and takes
        # the write lock at once so a second process waits instead of racing.
        return "BEGIN IMMEDIATE"

    @property
    def single_writer(self) -> bool:
        return True


def _set_wal(cur: sqlite3.Cursor, deadline_s: float = 30.0) -> None:
    """Switch to WAL, retrying while another connection holds the file: SQLite answers
    "database is locked" at once here, without its busy handler, when two processes
    open a new database together. Runs on a database thread, so sleeping is fine."""
    give_up = time.monotonic() + deadline_s
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > give_up:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
