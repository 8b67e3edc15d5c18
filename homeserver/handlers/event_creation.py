"""The builder of local events: the one way an event made for a local user is created,
whether it comes from /send, PUT /state, createRoom (its own events and the client's
``initial_state``), /redact, membership changes or room upgrades.

It turns a client's (type, content, state key) into a signed PDU on the room's
current snapshot, de-duplicates client transactions, refuses what no client may
send (a state ``m.room.redaction``, a redaction outside /redact), and hands the
events to the :class:`EventPersister` with the validators every client-made event
must pass (``state_validators`` per state type, ``event_validators`` for all), run
after the event auth rules. Reading methods (``snapshot``, ``current_state``, ...)
are the persister's, offered here for the handlers that hold this builder.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signedjson.key import SigningKey
from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.events import auth as event_auth
from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import compute_event_id, compute_room_id, event_reference
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import (
    NAMED_LEVEL_KEYS,
    get_required_level,
    get_user_power_level,
    is_valid_level,
    power_levels_content,
)
from homeserver.events.room_versions import EventFormat, RoomVersion, supports_join_rule
from homeserver.events.signing import sign_event
from homeserver.handlers.event_persister import (
    EventPersister,
    PersistKind,
    RoomSnapshot,
)
from homeserver.http.errors import Codes, MatrixError
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore

__all__ = ["EventCreationHandler", "EventDraft", "RoomSnapshot", "check_client_state_type"]

MAX_EVENT_SIZE = 65536
MAX_PREV_EVENTS = 10
REDACTION = "m.room.redaction"
ALIASES = "m.room.aliases"


@dataclass(frozen=True)
class EventDraft:
    """What a caller asks for; the builder fills in the rest."""

    type: str
    content: dict[str, Any]
    state_key: str | None = None
    redacts: str | None = None


class EventCreationHandler:
    def __init__(
        self,
        server_name: str,
        signing_key: SigningKey,
        clock: Clock,
        events: EventStore,
        rooms: RoomStore,
        persister: EventPersister,
    ) -> None:
        self._server_name = server_name
        self._key = signing_key
        self._clock = clock
        self._events = events
        self._rooms = rooms
        self._persister = persister
        # Checks on state of one type, run once the auth rules pass:
        # event type -> async fn(event, snapshot) raising a MatrixError.
        self.state_validators: dict[str, Callable[[Event, RoomSnapshot], Awaitable[None]]] = {}
        # Checks on every event, state or not, after the auth rules: async fn(event,
        # snapshot) raising a MatrixError (e.g. the e2ee_only policy).
        self.event_validators: list[Callable[[Event, RoomSnapshot], Awaitable[None]]] = []
        # Consent tracking (homeserver/handlers/consent.py), when configured: async
        # fn(sender, room_id, type, state_key, content) raising 403 M_CONSENT_NOT_GIVEN;
        # type None means creating a room.
        self.consent_check: Callable[..., Awaitable[None]] | None = None
        # Shadow-bans (homeserver/handlers/shadow_ban.py): async fn(user_id) -> banned.
        # A banned sender's events (and invites) are built but never persisted.
        self.shadow_banned: Callable[[str], Awaitable[bool]] | None = None
        # Several events writers (homeserver/replication/remote_create.py): a draft for a
        # room another process writes is built, validated and persisted there.
        self.remote: Any = None
        # Client transactions being sent: (room, user, device, txn) -> waiters, so a
        # retry arriving meanwhile waits for the first and then finds its event.
        self._txns_in_flight: dict[tuple[str, str, str, str], list[defer.Deferred[None]]] = {}

    # ---- reads, answered by the persister

    def current_position(self) -> int:
        return self._persister.current_position()

    async def room_version(self, room_id: str) -> RoomVersion:
        return await self._persister.room_version(room_id)

    async def snapshot(self, room_id: str) -> RoomSnapshot:
        return await self._persister.snapshot(room_id)

    async def current_state(self, room_id: str,
                            keys: Iterable[StateKey] | None = None) -> dict[StateKey, Event]:
        return await self._persister.current_state(room_id, keys)

    # ---- building

    async def validate(self, event: Event, snap: RoomSnapshot) -> None:
        """The checks every local event passes after the auth rules."""
        validator = self.state_validators.get(event.type) if event.is_state() else None
        if validator is not None:
            await validator(event, snap)
        for check_event in self.event_validators:
            await check_event(event, snap)

    def build_create_event(self, room_version: RoomVersion, sender: str,
                           content: dict[str, Any], room_id: str | None,
                           ts: int | None = None) -> Event:
        """The m.room.create event of a new room (v12 derives the room id from it)."""
        pdu: dict[str, Any] = {
            "type": "m.room.create", "state_key": "", "sender": sender, "content": content,
            "origin_server_ts": self._clock.time_msec() if ts is None else ts, "depth": 1,
            "prev_events": [],
            "auth_events": [],
        }
        if room_version.event_format == EventFormat.V1:
            pdu["event_id"] = self._mint_event_id()
        _canonical(pdu)
        if room_version.room_id_is_create_hash:
            signed = sign_event(pdu, self._server_name, self._key, room_version)
            room_id = compute_room_id(signed)
        else:
            assert room_id is not None
            pdu["room_id"] = room_id
            signed = sign_event(pdu, self._server_name, self._key, room_version)
        event = Event(compute_event_id(signed, room_version), signed, room_version)
        event.internal.room_id = room_id  # implied by the id in v12, not in the PDU
        return event

    async def create_room(self, create: Event, drafts: Sequence[EventDraft],
                          before_write: Callable[[], Awaitable[None]] | None = None,
                          ) -> list[Event]:
        """Build a new room's events after ``create`` (all sent by its creator),
        validate every one, then persist them together: a refused event stores none.
        ``before_write`` runs once all passed, before the first write."""
        room_id = create.room_id
        if self.consent_check is not None:
            await self.consent_check(create.sender, None, None, None, None)
        async with self._persister.room_queue(room_id, new_room=True) as turn:
            built = [create]
            snap = turn.snapshot.after(create, None)
            batch = {create.event_id: create}
            for draft in drafts:
                event = await self._build(create.room_version, room_id, create.sender, draft,
                                          snap, batch)
                built.append(event)
                batch[event.event_id] = event
                snap = snap.after(event, None)
            await self._persister.persist_in_turn(turn, built, PersistKind.LOCAL, self.validate,
                                                  before_write=before_write)
        return built

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
    ) -> Event:
        """Create, authorise, validate and persist one event. ``txn`` is (device_id,
        txn_id) for idempotent sends: a retry returns the first event and stores
        nothing. ``check`` runs on the snapshot first (in the room's queue)."""
        draft = EventDraft(event_type, content, state_key, redacts)
        if self.remote is not None and not self.remote.writes(room_id):
            return await self._send_remote(room_id, sender, draft, txn, check)
        if self.consent_check is not None:
            await self.consent_check(sender, room_id, event_type, state_key, content)
        version = await self.room_version(room_id)
        banned = self.shadow_banned is not None and await self.shadow_banned(sender)
        if txn is None:
            return await self._send_in_queue(version, room_id, sender, draft, None, check,
                                             banned)
        key = (room_id, sender, *txn)
        while key in self._txns_in_flight:  # the same transaction, still being sent
            waiter: defer.Deferred[None] = defer.Deferred()
            self._txns_in_flight[key].append(waiter)
            await waiter
        self._txns_in_flight[key] = []
        try:
            # Read outside the room's queue: a transaction stored after this read was
            # sent by this process (it writes the room) and is in flight until stored.
            found = await self._event_for_txn(room_id, sender, txn)
            if found is not None:
                return found
            return await self._send_in_queue(version, room_id, sender, draft, txn, check,
                                             banned)
        finally:
            for waiter in self._txns_in_flight.pop(key):
                waiter.callback(None)

    async def _send_in_queue(self, version: RoomVersion, room_id: str, sender: str,
                             draft: EventDraft, txn: tuple[str, str] | None,
                             check: Callable[[RoomSnapshot], Awaitable[None]] | None,
                             banned: bool) -> Event:
        """The turn of one send: built, checked and (group-)committed."""
        async with self._persister.room_queue(room_id, pipelined=True) as turn:
            if check is not None:
                await check(turn.snapshot)
            event = await self._build(version, room_id, sender, draft, turn.snapshot, {})
            if banned and _shadow_dropped(event):
                return event  # as Synapse: the sender sees success; nothing is stored or sent
            current = await self._same_as_current(event, turn.snapshot)

            async def validate(ev: Event, snap: RoomSnapshot) -> None:
                # Runs once the auth rules passed: a duplicate is still refused to a
                # sender who may not send it.
                if current is not None:
                    raise _Duplicate(current)
                await self.validate(ev, snap)

            try:
                await self._persister.persist_in_turn(
                    turn, [event], PersistKind.LOCAL, validate,
                    txn_key=(sender, *txn) if txn is not None else None)
            except _Duplicate as dup:
                return dup.event
        return event

    async def _send_remote(self, room_id: str, sender: str, draft: EventDraft,
                           txn: tuple[str, str] | None,
                           check: Callable[[RoomSnapshot], Awaitable[None]] | None) -> Event:
        """Another process writes the room: it builds and persists the draft (one event
        path). ``check`` runs here on the state read fresh from the database; the writer
        refuses the draft if the state moved since (then the check runs again)."""
        from homeserver.replication.remote_create import (
            CHECK_ATTEMPTS,
            StateChanged,
            state_digest,
        )

        version = await self.room_version(room_id)  # 404 for unknown rooms
        for attempt in range(CHECK_ATTEMPTS):
            expect = None
            if check is not None:
                snap = await self._persister.read_snapshot(room_id)
                await check(snap)
                expect = state_digest(snap.state_ids)
            try:
                answer = await self.remote.create_event(room_id, sender, draft, txn, expect)
            except StateChanged:
                if attempt + 1 == CHECK_ATTEMPTS:
                    raise
                continue
            event = Event(answer["event_id"], answer["pdu"], version)
            if txn is not None:
                event.internal.device_id = txn[0]
            return event
        raise AssertionError("unreachable")

    async def _same_as_current(self, event: Event, snap: RoomSnapshot) -> Event | None:
        """The current state event ``event`` would only repeat (same sender, same
        content), as Synapse de-duplicates state: setting identical state twice makes
        no new event and the first one is the answer."""
        if event.state_key is None:
            return None
        current_id = snap.state_ids.get((event.type, event.state_key))
        if current_id is None:
            return None
        current = await self._events.get_event(current_id)
        if current is None or current.sender != event.sender or current.content != event.content:
            return None
        return current

    async def _event_for_txn(self, room_id: str, sender: str,
                             txn: tuple[str, str]) -> Event | None:
        existing = await self._events.get_event_by_txn(room_id, sender, txn[0], txn[1])
        return await self._events.get_event(existing) if existing is not None else None

    def _mint_event_id(self) -> str:
        """A v1/v2 event id, ``$opaque:server``: 144 random bits, so ids can be neither
        guessed nor repeated (and the events table's primary key refuses a repeat
        rather than overwrite)."""
        return f"${secrets.token_urlsafe(18)}:{self._server_name}"

    async def _references(self, version: RoomVersion, event_ids: list[str],
                          batch: dict[str, Event]) -> list[Any]:
        """``prev_events``/``auth_events`` in the version's format: bare ids (v3+), or
        ``[id, {"sha256": reference hash}]`` pairs (v1/v2), which need the events."""
        if version.event_format != EventFormat.V1:
            return list(event_ids)
        missing = [i for i in event_ids if i not in batch]
        found = await self._events.get_events(missing) if missing else {}
        refs = []
        for event_id in event_ids:
            cited = batch.get(event_id) or found.get(event_id)
            if cited is None:
                raise RuntimeError(f"cited event {event_id} is not stored")
            refs.append(event_reference(cited.pdu, version))
        return refs

    async def _check_local_aliases(self, sender: str, snap: RoomSnapshot,
                                   batch: dict[str, Event]) -> None:
        """v1-v5 auth rule 4 allows any m.room.aliases keyed by the sender's server, even
        from non-members. That rule is for servers; our own users get the rules of
        later versions: joined, with the power level to send that state."""
        keys = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender)]
        ids = {k: snap.state_ids[k] for k in keys if k in snap.state_ids}
        missing = [i for i in ids.values() if i not in batch]
        found = await self._events.get_events(missing) if missing else {}
        state = {k: batch.get(i) or found[i] for k, i in ids.items() if i in batch or i in found}
        create = state.get(("m.room.create", ""))
        member = state.get(("m.room.member", sender))
        if create is None or member is None or member.membership != "join":
            raise MatrixError(403, "You are not in this room", Codes.FORBIDDEN)
        needed = get_required_level(ALIASES, True, power_levels_content(state))
        if get_user_power_level(sender, state, create) < needed:
            raise MatrixError(403, "Insufficient power level to send m.room.aliases",
                              Codes.FORBIDDEN)

    async def _build(self, version: RoomVersion, room_id: str, sender: str, draft: EventDraft,
                     snap: RoomSnapshot, batch: dict[str, Event]) -> Event:
        _check_draft(draft)
        _check_version_content(draft, version)
        if draft.type == ALIASES and version.special_case_aliases:
            await self._check_local_aliases(sender, snap, batch)
        pdu: dict[str, Any] = {
            "room_id": room_id, "type": draft.type, "sender": sender, "content": draft.content,
            "origin_server_ts": self._clock.time_msec(),
            "depth": snap.depth + 1,
            "prev_events": snap.extremities[:MAX_PREV_EVENTS],
        }
        if version.event_format == EventFormat.V1:
            pdu["event_id"] = self._mint_event_id()
        if draft.state_key is not None:
            pdu["state_key"] = draft.state_key
        if draft.redacts is not None:
            if version.redaction_v11:
                pdu["content"] = {**draft.content, "redacts": draft.redacts}
            else:
                pdu["redacts"] = draft.redacts
        probe = Event("$draft", pdu, version)
        auth_ids = []
        for key in sorted(event_auth.auth_types_for_event(probe)):
            if key == ("m.room.create", "") and not event_auth.create_in_auth_events(version):
                continue
            if key in snap.state_ids:
                auth_ids.append(snap.state_ids[key])
        pdu["auth_events"] = await self._references(version, auth_ids, batch)
        pdu["prev_events"] = await self._references(version, pdu["prev_events"], batch)
        unsigned = None
        if draft.state_key is not None and (draft.type, draft.state_key) in snap.state_ids:
            prev_id = snap.state_ids[(draft.type, draft.state_key)]
            prev = batch.get(prev_id) or await self._events.get_event(prev_id)
            if prev is not None:
                unsigned = {"replaces_state": prev_id, "prev_content": prev.content,
                            "prev_sender": prev.sender}
        if len(_canonical(pdu)) > MAX_EVENT_SIZE - 1024:
            raise MatrixError(413, "Event too large", Codes.TOO_LARGE)
        signed = sign_event(pdu, self._server_name, self._key, version)
        event_id = compute_event_id(signed, version)
        if unsigned:
            signed = {**signed, "unsigned": unsigned}
        if len(encode_canonical_json({**signed, "event_id": event_id})) > MAX_EVENT_SIZE:
            # (v1/v2 PDUs already hold this event_id: the size is the same.)
            raise MatrixError(413, "Event too large", Codes.TOO_LARGE)
        return Event(event_id, signed, version)


