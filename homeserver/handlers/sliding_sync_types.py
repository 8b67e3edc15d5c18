"""Simplified sliding sync (MSC4186): the request model and the per-connection state.

Connection state is kept in memory, per process, bounded (see the ``MAX_*`` limits):
forgetting a connection only makes its client start over (``M_UNKNOWN_POS``), it never
loses data, because everything a connection remembers can be rebuilt from the database.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from homeserver.handlers.sync import SyncToken
from homeserver.handlers.sync_filter import MAX_TIMELINE_LIMIT
from homeserver.http.errors import MatrixError

JsonDict = dict[str, Any]

# Bounds on what one process remembers. A client over them starts a new connection
# (400 M_UNKNOWN_POS on its next request), as it would after a server restart.
MAX_CONNECTIONS = 10_000          # all users, least recently used forgotten first
MAX_CONNECTIONS_PER_DEVICE = 10   # distinct conn_ids of one (user, device)
MAX_ROOMS_PER_CONNECTION = 2_000  # rooms remembered as sent; older ones are resent whole
MAX_LAZY_MEMBERS_PER_ROOM = 100   # $LAZY members remembered as sent per room
# Memory units (a room or a $LAZY member remembered) held by all connections together;
# a unit costs at most ~500 bytes (a room; a member ~100), so at most ~250 MB. Past it
# the least recently used connections are forgotten.
MAX_WEIGHT_TOTAL = 500_000
MAX_SUBSCRIPTIONS = 1_000         # room subscriptions remembered per connection
POSITIONS_KEPT = 2                # the acknowledged position and the newest one

UNKNOWN_POS = "M_UNKNOWN_POS"

# Event types that move a room up the list (Synapse's DEFAULT_BUMP_EVENT_TYPES).
BUMP_EVENT_TYPES = ("m.room.create", "m.room.message", "m.room.encrypted", "m.sticker",
                    "m.call.invite", "m.poll.start", "m.beacon")

StatePattern = tuple[str, str]


@dataclass(frozen=True)
class RoomConfig:
    """What a client wants of a room: its state entries (with ``*``, ``$ME``,
    ``$LAZY``) and the number of timeline events."""

    required_state: frozenset[StatePattern]
    timeline_limit: int

    def merge(self, other: RoomConfig) -> RoomConfig:
        """A room in several lists / a subscription gets the union (as Synapse)."""
        return RoomConfig(self.required_state | other.required_state,
                          max(self.timeline_limit, other.timeline_limit))

    @classmethod
    def parse(cls, raw: JsonDict) -> RoomConfig:
        pairs = frozenset((str(t), str(k)) for t, k in raw.get("required_state") or [])
        # Capped as /sync's filter limit; clients asking for more get that many.
        return cls(pairs, min(int(raw.get("timeline_limit") or 0), MAX_TIMELINE_LIMIT))

    def wants(self, event_type: str, state_key: str, user_id: str,
              lazy_users: set[str]) -> bool:
        for ptype, pkey in self.required_state:
            if ptype != "*" and ptype != event_type:
                continue
            if pkey == "*" or pkey == state_key:
                return True
            if pkey == "$ME" and state_key == user_id:
                return True
            if pkey == "$LAZY" and event_type == "m.room.member" and state_key in lazy_users:
                return True
        return False

    @property
    def lazy(self) -> bool:
        return any(k == "$LAZY" for _, k in self.required_state)


@dataclass(frozen=True)
class ListFilters:
    is_dm: bool | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    room_types: tuple[str | None, ...] | None = None
    not_room_types: tuple[str | None, ...] = ()
    spaces: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, raw: JsonDict | None) -> ListFilters:
        raw = raw or {}
        rt = raw.get("room_types")
        return cls(raw.get("is_dm"), raw.get("is_encrypted"), raw.get("is_invite"),
                   tuple(rt) if rt is not None else None,
                   tuple(raw.get("not_room_types") or ()),
                   tuple(raw["spaces"]) if raw.get("spaces") is not None else None)


@dataclass(frozen=True)
class ListConfig:
    ranges: tuple[tuple[int, int], ...]
    room: RoomConfig
    filters: ListFilters


@dataclass
class SlidingSyncRequest:
    user_id: str
    device_id: str | None
    pos: str | None
    timeout_ms: int
    conn_id: str
    txn_id: str | None
    lists: dict[str, ListConfig]
    subscriptions: dict[str, RoomConfig]
    unsubscribe: tuple[str, ...]
    extensions: JsonDict

    @classmethod
    def parse(cls, user_id: str, device_id: str | None, pos: str | None, timeout_ms: int,
              body: JsonDict) -> SlidingSyncRequest:
        """``body`` already passed the servlet's JSON schema (types and bounds)."""
        lists = {name: ListConfig(
            tuple((int(a), int(b)) for a, b in raw.get("ranges") or []),
            RoomConfig.parse(raw), ListFilters.parse(raw.get("filters")))
            for name, raw in (body.get("lists") or {}).items()}
        subs = {room_id: RoomConfig.parse(raw)
                for room_id, raw in (body.get("room_subscriptions") or {}).items()}
        return cls(user_id, device_id, pos, timeout_ms, str(body.get("conn_id") or ""),
                   body.get("txn_id"), lists, subs, tuple(body.get("unsubscribe_rooms") or ()),
                   body.get("extensions") or {})

    def subscriptions_after(self, prev: PositionState | None) -> dict[str, RoomConfig]:
        """Room subscriptions stay on the connection until ``unsubscribe_rooms``
        (matrix-js-sdk sends each one once); a client sending them every time gets the
        same result."""
        subs = dict(prev.subscriptions) if prev is not None else {}
        for room_id in self.unsubscribe:
            subs.pop(room_id, None)
        subs.update(self.subscriptions)
        while len(subs) > MAX_SUBSCRIPTIONS:
            subs.pop(next(iter(subs)))
        return subs



