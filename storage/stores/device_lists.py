"""The device list stream (``device_lists_stream``): a row per change to a user's
devices or keys, and per membership change that may start or end two users sharing a
room. /sync and /keys/changes read the rows between two positions and decide, per
reader, who goes in ``changed`` and who in ``left``."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Txn

# Position of an empty stream: the sequence starts above it, so a token at 0 can only
# be an initial sync (see schema/0012_e2e_keys.*.sql).
EMPTY_POSITION = 1


@dataclass(frozen=True)
class DeviceListChange:
    stream_id: int
    user_id: str
    device_id: str | None  # a device or key change
    room_id: str | None  # a membership change (with membership "join" or "leave")
    membership: str | None
    only_to: str | None = None  # shown to this user alone (see schema/0019_*.sql)


class DeviceListStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def allocate_stream_id(self) -> int:
        return await self._db.run("next_device_lists_stream",
                                  lambda txn: txn.next_stream_id("device_lists"))

    async def max_stream_id(self) -> int:
        row = await self._db.query_one("max_device_lists",
                                       "SELECT MAX(stream_id) FROM device_lists_stream")
        return max(EMPTY_POSITION, int(row[0]) if row and row[0] is not None else 0)

    async def add_device_changes(self, stream_id: int, user_id: str,
                                 device_ids: list[str], only_to: str | None = None) -> None:
        def _do(txn: Txn) -> None:
            txn.executemany(
                "INSERT INTO device_lists_stream (stream_id, user_id, device_id, only_to)"
                " VALUES (?, ?, ?, ?)",
                [(stream_id, user_id, d, only_to) for d in device_ids])

        await self._db.run("add_device_changes", _do)

    async def add_membership_change(self, stream_id: int, user_id: str, room_id: str,
                                    membership: str) -> None:
        await self._db.execute(
            "add_membership_change",
            "INSERT INTO device_lists_stream (stream_id, user_id, room_id, membership)"
            " VALUES (?, ?, ?, ?)", stream_id, user_id, room_id, membership)

    async def get_changes(self, since: int, upto: int) -> list[DeviceListChange]:
        """Rows at positions in (since, upto], in stream order."""
        rows = await self._db.query(
            "get_device_list_changes",
            "SELECT stream_id, user_id, device_id, room_id, membership, only_to"
            " FROM device_lists_stream WHERE stream_id > ? AND stream_id <= ? ORDER BY stream_id",
            since, upto)
        return [DeviceListChange(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]