class _Duplicate(Exception):
    """Raised inside the room queue to drop an authorised event that repeats the
    current state; carries the existing event."""

    def __init__(self, event: Event) -> None:
        super().__init__(event.event_id)
        self.event = event


# State a client may not set directly (PUT /state or createRoom's initial_state):
# membership has its own endpoints and checks, and a room has one create event.
_NOT_CLIENT_STATE = {
    "m.room.member": "Membership cannot be set through initial_state",
    "m.room.create": "A room's create event cannot be replaced",
}


def _shadow_dropped(event: Event) -> bool:
    """What a shadow-banned sender does in vain: everything but their own membership
    (joining, leaving, profile updates still work; inviting others does not)."""
    if event.type != "m.room.member":
        return True
    return event.content.get("membership") == "invite" and event.state_key != event.sender


def check_client_state_type(event_type: str) -> None:
    """Refuse state types whose side effects only their own endpoints may cause."""
    reason = _NOT_CLIENT_STATE.get(event_type)
    if reason is not None:
        raise MatrixError(400, reason, Codes.BAD_JSON)


def _canonical(pdu: dict[str, Any]) -> bytes:
    """The PDU as canonical JSON; content a client sent that has none (an integer
    beyond ±(2**53-1), a fraction, NaN) is 400 M_BAD_JSON, as Synapse answers."""
    try:
        return encode_canonical_json(pdu)
    except ValueError as e:
        raise MatrixError(400, "Event content must be canonical JSON: integers between"
                          " -(2**53)+1 and 2**53-1, no fractions", Codes.BAD_JSON) from e


