"""Events, their ordering, forward extremities, txn ids, redactions and the
per-event state groups, written together in one transaction per event.

State is kept as *state groups*: the state after an event is a group, stored either
as a full snapshot or as a delta on the previous group (a full snapshot after
``_chain_limit`` deltas keeps reads short). The state after any event is thus
read with a bounded number of small queries, never by replaying history; the
``current_state`` table mirrors the latest state of each room for fast reads.

An event's JSON is written by :func:`_persist` and read through event_rows.py's
``row_to_event`` (or ``state_changes``) only: with ``secrets.encrypt_event_content`` it is sealed there
(``EventStore.codec``, homeserver/crypto/content.py), so every read path decrypts.

Events of other servers (issue 16) are written by mode (:class:`PersistRequest`):
accepted ones as local ones (with the current state changed by a resolution's delta);
backfilled ones with state groups and membership history only; soft-failed, rejected
and outlier events marked ``outlier`` (so no client read returns them), the first two
with state groups, outliers without. Backfilled and hidden events get negative stream
orderings (:meth:`EventStore.allocate_backfill_positions`). ``event_state_groups``
records the state group before each event as well as after it.

An event stored as an outlier (the row alone: send_join's state and auth chain, an
auth event fetched for another) that later arrives in its place in the graph is
*promoted* (``PersistRequest.promote``): its row gets the new stream position and
flags, and its state groups, membership row and the rest are written as for a new
event. Membership rows (``room_memberships``) also come from the room's state:
whenever a member event enters the current state or a state group written from a
given state (a join's, a gap's), a row is written for it if it has none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from homeserver.crypto.at_rest import AtRestError
from homeserver.crypto.content import PLAIN_CODEC, SEALED_LIKE, FieldCodec, event_location
from homeserver.events.model import Event, JsonDict, StateKey
from storage.database import Database, Txn
from storage.stores.event_cache import EventCache, bump_epoch, read_epoch
from storage.stores.event_rows import (
    EVENT_COLS,
    EVENT_FROM,
    META_COLS,
    event_from_row,
    open_event_json,
    rows_to_events,
)
from storage.stores.state_reads import (
    StateGroupCache,
    chunks,
    state_and_memberships_at,
    state_at,
    state_for_groups,
    states_and_memberships_at_many,
    states_at_many,
)

SNAPSHOT_INTERVAL = 50
# A delta chain may grow to a quarter of the state's size (at most MAX_CHAIN links) before
# the next full snapshot: a read then costs at most 1.25 snapshots' rows, and a room whose
# state grows to N entries stores about 4 N rows per N changes instead of a copy of its
# state every 50 (quadratic: 523,000 rows after 10,000 state changes in one room).
MAX_CHAIN = 1000


def _chain_limit(state_size: int) -> int:
    """How many deltas may follow a snapshot of a state of ``state_size`` entries."""
    return max(SNAPSHOT_INTERVAL, min(state_size // 4, MAX_CHAIN))

StateMap = dict[StateKey, str]  # (type, state_key) -> event_id


# How an event is written (PersistRequest.mode): what it touches besides its own row.
TIMELINE = "timeline"        # local or accepted remote: state, current state, extremities
BACKFILLED = "backfilled"    # history: state groups and membership history only
SOFT_FAILED = "soft_failed"  # state groups only; hidden (outlier) from clients
REJECTED = "rejected"        # state after = state before; hidden, never in any state
OUTLIER = "outlier"          # the row alone: no state groups, hidden
_HIDDEN = frozenset({SOFT_FAILED, REJECTED, OUTLIER})


@dataclass(frozen=True)
class PersistRequest:
    """What the handler decided; the store only writes it."""

    event: Event
    stream_ordering: int
    # A stored state group holding exactly the state before the event (None: no such
    # group, e.g. the create event, or after a fork the resolved state: then a group is
    # written for ``state_before``, as a delta on ``base`` if given), and that state.
    group_before: int | None
    state_before: StateMap
    txn_key: tuple[str, str, str] | None = None  # (user_id, device_id, txn_id)
    now_ms: int = 0
    # The event this redaction takes effect on, as the persister authorised it
    # (None: not a redaction, or one that does not apply).
    redaction_target: str | None = None
    mode: str = TIMELINE
    rejected_reason: str | None = None
    # (group, its state) to write a new ``state_before`` group as a delta on.
    base: tuple[int, StateMap] | None = None
    # TIMELINE: the change of the room's current state (key -> event id, None: removed);
    # None means the event's own key (the event is the room's only forward extremity).
    current_delta: dict[StateKey, str | None] | None = None
    # The event is stored already as an outlier (its row alone): update that row.
    promote: bool = False


def _delta_depth(txn: Txn, group: int) -> int:
    row = txn.query_one("SELECT delta_depth FROM state_groups WHERE id = ?", (group,))
    return int(row[0]) if row else 0


def _write_group(txn: Txn, room_id: str, event_id: str, base: tuple[int, StateMap] | None,
                 state: StateMap) -> int:
    """A new state group holding ``state``: a delta on ``base`` when that is only
    additions/replacements and the chain is short, else a full snapshot."""
    group = txn.next_stream_id("state_groups")
    entries: Iterable[tuple[StateKey, str]]
    depth = _delta_depth(txn, base[0]) + 1 if base is not None else 0
    if (base is not None and depth < _chain_limit(len(state))
            and all(k in state for k in base[1])):
        txn.execute(
            "INSERT INTO state_groups (id, room_id, event_id, prev_group, delta_depth)"
            " VALUES (?, ?, ?, ?, ?)", (group, room_id, event_id, base[0], depth))
        entries = [(k, v) for k, v in state.items() if base[1].get(k) != v]
    else:
        txn.execute(
            "INSERT INTO state_groups (id, room_id, event_id, prev_group, delta_depth)"
            " VALUES (?, ?, ?, NULL, 0)", (group, room_id, event_id))
        entries = state.items()
    txn.executemany(
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id)"
        " VALUES (?, ?, ?, ?)",
        [(group, t, sk, eid) for (t, sk), eid in entries],
    )
    return group


def _write_state(txn: Txn, req: PersistRequest) -> int | None:
    """The event's state groups (before and after it); returns the group after."""
    ev = req.event
    if req.mode == OUTLIER:
        return None
    before = req.group_before
    if before is None and req.state_before:
        before = _write_group(txn, ev.room_id, ev.event_id, req.base, req.state_before)
    if ev.is_state() and req.mode != REJECTED:
        base = (before, req.state_before) if before is not None else None
        after = _write_group(txn, ev.room_id, ev.event_id, base,
                             {**req.state_before, ev.state_pair: ev.event_id})
    else:
        assert before is not None, "a non-state event needs prior state"
        after = before
    txn.execute("INSERT INTO event_state_groups (event_id, state_group, state_group_before)"
                " VALUES (?, ?, ?)", (ev.event_id, after, before))
    return after


