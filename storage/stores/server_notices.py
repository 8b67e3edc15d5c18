"""The ``server_notice_rooms`` and ``known_logins`` tables (server notices and the
new-login detector)."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Txn


@dataclass(frozen=True)
class LoginNovelty:
    """What a login showed about an account's history."""

    had_history: bool  # the account had logged in before (any IP or device)
    new_ip: bool
    new_device: bool


class ServerNoticeStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_room(self, user_id: str) -> str | None:
        row = await self._db.query_one(
            "get_server_notice_room",
            "SELECT room_id FROM server_notice_rooms WHERE user_id = ?", user_id)
        return str(row[0]) if row else None

    async def set_room(self, user_id: str, room_id: str, now_ms: int) -> None:
        """Remember (or replace) the user's notices room."""
        await self._db.execute(
            "set_server_notice_room",
            "INSERT INTO server_notice_rooms (user_id, room_id, created_ts) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET room_id = EXCLUDED.room_id,"
            " created_ts = EXCLUDED.created_ts",
            user_id, room_id, now_ms)

    async def note_login(self, user_id: str, ip_hash: str | None, device_hash: str | None,
                         now_ms: int) -> LoginNovelty:
        """Record a login's IP and device (hashed) and say which were new, atomically."""

        def _note(txn: Txn) -> LoginNovelty:
            had = txn.query_one("SELECT 1 FROM known_logins WHERE user_id = ? LIMIT 1",
                                (user_id,)) is not None
            new: dict[str, bool] = {}
            for kind, value in (("ip", ip_hash), ("device", device_hash)):
                if value is None:
                    new[kind] = False
                    continue
                txn.execute(
                    "INSERT INTO known_logins (user_id, kind, value_hash, first_seen_ts,"
                    " last_seen_ts) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, kind, value_hash) DO NOTHING",
                    (user_id, kind, value, now_ms, now_ms))
                new[kind] = txn.rowcount == 1
                if not new[kind]:
                    txn.execute(
                        "UPDATE known_logins SET last_seen_ts = ? WHERE user_id = ?"
                        " AND kind = ? AND value_hash = ?", (now_ms, user_id, kind, value))
            return LoginNovelty(had, new["ip"], new["device"])

        return await self._db.run("note_login", _note)

    async def forget_user(self, user_id: str) -> None:
        """Drop a user's login history (deactivation / erasure)."""
        await self._db.execute("forget_known_logins",
                               "DELETE FROM known_logins WHERE user_id = ?", user_id)
