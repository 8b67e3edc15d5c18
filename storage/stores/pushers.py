"""``pushers``: where a user's notifications should be pushed (stored; delivery later)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

_COLS = ("app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang,"
         " data, device_id, created_ts")


@dataclass(frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    device_id: str | None
    created_ts: int


class PusherStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_pushers(self, user_id: str) -> list[Pusher]:
        rows = await self._db.query(
            "get_pushers",
            f"SELECT {_COLS} FROM pushers WHERE user_id = ? ORDER BY created_ts, app_id, pushkey",
            user_id,
        )
        return [Pusher(user_id, r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8],
                       int(r[9])) for r in rows]

    async def set_pusher(self, p: Pusher, remove_for_other_users: bool) -> None:
        """Create or replace the (user, app_id, pushkey) pusher; ``remove_for_other_users``
        drops other users' pushers with the same app_id and pushkey (``append: false``)."""

        def _do(txn: Txn) -> None:
            if remove_for_other_users:
                txn.execute("DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                            (p.app_id, p.pushkey, p.user_id))
            txn.execute("DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                        (p.user_id, p.app_id, p.pushkey))
            txn.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name,"
                " device_display_name, profile_tag, lang, data, device_id, created_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (p.user_id, p.app_id, p.pushkey, p.kind, p.app_display_name,
                 p.device_display_name, p.profile_tag, p.lang,
                 json.dumps(p.data, ensure_ascii=False, sort_keys=True), p.device_id, p.created_ts),
            )

        await self._db.run("set_pusher", _do)

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> bool:
        count = await self._db.execute(
            "delete_pusher", "DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            user_id, app_id, pushkey,
        )
        return count > 0

    async def delete_device_pushers(self, user_id: str, device_id: str) -> int:
        """For when a device logs out (its pushers must stop)."""
        return await self._db.execute(
            "delete_device_pushers", "DELETE FROM pushers WHERE user_id = ? AND device_id = ?",
            user_id, device_id,
        )
