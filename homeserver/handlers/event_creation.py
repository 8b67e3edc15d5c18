"""Creating, authorising and persisting local events: the one path every local
event takes (createRoom, membership changes, state, messages, redactions).

Events of one room are created one at a time (a per-room lock), so each new event's
only prev event is the room's single forward extremity and the state before it is
the room's current state. Remote events (federation) will enter through their own
path and share the auth rules and storage.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from signedjson.key import SigningKey
from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.events import auth as event_auth
from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import compute_event_id, compute_room_id
from homeserver.events.model import Event, StateKey
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.events.signing import sign_event
from homeserver.http.errors import Codes, MatrixError
from homeserver.notifier import NotifierInterface
from storage.stores.events import EventStore, PersistRequest, StateMap
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

MAX_EVENT_SIZE = 65536
MAX_PREV_EVENTS = 10


@dataclass
class RoomSnapshot:
    """The current state of a room as this process last wrote it."""

    state_ids: StateMap
    extremities: list[str]
    state_group: int | None
    depth: int


class EventCreationHandler:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        clock: Clock,
        events: EventStore,
        rooms: RoomStore,
        notifier: NotifierInterface,
    ) -> None:
        self._server_name = server_name
        self._key = signing_key
        self._clock = clock
        self._events = events
        self._rooms = rooms
        self._notifier = notifier
        self._locks: dict[str, defer.DeferredLock] = {}
        self._snapshots: OrderedDict[str, RoomSnapshot] = OrderedDict()
        # Called after each persisted event (sync caches, push counts, ...).
        self.after_persist: list[Callable[[Event], Awaitable[None] | None]] = []
        # Extra checks on client-sent state (send(..., validate=True)), run once the auth
        # rules pass: event type -> async fn(event, snapshot) raising a MatrixError.
        self.state_validators: dict[str, Callable[[Event, RoomSnapshot], Awaitable[None]]] = {}
        # Checks on every client-sent event, state or not (validate=True), after the auth
        # rules: async fn(event, snapshot) raising a MatrixError (e.g. the e2ee_only policy).
        self.event_validators: list[Callable[[Event, RoomSnapshot], Awaitable[None]]] = []
        # Stream positions handed out but not yet committed, and the highest committed:
        # a reader must not see position N before every position below N is written.
        self._in_flight: set[int] = set()
        self._max_persisted = 0
        self._held: list[tuple[int, list[str], str]] = []

    async def load_position(self) -> None:
        self._max_persisted = await self._events.max_stream_ordering()

    def current_position(self) -> int:
        """The highest stream position below which every event is persisted."""
        if self._in_flight:
            return min(self._in_flight) - 1
        return self._max_persisted

    def _lock(self, room_id: str) -> defer.DeferredLock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = defer.DeferredLock()
        return lock

    async def room_version(self, room_id: str) -> RoomVersion:
        ident = await self._rooms.get_room_version(room_id)
        version = get_room_version(ident) if ident else None
        if version is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        return version

    async def snapshot(self, room_id: str) -> RoomSnapshot:
        snap = self._snapshots.get(room_id)
        if snap is not None:
            self._snapshots.move_to_end(room_id)
            return snap
        state = await self._events.get_current_state_ids(room_id)
        if not state:
            # Unknown room (or not yet created): nothing worth caching.
            return RoomSnapshot({}, [], None, 0)
        extremities = await self._events.get_forward_extremities(room_id)
        group = None
        depth = 0
        if extremities:
            group = await self._events.get_state_group_for_event(extremities[0])
            prev = await self._events.get_events(extremities)
            depth = max((e.depth for e in prev.values()), default=0)
        snap = RoomSnapshot(state, extremities, group, depth)
        self._remember(room_id, snap)
        return snap

    def _remember(self, room_id: str, snap: RoomSnapshot) -> None:
        self._snapshots[room_id] = snap
        self._snapshots.move_to_end(room_id)
        while len(self._snapshots) > 10_000:
            self._snapshots.popitem(last=False)

    async def current_state(self, room_id: str, keys: list[StateKey] | None = None) -> dict[StateKey, Event]:
        snap = await self.snapshot(room_id)
        wanted = {k: v for k, v in snap.state_ids.items() if keys is None or k in keys}
        found = await self._events.get_events(wanted.values())
        return {k: found[v] for k, v in wanted.items() if v in found}

    async def create_room_with_create_event(
        self, room_version: RoomVersion, sender: str, content: dict[str, Any],
        room_id: str | None,
    ) -> Event:
        """Write the m.room.create event of a new room (v12 derives the room id from it)."""
        pdu: dict[str, Any] = {
            "type": "m.room.create", "state_key": "", "sender": sender, "content": content,
            "origin_server_ts": self._clock.time_msec(), "depth": 1, "prev_events": [],
            "auth_events": [],
        }
        if room_version.room_id_is_create_hash:
            signed = sign_event(pdu, self._server_name, self._key, room_version)
            room_id = compute_room_id(signed)
        else:
            assert room_id is not None
            pdu["room_id"] = room_id
            signed = sign_event(pdu, self._server_name, self._key, room_version)
        event = Event(compute_event_id(signed, room_version), signed, room_version)
        event.internal.room_id = room_id  # implied by the id in v12, not in the PDU
        try:
            event_auth.check_auth_rules(event, {}, event)
        except event_auth.AuthError as e:
            raise MatrixError(400, f"Invalid creation content: {e}", Codes.BAD_JSON) from e
        await self._rooms.store_room(room_id, room_version.identifier, sender, False,
                                     self._clock.time_msec())
        await self._persist(event, room_id, RoomSnapshot({}, [], None, 0), None)
        return event

    async def send(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: dict[str, Any],
        state_key: str | None = None,
        txn: tuple[str, str] | None = None,
        redacts: str | None = None,
        check: Callable[[RoomSnapshot], Awaitable[None]] | None = None,
        validate: bool = False,
    ) -> Event:
        """Create, authorise and persist one event. ``txn`` is (device_id, txn_id)
        for idempotent sends: a retry returns the first event and stores nothing.
        ``validate`` applies ``state_validators`` (for state a client sent)."""
        version = await self.room_version(room_id)
        async with _locked(self._lock(room_id)):
            if txn is not None:
                existing = await self._events.get_event_by_txn(room_id, sender, txn[0], txn[1])
                if existing is not None:
                    found = await self._events.get_event(existing)
                    if found is not None:
                        return found
            snap = await self.snapshot(room_id)
            if check is not None:
                await check(snap)
            event = await self._build(version, room_id, sender, event_type, content, state_key,
                                      redacts, snap)
            await self._authorise(event, snap)
            validator = self.state_validators.get(event_type) if validate else None
            if validator is not None and event.is_state():
                await validator(event, snap)
            for check_event in self.event_validators if validate else ():
                await check_event(event, snap)
            await self._persist(event, room_id, snap, (sender, *txn) if txn else None)
            return event

    async def _build(
        self, version: RoomVersion, room_id: str, sender: str, event_type: str,
        content: dict[str, Any], state_key: str | None, redacts: str | None, snap: RoomSnapshot,
    ) -> Event:
        pdu: dict[str, Any] = {
            "room_id": room_id, "type": event_type, "sender": sender, "content": content,
            "origin_server_ts": self._clock.time_msec(),
            "depth": snap.depth + 1,
            "prev_events": snap.extremities[:MAX_PREV_EVENTS],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            if version.redaction_v11:
                pdu["content"] = {**content, "redacts": redacts}
            else:
                pdu["redacts"] = redacts
        draft = Event("$draft", pdu, version)
        auth_ids = []
        for key in sorted(event_auth.auth_types_for_event(draft)):
            if key == ("m.room.create", "") and not event_auth.create_in_auth_events(version):
                continue
            if key in snap.state_ids:
                auth_ids.append(snap.state_ids[key])
        pdu["auth_events"] = auth_ids
        if state_key is not None and (event_type, state_key) in snap.state_ids:
            prev_id = snap.state_ids[(event_type, state_key)]
            prev = await self._events.get_event(prev_id)
            if prev is not None:
                pdu["unsigned"] = {"replaces_state": prev_id, "prev_content": prev.content,
                                   "prev_sender": prev.sender}
        unsigned = pdu.pop("unsigned", None)
        if len(encode_canonical_json(pdu)) > MAX_EVENT_SIZE - 1024:
            raise MatrixError(413, "Event too large", Codes.TOO_LARGE)
        signed = sign_event(pdu, self._server_name, self._key, version)
        event_id = compute_event_id(signed, version)
        if unsigned:
            signed = {**signed, "unsigned": unsigned}
        if len(encode_canonical_json({**signed, "event_id": event_id})) > MAX_EVENT_SIZE:
            raise MatrixError(413, "Event too large", Codes.TOO_LARGE)
        return Event(event_id, signed, version)

    async def _authorise(self, event: Event, snap: RoomSnapshot) -> None:
        create_id = snap.state_ids.get(("m.room.create", ""))
        if create_id is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        keys = list(event_auth.auth_types_for_event(event) | {("m.room.create", "")})
        ids = {k: snap.state_ids[k] for k in keys if k in snap.state_ids}
        found = await self._events.get_events(ids.values())
        auth_state = {k: found[v] for k, v in ids.items() if v in found}
        try:
            event_auth.check_auth_rules(event, auth_state, auth_state[("m.room.create", "")])
        except event_auth.AuthError as e:
            raise MatrixError(403, str(e), Codes.FORBIDDEN) from e

    async def _persist(self, event: Event, room_id: str, snap: RoomSnapshot,
                       txn_key: tuple[str, str, str] | None) -> None:
        stream = await self._events.allocate_stream_ordering()
        self._in_flight.add(stream)
        event.internal.stream_ordering = stream
        if txn_key is not None:
            event.internal.txn_id = txn_key[2]
            event.internal.device_id = txn_key[1]
        try:
            group = await self._events.persist_event(PersistRequest(
                event=event, stream_ordering=stream,
                group_before=snap.state_group, state_before=snap.state_ids, txn_key=txn_key,
                now_ms=self._clock.time_msec(),
            ))
        except BaseException:
            self._in_flight.discard(stream)
            self._release_held()  # later events held behind this one may now be readable
            raise
        self._in_flight.discard(stream)
        self._max_persisted = max(self._max_persisted, stream)
        state_ids = dict(snap.state_ids)
        if event.is_state():
            state_ids[event.state_pair] = event.event_id
        self._remember(room_id, RoomSnapshot(state_ids, [event.event_id], group, event.depth))
        for hook in self.after_persist:
            result = hook(event)
            if result is not None:
                await result
        members = [k[1] for k, _ in state_ids.items() if k[0] == "m.room.member"]
        self._wake(stream, members if event.type == "m.room.member" else [], room_id)

    def _wake(self, stream: int, user_ids: list[str], room_id: str) -> None:
        """Notify waiters once the event is readable. While a lower position is still
        being written, readers cannot see this event yet; its wake-up is held and sent
        when the position catches up, so no long-poll sleeps through it."""
        self._held.append((stream, user_ids, room_id))
        self._release_held()

    def _release_held(self) -> None:
        position = self.current_position()
        ready = [h for h in self._held if h[0] <= position]
        if not ready:
            return
        self._held = [h for h in self._held if h[0] > position]
        self._notifier.notify(user_ids={u for h in ready for u in h[1]},
                              room_ids={h[2] for h in ready})


class _locked:
    """``async with`` for a DeferredLock."""

    def __init__(self, lock: defer.DeferredLock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
