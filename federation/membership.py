"""Joins, leaves, knocks and invites from other servers: the resident server's side
of the server-server API (issue 16), every route X-Matrix authenticated.

* ``GET /v1/make_join|make_leave|make_knock/{roomId}/{userId}``: a template of the
  user's member event on the room's latest events, after the checks Synapse makes
  first (the user is the origin's; the origin is neither blocked nor denied by the
  room's ACL; the room version is one the joining server speaks; the event would
  pass the auth rules now, so a banned user or an invite-only room is refused here
  with 403). For a restricted room a local user able to invite is chosen to vouch
  (``join_authorised_via_users_server``), as the membership handler does locally.
* ``PUT /v2/send_join|send_leave``, ``PUT /v1/send_knock``: the signed event goes
  through the ingest (signatures, hash, auth against its state and the current
  state) and must be accepted; a join is answered with the state before it and the
  auth chain (and the event itself, co-signed by us when we vouched for it); a knock
  with the stripped state a knocker may see. ``send_join?omit_members=true`` (spec
  v1.6, faster joins): :func:`partial_join_state` only, the auth chain without what
  ``state`` holds, ``members_omitted`` and ``servers_in_room``.
* ``PUT /v2/invite/{roomId}/{eventId}``: another server invites one of our users to
  a room we may not hold: we check and co-sign the event, and store it out of band
  (storage/stores/out_of_band.py) so the user sees the invite in /sync.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from federation.pdu_checks import PduError, check_signatures, parse_pdu, server_allowed_by_acl
from homeserver.events import auth as event_auth
from homeserver.events.hashing import event_reference
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import domain_of
from homeserver.events.redaction import prune_event_dict
from homeserver.events.room_versions import EventFormat, RoomVersion, get_room_version
from homeserver.events.signing import sign_json
from homeserver.handlers.event_persister import MissingEventsError, PersistKind
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id, split_user_id

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
FED = "/_matrix/federation"
INCOMPATIBLE = "M_INCOMPATIBLE_ROOM_VERSION"
MAX_VERSIONS = 50
MAX_INVITE_STATE = 50
MAX_AUTH_CHAIN = 100_000
MAX_HEROES = 5  # as /sync's room summary (homeserver/handlers/sync.py)
_ACL: StateKey = ("m.room.server_acl", "")
# What a knocker or invitee may see of a room (the spec's stripped state).
STRIPPED_STATE_TYPES = ("m.room.create", "m.room.name", "m.room.avatar", "m.room.topic",
                        "m.room.join_rules", "m.room.canonical_alias", "m.room.encryption")

INVITE_SCHEMA: JsonDict = {
    "type": "object", "required": ["event", "room_version"],
    "properties": {
        "room_version": {"type": "string", "maxLength": 64},
        "event": {"type": "object"},
        "invite_room_state": {"type": "array", "maxItems": MAX_INVITE_STATE,
                              "items": {"type": "object"}},
    },
}


def cosign(pdu: JsonDict, server_name: str, signing_key: Any, version: RoomVersion) -> JsonDict:
    """A copy of another server's event with our signature added (its hashes, and so
    its id, unchanged)."""
    signed = copy.deepcopy(pdu)
    redacted = prune_event_dict(signed, version)
    redacted.pop("unsigned", None)
    ours = sign_json(redacted, server_name, signing_key)["signatures"][server_name]
    signed.setdefault("signatures", {}).setdefault(server_name, {}).update(ours)
    return signed


def stripped(events: Iterable[Event]) -> list[JsonDict]:
    return [{"type": e.type, "state_key": e.state_key, "content": e.content,
             "sender": e.sender} for e in events]


def partial_join_state(state: dict[str, Event], join: Event) -> dict[str, Event]:
    """The state a send_join with ``omit_members`` answers (event id -> event): every
    non-member event, the joining user's own member event, the member events the join
    cites as auth events, and, in a room with neither a name nor a canonical alias,
    those of its heroes (as /sync computes them: up to 5 other joined or invited users
    in user id order, else those who left or were banned)."""
    members: dict[str, Event] = {}
    kept: dict[str, Event] = {}
    named = False
    for eid, ev in state.items():
        if ev.type == "m.room.member" and ev.state_key is not None:
            members[ev.state_key] = ev
            continue
        kept[eid] = ev
        if ev.state_key == "" and ((ev.type == "m.room.name" and ev.content.get("name"))
                                   or (ev.type == "m.room.canonical_alias"
                                       and ev.content.get("alias"))):
            named = True
    wanted = {join.state_key} | {ev.state_key for ev in members.values()
                                 if ev.event_id in set(join.auth_event_ids)}
    if not named:
        others = sorted(u for u in members if u != join.state_key)
        heroes = [u for u in others if members[u].membership in ("join", "invite")] \
            or [u for u in others if members[u].membership in ("leave", "ban")]
        wanted.update(heroes[:MAX_HEROES])
    for user in wanted:
        ev = members.get(user or "")
        if ev is not None:
            kept[ev.event_id] = ev
    return kept


def servers_in_room(state: Iterable[Event]) -> list[str]:
    """The servers with a user joined in ``state`` (the send_join answer's
    ``servers_in_room``: those active in the room before the join)."""
    return sorted({domain_of(ev.state_key) for ev in state
                   if ev.type == "m.room.member" and ev.state_key
                   and ev.membership == "join"} - {""})


class MembershipServlets:
    def __init__(self, server_name: str, signing_key: Any, clock: Any, keyring: Any,
                 ingest: Any, stores: Any, membership: Any, out_of_band: Any,
                 is_blocked: Callable[[str], Awaitable[bool]], notifier: Any) -> None:
        self._server_name = server_name
        self._key = signing_key
        self._clock = clock
        self._keyring = keyring
        self._ingest = ingest
        self._persister = ingest.persister
        self._events = stores.events
        self._rooms = stores.rooms
        self._users = stores.users
        self._membership = membership
        self.out_of_band = out_of_band
        self._is_blocked = is_blocked
        self._notifier = notifier
        # The outbound sender's forward_event(event, origin): a member event we took
        # as the resident goes on to the room's other servers.
        self.forward: Callable[[Event, str], Awaitable[None]] | None = None
        self._oob = OutOfBandWriter(clock, stores.rooms, self._persister, out_of_band, notifier)
        # With event persisters (homeserver/replication/remote_persist.py): an event held
        # out of band in a room another process writes is stored by that process.
        self.remote_out_of_band: Callable[[Event, RoomVersion], Awaitable[None]] | None = None

    def register(self, router: Router) -> None:
        for kind in ("join", "leave", "knock"):
            router.add("GET", f"{FED}/v1/make_{kind}/{{roomId}}/{{userId}}",
                       self._make(kind), auth="federation")
        router.add("PUT", f"{FED}/v2/send_join/{{roomId}}/{{eventId}}", self.on_send_join,
                   auth="federation", body_schema={"type": "object"})
        router.add("PUT", f"{FED}/v2/send_leave/{{roomId}}/{{eventId}}", self.on_send_leave,
                   auth="federation", body_schema={"type": "object"})
        router.add("PUT", f"{FED}/v1/send_knock/{{roomId}}/{{eventId}}", self.on_send_knock,
                   auth="federation", body_schema={"type": "object"})
        router.add("PUT", f"{FED}/v2/invite/{{roomId}}/{{eventId}}", self.on_invite,
                   auth="federation", body_schema=INVITE_SCHEMA)

    # ---- checks shared by every route

    async def _check_origin(self, origin: str, room_id: str) -> None:
        if await self._is_blocked(origin):
            raise MatrixError(403, "Federation denied with this server", Codes.FORBIDDEN)
        acl = (await self._persister.current_state(room_id, [_ACL])).get(_ACL)
        if acl is not None and not server_allowed_by_acl(origin, acl.content):
            raise MatrixError(403, "Server is banned from this room", Codes.FORBIDDEN)

    async def _room(self, room_id: str) -> tuple[RoomVersion, Any]:
        """The room's version and snapshot; 404 unless this server is in the room."""
        check_room_id(room_id)
        try:
            version = await self._persister.room_version(room_id)
        except MatrixError:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND) from None
        snap = await self._persister.snapshot(room_id)
        if not snap.state_ids:
            raise MatrixError(404, "This server is not in the room", Codes.NOT_FOUND)
        return version, snap

    # ---- make_*

    def _make(self, kind: str) -> Callable[..., Awaitable[tuple[int, Any]]]:
        async def handler(req: ApiRequest, roomId: str, userId: str) -> tuple[int, Any]:  # noqa: N803
            return await self._on_make(req, kind, roomId, userId)
        return handler

    async def _on_make(self, req: ApiRequest, kind: str, room_id: str,
                       user_id: str) -> tuple[int, Any]:
        origin = req.origin
        assert origin is not None
        split_user_id(user_id)
        if domain_of(user_id) != origin:
            raise MatrixError(403, "The user is not from the requesting server",
                              Codes.FORBIDDEN)
        version, snap = await self._room(room_id)
        await self._check_origin(origin, room_id)
        if kind in ("join", "knock"):
            supported = [v.decode("utf-8", "replace") for v in
                         (req.raw.args.get(b"ver") or [b"1"])[:MAX_VERSIONS]]
            if version.identifier not in supported:
                raise MatrixError(400, "Your homeserver does not support the features"
                                  " required to join this room", INCOMPATIBLE,
                                  room_version=version.identifier)
        if kind == "knock" and not version.knock:
            raise MatrixError(400, "This room version does not support knocking",
                              INCOMPATIBLE, room_version=version.identifier)
        content: JsonDict = {"membership": kind}
        if kind == "join":
            current = await self._membership_of(room_id, user_id, snap)
            content.update(await self._membership.restricted_join_fields(
                user_id, room_id, current) or {})
        pdu = await self._template(version, room_id, user_id, content, snap)
        return 200, {"room_version": version.identifier, "event": pdu}

    async def _membership_of(self, room_id: str, user_id: str, snap: Any) -> str | None:
        event_id = snap.state_ids.get(("m.room.member", user_id))
        event = await self._events.get_event(event_id) if event_id else None
        return event.membership if event is not None else None

    async def _template(self, version: RoomVersion, room_id: str, user_id: str,
                        content: JsonDict, snap: Any) -> JsonDict:
        prev_ids = snap.extremities[:10]
        pdu: JsonDict = {
            "room_id": room_id, "type": "m.room.member", "state_key": user_id,
            "sender": user_id, "content": content, "origin": self._server_name,
            "origin_server_ts": self._clock.time_msec(), "depth": snap.depth + 1,
        }
        # A dry run of the auth rules; we will co-sign a join we vouch for (rule 4.2).
        probe = Event("$probe", {**pdu, "prev_events": [], "auth_events": [],
                                 "signatures": {self._server_name: {"ed25519:dry": "-"}}},
                      version)
        keys = event_auth.auth_types_for_event(probe)
        auth_ids = [snap.state_ids[k] for k in sorted(keys) if k in snap.state_ids
                    and (k != ("m.room.create", "") or event_auth.create_in_auth_events(version))]
        state = await self._persister.current_state(
            room_id, keys | {("m.room.create", "")})
        create = state.get(("m.room.create", ""))
        if create is None:
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        try:
            event_auth.check_auth_rules(probe, state, create)
        except event_auth.AuthError as e:
            raise MatrixError(403, str(e), Codes.FORBIDDEN) from e
        pdu["prev_events"] = await self._refs(version, prev_ids)
        pdu["auth_events"] = await self._refs(version, auth_ids)
        return pdu

    async def _refs(self, version: RoomVersion, ids: list[str]) -> list[Any]:
        if version.event_format != EventFormat.V1:
            return list(ids)
        found = await self._events.get_events(ids)
        return [event_reference(found[i].pdu, version) for i in ids if i in found]

    # ---- send_*

    async def _receive_member(self, req: ApiRequest, kind: str, room_id: str,
                              event_id: str) -> Event:
        """Check the member event of ``origin``'s user and persist it; 403 unless the
        room takes it (accepted, or already held)."""
        origin = req.origin
        assert origin is not None
        version, _snap = await self._room(room_id)
        await self._check_origin(origin, room_id)
        pdu = req.body
        try:
            event = parse_pdu(pdu, version, room_id)
        except PduError as e:
            raise MatrixError(400, f"Invalid event: {e.reason}", Codes.BAD_JSON) from None
        if event.event_id != event_id:
            raise MatrixError(400, "The event id does not match the event", Codes.BAD_JSON)
        if event.type != "m.room.member" or event.state_key != event.sender \
                or event.membership != kind:
            raise MatrixError(400, f"Not a {kind} event of its sender", Codes.BAD_JSON)
        if domain_of(event.sender) != origin:
            raise MatrixError(403, "The user is not from the requesting server",
                              Codes.FORBIDDEN)
        if kind == "join" and version.restricted_joins:
            authoriser = event.content.get(event_auth.AUTHORISING_USER)
            if isinstance(authoriser, str) and domain_of(authoriser) == self._server_name:
                # We vouched in make_join: the auth rules say whether that user may.
                pdu = cosign(pdu, self._server_name, self._key, version)
        try:
            outcomes, dropped = await self._ingest.receive_pdus(
                origin, room_id, [pdu], PersistKind.REMOTE)
        except MissingEventsError:
            raise MatrixError(400, "The event cites events this server does not hold",
                              Codes.BAD_JSON) from None
        if dropped:
            raise MatrixError(403, f"Event refused: {dropped[0]}", Codes.FORBIDDEN)
        outcome = outcomes[0]
        if outcome.status not in ("accepted", "known"):
            raise MatrixError(403, f"Event refused: {outcome.reason or outcome.status}",
                              Codes.FORBIDDEN)
        stored = await self._events.get_event(event_id)
        assert stored is not None
        if outcome.status == "accepted" and self.forward is not None:
            await self.forward(stored, origin)
        return stored

    async def on_send_join(self, req: ApiRequest, roomId: str,  # noqa: N803
                           eventId: str) -> tuple[int, Any]:  # noqa: N803
        omit_members = req.query_bool("omit_members")
        event = await self._receive_member(req, "join", roomId, eventId)
        groups = await self._events.get_state_groups([event.event_id])
        before = groups.get(event.event_id, (None, None))[1]
        state_ids = await self._events.get_state_for_group(before) if before is not None else {}
        state = await self._events.get_events(state_ids.values())
        answer: JsonDict = {"origin": self._server_name}
        if omit_members:
            # Faster joins (spec v1.6, MSC3706): members left out but those a client
            # needs at once (the room's heroes when it has no name) and those the join
            # is authorised with; the auth chain leaves out what ``state`` holds.
            kept = partial_join_state(state, event)
            chain = [e for e in await self._auth_chain([*kept.values(), event])
                     if e.event_id not in kept]
            answer["members_omitted"] = len(kept) < len(state)
            answer["servers_in_room"] = servers_in_room(state.values())
            state = kept
        else:
            chain = await self._auth_chain([*state.values(), event])
            answer["members_omitted"] = False
        answer["state"] = [e.pdu for e in state.values()]
        answer["auth_chain"] = [e.pdu for e in chain]
        if event.content.get(event_auth.AUTHORISING_USER) is not None:
            answer["event"] = event.pdu
        return 200, answer

    async def on_send_leave(self, req: ApiRequest, roomId: str,  # noqa: N803
                            eventId: str) -> tuple[int, Any]:  # noqa: N803
        await self._receive_member(req, "leave", roomId, eventId)
        return 200, {}

    async def on_send_knock(self, req: ApiRequest, roomId: str,  # noqa: N803
                            eventId: str) -> tuple[int, Any]:  # noqa: N803
        version, _snap = await self._room(roomId)
        if not version.knock:
            raise MatrixError(400, "This room version does not support knocking",
                              INCOMPATIBLE, room_version=version.identifier)
        await self._receive_member(req, "knock", roomId, eventId)
        state = await self._persister.current_state(
            roomId, [(t, "") for t in STRIPPED_STATE_TYPES])
        return 200, {"knock_room_state": stripped(state.values())}

    async def _auth_chain(self, events: list[Event]) -> list[Event]:
        """Every event the given ones' auth events lead to (bounded)."""
        seen: dict[str, Event] = {}
        todo = {a for e in events for a in e.auth_event_ids}
        while todo and len(seen) < MAX_AUTH_CHAIN:
            found = await self._events.get_events(todo)
            todo = set()
            for eid, ev in found.items():
                seen[eid] = ev
                todo.update(a for a in ev.auth_event_ids if a not in seen)
        return list(seen.values())

    # ---- invite (we host the invitee, maybe not the room)

    async def on_invite(self, req: ApiRequest, roomId: str,  # noqa: N803
                        eventId: str) -> tuple[int, Any]:  # noqa: N803
        origin = req.origin
        assert origin is not None
        check_room_id(roomId)
        body = req.body
        version = get_room_version(body["room_version"])
        if version is None:
            raise MatrixError(400, "Unsupported room version", INCOMPATIBLE,
                              room_version=body["room_version"])
        if await self._is_blocked(origin):
            raise MatrixError(403, "Federation denied with this server", Codes.FORBIDDEN)
        known = await self._rooms.get_room_version(roomId)
        if known is not None and known != version.identifier:
            raise MatrixError(400, "Wrong room version for this room", Codes.BAD_JSON)
        try:
            event = parse_pdu(body["event"], version, roomId)
        except PduError as e:
            raise MatrixError(400, f"Invalid event: {e.reason}", Codes.BAD_JSON) from None
        if event.event_id != eventId:
            raise MatrixError(400, "The event id does not match the event", Codes.BAD_JSON)
        invitee = event.state_key
        if event.type != "m.room.member" or event.membership != "invite" or invitee is None:
            raise MatrixError(400, "Not an invite event", Codes.BAD_JSON)
        if domain_of(event.sender) != origin:
            raise MatrixError(403, "The inviter is not from the requesting server",
                              Codes.FORBIDDEN)
        if domain_of(invitee) != self._server_name or \
                await self._users.get_user(invitee) is None:
            raise MatrixError(404, "The invited user is not known here", Codes.NOT_FOUND)
        if known is not None and (await self._persister.snapshot(roomId)).state_ids:
            await self._check_origin(origin, roomId)
        try:
            await check_signatures(self._keyring, event, origin)
        except PduError as e:
            raise MatrixError(403, f"Invite refused: {e.reason}", Codes.FORBIDDEN) from None
        if self._membership.check_room_blocked is not None:
            await self._membership.check_room_blocked(roomId)
        if self._membership.may_invite is not None:
            try:  # user_may_invite applies to remote inviters too (403 to their server)
                await self._membership.may_invite(event.sender, invitee, roomId)
            except MatrixError as e:
                spam = getattr(self._ingest, "spam", None)  # federation/ingest.py SpamGate
                if spam is not None:
                    await spam.record(origin, event.sender, roomId, "user_may_invite",
                                      e.errcode, invitee=invitee)
                raise
        signed = cosign(event.pdu, self._server_name, self._key, version)
        stored = dict(signed)
        invite_state = [s for s in body.get("invite_room_state") or [] if isinstance(s, dict)]
        stored["unsigned"] = {"invite_room_state": invite_state}
        await self.store_out_of_band(Event(event.event_id, stored, version), version)
        return 200, {"event": signed}

    async def store_out_of_band(self, event: Event, version: RoomVersion) -> None:
        """An invite (or its rejection) in a room whose state we do not hold
        (:class:`OutOfBandWriter`), by the process writing the room."""
        owns = self._persister.owns_room
        if self.remote_out_of_band is not None and owns is not None \
                and not owns(event.room_id):
            await self.remote_out_of_band(event, version)
            return
        await self._oob.store(event, version)


class OutOfBandWriter:
    """Member events of rooms without state here, at a position of the events stream
    (drawn by the room's writer: the process running this)."""

    def __init__(self, clock: Any, rooms: Any, persister: Any, out_of_band: Any,
                 notifier: Any) -> None:
        self._clock = clock
        self._rooms = rooms
        self._persister = persister
        self.out_of_band = out_of_band
        self._notifier = notifier

    async def store(self, event: Event, version: RoomVersion) -> None:
        """Held as the user's current membership when the room has no state here; a
        room we are in takes it through the ingest as usual (the inviting server sends
        it)."""
        room_id = event.room_id
        if await self._rooms.get_room_version(room_id) is None:
            await self._rooms.store_room(room_id, version.identifier, event.sender, False,
                                         self._clock.time_msec())
        if (await self._persister.snapshot(room_id)).state_ids:
            return
        async with self._persister.positions.write() as position:
            event.internal.stream_ordering = position
            await self.out_of_band.store_membership(event, position)
        assert event.state_key is not None
        user = event.state_key
        self._persister.positions.notify_when_readable(
            position, lambda: self._notifier.notify(user_ids={user}, room_ids={room_id}))
