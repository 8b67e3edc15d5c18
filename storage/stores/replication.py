"""``replication_positions``: the stream positions each writer process has made
readable (homeserver/replication/). Written by the writer a moment after they move,
read by workers catching up after a Redis disconnect or at start-up."""

from __future__ import annotations

from storage.database import Database, Txn


class ReplicationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def save_positions(self, instance: str, positions: dict[str, int]) -> None:
        """Record ``instance``'s readable positions; a position never moves back."""
        def _do(txn: Txn) -> None:
            txn.executemany(
                "INSERT INTO replication_positions (stream, instance, position)"
                " VALUES (?, ?, ?) ON CONFLICT (stream, instance) DO UPDATE"
                " SET position = excluded.position"
                " WHERE replication_positions.position < excluded.position",
                [(s, instance, int(p)) for s, p in sorted(positions.items())])

        await self._db.run("save_replication_positions", _do)

    async def get_positions(self, instance: str) -> dict[str, int]:
        rows = await self._db.query(
            "get_replication_positions",
            "SELECT stream, position FROM replication_positions WHERE instance = ?", instance)
        return {str(r[0]): int(r[1]) for r in rows}

    async def get_stream_positions(self, stream: str) -> dict[str, int]:
        """Every instance's recorded position of ``stream`` (a multi-writer stream's
        writers: homeserver/replication/multi_writer.py)."""
        rows = await self._db.query(
            "get_stream_replication_positions",
            "SELECT instance, position FROM replication_positions WHERE stream = ?", stream)
        return {str(r[0]): int(r[1]) for r in rows}
