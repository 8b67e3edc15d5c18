"""The deprecated pre-/sync API Synapse still serves (GET /events, /events/{eventId},
/initialSync, /rooms/{roomId}/initialSync), built on the modern read paths so the same
visibility rules apply.

- /events streams, after ``from`` (a token from /events, /initialSync or /sync), what
  Synapse's EventStreamHandler does: the room events of the user's rooms, then presence
  changes of the people they share a room with, typing and receipts of their joined
  rooms and their account data (global, and per room with ``room_id``: tags are the
  ``m.tag`` room account data). One long-poll through :meth:`SyncHandler.wait_for` (the
  same wait /sync uses). ``room_id`` limits room events, typing and receipts to one
  room, and lets a user peek at a world-readable room they are not in; guests must give
  one. Calling it marks a non-guest user online, as a /sync does. A join in the chunk
  brings the presence of the people now in view (Synapse). With ``room_id`` the presence
  changes of that room's joined members are in too (Synapse's explicit room), so a
  peeker of a world-readable room sees them; the room's wake-ups (a member's presence
  change notifies their rooms) end the peeker's long-poll.
- /events/{eventId} is /rooms/{roomId}/event/{eventId} without the room: an unknown event
  and one the user may not see are the same 404.
- /initialSync and /rooms/{roomId}/initialSync take their messages from /messages
  (backwards from now, or from the user's departure) and their state from /state, plus
  the presence and read receipts Synapse gives there. A world-readable room can be
  peeked at through the per-room endpoint; the answer then has no ``membership``
  (Synapse says ``join``, which the user is not).

Every event is in Synapse's v1 client format, which SyTest and old clients read:
``user_id`` (the sender) and ``age`` etc. copied out of ``unsigned``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.directory import DirectoryHandler
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.pagination import PaginationHandler, parse_position
from homeserver.handlers.presence import ONLINE, PresenceHandler
from homeserver.handlers.room_reads import RoomReadHandler
from homeserver.handlers.sync import EphemeralSource, SyncHandler, SyncToken
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from storage.stores.events import EventStore
from storage.stores.room_members import MembershipRecord, RoomMemberStore

JsonDict = dict[str, Any]

MAX_TIMEOUT_MS = 5 * 60 * 1000
EVENTS_LIMIT = 100  # events per /events answer; the rest come with the next ``from``
SCAN_ROUNDS = 20  # /events: non-empty batches looked at before answering an empty chunk
MAX_INITIAL_LIMIT = 100  # messages per room: an initial sync touches every room
# Synapse's format_event_for_client_v1 copies these out of ``unsigned``.
V1_COPIED_KEYS = ("age", "redacted_because", "replaces_state", "prev_content",
                  "invite_room_state", "knock_room_state")


def v1_event(event: JsonDict) -> JsonDict:
    """Synapse's v1 client format of a serialized room event."""
    if "sender" in event:
        event["user_id"] = event["sender"]
    unsigned = event.get("unsigned")
    if isinstance(unsigned, dict):
        for key in V1_COPIED_KEYS:
            if key in unsigned:
                event[key] = unsigned[key]
    return event


def legacy_presence(event: JsonDict) -> JsonDict:
    """An m.presence event as the legacy API shows it: ``content.user_id`` names whose."""
    content = dict(event.get("content") or {})
    content["user_id"] = event.get("sender")
    return {**event, "content": content}


@dataclasses.dataclass
class LegacyDeps:
    """What the legacy endpoints read from."""

    clock: Clock
    events: EventStore
    members: RoomMemberStore
    creation: EventCreationHandler
    visibility: VisibilityHandler
    room_reads: RoomReadHandler
    pagination: PaginationHandler
    serializer: ClientEventSerializer
    sync: SyncHandler
    account_data: AccountDataHandler
    directory: DirectoryHandler
    presence: PresenceHandler | None = None