def _ensure_memberships(txn: Txn, room_id: str, event_ids: Iterable[str],
                        codec: FieldCodec) -> None:
    """A ``room_memberships`` row for each of these member events of the room that has
    none (an outlier's, e.g. of the state a join handed over), read from its stored
    row: membership is known wherever the event is part of the room's state."""
    for chunk in chunks(sorted(set(event_ids))):
        marks = ",".join("?" for _ in chunk)
        have = {r[0] for r in txn.query(
            f"SELECT event_id FROM room_memberships WHERE event_id IN ({marks})", tuple(chunk))}
        missing = [e for e in chunk if e not in have]
        if not missing:
            continue
        marks = ",".join("?" for _ in missing)
        for eid, sk, sender, position, raw in txn.query(
                "SELECT event_id, state_key, sender, stream_ordering, json FROM events"
                f" WHERE event_id IN ({marks}) AND room_id = ? AND type = ?"
                " AND state_key IS NOT NULL AND rejected_reason IS NULL",
                (*missing, room_id, "m.room.member")):
            content = json.loads(codec.open(raw, event_location(eid))).get("content")
            membership = content.get("membership") if isinstance(content, dict) else None
            if isinstance(membership, str) and membership:
                txn.execute(
                    "INSERT INTO room_memberships (event_id, room_id, user_id, sender,"
                    " membership, stream_ordering) VALUES (?, ?, ?, ?, ?, ?)",
                    (eid, room_id, sk, sender, membership, int(position)))