@dataclass(frozen=True)
class SentRoom:
    """What a connection has of a room: events up to ``upto``, the state its
    ``required_state`` selected then, the ``$LAZY`` members sent, under ``membership``."""

    upto: int
    membership: str
    required_state: frozenset[StatePattern]
    lazy_members: frozenset[str] = frozenset()

    def with_lazy(self, users: set[str]) -> SentRoom:
        merged = self.lazy_members | users
        if len(merged) > MAX_LAZY_MEMBERS_PER_ROOM:
            merged = frozenset(users)  # forgetting only resends a member event
        return replace(self, lazy_members=merged)


@dataclass
class PositionState:
    """The connection as of one ``pos``: stream token and rooms sent (never mutated
    once stored, so a client retrying a request gets the same answer)."""

    token: SyncToken
    rooms: OrderedDict[str, SentRoom] = field(default_factory=OrderedDict)
    subscriptions: dict[str, RoomConfig] = field(default_factory=dict)


@dataclass
class Connection:
    positions: OrderedDict[int, PositionState] = field(default_factory=OrderedDict)
    next_pos: int = 1
    weight: int = 0  # memory units held (see ``_weight``)


def _weight(state: PositionState) -> int:
    """Memory units of a position: one per room remembered and per $LAZY member in it
    (measured in tests/rest/test_sliding_sync_ext.py: under 600 bytes a unit)."""
    return sum(1 + len(r.lazy_members) for r in state.rooms.values()) + \
        len(state.subscriptions)


class ConnectionStore:
    """In-memory connections keyed by (user, device, conn_id), LRU-bounded by count
    and by the total memory units all of them hold."""

    def __init__(self) -> None:
        # A per-process epoch in every pos: a pos from before a restart is unknown.
        self._epoch = secrets.token_hex(4)
        self._conns: OrderedDict[tuple[str, str | None, str], Connection] = OrderedDict()
        self.weight = 0

    def __len__(self) -> int:
        return len(self._conns)

    def rooms_remembered(self) -> int:
        """Total SentRoom entries held (for the memory bound's tests and metrics)."""
        return sum(len(p.rooms) for c in self._conns.values() for p in c.positions.values())

    def lookup(self, user_id: str, device_id: str | None, conn_id: str, pos: str | None
               ) -> PositionState | None:
        """The state at ``pos`` (None for a new connection, which resets that conn_id).
        An unknown, expired or foreign pos is 400 M_UNKNOWN_POS: clients start over."""
        key = (user_id, device_id, conn_id)
        if pos is None:
            self._drop(key)
            return None
        conn = self._conns.get(key)
        number = self._parse(pos)
        if conn is None or number is None or number not in conn.positions:
            raise MatrixError(400, "Unknown or expired position", UNKNOWN_POS)
        self._conns.move_to_end(key)
        # The client has ``number``: anything older will not be asked for again.
        for old in [n for n in conn.positions if n < number]:
            del conn.positions[old]
        self._reweigh(conn)
        return conn.positions[number]

    def store(self, user_id: str, device_id: str | None, conn_id: str,
              state: PositionState) -> str:
        key = (user_id, device_id, conn_id)
        conn = self._conns.get(key)
        if conn is None:
            conn = self._conns[key] = Connection()
        self._conns.move_to_end(key)
        while len(state.rooms) > MAX_ROOMS_PER_CONNECTION:
            state.rooms.popitem(last=False)
        number = conn.next_pos
        conn.next_pos += 1
        conn.positions[number] = state
        while len(conn.positions) > POSITIONS_KEPT:
            conn.positions.popitem(last=False)
        self._reweigh(conn)
        self._evict(user_id, device_id)
        return f"{self._epoch}.{number}"

    def _reweigh(self, conn: Connection) -> None:
        """Positions share their SentRoom objects, so the newest one is the measure."""
        weight = _weight(next(reversed(conn.positions.values()))) if conn.positions else 0
        self.weight += weight - conn.weight
        conn.weight = weight

    def _drop(self, key: tuple[str, str | None, str]) -> None:
        conn = self._conns.pop(key, None)
        if conn is not None:
            self.weight -= conn.weight

    def _evict(self, user_id: str, device_id: str | None) -> None:
        mine = [k for k in self._conns if k[0] == user_id and k[1] == device_id]
        for key in mine[:max(0, len(mine) - MAX_CONNECTIONS_PER_DEVICE)]:
            self._drop(key)
        while len(self._conns) > MAX_CONNECTIONS or (
                self.weight > MAX_WEIGHT_TOTAL and len(self._conns) > 1):
            self._drop(next(iter(self._conns)))

    def _parse(self, pos: str) -> int | None:
        epoch, _, number = pos.partition(".")
        if epoch != self._epoch or not number.isdigit() or len(number) > 15:
            return None
        return int(number)