def _check_draft(draft: EventDraft) -> None:
    """What no client-made event may be, whichever endpoint it came through."""
    if draft.type == REDACTION:
        if draft.state_key is not None:
            raise MatrixError(400, "m.room.redaction cannot be a state event", Codes.BAD_JSON)
        if draft.redacts is None:
            raise MatrixError(400, "Use /redact to redact events", Codes.BAD_JSON)
    elif draft.redacts is not None:
        raise MatrixError(400, "Only m.room.redaction events redact", Codes.BAD_JSON)


def _check_version_content(draft: EventDraft, version: RoomVersion) -> None:
    """What clients may not send in this room version, before the auth rules: power
    levels whose values are not levels in the version (v10+: integers only; v1-v9 also
    integer strings), and join rules the version does not have. Stricter than the auth
    rules, which in v1-v9 only check ``users``: a local event never holds a level that
    other servers might read differently."""
    content = draft.content
    if draft.type == "m.room.power_levels" and draft.state_key == "":
        for key in NAMED_LEVEL_KEYS:
            if key in content and not is_valid_level(content[key], version):
                raise MatrixError(400, f"'{key}' must be an integer power level", Codes.BAD_JSON)
        for key in ("events", "notifications", "users"):
            if key not in content:
                continue
            value = content[key]
            if not isinstance(value, Mapping) or not all(
                    is_valid_level(v, version) for v in value.values()):
                raise MatrixError(400, f"'{key}' must map to integer power levels", Codes.BAD_JSON)
    if draft.type == "m.room.join_rules" and draft.state_key == "":
        rule = content.get("join_rule")
        if not supports_join_rule(version, rule):
            raise MatrixError(400, f"Room version {version.identifier} does not support the"
                              f" join rule {rule}", Codes.BAD_JSON)
