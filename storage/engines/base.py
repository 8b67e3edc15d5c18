"""The engine interface: how to connect, and the dialect differences stores rely on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Engine(ABC):
    name: str
    # The DB-API module (for adbapi and for exception classes).
    module: Any

    @abstractmethod
    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``module.connect``."""

    @abstractmethod
    def on_connect(self, conn: Any) -> None:
        """Run once on every new connection (pragmas, search_path, ...)."""

    @abstractmethod
    def convert_sql(self, sql: str) -> str:
        """Adapt ``?`` placeholders to the engine's paramstyle."""

    def is_integrity_error(self, exc: BaseException) -> bool:
        return isinstance(exc, self.module.IntegrityError)

    @abstractmethod
    def next_stream_sql(self, stream: str) -> str:
        """A statement returning the next position of ``stream`` as a single row."""

    def next_streams_sql(self, stream: str, n: int) -> str | None:
        """A statement returning ``n`` new positions of ``stream`` in one round trip:
        one row each, or one row with the highest of ``n`` consecutive positions (see
        :meth:`storage.database.Txn.next_stream_ids`). None: one statement per position."""
        return None

    def migration_lock_sql(self) -> str | None:
        """A statement that serialises migrations across processes, if needed."""
        return None

    @property
    def single_writer(self) -> bool:
        """True when only one connection may be used (SQLite)."""
        return False
