"""The ``event_push_actions`` table: which events notify (or highlight) which local
users, written once per published batch of events, read by /sync unread counts and
GET /notifications."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storage.database import Database, Txn

_CHUNK = 100  # rooms per query (two parameters each)
READ_TYPES = ("m.read", "m.read.private")


@dataclass(frozen=True)
class PushActionRow:
    """One user's push outcome for one event."""

    user_id: str
    room_id: str
    event_id: str
    stream_ordering: int
    notify: bool
    highlight: bool
    thread_id: str
    actions_json: str
    ts: int


@dataclass(frozen=True)
class ReadBound:
    """A user's read receipt position in a room: ``unthreaded`` (0: none) and, per
    thread id (``main`` or a thread root), the threaded receipt positions."""

    unthreaded: int
    threads: dict[str, int]

    def for_thread(self, thread_id: str) -> int:
        """Events at or below this position in ``thread_id`` are read."""
        return max(self.unthreaded, self.threads.get(thread_id, 0))


NO_RECEIPT = ReadBound(0, {})


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    ids = list(dict.fromkeys(items))
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


class PushActionsStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, rows: Sequence[PushActionRow]) -> None:
        """Insert a batch's rows (any number of events) in one transaction (idempotent
        on (user, event))."""
        if not rows:
            return

        def _do(txn: Txn) -> None:
            txn.executemany(
                "INSERT INTO event_push_actions (user_id, room_id, event_id, stream_ordering,"
                " notify, highlight, thread_id, actions, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, event_id) DO NOTHING",
                [(r.user_id, r.room_id, r.event_id, r.stream_ordering, int(r.notify),
                  int(r.highlight), r.thread_id, r.actions_json, r.ts) for r in rows],
            )

        await self._db.run("add_push_actions", _do)

    async def remove_event(self, room_id: str, event_id: str) -> None:
        """Forget a redacted event's notifications (as Synapse does)."""
        await self._db.execute(
            "remove_push_actions",
            "DELETE FROM event_push_actions WHERE room_id = ? AND event_id = ?", room_id, event_id)

    async def unread_rows(self, user_id: str, room_ids: Sequence[str]
                          ) -> tuple[dict[str, ReadBound], list[tuple[str, str, int, int]]]:
        """The user's read receipt positions in the rooms (m.read / m.read.private, the
        later of the two, as in Synapse), and [(room, thread, notify count, highlight
        count)] of the notifying rows after each room's unthreaded one, grouped by thread
        (an index range scan per room): one transaction, as every /sync asks."""

        def _do(txn: Txn) -> tuple[dict[str, ReadBound], list[tuple[str, str, int, int]]]:
            bounds = _read_bounds(txn, user_id, room_ids)
            base = {rid: bounds.get(rid, NO_RECEIPT).unthreaded for rid in room_ids}
            return bounds, _counts_after(txn, user_id, base)

        return await self._db.run("push_unread_rows", _do)

    async def thread_counts_after(self, user_id: str, room_id: str, thread_id: str,
                                  position: int) -> tuple[int, int]:
        """(notify, highlight) counts of one thread after ``position``."""
        row = await self._db.query_one(
            "push_thread_counts",
            "SELECT COUNT(*), SUM(highlight) FROM event_push_actions WHERE user_id = ?"
            " AND room_id = ? AND thread_id = ? AND notify = 1 AND stream_ordering > ?",
            user_id, room_id, thread_id, position,
        )
        return (int(row[0]), int(row[1] or 0)) if row else (0, 0)

    async def list_for_user(self, user_id: str, before: int | None, limit: int,
                            only_highlight: bool, unread_only: bool = False
                            ) -> list[PushActionRow]:
        """The user's notifying rows, newest first, below ``before`` (None: from the top);
        with ``unread_only``, only rows after the user's m.read / m.read.private receipt
        in the room (unthreaded, or threaded for the row's thread)."""
        clauses = ["user_id = ?", "notify = 1"]
        args: list[object] = [user_id]
        if unread_only:
            clauses.append(
                "NOT EXISTS (SELECT 1 FROM receipts r WHERE r.room_id = event_push_actions.room_id"
                " AND r.receipt_type IN (?, ?) AND r.user_id = event_push_actions.user_id"
                " AND r.thread_id IN ('', event_push_actions.thread_id)"
                " AND r.event_stream_ordering >= event_push_actions.stream_ordering)")
            args.extend(READ_TYPES)
        if before is not None:
            clauses.append("stream_ordering < ?")
            args.append(before)
        if only_highlight:
            clauses.append("highlight = 1")
        rows = await self._db.query(
            "list_push_actions",
            "SELECT user_id, room_id, event_id, stream_ordering, notify, highlight, thread_id,"
            f" actions, ts FROM event_push_actions WHERE {' AND '.join(clauses)}"
            " ORDER BY stream_ordering DESC LIMIT ?",
            *args, limit,
        )
        return [PushActionRow(r[0], r[1], r[2], int(r[3]), bool(r[4]), bool(r[5]), r[6], r[7],
                              int(r[8])) for r in rows]


def _read_bounds(txn: Txn, user_id: str, room_ids: Sequence[str]) -> dict[str, ReadBound]:
    unthreaded: dict[str, int] = {}
    threads: dict[str, dict[str, int]] = {}
    for chunk in _chunks(room_ids):
        marks = ",".join("?" for _ in chunk)
        rows = txn.query(
            "SELECT room_id, thread_id, MAX(event_stream_ordering) FROM receipts"
            f" WHERE user_id = ? AND receipt_type IN (?, ?) AND room_id IN ({marks})"
            " GROUP BY room_id, thread_id", (user_id, *READ_TYPES, *chunk))
        for room_id, thread_id, pos in rows:
            if not thread_id:
                unthreaded[room_id] = int(pos)
            else:
                threads.setdefault(room_id, {})[thread_id] = int(pos)
    return {rid: ReadBound(unthreaded.get(rid, 0), threads.get(rid, {}))
            for rid in set(unthreaded) | set(threads)}


def _counts_after(txn: Txn, user_id: str, bounds: dict[str, int]
                  ) -> list[tuple[str, str, int, int]]:
    out: list[tuple[str, str, int, int]] = []
    for chunk in _chunks(list(bounds)):
        where = " OR ".join("(room_id = ? AND stream_ordering > ?)" for _ in chunk)
        args: list[object] = [user_id]
        for rid in chunk:
            args += [rid, bounds[rid]]
        rows = txn.query(
            "SELECT room_id, thread_id, COUNT(*), SUM(highlight) FROM event_push_actions"
            f" WHERE user_id = ? AND notify = 1 AND ({where}) GROUP BY room_id, thread_id",
            tuple(args))
        out.extend((r[0], r[1], int(r[2]), int(r[3] or 0)) for r in rows)
    return out
