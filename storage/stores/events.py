"""Events, their ordering, forward extremities, txn ids, redactions and the
per-event state groups, written together in one transaction per event.

State is kept as *state groups*: the state after an event is a group, stored either
as a full snapshot or as a delta on the previous group (a full snapshot every
``SNAPSHOT_INTERVAL`` deltas keeps reads short). The state after any event is thus
read with a bounded number of small queries, never by replaying history; the
``current_state`` table mirrors the latest state of each room for fast reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import Event, InternalMetadata, StateKey
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS
from storage.database import Database, Txn

SNAPSHOT_INTERVAL = 50

StateMap = dict[StateKey, str]  # (type, state_key) -> event_id


@dataclass(frozen=True)
class PersistRequest:
    """What the handler decided; the store only writes it."""

    event: Event
    stream_ordering: int
    # The state group holding the state before the event (None for the create event),
    # and that state itself (needed when a full snapshot is due).
    group_before: int | None
    state_before: StateMap
    txn_key: tuple[str, str, str] | None = None  # (user_id, device_id, txn_id)
    now_ms: int = 0
    # The event this redaction takes effect on, as the persister authorised it
    # (None: not a redaction, or one that does not apply).
    redaction_target: str | None = None


def _delta_depth(txn: Txn, group: int) -> int:
    row = txn.query_one("SELECT delta_depth FROM state_groups WHERE id = ?", (group,))
    return int(row[0]) if row else 0


def _write_state_group(txn: Txn, req: PersistRequest) -> int:
    ev = req.event
    group = txn.next_stream_id("state_groups")
    state_after = dict(req.state_before)
    state_after[ev.state_pair] = ev.event_id
    if req.group_before is None or _delta_depth(txn, req.group_before) + 1 >= SNAPSHOT_INTERVAL:
        txn.execute(
            "INSERT INTO state_groups (id, room_id, event_id, prev_group, delta_depth)"
            " VALUES (?, ?, ?, NULL, 0)",
            (group, ev.room_id, ev.event_id),
        )
        entries: Iterable[tuple[StateKey, str]] = state_after.items()
    else:
        txn.execute(
            "INSERT INTO state_groups (id, room_id, event_id, prev_group, delta_depth)"
            " VALUES (?, ?, ?, ?, ?)",
            (group, ev.room_id, ev.event_id, req.group_before,
             _delta_depth(txn, req.group_before) + 1),
        )
        entries = [(ev.state_pair, ev.event_id)]
    txn.executemany(
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id)"
        " VALUES (?, ?, ?, ?)",
        [(group, t, sk, eid) for (t, sk), eid in entries],
    )
    return group


def _persist(txn: Txn, req: PersistRequest) -> int:
    ev = req.event
    txn.execute(
        "INSERT INTO events (event_id, room_id, stream_ordering, depth, type, state_key,"
        " sender, origin_server_ts, json, txn_id, device_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ev.event_id, ev.room_id, req.stream_ordering, ev.depth, ev.type, ev.state_key,
         ev.sender, ev.origin_server_ts, json.dumps(ev.pdu, ensure_ascii=False),
         req.txn_key[2] if req.txn_key else None, req.txn_key[1] if req.txn_key else None),
    )
    if ev.is_state():
        group = _write_state_group(txn, req)
        txn.execute(
            "DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
            (ev.room_id, ev.type, ev.state_key),
        )
        txn.execute(
            "INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?, ?, ?, ?)",
            (ev.room_id, ev.type, ev.state_key, ev.event_id),
        )
    else:
        assert req.group_before is not None, "a non-state event needs prior state"
        group = req.group_before
    txn.execute("INSERT INTO event_state_groups (event_id, state_group) VALUES (?, ?)",
                (ev.event_id, group))

    if ev.type == "m.room.member" and ev.state_key is not None and ev.membership:
        txn.execute(
            "INSERT INTO room_memberships (event_id, room_id, user_id, sender, membership,"
            " stream_ordering) VALUES (?, ?, ?, ?, ?, ?)",
            (ev.event_id, ev.room_id, ev.state_key, ev.sender, ev.membership, req.stream_ordering),
        )
        txn.execute("DELETE FROM local_current_membership WHERE user_id = ? AND room_id = ?",
                    (ev.state_key, ev.room_id))
        txn.execute(
            "INSERT INTO local_current_membership (user_id, room_id, membership, event_id,"
            " stream_ordering, forgotten) VALUES (?, ?, ?, ?, ?, ?)",
            (ev.state_key, ev.room_id, ev.membership, ev.event_id, req.stream_ordering, False),
        )

    if req.redaction_target is not None:
        txn.execute("INSERT INTO redactions (event_id, redacts, stream_ordering) VALUES (?, ?, ?)",
                    (ev.event_id, req.redaction_target, req.stream_ordering))

    for prev in ev.prev_event_ids:
        txn.execute("DELETE FROM room_forward_extremities WHERE room_id = ? AND event_id = ?",
                    (ev.room_id, prev))
    txn.execute("INSERT INTO room_forward_extremities (room_id, event_id) VALUES (?, ?)",
                (ev.room_id, ev.event_id))

    if req.txn_key is not None:
        user_id, device_id, txn_id = req.txn_key
        txn.execute(
            "INSERT INTO event_txn_ids (room_id, user_id, device_id, txn_id, event_id, inserted_ts)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (ev.room_id, user_id, device_id, txn_id, ev.event_id, req.now_ms),
        )
    return group


def _row_to_event(row: tuple[Any, ...]) -> Event:
    event_id, room_version, raw, stream_ordering, txn_id, device_id, rejected, room_id, \
        outlier = row
    version = KNOWN_ROOM_VERSIONS[room_version]
    return Event(event_id, json.loads(raw), version,
                 InternalMetadata(stream_ordering=int(stream_ordering), txn_id=txn_id,
                                  device_id=device_id, rejected_reason=rejected,
                                  room_id=room_id, outlier=bool(outlier)))


# outlier: an event out of the room's timeline (e.g. history hidden by an admin purge).
_EVENT_COLS = ("e.event_id, r.room_version, e.json, e.stream_ordering, e.txn_id, e.device_id,"
               " e.rejected_reason, e.room_id, e.outlier")
_EVENT_FROM = "events e JOIN rooms r ON r.room_id = e.room_id"


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def persist_event(self, req: PersistRequest) -> int:
        """Write the event and its consequences; returns the state group after it."""
        return await self._db.run("persist_event", _persist, req)

    async def allocate_stream_ordering(self) -> int:
        return await self._db.run("next_event_stream", lambda txn: txn.next_stream_id("events"))

    async def max_stream_ordering(self) -> int:
        row = await self._db.query_one("max_stream", "SELECT MAX(stream_ordering) FROM events")
        return int(row[0]) if row and row[0] is not None else 0

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, Event] = {}
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "get_events",
                f"SELECT {_EVENT_COLS} FROM {_EVENT_FROM} WHERE e.event_id IN ({marks})",
                *chunk,
            )
            for row in rows:
                ev = _row_to_event(row)
                out[ev.event_id] = ev
        return out

    async def get_event(self, event_id: str) -> Event | None:
        return (await self.get_events([event_id])).get(event_id)

    async def get_event_by_txn(self, room_id: str, user_id: str, device_id: str,
                               txn_id: str) -> str | None:
        row = await self._db.query_one(
            "get_event_by_txn",
            "SELECT event_id FROM event_txn_ids WHERE room_id = ? AND user_id = ?"
            " AND device_id = ? AND txn_id = ?",
            room_id, user_id, device_id, txn_id,
        )
        return row[0] if row else None

    async def get_forward_extremities(self, room_id: str) -> list[str]:
        rows = await self._db.query(
            "extremities", "SELECT event_id FROM room_forward_extremities WHERE room_id = ?",
            room_id,
        )
        return [r[0] for r in rows]

    async def get_state_group_for_event(self, event_id: str) -> int | None:
        row = await self._db.query_one(
            "event_state_group", "SELECT state_group FROM event_state_groups WHERE event_id = ?",
            event_id,
        )
        return int(row[0]) if row else None

    async def state_group_at(self, room_id: str, position: int) -> int | None:
        """The state group after the room's latest event at or before ``position``,
        outliers included: history hidden by an admin purge keeps its state groups, and
        the state before the first event still in the timeline is read through them."""
        row = await self._db.query_one(
            "state_group_at",
            "SELECT g.state_group FROM events e JOIN event_state_groups g"
            " ON g.event_id = e.event_id WHERE e.room_id = ? AND e.stream_ordering <= ?"
            " ORDER BY e.stream_ordering DESC LIMIT 1",
            room_id, position,
        )
        return int(row[0]) if row else None

    async def get_state_for_group(self, group: int) -> StateMap:
        """Walk the delta chain down to a snapshot; nearer entries win."""

        def _read(txn: Txn) -> StateMap:
            state: StateMap = {}
            current: int | None = group
            while current is not None:
                for t, sk, eid in txn.query(
                    "SELECT type, state_key, event_id FROM state_group_entries"
                    " WHERE state_group = ?", (current,)
                ):
                    state.setdefault((t, sk), eid)
                row = txn.query_one("SELECT prev_group FROM state_groups WHERE id = ?", (current,))
                current = int(row[0]) if row and row[0] is not None else None
            return state

        return await self._db.run("state_for_group", _read)

    async def get_current_state_ids(self, room_id: str) -> StateMap:
        rows = await self._db.query(
            "current_state", "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?",
            room_id,
        )
        return {(r[0], r[1]): r[2] for r in rows}

    async def get_redaction_ids(self, event_ids: Iterable[str]) -> dict[str, str]:
        """redacted event id -> the id of the earliest redaction applied to it. Only a
        message (non-state) redaction of the target's own room counts, whatever an
        older row says."""
        ids = list(event_ids)
        out: dict[str, str] = {}
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "redactions",
                "SELECT x.redacts, x.event_id FROM redactions x"
                " JOIN events r ON r.event_id = x.event_id"
                " JOIN events t ON t.event_id = x.redacts"
                f" WHERE x.redacts IN ({marks}) AND r.room_id = t.room_id"
                " AND r.state_key IS NULL AND r.type = 'm.room.redaction'"
                " ORDER BY x.stream_ordering",
                *chunk,
            )
            for redacts, event_id in rows:
                out.setdefault(redacts, event_id)
        return out

    async def get_room_events_stream(
        self, room_id: str, from_exclusive: int, to_inclusive: int, limit: int
    ) -> list[Event]:
        """The latest ``limit`` events in (from, to], oldest first (sync timelines)."""
        rows = await self._db.query(
            "room_events_stream",
            f"SELECT {_EVENT_COLS} FROM {_EVENT_FROM} WHERE e.room_id = ?"
            " AND e.stream_ordering > ? AND e.stream_ordering <= ? AND e.outlier = ?"
            " ORDER BY e.stream_ordering DESC LIMIT ?",
            room_id, from_exclusive, to_inclusive, False, limit,
        )
        return [_row_to_event(r) for r in reversed(rows)]

    async def paginate_room_events(
        self, room_id: str, from_position: int, direction: str, limit: int,
        to_position: int | None = None,
    ) -> list[Event]:
        """Events by stream position, backwards (< from) or forwards (> from), in that order."""
        if direction == "b":
            cmp, order = "<", "DESC"
            bound = "AND e.stream_ordering > ?" if to_position is not None else ""
        else:
            cmp, order = ">", "ASC"
            bound = "AND e.stream_ordering <= ?" if to_position is not None else ""
        args: list[Any] = [room_id, from_position, False]
        if to_position is not None:
            args.append(to_position)
        args.append(limit)
        rows = await self._db.query(
            "paginate_room_events",
            f"SELECT {_EVENT_COLS} FROM {_EVENT_FROM} WHERE e.room_id = ?"
            f" AND e.stream_ordering {cmp} ? AND e.outlier = ? {bound}"
            f" ORDER BY e.stream_ordering {order} LIMIT ?",
            *args,
        )
        return [_row_to_event(r) for r in rows]

    async def rooms_with_events_between(self, room_ids: Iterable[str], from_exclusive: int,
                                        to_inclusive: int) -> set[str]:
        ids = list(room_ids)
        out: set[str] = set()
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            marks = ",".join("?" for _ in chunk)
            rows = await self._db.query(
                "rooms_changed",
                f"SELECT DISTINCT room_id FROM events WHERE room_id IN ({marks})"
                " AND stream_ordering > ? AND stream_ordering <= ?",
                *chunk, from_exclusive, to_inclusive,
            )
            out.update(r[0] for r in rows)
        return out


class StateHistoryStore:
    """Cheap answers to "what was X at stream position S" for linear (local) rooms."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def state_changes(self, room_id: str, event_type: str, state_key: str | None = None
                            ) -> list[tuple[int, str, str]]:
        """[(stream_ordering, state_key, json)] of every state event of a type, oldest first."""
        if state_key is None:
            rows = await self._db.query(
                "state_changes",
                "SELECT stream_ordering, state_key, json FROM events WHERE room_id = ?"
                " AND type = ? AND state_key IS NOT NULL ORDER BY stream_ordering",
                room_id, event_type,
            )
        else:
            rows = await self._db.query(
                "state_changes",
                "SELECT stream_ordering, state_key, json FROM events WHERE room_id = ?"
                " AND type = ? AND state_key = ? ORDER BY stream_ordering",
                room_id, event_type, state_key,
            )
        return [(int(r[0]), r[1], r[2]) for r in rows]
