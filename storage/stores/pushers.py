"""``pushers``: where a user's notifications should be pushed, and each HTTP pusher's
delivery position (homeserver/push/sender/): the stream ordering of the last push
action handled, so delivery resumes exactly there after a restart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage.database import Database, Txn

_COLS = ("app_id, pushkey, kind, app_display_name, device_display_name, profile_tag, lang,"
         " data, device_id, created_ts, last_stream_ordering, failing_since")
_CHUNK = 100
# A push action is unread while no m.read / m.read.private receipt (unthreaded, or of
# its thread) is at or after it: the same rule as GET /notifications.
_UNREAD = ("NOT EXISTS (SELECT 1 FROM receipts r WHERE r.room_id = a.room_id"
           " AND r.receipt_type IN ('m.read', 'm.read.private') AND r.user_id = a.user_id"
           " AND r.thread_id IN ('', a.thread_id) AND r.event_stream_ordering >= a.stream_ordering)")


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
    last_stream_ordering: int = 0
    failing_since: int | None = None


@dataclass(frozen=True)
class PendingPush:
    """One unread, notifying push action an HTTP pusher has still to send."""

    event_id: str
    room_id: str
    stream_ordering: int
    actions_json: str


def _pusher(user_id: str, r: Any) -> Pusher:
    return Pusher(user_id, r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8],
                  int(r[9]), int(r[10]), None if r[11] is None else int(r[11]))


class PusherStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_pushers(self, user_id: str) -> list[Pusher]:
        rows = await self._db.query(
            "get_pushers",
            f"SELECT {_COLS} FROM pushers WHERE user_id = ? ORDER BY created_ts, app_id, pushkey",
            user_id,
        )
        return [_pusher(user_id, r) for r in rows]

    async def set_pusher(self, p: Pusher, remove_for_other_users: bool) -> None:
        """Create or replace the (user, app_id, pushkey) pusher; ``remove_for_other_users``
        drops other users' pushers with the same app_id and pushkey (``append: false``).
        Delivery starts after the newest event: a new pusher is not sent history."""

        def _do(txn: Txn) -> None:
            if remove_for_other_users:
                txn.execute("DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id <> ?",
                            (p.app_id, p.pushkey, p.user_id))
            txn.execute("DELETE FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                        (p.user_id, p.app_id, p.pushkey))
            txn.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name,"
                " device_display_name, profile_tag, lang, data, device_id, created_ts,"
                " last_stream_ordering) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " COALESCE((SELECT MAX(stream_ordering) FROM events), 0))",
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

    # -- delivery (homeserver/push/sender/) -----------------------------------------------

    async def get_pusher(self, user_id: str, app_id: str, pushkey: str) -> Pusher | None:
        row = await self._db.query_one(
            "get_pusher",
            f"SELECT {_COLS} FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            user_id, app_id, pushkey,
        )
        return _pusher(user_id, row) if row else None

    async def http_pushers_for_users(self, user_ids: list[str]) -> list[Pusher]:
        out: list[Pusher] = []
        ids = list(dict.fromkeys(user_ids))
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i:i + _CHUNK]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "http_pushers_for_users",
                f"SELECT user_id, {_COLS} FROM pushers WHERE kind = 'http'"
                f" AND user_id IN ({marks}) ORDER BY user_id, created_ts, app_id, pushkey",
                *chunk,
            )
            out.extend(_pusher(r[0], r[1:]) for r in rows)
        return out

    async def http_pushers_with_pending(self) -> list[Pusher]:
        """HTTP pushers with notifying push actions after their position (start-up)."""
        rows = await self._db.query(
            "http_pushers_with_pending",
            f"SELECT p.user_id, {', '.join('p.' + c.strip() for c in _COLS.split(','))}"
            " FROM pushers p WHERE p.kind = 'http' AND EXISTS (SELECT 1 FROM"
            " event_push_actions a WHERE a.user_id = p.user_id AND a.notify = 1"
            " AND a.stream_ordering > p.last_stream_ordering)",
        )
        return [_pusher(r[0], r[1:]) for r in rows]

    async def pending_pushes(self, user_id: str, after: int, limit: int) -> list[PendingPush]:
        """The user's unread notifying push actions after ``after``, oldest first."""
        rows = await self._db.query(
            "pending_pushes",
            "SELECT a.event_id, a.room_id, a.stream_ordering, a.actions FROM event_push_actions a"
            f" WHERE a.user_id = ? AND a.notify = 1 AND a.stream_ordering > ? AND {_UNREAD}"
            " ORDER BY a.stream_ordering LIMIT ?",
            user_id, after, limit,
        )
        return [PendingPush(r[0], r[1], int(r[2]), r[3]) for r in rows]

    async def is_unread(self, user_id: str, event_id: str) -> bool:
        """Whether this push action is still notifying and unread (a late arrival)."""
        row = await self._db.query_one(
            "push_is_unread",
            f"SELECT 1 FROM event_push_actions a WHERE a.user_id = ? AND a.event_id = ?"
            f" AND a.notify = 1 AND {_UNREAD}",
            user_id, event_id,
        )
        return row is not None

    async def advance_pusher(self, user_id: str, app_id: str, pushkey: str, position: int,
                             success_ts: int | None) -> bool:
        """Move the pusher's position forward (never back: a pusher replaced meanwhile
        keeps its newer start) and clear its failure; False if it no longer exists."""

        def _do(txn: Txn) -> bool:
            txn.execute(
                "UPDATE pushers SET last_stream_ordering = ?, failing_since = NULL,"
                " last_success_ts = COALESCE(?, last_success_ts) WHERE user_id = ? AND app_id = ?"
                " AND pushkey = ? AND last_stream_ordering < ?",
                (position, success_ts, user_id, app_id, pushkey, position))
            return txn.query_one(
                "SELECT 1 FROM pushers WHERE user_id = ? AND app_id = ? AND pushkey = ?",
                (user_id, app_id, pushkey)) is not None

        return await self._db.run("advance_pusher", _do)

    async def set_failing_since(self, user_id: str, app_id: str, pushkey: str,
                                since: int | None) -> None:
        await self._db.execute(
            "set_pusher_failing_since",
            "UPDATE pushers SET failing_since = ? WHERE user_id = ? AND app_id = ? AND pushkey = ?",
            since, user_id, app_id, pushkey,
        )