def _set_current(txn: Txn, room_id: str, key: StateKey, event_id: str | None,
                 codec: FieldCodec = PLAIN_CODEC) -> None:
    """One key of the room's current state, and for members their current membership."""
    txn.execute("DELETE FROM current_state WHERE room_id = ? AND type = ? AND state_key = ?",
                (room_id, key[0], key[1]))
    if key[0] == "m.room.member":
        txn.execute("DELETE FROM local_current_membership WHERE user_id = ? AND room_id = ?",
                    (key[1], room_id))
    if event_id is None:
        return
    txn.execute(
        "INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?, ?, ?, ?)",
        (room_id, key[0], key[1], event_id))
    if key[0] == "m.room.member":
        _ensure_memberships(txn, room_id, [event_id], codec)
        txn.execute(
            "INSERT INTO local_current_membership (user_id, room_id, membership, event_id,"
            " stream_ordering, forgotten) SELECT user_id, room_id, membership, event_id,"
            " stream_ordering, ? FROM room_memberships WHERE event_id = ?",
            (False, event_id))


def _persist(txn: Txn, req: PersistRequest, codec: FieldCodec = PLAIN_CODEC) -> int | None:
    ev = req.event
    mode = req.mode
    # Sealed here, in the database thread: the reactor never runs the AES work.
    if req.promote:
        # The row as first stored stays (its JSON included); only its place changes.
        txn.execute(
            "UPDATE events SET stream_ordering = ?, outlier = ?, rejected_reason = ?,"
            " soft_failed = ? WHERE event_id = ? AND outlier = ? AND rejected_reason IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM event_state_groups g"
            " WHERE g.event_id = events.event_id)",
            (req.stream_ordering, mode in _HIDDEN, req.rejected_reason, mode == SOFT_FAILED,
             ev.event_id, True))
        if txn.rowcount != 1:
            raise ValueError(f"{ev.event_id} is no outlier to promote")
        bump_epoch(txn)  # its cached row (an outlier's) is stale everywhere
    else:
        stored = codec.seal(json.dumps(ev.pdu, ensure_ascii=False),
                            event_location(ev.event_id))
        txn.execute(
            "INSERT INTO events (event_id, room_id, stream_ordering, depth, type, state_key,"
            " sender, origin_server_ts, json, txn_id, device_id, outlier, rejected_reason,"
            " soft_failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ev.event_id, ev.room_id, req.stream_ordering, ev.depth, ev.type, ev.state_key,
             ev.sender, ev.origin_server_ts, stored,
             req.txn_key[2] if req.txn_key else None, req.txn_key[1] if req.txn_key else None,
             mode in _HIDDEN, req.rejected_reason, mode == SOFT_FAILED),
        )
    group = _write_state(txn, req)
    if req.group_before is None and req.state_before and mode != OUTLIER:
        # A state written from what was given (a join's, a gap's): its members' rows.
        _ensure_memberships(txn, ev.room_id, (
            eid for (t, _sk), eid in req.state_before.items() if t == "m.room.member"), codec)
    if mode in _HIDDEN:
        return group

    if ev.type == "m.room.member" and ev.state_key is not None and ev.membership:
        if req.promote:  # an out-of-band membership had a row at its old position
            txn.execute("DELETE FROM room_memberships WHERE event_id = ?", (ev.event_id,))
        txn.execute(
            "INSERT INTO room_memberships (event_id, room_id, user_id, sender, membership,"
            " stream_ordering) VALUES (?, ?, ?, ?, ?, ?)",
            (ev.event_id, ev.room_id, ev.state_key, ev.sender, ev.membership, req.stream_ordering),
        )
    if req.redaction_target is not None:
        txn.execute("INSERT INTO redactions (event_id, redacts, stream_ordering) VALUES (?, ?, ?)",
                    (ev.event_id, req.redaction_target, req.stream_ordering))
    if mode != TIMELINE:
        return group

    delta = req.current_delta
    if delta is None:
        delta = {ev.state_pair: ev.event_id} if ev.is_state() else {}
    for key, value in delta.items():
        _set_current(txn, ev.room_id, key, value, codec)
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


def _is_plain_message(req: PersistRequest) -> bool:
    """A new local-style message event on a stored state group: all that
    :func:`_persist_messages` writes for it."""
    return (req.mode == TIMELINE and not req.promote and not req.event.is_state()
            and req.group_before is not None and req.current_delta is None)


_MESSAGE_ROWS = 50  # rows per multi-row INSERT (14 columns: far below SQLite's limit)