class LegacyHandler:
    def __init__(self, deps: LegacyDeps) -> None:
        self._d = deps

    def _token(self, position: int) -> str:
        """A sync-style token at event ``position`` (accepted by /events and /sync)."""
        return str(dataclasses.replace(self._d.sync.now_token(), events=position))

    def _source(self, name: str) -> EphemeralSource | None:
        return next((s for s in self._d.sync.sources if s.name == name), None)

    async def _serialize(self, events: list[Event], user_id: str, device_id: str | None
                         ) -> list[JsonDict]:
        return [v1_event(e) for e in await self._d.serializer.serialize(events, user_id,
                                                                          device_id)]

    def _parse_from(self, raw_from: str | None, now: SyncToken) -> SyncToken:
        """A sync token (``s...``, from /events, /initialSync or /sync) or a room token
        (``t<N>``, e.g. a room initialSync's ``messages.end``: the other streams then
        start now); none (or empty, as Synapse): from now. Never ahead of ``now``."""
        if not raw_from:
            return now
        if raw_from.startswith("s"):
            return SyncToken.parse(raw_from).bounded_by(now)
        position = parse_position(raw_from, "from")
        return dataclasses.replace(now, events=min(position, now.events))

    # -- GET /events --------------------------------------------------------------------

    async def events(self, user_id: str, device_id: str | None, raw_from: str | None,
                     timeout_ms: int, room_id: str | None = None,
                     is_guest: bool = False, limit: int | None = None) -> JsonDict:
        """What happened for the user after ``raw_from``; waits up to ``timeout_ms``
        (capped at 5 minutes) for something when there is nothing yet.

        ``room_id`` limits the room streams to one room, which may be peeked at when it
        is world-readable; any other room the user is not in is refused at once (rather
        than long-polling on a room they will never see). Guests must name a room, as
        in Synapse: they have no account-wide stream."""
        if room_id is None and is_guest:
            raise MatrixError(400, "Guest users must specify room_id param",
                              Codes.GUEST_ACCESS_FORBIDDEN)
        # Whose presence the named room adds: its members, when the caller is in it or
        # it is world-readable (not to a departed user, who sees the room as it was).
        peeked: str | None = None
        if room_id is not None:
            allowed, at = await self._d.visibility.can_see_room_state(user_id, room_id)
            if not allowed:
                raise forbidden(f"User {user_id} not in room {room_id}, and room previews"
                                " are disabled")
            peeked = room_id if at is None else None
        timeout_ms = max(0, min(timeout_ms, MAX_TIMEOUT_MS))
        limit = min(limit or EVENTS_LIMIT, EVENTS_LIMIT)
        presence = self._d.presence
        if presence is not None and not is_guest:
            await presence.user_syncing(user_id, device_id, ONLINE, timeout_ms)
        start = self._parse_from(raw_from, self._d.sync.now_token())
        found: list[Event] = []
        extras: list[JsonDict] = []
        end = start.events
        rounds = 0

        async def ready(token: SyncToken) -> bool:
            """Scan what arrived up to ``token``: True once there is something to answer
            (visible events or stream data, or SCAN_ROUNDS batches that were all hidden)."""
            nonlocal found, end, rounds, extras
            extras = await self._stream_extras(user_id, device_id, start, token, room_id,
                                               peeked)
            while token.events > end:
                found, end = await self._stream(user_id, end, token.events, room_id, limit)
                rounds += 1
                if found or rounds >= SCAN_ROUNDS:
                    return True
            return bool(extras)

        deadline = self._d.clock.time() + timeout_ms / 1000
        upto = await self._d.sync.wait_for(user_id, self._d.sync.now_token(), deadline, ready,
                                           extra_rooms=[room_id] if room_id else ())
        chunk = await self._serialize(found, user_id, device_id)
        chunk.extend(await self._joined_presence(user_id, found, extras))
        chunk.extend(extras)
        return {"chunk": chunk, "start": raw_from or str(start),
                "end": str(dataclasses.replace(upto, events=end))}

    async def _stream(self, user_id: str, since: int, upto: int,
                      only_room: str | None = None, limit: int = EVENTS_LIMIT
                      ) -> tuple[list[Event], int]:
        """The visible events in the user's rooms (or in ``only_room``, which may be
        peeked at) at positions in (since, cut], oldest first, and ``cut``: ``upto``
        unless the answer was capped at ``limit``."""
        if upto <= since:
            return [], since
        if only_room is not None:
            room_ids = [only_room]
        else:
            memberships = await self._d.members.rooms_for_user(
                user_id, ("join", "invite", "leave", "ban", "knock"))
            room_ids = [m.room_id for m in memberships
                        if m.membership in ("join", "invite") or m.stream_ordering > since]
        changed = await self._d.events.rooms_with_events_between(room_ids, since, upto)
        cut = upto
        fetched: list[Event] = []
        for room_id in sorted(changed):
            rows = await self._d.events.paginate_room_events(room_id, since, "f", limit,
                                                             to_position=upto)
            if len(rows) == limit:
                cut = min(cut, rows[-1].internal.stream_ordering or 0)
            fetched.extend(rows)
        merged = sorted((e for e in fetched if (e.internal.stream_ordering or 0) <= cut),
                        key=lambda e: e.internal.stream_ordering or 0)
        if len(merged) > limit:
            merged = merged[:limit]
            cut = merged[-1].internal.stream_ordering or 0
        return await self._d.visibility.filter_events(user_id, merged), cut

    async def _stream_extras(self, user_id: str, device_id: str | None, since: SyncToken,
                             upto: SyncToken, only_room: str | None,
                             peeked: str | None = None) -> list[JsonDict]:
        """The non-timeline part of an /events answer in (since, upto]: presence (of
        the people sharing a room with the user, and of ``peeked``'s members, as
        Synapse's explicit room), typing and receipts (with their ``room_id``), then
        account data."""
        out: list[JsonDict] = []
        room_ids: list[str] | None = [only_room] if only_room is not None else None
        for name in ("presence", "typing", "receipts"):
            src = self._source(name)
            if src is None or upto.position(name) <= since.position(name):
                continue
            if name == "presence":
                if peeked is not None and self._d.presence is not None:
                    section = await self._d.presence.global_section(
                        user_id, device_id, since.position(name), upto.position(name),
                        peeked_room=peeked)
                else:
                    section = await src.global_section(
                        user_id, device_id, since.position(name), upto.position(name))
                events = section.get("presence", {}).get("events", [])
                out.extend(legacy_presence(e) for e in events if isinstance(e, dict))
                continue
            if room_ids is None:
                room_ids = [m.room_id for m in await self._d.members.rooms_for_user(user_id)]
            per_room = await src.room_events(user_id, room_ids, since.position(name),
                                             upto.position(name))
            for room_id in sorted(per_room):
                out.extend({**e, "room_id": room_id} for e in per_room[room_id])
        if upto.account_data > since.account_data:
            global_ad, room_ad = await self._d.account_data.get_updated_account_data(
                user_id, since.account_data)
            out.extend({"type": t, "content": c} for t, c in global_ad.items())
            for room_id in sorted(room_ad):
                out.extend({"type": t, "room_id": room_id, "content": c}
                           for t, c in room_ad[room_id].items())
        return out

    async def _joined_presence(self, user_id: str, events: list[Event],
                               already: list[JsonDict]) -> list[JsonDict]:
        """Presence of whoever a join in ``events`` brings into view: everyone in the
        room when it is the user's own join, else the joiner (Synapse)."""
        presence = self._d.presence
        if presence is None:
            return []
        wanted: set[str] = set()
        for e in events:
            if e.type != "m.room.member" or e.state_key is None or \
                    e.content.get("membership") != "join":
                continue
            if e.state_key == user_id:
                wanted.update(m.user_id for m in await self._d.members.members_of_room(
                    e.room_id))
            else:
                wanted.add(e.state_key)
        wanted -= {str(e.get("sender")) for e in already if e.get("type") == "m.presence"}
        return [legacy_presence(e) for e in await presence.presence_events(wanted)]

    # -- GET /events/{eventId} ----------------------------------------------------------

    async def event(self, user_id: str, device_id: str | None, event_id: str) -> JsonDict:
        found = await self._d.events.get_event(event_id)
        if found is None or found.internal.outlier:
            raise not_found("Event not found.")
        event, _, _ = await self._d.room_reads.get_event(user_id, found.room_id, event_id)
        return (await self._serialize([event], user_id, device_id))[0]

    # -- GET /initialSync ---------------------------------------------------------------

    async def initial_sync(self, user_id: str, device_id: str | None, limit: int,
                           archived: bool) -> JsonDict:
        limit = min(limit, MAX_INITIAL_LIMIT)
        token = self._token(self._d.creation.current_position())
        wanted = ("join", "invite") + (("leave", "ban") if archived else ())
        global_ad, room_ad = await self._d.account_data.get_updated_account_data(user_id, 0)
        rooms = []
        memberships = await self._d.members.rooms_for_user(user_id, wanted)
        for m in memberships:
            rooms.append(await self._room(user_id, device_id, m.room_id, m, limit,
                                          room_ad.get(m.room_id, {})))
        return {
            "end": token,
            "rooms": rooms,
            "presence": await self._presence(user_id, device_id),
            "receipts": await self._receipts(
                user_id, [m.room_id for m in memberships if m.membership == "join"]),
            "account_data": [{"type": t, "content": c} for t, c in global_ad.items()],
        }

    async def room_initial_sync(self, user_id: str, device_id: str | None, room_id: str,
                                limit: int) -> JsonDict:
        limit = min(limit, MAX_INITIAL_LIMIT)
        m = await self._d.members.get_membership(user_id, room_id)
        member = m is not None and (m.membership == "join" or (
            m.membership in ("leave", "ban") and not m.forgotten))
        if not member:
            allowed, _ = await self._d.visibility.can_see_room_state(user_id, room_id)
            if not allowed:
                # Unknown and private rooms look the same.
                raise forbidden("You are not a member of this room")
            m = None
        _, room_ad = await self._d.account_data.get_updated_account_data(user_id, 0)
        room = await self._room(user_id, device_id, room_id, m, limit, room_ad.get(room_id, {}))
        departed = m is not None and m.membership != "join"
        # As Synapse: no presence or receipts once the user has left.
        room["presence"] = [] if departed else await self._members_presence(room["state"])
        room["receipts"] = [] if departed else await self._receipts(user_id, [room_id])
        return room

    async def _room(self, user_id: str, device_id: str | None, room_id: str,
                    m: MembershipRecord | None, limit: int, account_data: JsonDict) -> JsonDict:
        """One RoomInfo: invites carry the invite event; others messages and state (as
        of the user's departure for left and banned users)."""
        out: JsonDict = {"room_id": room_id}
        if m is not None:
            out["membership"] = m.membership
        if m is not None and m.membership == "invite":
            invite = await self._d.events.get_event(m.event_id)
            if invite is not None:
                out["invite"] = (await self._serialize([invite], user_id, device_id))[0]
                out["inviter"] = invite.sender
            return out
        departed = m is not None and m.membership in ("leave", "ban")
        position = m.stream_ordering if departed and m is not None \
            else self._d.creation.current_position()
        page = await self._d.pagination.get_messages(user_id, device_id, room_id, "b",
                                                     f"t{position}", None, limit, None)
        # ``start`` pages on backwards from the oldest message; when nothing older is
        # visible that is the beginning of the stream (the API always gives both keys).
        messages: JsonDict = {"chunk": [v1_event(e) for e in reversed(page["chunk"])],
                              "start": page.get("end", "t0"), "end": page["start"]}
        out["messages"] = messages
        state = await self._d.room_reads.get_state(user_id, room_id)
        out["state"] = await self._serialize(state, user_id, device_id)
        out["account_data"] = [{"type": t, "content": c} for t, c in account_data.items()]
        try:
            out["visibility"] = await self._d.directory.get_visibility(room_id)
        except MatrixError:
            out["visibility"] = "private"
        return out

    async def _presence(self, user_id: str, device_id: str | None) -> list[JsonDict]:
        """Everyone the user shares a room with (and themselves) who is not offline."""
        presence = self._d.presence
        if presence is None:
            return []
        section = await presence.global_section(user_id, device_id, 0,
                                                presence.current_position())
        events = section.get("presence", {}).get("events", [])
        return [legacy_presence(e) for e in events if isinstance(e, dict)] \
            if isinstance(events, list) else []

    async def _members_presence(self, state: list[JsonDict]) -> list[JsonDict]:
        """The presence of the joined members in a room's (serialized) state."""
        if self._d.presence is None:
            return []
        joined = [str(e["state_key"]) for e in state if e.get("type") == "m.room.member"
                  and (e.get("content") or {}).get("membership") == "join"]
        return [legacy_presence(e) for e in await self._d.presence.presence_events(joined)]

    async def _receipts(self, user_id: str, room_ids: Iterable[str]) -> list[JsonDict]:
        """The current receipts of ``room_ids`` the user may see, one m.receipt per room."""
        src = self._source("receipts")
        room_ids = list(room_ids)
        if src is None or not room_ids:
            return []
        per_room = await src.room_events(user_id, room_ids, 0, src.current_position())
        return [{**e, "room_id": room_id} for room_id in sorted(per_room)
                for e in per_room[room_id]]
