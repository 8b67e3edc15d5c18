"""The deprecated pre-/sync API Synapse still serves (GET /events, /events/{eventId},
/initialSync, /rooms/{roomId}/initialSync), built on the modern read paths so the same
visibility rules apply.

- /events streams the room events of the user's rooms after ``from`` (a token from
  /events, /initialSync or /sync), long-polling through :meth:`SyncHandler.wait_for` (the
  same wait /sync uses, so one notifier wake-up rule for both). Only timeline events:
  unlike Synapse, no presence, typing or receipts (clients of this API poll /sync for
  those). ``room_id`` limits it to one room, and lets a user peek at a world-readable
  room they are not in; guests must give one.
- /events/{eventId} is /rooms/{roomId}/event/{eventId} without the room: an unknown event
  and one the user may not see are the same 404.
- /initialSync and /rooms/{roomId}/initialSync take their messages from /messages
  (backwards from now, or from the user's departure) and their state from /state. A
  world-readable room can be peeked at through the per-room endpoint; the answer then has
  no ``membership`` (Synapse says ``join``, which the user is not).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.directory import DirectoryHandler
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.pagination import PaginationHandler, parse_position
from homeserver.handlers.presence import PresenceHandler
from homeserver.handlers.room_reads import RoomReadHandler
from homeserver.handlers.sync import SyncHandler, SyncToken
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from storage.stores.events import EventStore
from storage.stores.room_members import MembershipRecord, RoomMemberStore

JsonDict = dict[str, Any]

MAX_TIMEOUT_MS = 5 * 60 * 1000
EVENTS_LIMIT = 100  # events per /events answer; the rest come with the next ``from``
SCAN_ROUNDS = 20  # /events: non-empty batches looked at before answering an empty chunk
MAX_INITIAL_LIMIT = 100  # messages per room: an initial sync touches every room


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

    # -- GET /events --------------------------------------------------------------------

    async def events(self, user_id: str, device_id: str | None, raw_from: str | None,
                     timeout_ms: int, room_id: str | None = None,
                     is_guest: bool = False) -> JsonDict:
        """The user's visible room events after ``raw_from``; waits up to ``timeout_ms``
        (capped at 5 minutes) for some when there are none yet.

        ``room_id`` limits the stream to one room, which may be peeked at when it is
        world-readable; any other room the user is not in is refused at once (rather
        than long-polling on a room they will never see). Guests must name a room, as
        in Synapse: they have no account-wide stream."""
        if room_id is None and is_guest:
            raise MatrixError(400, "Guest users must specify room_id param",
                              Codes.GUEST_ACCESS_FORBIDDEN)
        if room_id is not None:
            allowed, _ = await self._d.visibility.can_see_room_state(user_id, room_id)
            if not allowed:
                raise forbidden(f"User {user_id} not in room {room_id}, and room previews"
                                " are disabled")
        timeout_ms = max(0, min(timeout_ms, MAX_TIMEOUT_MS))
        live = self._d.creation.current_position()
        start = min(parse_position(raw_from, "from") if raw_from else live, live)
        found: list[Event] = []
        end = start
        rounds = 0

        async def ready(token: SyncToken) -> bool:
            """Scan what arrived up to ``token``: True once there is something to answer
            (visible events, or SCAN_ROUNDS batches that were all hidden)."""
            nonlocal found, end, rounds
            while token.events > end:
                found, end = await self._stream(user_id, end, token.events, room_id)
                rounds += 1
                if found or rounds >= SCAN_ROUNDS:
                    return True
            return False

        deadline = self._d.clock.time() + timeout_ms / 1000
        await self._d.sync.wait_for(user_id, self._d.sync.now_token(), deadline, ready)
        chunk = await self._d.serializer.serialize(found, user_id, device_id)
        return {"chunk": chunk, "start": raw_from or self._token(start), "end": self._token(end)}

    async def _stream(self, user_id: str, since: int, upto: int,
                      only_room: str | None = None) -> tuple[list[Event], int]:
        """The visible events in the user's rooms (or in ``only_room``, which may be
        peeked at) at positions in (since, cut], oldest first, and ``cut``: ``upto``
        unless the answer was capped."""
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
            rows = await self._d.events.paginate_room_events(room_id, since, "f", EVENTS_LIMIT,
                                                             to_position=upto)
            if len(rows) == EVENTS_LIMIT:
                cut = min(cut, rows[-1].internal.stream_ordering or 0)
            fetched.extend(rows)
        merged = sorted((e for e in fetched if (e.internal.stream_ordering or 0) <= cut),
                        key=lambda e: e.internal.stream_ordering or 0)
        if len(merged) > EVENTS_LIMIT:
            merged = merged[:EVENTS_LIMIT]
            cut = merged[-1].internal.stream_ordering or 0
        return await self._d.visibility.filter_events(user_id, merged), cut

    # -- GET /events/{eventId} ----------------------------------------------------------

    async def event(self, user_id: str, device_id: str | None, event_id: str) -> JsonDict:
        found = await self._d.events.get_event(event_id)
        if found is None or found.internal.outlier:
            raise not_found("Event not found.")
        event, _, _ = await self._d.room_reads.get_event(user_id, found.room_id, event_id)
        return (await self._d.serializer.serialize([event], user_id, device_id))[0]

    # -- GET /initialSync ---------------------------------------------------------------

    async def initial_sync(self, user_id: str, device_id: str | None, limit: int,
                           archived: bool) -> JsonDict:
        limit = min(limit, MAX_INITIAL_LIMIT)
        token = self._token(self._d.creation.current_position())
        wanted = ("join", "invite") + (("leave", "ban") if archived else ())
        global_ad, room_ad = await self._d.account_data.get_updated_account_data(user_id, 0)
        rooms = []
        for m in await self._d.members.rooms_for_user(user_id, wanted):
            rooms.append(await self._room(user_id, device_id, m.room_id, m, limit,
                                          room_ad.get(m.room_id, {})))
        return {
            "end": token,
            "rooms": rooms,
            "presence": await self._presence(user_id, device_id),
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
        room["presence"] = []
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
                out["invite"] = (await self._d.serializer.serialize([invite], user_id,
                                                                    device_id))[0]
                out["inviter"] = invite.sender
            return out
        departed = m is not None and m.membership in ("leave", "ban")
        position = m.stream_ordering if departed and m is not None \
            else self._d.creation.current_position()
        page = await self._d.pagination.get_messages(user_id, device_id, room_id, "b",
                                                     f"t{position}", None, limit, None)
        # ``start`` pages on backwards from the oldest message; when nothing older is
        # visible that is the beginning of the stream (the API always gives both keys).
        messages: JsonDict = {"chunk": list(reversed(page["chunk"])), "start": page.get("end", "t0"),
                              "end": page["start"]}
        out["messages"] = messages
        state = await self._d.room_reads.get_state(user_id, room_id)
        out["state"] = await self._d.serializer.serialize(state, user_id, device_id)
        out["account_data"] = [{"type": t, "content": c} for t, c in account_data.items()]
        try:
            out["visibility"] = await self._d.directory.get_visibility(room_id)
        except MatrixError:
            out["visibility"] = "private"
        return out

    async def _presence(self, user_id: str, device_id: str | None) -> list[JsonDict]:
        presence = self._d.presence
        if presence is None:
            return []
        section = await presence.global_section(user_id, device_id, 0,
                                                presence.current_position())
        events = section.get("presence", {}).get("events", [])
        return list(events) if isinstance(events, list) else []