def _insert_rows(txn: Txn, head: str, rows: list[tuple[Any, ...]]) -> None:
    """``head`` + ``VALUES (...), (...)``: one statement (one round trip on PostgreSQL)
    per chunk of rows, where ``executemany`` would send one per row."""
    for chunk in chunks(rows, _MESSAGE_ROWS):
        marks = "(" + ", ".join("?" for _ in chunk[0]) + ")"
        txn.execute(f"{head} VALUES " + ", ".join(marks for _ in chunk),
                    [v for row in chunk for v in row])


def _persist_messages(txn: Txn, reqs: list[PersistRequest], codec: FieldCodec) -> None:
    """What :func:`_persist` writes for each of these message events of one room (all
    :func:`_is_plain_message`, in graph order), with a statement per table instead of
    per event: group commit of sends (issue 18). The room's forward extremities end as
    the sequential writes would leave them: an event cited by a later one of the batch
    is never one."""
    room_id = reqs[0].event.room_id
    _insert_rows(txn, "INSERT INTO events (event_id, room_id, stream_ordering, depth, type,"
                 " state_key, sender, origin_server_ts, json, txn_id, device_id, outlier,"
                 " rejected_reason, soft_failed)", [
                     (r.event.event_id, r.event.room_id, r.stream_ordering, r.event.depth,
                      r.event.type, None, r.event.sender, r.event.origin_server_ts,
                      codec.seal(json.dumps(r.event.pdu, ensure_ascii=False),
                                 event_location(r.event.event_id)),
                      r.txn_key[2] if r.txn_key else None,
                      r.txn_key[1] if r.txn_key else None, False, None, False)
                     for r in reqs])
    _insert_rows(txn, "INSERT INTO event_state_groups (event_id, state_group,"
                 " state_group_before)",
                 [(r.event.event_id, r.group_before, r.group_before) for r in reqs])
    redactions = [(r.event.event_id, r.redaction_target, r.stream_ordering)
                  for r in reqs if r.redaction_target is not None]
    if redactions:
        _insert_rows(txn, "INSERT INTO redactions (event_id, redacts, stream_ordering)",
                     redactions)
    cited = {p for r in reqs for p in r.event.prev_event_ids}
    for chunk in chunks(sorted(cited)):
        marks = ",".join("?" for _ in chunk)
        txn.execute("DELETE FROM room_forward_extremities WHERE room_id = ?"
                    f" AND event_id IN ({marks})", (room_id, *chunk))
    _insert_rows(txn, "INSERT INTO room_forward_extremities (room_id, event_id)",
                 [(room_id, r.event.event_id) for r in reqs if r.event.event_id not in cited])
    txns = [(room_id, *r.txn_key, r.event.event_id, r.now_ms) for r in reqs
            if r.txn_key is not None]
    if txns:
        _insert_rows(txn, "INSERT INTO event_txn_ids (room_id, user_id, device_id, txn_id,"
                     " event_id, inserted_ts)", txns)


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Encryption at rest of event JSON (secrets.encrypt_event_content), set at wiring.
        self.codec: FieldCodec = PLAIN_CODEC
        # Decoded PDUs shared by the reads that ask for them (``shared=True``).
        self.event_cache = EventCache()
        # Committed state groups (immutable), read again by every /sync of their rooms.
        self.state_cache = StateGroupCache()

    async def persist_event(self, req: PersistRequest) -> int | None:
        """Write the event and its consequences; returns the state group after it
        (None for an outlier)."""
        self.event_cache.discard([req.event.event_id])  # stored again after a purge
        return await self._db.run("persist_event", _persist, req, self.codec)

    async def persist_events(self, reqs: list[PersistRequest]) -> list[int | None]:
        """:meth:`persist_event` for several events in one transaction (a join's state
        and auth chain as outliers: one commit, not one per event; issue 16 "Speed")."""
        def _all(txn: Txn) -> list[int | None]:
            return [_persist(txn, req, self.codec) for req in reqs]

        self.event_cache.discard(r.event.event_id for r in reqs)
        return await self._db.run("persist_events", _all) if reqs else []

    async def persist_messages(self, reqs: list[PersistRequest]) -> None:
        """Several message events of one room in one transaction (the persister's group
        commit): the plain ones with a statement per table, any other as
        :meth:`persist_event` would write it, all in the given order."""
        def _all(txn: Txn) -> None:
            run: list[PersistRequest] = []
            for req in reqs:
                if _is_plain_message(req) and (not run or
                                               run[0].event.room_id == req.event.room_id):
                    run.append(req)
                    continue
                if run:
                    _persist_messages(txn, run, self.codec)
                    run = []
                if _is_plain_message(req):
                    run.append(req)
                else:
                    _persist(txn, req, self.codec)
            if run:
                _persist_messages(txn, run, self.codec)

        if reqs:
            await self._db.run("persist_messages", _all)

    async def allocate_stream_ordering(self) -> int:
        return await self._db.run("next_event_stream", lambda txn: txn.next_stream_id("events"))

    async def allocate_stream_orderings(self, n: int) -> list[int]:
        """``n`` new stream orderings, ascending, in one round trip (a group commit)."""
        return await self._db.run("next_event_streams",
                                  lambda txn: txn.next_stream_ids("events", n))

    async def allocate_backfill_positions(self, n: int) -> list[int]:
        """``n`` new negative stream orderings, each below every one given before
        (backfilled history and hidden events sort before all live events)."""
        def _alloc(txn: Txn) -> list[int]:
            return [-txn.next_stream_id("events_backfill") for _ in range(n)]

        return await self._db.run("next_backfill_stream", _alloc)

    async def get_state_groups(self, event_ids: Iterable[str]
                               ) -> dict[str, tuple[int, int | None]]:
        """event id -> (state group after it, state group before it) for the events
        that have state (not outliers, not unknown)."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, tuple[int, int | None]] = {}
        for i in range(0, len(ids), 200):
            chunk = ids[i:i + 200]
            marks = ",".join("?" for _ in chunk)
            for eid, after, before in await self._db.query(
                    "event_state_groups",
                    "SELECT event_id, state_group, state_group_before FROM event_state_groups"
                    f" WHERE event_id IN ({marks})", *chunk):
                out[eid] = (int(after), int(before) if before is not None else None)
        return out

    async def max_stream_ordering(self) -> int:
        row = await self._db.query_one("max_stream", "SELECT MAX(stream_ordering) FROM events")
        return int(row[0]) if row and row[0] is not None else 0

    async def get_events(self, event_ids: Iterable[str], shared: bool = False
                         ) -> dict[str, Event]:
        """``shared``: the events' PDUs may be the cached copies other readers also hold
        (the caller never mutates them; see event_cache.py)."""
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return {}
        out: dict[str, Event] = {}
        cache = self.event_cache if shared else None
        if cache is not None:
            cache.at_epoch(await self._db.run("event_cache_epoch", read_epoch))
            missing = []
            for event_id in ids:
                cached = cache.get(event_id)
                if cached is None:
                    missing.append(event_id)
                else:
                    out[event_id] = cached
            ids = missing
            if not ids:
                return out

        def _read(txn: Txn) -> tuple[int, list[tuple[Any, ...]]]:
            epoch = read_epoch(txn) if cache is not None else 0
            rows: list[tuple[Any, ...]] = []
            for chunk in chunks(ids, 500):
                rows += txn.query(f"SELECT {EVENT_COLS} FROM {EVENT_FROM}"
                                  f" WHERE e.event_id IN ({','.join('?' for _ in chunk)})",
                                  tuple(chunk))
            return epoch, rows

        epoch, rows = await self._db.run("get_events", _read)
        for ev in await rows_to_events(rows, self.codec):
            out[ev.event_id] = ev
        if cache is not None and cache.at_epoch(epoch):
            for row in rows:
                if row[0] in out:
                    cache.put(epoch, out[row[0]])
        return out

    async def _through_cache(self, epoch: int, rows: list[tuple[Any, ...]]) -> list[Event]:
        """Events from ``META_COLS`` rows read at ``epoch``: their PDUs from the cache,
        the JSON of the others read (one more transaction), decoded and cached."""
        cache = self.event_cache
        keep = cache.at_epoch(epoch)
        pdus: dict[str, JsonDict] = {}
        missing: list[str] = []
        for row in rows:
            cached = cache.get(row[0]) if keep else None
            if cached is None:
                missing.append(row[0])
            else:
                pdus[row[0]] = cached.pdu
        now = epoch
        if missing:
            def _read(txn: Txn) -> tuple[int, list[tuple[Any, ...]]]:
                found: list[tuple[Any, ...]] = []
                now = read_epoch(txn)
                for chunk in chunks(missing, 500):
                    found += txn.query(
                        "SELECT event_id, json FROM events"
                        f" WHERE event_id IN ({','.join('?' for _ in chunk)})", tuple(chunk))
                return now, found

            now, found = await self._db.run("get_event_json", _read)
            try:
                for event_id, raw in found:
                    pdus[event_id] = open_event_json(self.codec, event_id, raw)
            except AtRestError as e:
                await self.codec.vault.refused(e)
                raise
        events = [event_from_row(row[0], row[1], pdus[row[0]], list(row[2:])) for row in rows
                  if row[0] in pdus]
        if missing and now == epoch and cache.at_epoch(now):
            fresh = set(missing)
            for ev in events:
                if ev.event_id in fresh:
                    cache.put(now, ev)
        return events

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
            " AND e.soft_failed = ? AND e.rejected_reason IS NULL"
            " ORDER BY e.stream_ordering DESC LIMIT 1",
            room_id, position, False,
        )
        if row is None:
            # Nothing held at or before it (a room joined over federation: its earlier
            # history is not here): the state before the room's first event after it.
            row = await self._db.query_one(
                "state_group_before_first",
                "SELECT g.state_group_before FROM events e JOIN event_state_groups g"
                " ON g.event_id = e.event_id WHERE e.room_id = ? AND e.stream_ordering > ?"
                " AND e.soft_failed = ? AND e.rejected_reason IS NULL"
                " ORDER BY e.stream_ordering ASC LIMIT 1",
                room_id, position, False,
            )
        return int(row[0]) if row and row[0] is not None else None

    async def get_state_for_group(self, group: int) -> StateMap:
        """The delta chain down to a snapshot, nearer entries winning, read in two
        queries however long the chain is (state_reads.py :func:`state_for_groups`)."""

        def _read(txn: Txn) -> StateMap:
            return state_for_groups(txn, [group], self.state_cache)[group]

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
        if not ids:
            return {}

        def _read(txn: Txn) -> dict[str, str]:
            # The redaction rows first (by their index: most events have none), then
            # only those checked against both events. In one statement SQLite looked
            # every target up in events first (an initial /sync asks for 20,000).
            found: list[str] = []
            for chunk in chunks(ids, 500):
                found += [str(r[0]) for r in txn.query(
                    "SELECT event_id FROM redactions"
                    f" WHERE redacts IN ({','.join('?' for _ in chunk)})", tuple(chunk))]
            rows: list[tuple[Any, ...]] = []
            for chunk in chunks(sorted(set(found)), 500):
                rows += txn.query(
                    "SELECT x.stream_ordering, x.redacts, x.event_id FROM redactions x"
                    " JOIN events r ON r.event_id = x.event_id"
                    " JOIN events t ON t.event_id = x.redacts"
                    f" WHERE x.event_id IN ({','.join('?' for _ in chunk)})"
                    " AND r.room_id = t.room_id"
                    " AND r.state_key IS NULL AND r.type = 'm.room.redaction'", tuple(chunk))
            out: dict[str, str] = {}
            for _position, redacts, event_id in sorted(rows):  # the earliest applies
                out.setdefault(str(redacts), str(event_id))
            return out

        return await self._db.run("redactions", _read)

    async def get_room_events_stream(
        self, room_id: str, from_exclusive: int, to_inclusive: int, limit: int,
        shared: bool = False,
    ) -> list[Event]:
        """The latest ``limit`` events in (from, to], oldest first (sync timelines);
        ``shared`` as in :meth:`get_events`."""
        sql = (f"SELECT {META_COLS if shared else EVENT_COLS} FROM {EVENT_FROM}"
               " WHERE e.room_id = ? AND e.stream_ordering > ? AND e.stream_ordering <= ?"
               " AND e.outlier = ? ORDER BY e.stream_ordering DESC LIMIT ?")
        args = (room_id, from_exclusive, to_inclusive, False, limit)

        def _read(txn: Txn) -> tuple[int, list[tuple[Any, ...]]]:
            epoch = read_epoch(txn) if shared else 0
            return epoch, txn.query(sql, args)

        epoch, rows = await self._db.run("room_events_stream", _read)
        rows.reverse()
        return await (self._through_cache(epoch, rows) if shared
                      else rows_to_events(rows, self.codec))

    async def latest_room_events(self, room_ids: list[str], to_inclusive: int, limit: int
                                 ) -> dict[str, list[Event]]:
        """:meth:`get_room_events_stream` (``shared``, from the start) of each room, in
        one transaction: an initial /sync's first timeline batches."""
        sql = (f"SELECT {META_COLS} FROM {EVENT_FROM} WHERE e.room_id = ?"
               " AND e.stream_ordering <= ? AND e.outlier = ?"
               " ORDER BY e.stream_ordering DESC LIMIT ?")

        def _read(txn: Txn) -> tuple[int, list[tuple[Any, ...]]]:
            epoch = read_epoch(txn)
            rows: list[tuple[Any, ...]] = []
            for room_id in room_ids:
                found = txn.query(sql, (room_id, to_inclusive, False, limit))
                found.reverse()
                rows += found
            return epoch, rows

        epoch, rows = await self._db.run("latest_room_events", _read)
        out: dict[str, list[Event]] = {room_id: [] for room_id in room_ids}
        for ev in await self._through_cache(epoch, rows):
            out[ev.room_id].append(ev)
        return out

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
            f"SELECT {EVENT_COLS} FROM {EVENT_FROM} WHERE e.room_id = ?"
            f" AND e.stream_ordering {cmp} ? AND e.outlier = ? {bound}"
            f" ORDER BY e.stream_ordering {order} LIMIT ?",
            *args,
        )
        return await rows_to_events(rows, self.codec)

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


    # -- encryption at rest (``parley keys rotate``) --------------------------------------

    async def stored_json_page(self, after: str, limit: int, sealed_only: bool
                               ) -> list[tuple[str, str]]:
        """(event id, JSON as stored) of events after ``after`` by id; ``sealed_only``:
        only envelopes (when content encryption was switched off again)."""
        cond = " AND json LIKE ?" if sealed_only else ""
        args: list[Any] = [after, SEALED_LIKE] if sealed_only else [after]
        rows = await self._db.query(
            "stored_event_json",
            f"SELECT event_id, json FROM events WHERE event_id > ?{cond}"
            " ORDER BY event_id LIMIT ?", *args, limit)
        return [(str(r[0]), str(r[1])) for r in rows]

    async def rewrite_stored_json(self, event_id: str, stored: str) -> bool:
        """Rewrite one event's JSON in its target form (sealed under the active key, or
        plaintext with encryption off) in its own transaction, only if it still holds
        ``stored``. AtRestError (audited) if ``stored`` cannot be opened."""
        codec = self.codec

        async def rewrite() -> str:
            return codec.rewrite(stored, event_location(event_id))

        new = await codec.audited(rewrite)
        n = await self._db.execute(
            "rewrite_event_json",
            "UPDATE events SET json = ? WHERE event_id = ? AND json = ?",
            new, event_id, stored)
        return n == 1

    async def get_state_for_groups(self, groups: Iterable[int]) -> dict[int, StateMap]:
        """:meth:`get_state_for_group` for several groups in one transaction of two
        queries per chunk (their delta chains, then the chains' entries), instead of two
        per link of each chain: an initial /sync reads a state per room (issue 18)."""
        wanted = sorted(set(groups))
        if not wanted:
            return {}
        return await self._db.run("state_for_groups", state_for_groups, wanted,
                                  self.state_cache)

    async def get_state_at(self, room_id: str, position: int) -> StateMap:
        """The state after the room's latest event at or before ``position`` (as
        :meth:`state_group_at` picks it, then :meth:`get_state_for_group`) in one
        transaction: /sync reads two per room (issue 18)."""
        return await self._db.run("state_at", state_at, room_id, position, self.state_cache)

    async def get_state_and_memberships_at(self, room_id: str, position: int
                                           ) -> tuple[StateMap, dict[str, tuple[str, str]]]:
        """:meth:`get_state_at`, and (user id, membership) of each of its member events
        that is stored and has a ``room_memberships`` row, in one transaction: /sync's
        room summary counts a whole room's memberships without decoding their JSON."""
        return await self._db.run("state_and_memberships_at", state_and_memberships_at,
                                  room_id, position, self.state_cache)

    async def get_states_at_many(self, pairs: list[tuple[str, int]]) -> list[StateMap]:
        """:meth:`get_state_at` of each (room id, position), in one transaction."""
        return await self._db.run("states_at_many", states_at_many, pairs, self.state_cache)

    async def get_states_and_memberships_at_many(
            self, room_ids: list[str], position: int,
    ) -> list[tuple[StateMap, dict[str, tuple[str, str]]]]:
        """:meth:`get_state_and_memberships_at` of each room, in one transaction."""
        return await self._db.run("states_and_memberships_at_many",
                                  states_and_memberships_at_many, room_ids, position,
                                  self.state_cache)
