"""The federation queue as one events writer among several sees it (issue 18, event
persisters federating).

Each events writer queues the PDUs of the local events it persists itself (federation/
sender/wiring.py). On start a writer queues again the local events of *its* rooms
persisted after its checkpoint: the main process keeps ``federation_stream_position``,
every other writer its own row of ``federation_writer_positions`` (0056). Everything
else is the shared :class:`FederationQueueStore`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from storage.database import Database
from storage.stores.federation_queue import FederationQueueStore


class WriterQueueStore:
    """``inner`` with the replay narrowed to the rooms ``owns`` says this process writes
    (``writes_any`` False: none), and, unless ``instance`` is None (main), a checkpoint
    of its own."""

    def __init__(self, inner: FederationQueueStore, instance: str | None,
                 owns: Callable[[str], bool], writes_any: bool) -> None:
        self._inner = inner
        self._db: Database = inner._db  # noqa: SLF001 (the same database)
        self._instance = instance
        self._owns = owns
        self._writes_any = writes_any

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_stream_position(self) -> int | None:
        if self._instance is None:
            return await self._inner.get_stream_position()
        row = await self._db.query_one(
            "fed_writer_get_position", "SELECT stream_ordering FROM"
            " federation_writer_positions WHERE instance = ?", self._instance)
        return int(row[0]) if row else None

    async def set_stream_position(self, stream_ordering: int) -> None:
        if self._instance is None:
            await self._inner.set_stream_position(stream_ordering)
            return
        await self._db.execute(
            "fed_writer_set_position", "INSERT INTO federation_writer_positions"
            " (instance, stream_ordering) VALUES (?, ?) ON CONFLICT (instance) DO UPDATE"
            " SET stream_ordering = excluded.stream_ordering", self._instance,
            stream_ordering)

    async def local_events_after(self, server_name: str, after: int, limit: int
                                 ) -> list[tuple[int, str, str]]:
        """As :meth:`FederationQueueStore.local_events_after`, this process's rooms only
        (pages through the others' events; fewer than ``limit`` rows: none left)."""
        if not self._writes_any:
            return []
        out: list[tuple[int, str, str]] = []
        position = after
        while len(out) < limit:
            rows = await self._inner.local_events_after(server_name, position, limit)
            out.extend(r for r in rows if self._owns(r[1]))
            if len(rows) < limit:
                break
            position = rows[-1][0]
        return out[:limit]
