"""Rooms joined with partial state (schema 0050): which rooms, the join event the
full state is fetched at, the servers the resident named, and the one transaction that
swaps the partial state for the full one once it is known.

Why a transaction of its own: the rewrite of the state groups of every event since the
join, the room's current state and the removal of the partial-state mark must land
together, so a crash leaves either the partial room (the resync runs again on start)
or the full one, never a mix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from homeserver.crypto.content import PLAIN_CODEC, FieldCodec
from storage.database import Database, Txn
from storage.stores.events import StateMap, _set_current, _write_group

StateKey = tuple[str, str]


@dataclass(frozen=True)
class PartialStateRoom:
    room_id: str
    join_event_id: str
    resident: str
    servers: tuple[str, ...]  # servers_in_room from the send_join answer


@dataclass(frozen=True)
class StateRow:
    """An event's state groups (after it, before it) as event_state_groups holds them."""

    event_id: str
    after: int
    before: int | None


def _mark(txn: Txn, room_id: str, join_event_id: str, resident: str,
          servers: list[str], now_ms: int) -> None:
    txn.execute("DELETE FROM partial_state_room_servers WHERE room_id = ?", (room_id,))
    txn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (room_id,))
    txn.execute("INSERT INTO partial_state_rooms (room_id, join_event_id, resident,"
                " created_ts) VALUES (?, ?, ?, ?)", (room_id, join_event_id, resident, now_ms))
    txn.executemany("INSERT INTO partial_state_room_servers (room_id, server_name)"
                    " VALUES (?, ?)", [(room_id, s) for s in sorted(set(servers))])


def _clear(txn: Txn, room_id: str) -> None:
    txn.execute("DELETE FROM partial_state_room_servers WHERE room_id = ?", (room_id,))
    txn.execute("DELETE FROM partial_state_rooms WHERE room_id = ?", (room_id,))


def _apply(txn: Txn, room_id: str, join_event_id: str, full_before_join: StateMap,
           old_before_join: int, new_states: Mapping[int, StateMap], rows: list[StateRow],
           current_delta: Mapping[StateKey, str], codec: FieldCodec, position: int) -> int:
    base = _write_group(txn, room_id, join_event_id, None, full_before_join)
    mapping: dict[int, int] = {old_before_join: base}
    for old, state in sorted(new_states.items()):
        if old not in mapping:
            mapping[old] = _write_group(txn, room_id, join_event_id,
                                        (base, full_before_join), state)
    for row in rows:
        txn.execute(
            "UPDATE event_state_groups SET state_group = ?, state_group_before = ?"
            " WHERE event_id = ?",
            (mapping.get(row.after, row.after),
             mapping.get(row.before, row.before) if row.before is not None else None,
             row.event_id))
    for key, event_id in sorted(current_delta.items()):
        _set_current(txn, room_id, key, event_id, codec)
    _clear(txn, room_id)
    txn.execute("DELETE FROM partial_state_resynced WHERE room_id = ?", (room_id,))
    txn.execute("INSERT INTO partial_state_resynced (room_id, stream_ordering) VALUES (?, ?)",
                (room_id, position))
    return base


class PartialStateStore:
    def __init__(self, db: Database, codec: FieldCodec = PLAIN_CODEC) -> None:
        self._db = db
        self._codec = codec  # the events' at-rest codec (EventStore.codec)

    async def mark(self, room_id: str, join_event_id: str, resident: str,
                   servers: Iterable[str], now_ms: int) -> None:
        """The room is (about to be) joined with partial state at ``join_event_id``."""
        await self._db.run("partial_state_mark", _mark, room_id, join_event_id, resident,
                           list(servers), now_ms)

    async def clear(self, room_id: str) -> None:
        await self._db.run("partial_state_clear", _clear, room_id)

    async def rooms(self) -> list[PartialStateRoom]:
        rows = await self._db.query(
            "partial_state_rooms",
            "SELECT room_id, join_event_id, resident FROM partial_state_rooms ORDER BY room_id")
        servers = await self._db.query(
            "partial_state_servers", "SELECT room_id, server_name FROM partial_state_room_servers"
            " ORDER BY room_id, server_name")
        by_room: dict[str, list[str]] = {}
        for room_id, server in servers:
            by_room.setdefault(str(room_id), []).append(str(server))
        return [PartialStateRoom(str(r), str(j), str(s), tuple(by_room.get(str(r), [])))
                for r, j, s in rows]

    async def state_rows_since(self, room_id: str, join_event_id: str) -> list[StateRow]:
        """The state groups of the join and of every event placed on the partial state
        since: timeline events at or after the join's position, and hidden ones
        (soft-failed, rejected) that have state. Backfilled history (negative
        positions, not hidden) was placed on full state from /state_ids: left alone."""
        rows = await self._db.query(
            "partial_state_rows",
            "SELECT g.event_id, g.state_group, g.state_group_before FROM events e"
            " JOIN event_state_groups g ON g.event_id = e.event_id"
            " WHERE e.room_id = ? AND (e.outlier = ? OR e.stream_ordering >="
            " (SELECT j.stream_ordering FROM events j WHERE j.event_id = ?))",
            room_id, True, join_event_id)
        return [StateRow(str(e), int(a), int(b) if b is not None else None)
                for e, a, b in rows]

    async def apply_full_state(self, room_id: str, join_event_id: str,
                               full_before_join: StateMap, old_before_join: int,
                               new_states: Mapping[int, StateMap], rows: list[StateRow],
                               current_delta: Mapping[StateKey, str], position: int) -> int:
        """In one transaction: a full state group for the state before the join (the
        group of every event that had ``old_before_join``), one per other old group in
        ``new_states`` (deltas on it), ``rows`` pointed at the new groups, the current
        state changed by ``current_delta`` (membership rows included), the room's
        partial-state mark removed and ``position`` (an events-stream position) recorded
        as when it became full. Returns the new group before the join."""
        return await self._db.run(
            "partial_state_apply", _apply, room_id, join_event_id, full_before_join,
            old_before_join, new_states, rows, current_delta, self._codec, position)

    # ---- what /sync and sliding sync ask (homeserver/handlers/sync.py)

    async def partial_rooms(self, room_ids: Iterable[str]) -> set[str]:
        """Which of ``room_ids`` have partial state now. The table lists only rooms
        whose resync is still running (usually none), so it is read whole."""
        wanted = set(room_ids)
        if not wanted:
            return set()
        rows = await self._db.query("partial_state_room_ids",
                                    "SELECT room_id FROM partial_state_rooms")
        return {str(r[0]) for r in rows} & wanted

    async def resynced_between(self, room_ids: Iterable[str], since: int, upto: int
                               ) -> set[str]:
        """Which of ``room_ids`` got their full state at an events-stream position in
        (``since``, ``upto``]."""
        wanted = set(room_ids)
        if not wanted or upto <= since:
            return set()
        rows = await self._db.query(
            "partial_state_resynced_between",
            "SELECT room_id FROM partial_state_resynced WHERE stream_ordering > ?"
            " AND stream_ordering <= ?", since, upto)
        return {str(r[0]) for r in rows} & wanted
