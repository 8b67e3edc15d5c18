"""The ``devices`` table."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Txn


@dataclass(frozen=True)
class DeviceRecord:
    user_id: str
    device_id: str
    display_name: str | None
    created_ts: int
    last_seen_ts: int | None
    last_seen_ip: str | None
    last_seen_user_agent: str | None


_COLS = ("user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip,"
         " last_seen_user_agent")


def _row(r: tuple) -> DeviceRecord:
    return DeviceRecord(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6])


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert_device(
        self,
        user_id: str,
        device_id: str,
        display_name: str | None,
        now_ms: int,
        ip: str,
        user_agent: str,
    ) -> bool:
        """Create the device, or mark an existing one seen. Returns True if created.

        An existing device keeps its display name unless one is given.
        """

        def _upsert(txn: Txn) -> bool:
            row = txn.query_one(
                "SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?", (user_id, device_id)
            )
            if row is None:
                txn.execute(
                    f"INSERT INTO devices ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (user_id, device_id, display_name, now_ms, now_ms, ip, user_agent),
                )
                return True
            if display_name is not None:
                txn.execute(
                    "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
                    (display_name, user_id, device_id),
                )
            txn.execute(
                "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?, last_seen_user_agent = ?"
                " WHERE user_id = ? AND device_id = ?",
                (now_ms, ip, user_agent, user_id, device_id),
            )
            return False

        return await self._db.run("upsert_device", _upsert)

    async def get_device(self, user_id: str, device_id: str) -> DeviceRecord | None:
        row = await self._db.query_one(
            "get_device",
            f"SELECT {_COLS} FROM devices WHERE user_id = ? AND device_id = ?",
            user_id, device_id,
        )
        return _row(row) if row else None

    async def list_devices(self, user_id: str) -> list[DeviceRecord]:
        rows = await self._db.query(
            "list_devices",
            f"SELECT {_COLS} FROM devices WHERE user_id = ? ORDER BY created_ts, device_id",
            user_id,
        )
        return [_row(r) for r in rows]

    async def update_display_name(self, user_id: str, device_id: str, name: str | None) -> bool:
        count = await self._db.execute(
            "update_device_name",
            "UPDATE devices SET display_name = ? WHERE user_id = ? AND device_id = ?",
            name, user_id, device_id,
        )
        return count > 0

    async def mark_seen(
        self, user_id: str, device_id: str, now_ms: int, ip: str, user_agent: str
    ) -> None:
        await self._db.execute(
            "device_seen",
            "UPDATE devices SET last_seen_ts = ?, last_seen_ip = ?, last_seen_user_agent = ?"
            " WHERE user_id = ? AND device_id = ?",
            now_ms, ip, user_agent, user_id, device_id,
        )

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        def _delete(txn: Txn) -> None:
            txn.executemany(
                "DELETE FROM devices WHERE user_id = ? AND device_id = ?",
                [(user_id, d) for d in device_ids],
            )

        await self._db.run("delete_devices", _delete)
