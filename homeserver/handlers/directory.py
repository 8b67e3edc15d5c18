"""Room aliases (``#name:server`` → room), the published room list (``/publicRooms``)
and the per-room summary (``room_stats_state``) that the room list and the user
directory read.

Permissions follow Synapse: an alias is created by a member of the room (or a server
admin) and deleted by its creator, a server admin, or a member able to send
``m.room.canonical_alias``; the same "moderator" rule guards publishing a room.
Aliases of other servers are resolved, and other servers' room lists fetched, over
federation (``remote_alias`` / ``remote_public_rooms``, set by
federation/remote_queries.py); without federation they are not found. A canonical
alias naming another server's alias is refused (M_BAD_ALIAS), since nothing here can
vouch for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.events.power_levels import (
    get_required_level,
    get_user_power_level,
    power_levels_content,
)
from homeserver.handlers.event_creation import EventCreationHandler, RoomSnapshot
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.opaque_tokens import Bool, Int, Str, decode_token, encode_token
from homeserver.identifiers import check_room_alias, check_room_id
from storage.stores.room_aliases import RoomAliasStore
from storage.stores.room_directory import PublicRoomsQuery, RoomDirectoryStore, RoomStats
from storage.stores.room_members import RoomMemberStore
from storage.stores.rooms import RoomStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

# Not in the spec's common list but what Synapse sends for a canonical alias that does
# not point to the room. (Candidate for homeserver.http.errors.Codes.)
BAD_ALIAS = "M_BAD_ALIAS"

CANONICAL_ALIAS = "m.room.canonical_alias"
CREATE = ("m.room.create", "")
POWER_LEVELS = ("m.room.power_levels", "")
HISTORY_VISIBILITY = ("m.room.history_visibility", "")

# The most rooms one /publicRooms page holds, whatever limit the client asks for
# (0 or no limit means "all" in Synapse; we page instead of answering unboundedly).
MAX_PUBLIC_ROOMS_PAGE = 500
MAX_SINCE_TOKEN = 1024

_SERVER_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.\-]{1,255})(:[0-9]{1,5})?$")


def parse_alias(alias: str) -> tuple[str, str]:
    """(localpart, server) of a syntactically valid alias; 400 M_INVALID_PARAM otherwise."""
    local, server = check_room_alias(alias)
    if not _SERVER_NAME.fullmatch(server):
        raise MatrixError(400, "Room alias invalid", Codes.INVALID_PARAM)
    return local, server


def check_server_name(server: str) -> None:
    if not _SERVER_NAME.fullmatch(server):
        raise MatrixError(400, "Invalid server name", Codes.INVALID_PARAM)


# --------------------------------------------------------------------------- room summary

def _string(event: Event | None, key: str) -> str | None:
    value = event.content.get(key) if event is not None else None
    return value if isinstance(value, str) else None


def _plain_topic(event: Event | None) -> str | None:
    """``topic``, else the text/plain entry of ``m.topic`` (spec v1.15 topics)."""
    topic = _string(event, "topic")
    if topic is not None or event is None:
        return topic
    rich = event.content.get("m.topic")
    texts = rich.get("m.text") if isinstance(rich, dict) else None
    for item in texts if isinstance(texts, list) else []:
        if (isinstance(item, dict) and isinstance(item.get("body"), str)
                and item.get("mimetype", "text/plain") == "text/plain"):
            return str(item["body"])
    return None


def _prefixed(key: str, prefix: str) -> Callable[[Event | None], str | None]:
    """A string field, kept only if it has the prefix the published rooms schema
    requires (``#`` for an alias, ``mxc://`` for an avatar): bad values are not served."""

    def get(event: Event | None) -> str | None:
        value = _string(event, key)
        return value if value and value.startswith(prefix) else None

    return get


# State type -> (room_stats_state column, how to read it from the event).
_SUMMARY: dict[str, tuple[str, Callable[[Event | None], str | None]]] = {
    "m.room.create": ("room_type", lambda e: _string(e, "type")),
    "m.room.name": ("name", lambda e: _string(e, "name")),
    "m.room.topic": ("topic", _plain_topic),
    CANONICAL_ALIAS: ("canonical_alias", _prefixed("alias", "#")),
    "m.room.avatar": ("avatar", _prefixed("url", "mxc://")),
    "m.room.join_rules": ("join_rules", lambda e: _string(e, "join_rule")),
    "m.room.history_visibility": ("history_visibility",
                                  lambda e: _string(e, "history_visibility")),
    "m.room.guest_access": ("guest_access", lambda e: _string(e, "guest_access")),
}
# Columns search_text is made of: an event changing one of these rebuilds the row.
_SEARCHED = ("name", "topic", "canonical_alias")


def summarise_state(state: dict[tuple[str, str], Event]) -> dict[str, str | None]:
    """The ``room_stats_state`` columns from current state."""
    return {column: read(state.get((event_type, ""))) for event_type, (column, read)
            in _SUMMARY.items()}


def search_text(fields: dict[str, str | None]) -> str:
    return "\n".join(v.lower() for v in (fields[c] for c in _SEARCHED) if v)


class RoomStatsUpdater:
    """Keeps ``room_stats_state`` in step with current state: a subscriber of the event
    fan-out (in stream order per room), plus a start-up pass for rooms that have no row
    (rooms created before this table existed)."""

    def __init__(self, creation: EventCreationHandler, store: RoomDirectoryStore) -> None:
        self._creation = creation
        self._store = store

    async def on_event(self, event: Event) -> None:
        """Cheapest update that keeps the row right: a recount for a member event, one
        column for most others, the whole row when search_text or the row itself is new."""
        if event.type == "m.room.member":
            if not event.is_state():
                return
        elif event.type not in _SUMMARY or event.state_key != "":
            return
        try:
            if event.type == "m.room.member":
                if await self._store.update_joined_members(event.room_id):
                    return
            else:
                column, read = _SUMMARY[event.type]
                if column not in _SEARCHED and event.type != "m.room.create" and (
                        await self._store.update_field(event.room_id, column, read(event))):
                    return
            await self.refresh(event.room_id)
        except Exception:
            # The event is persisted; a stale summary must not turn the send into a 500.
            logger.exception("Failed to update the directory summary of a room")

    async def refresh(self, room_id: str) -> None:
        state = await self._creation.current_state(room_id, [(t, "") for t in _SUMMARY])
        fields = summarise_state(state)
        await self._store.upsert_stats(room_id, fields, search_text(fields))

    async def backfill(self) -> int:
        done = 0
        while True:
            missing = await self._store.rooms_without_stats(500)
            if not missing:
                return done
            for room_id in missing:
                await self.refresh(room_id)
                done += 1


# --------------------------------------------------------------------------- aliases & list


# joined members (a room's count, stored as INTEGER), room id, direction
_SINCE_TOKEN = (Int(maximum=2**31 - 1), Str(prefix="!"), Bool())


def _encode_token(members: int, room_id: str, forwards: bool) -> str:
    return encode_token([members, room_id, forwards])


def _decode_token(token: str) -> tuple[int, str, bool]:
    data = decode_token(token, MAX_SINCE_TOKEN, _SINCE_TOKEN)
    return data[0], data[1], data[2]


def room_chunk(s: RoomStats) -> dict[str, Any]:
    """A PublishedRoomsChunk; absent optional fields are omitted (the schema wants strings)."""
    out: dict[str, Any] = {
        "room_id": s.room_id,
        "num_joined_members": s.joined_members,
        "world_readable": s.history_visibility == "world_readable",
        "guest_can_join": s.guest_access == "can_join",
    }
    for key, value in (("name", s.name), ("topic", s.topic), ("canonical_alias", s.canonical_alias),
                       ("avatar_url", s.avatar), ("join_rule", s.join_rules),
                       ("room_type", s.room_type)):
        if value is not None:
            out[key] = value
    return out


class DirectoryHandler:
    def __init__(
        self,
        server_name: str,
        clock: Clock,
        creation: EventCreationHandler,
        aliases: RoomAliasStore,
        rooms: RoomStore,
        members: RoomMemberStore,
        users: UserStore,
        stats: RoomDirectoryStore,
    ) -> None:
        self._server_name = server_name
        self._clock = clock
        self._creation = creation
        self._aliases = aliases
        self._rooms = rooms
        self._members = members
        self._users = users
        self._stats = stats
        # Plugin gates (plugins/host.py), raising a MatrixError to refuse:
        # may_create_alias(user_id, alias, room_id), may_publish(user_id, room_id).
        self.may_create_alias: Callable[[str, str, str], Awaitable[None]] | None = None
        self.may_publish: Callable[[str, str], Awaitable[None]] | None = None
        # Application services (homeserver/appservice/handler.py): appservice_alias(alias)
        # refuses an exclusive alias to others and says whether the requesting service
        # owns it (it then needs no membership); query_alias(alias) asks the services
        # about an unknown alias; network_rooms(instance_id, all) lists their networks.
        self.appservice_alias: Callable[[str], Awaitable[bool]] | None = None
        self.query_alias: Callable[[str], Awaitable[bool]] | None = None
        self.network_rooms: Callable[[str | None, bool], Awaitable[list[str]]] | None = None
        # Aliases a room shutdown removed (homeserver/handlers/admin_rooms.py): raises
        # M_FORBIDDEN, so they cannot be created again.
        self.check_alias_blocked: Callable[[str], Awaitable[None]] | None = None
        # Federation: remote_alias(alias) -> {"room_id", "servers"} or None (not found);
        # remote_public_rooms(server, params) -> that server's /publicRooms answer.
        self.remote_alias: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None
        self.remote_public_rooms: Callable[[str, dict[str, Any]],
                                           Awaitable[dict[str, Any]]] | None = None

    async def _is_admin(self, user_id: str) -> bool:
        user = await self._users.get_user(user_id)
        return user is not None and user.is_admin

    async def _is_joined(self, user_id: str, room_id: str) -> bool:
        current = await self._members.get_membership(user_id, room_id)
        return current is not None and current.membership == "join"

    async def _is_moderator(self, user_id: str, room_id: str) -> bool:
        """Synapse's ``check_can_change_room_list``: a server admin, or a joined member
        whose power level allows sending ``m.room.canonical_alias``."""
        if await self._is_admin(user_id):
            return True
        if not await self._is_joined(user_id, room_id):
            return False
        state = await self._creation.current_state(room_id, [CREATE, POWER_LEVELS])
        create = state.get(CREATE)
        if create is None:
            return False
        needed = get_required_level(CANONICAL_ALIAS, True, power_levels_content(state))
        return get_user_power_level(user_id, state, create) >= needed

    # ---- aliases

    async def create_alias(self, user_id: str, alias: str, room_id: str) -> None:
        local, server = parse_alias(alias)
        if server != self._server_name:
            raise MatrixError(400, "Room alias must be local", Codes.INVALID_PARAM)
        if any(c.isspace() for c in local):
            raise MatrixError(400, "Invalid characters in room alias", Codes.INVALID_PARAM)
        check_room_id(room_id)
        by_service = self.appservice_alias is not None and await self.appservice_alias(alias)
        # Membership first, as Synapse: a non-member learns nothing about the room.
        if not by_service and not await self._is_admin(user_id) \
                and not await self._is_joined(user_id, room_id):
            raise MatrixError(403, "You must be in the room to create an alias for it",
                              Codes.FORBIDDEN)
        if await self._rooms.get_room_version(room_id) is None:
            raise MatrixError(404, "Room not found", Codes.NOT_FOUND)
        if self.check_alias_blocked is not None:
            await self.check_alias_blocked(alias)
        if self.may_create_alias is not None:
            await self.may_create_alias(user_id, alias, room_id)
        if not await self._aliases.create_alias(alias, room_id, user_id, self._clock.time_msec()):
            raise MatrixError(409, f"Room alias {alias} already exists", Codes.UNKNOWN)

    async def resolve_alias(self, alias: str) -> str | None:
        """The room of an alias, or None (other servers' aliases: asked over federation,
        else None)."""
        _, server = parse_alias(alias)
        if server != self._server_name:
            answer = await self.remote_alias(alias) if self.remote_alias is not None else None
            return answer["room_id"] if answer is not None else None
        found = await self._aliases.get_alias(alias)
        if found is None and self.query_alias is not None and await self.query_alias(alias):
            found = await self._aliases.get_alias(alias)
        return found[0] if found else None

    async def get_alias(self, alias: str) -> dict[str, Any]:
        _, server = parse_alias(alias)
        if server != self._server_name and self.remote_alias is not None:
            answer = await self.remote_alias(alias)
            if answer is None:
                raise MatrixError(404, f"Room alias {alias} not found", Codes.NOT_FOUND)
            return answer
        room_id = await self.resolve_alias(alias)
        if room_id is None:
            msg = f"Room alias {alias} not found" if server == self._server_name else (
                "Room alias is on another server; federation is not enabled")
            raise MatrixError(404, msg, Codes.NOT_FOUND)
        joined = await self._members.members_of_room(room_id)
        others = sorted({m.user_id.partition(":")[2] for m in joined} - {self._server_name, ""})
        return {"room_id": room_id, "servers": [self._server_name, *others]}

    async def delete_alias(self, user_id: str, alias: str) -> None:
        parse_alias(alias)
        found = await self._aliases.get_alias(alias)
        if found is None:
            raise MatrixError(404, "Unknown room alias", Codes.NOT_FOUND)
        room_id, creator = found
        if creator != user_id and not await self._is_moderator(user_id, room_id):
            raise MatrixError(403, "You don't have permission to delete the alias.",
                              Codes.FORBIDDEN)
        if not await self._aliases.delete_alias(alias):
            raise MatrixError(404, "Unknown room alias", Codes.NOT_FOUND)  # lost a race
        await self._drop_from_canonical_alias(user_id, room_id, alias)

    async def _drop_from_canonical_alias(self, user_id: str, room_id: str, alias: str) -> None:
        """As Synapse: if the deleted alias is the canonical alias or an alt alias, send
        an updated m.room.canonical_alias as the deleting user; if they may not, the
        alias is deleted all the same (the spec's recommendation)."""
        state = await self._creation.current_state(room_id, [(CANONICAL_ALIAS, "")])
        event = state.get((CANONICAL_ALIAS, ""))
        if event is None:
            return
        content = dict(event.content)
        changed = False
        if content.get("alias") == alias:
            content.pop("alias")
            changed = True
        alt = content.get("alt_aliases")
        if isinstance(alt, list) and alias in alt:
            kept = [a for a in alt if a != alias]
            if kept:
                content["alt_aliases"] = kept
            else:
                del content["alt_aliases"]
            changed = True
        if not changed:
            return
        try:
            await self._creation.send(room_id, user_id, CANONICAL_ALIAS, content, "")
        except MatrixError as e:
            logger.info("Alias deleted but canonical alias not updated: %s", e.errcode)

    async def room_aliases(self, user_id: str, room_id: str) -> list[str]:
        """Local aliases of a room: for members, anyone if world-readable, and admins."""
        check_room_id(room_id)
        if not await self._is_admin(user_id) and not await self._is_joined(user_id, room_id):
            allowed = False
            if await self._rooms.get_room_version(room_id) is not None:
                state = await self._creation.current_state(room_id, [HISTORY_VISIBILITY])
                allowed = _string(state.get(HISTORY_VISIBILITY),
                                  "history_visibility") == "world_readable"
            if not allowed:
                raise MatrixError(403, "You are not a member of the room.", Codes.FORBIDDEN)
        return await self._aliases.aliases_for_room(room_id)

    async def validate_canonical_alias(self, event: Event, snap: RoomSnapshot) -> None:
        """A client-sent m.room.canonical_alias may only name aliases that point to this
        room. As Synapse, only aliases added by this event are checked (one deleted
        since it was set does not block other edits)."""
        content = event.content
        unsigned = event.pdu.get("unsigned")
        prev = unsigned.get("prev_content") if isinstance(unsigned, dict) else None
        prev = prev if isinstance(prev, dict) else {}
        wanted: list[str] = []
        alias = content.get("alias")
        if alias is not None:
            if not isinstance(alias, str):
                raise MatrixError(400, "The alias property must be a string.", Codes.INVALID_PARAM)
            if alias and alias != prev.get("alias"):
                wanted.append(alias)
        alt = content.get("alt_aliases", [])
        if not isinstance(alt, list) or not all(isinstance(a, str) for a in alt):
            raise MatrixError(400, "The alt_aliases property must be a list of strings.",
                              Codes.INVALID_PARAM)
        prev_alt = prev.get("alt_aliases")
        known = set(a for a in prev_alt if isinstance(a, str)) if isinstance(prev_alt, list) else set()
        wanted += [a for a in alt if a not in known]
        wanted = list(dict.fromkeys(wanted))
        for a in wanted:
            parse_alias(a)
        found = await self._aliases.rooms_for_aliases(
            [a for a in wanted if parse_alias(a)[1] == self._server_name])
        for a in wanted:
            if found.get(a) != event.room_id:
                raise MatrixError(400, f"Room alias {a} does not point to the room", BAD_ALIAS)

    # ---- published room list

    async def get_visibility(self, room_id: str) -> str:
        check_room_id(room_id)
        room = await self._rooms.get_room(room_id)
        if room is None:
            raise MatrixError(404, "Room not found", Codes.NOT_FOUND)
        return "public" if room.is_public else "private"

    async def set_visibility(self, user_id: str, room_id: str, visibility: str) -> None:
        check_room_id(room_id)
        if await self._rooms.get_room(room_id) is None:
            raise MatrixError(404, "Room not found", Codes.NOT_FOUND)
        if not await self._is_moderator(user_id, room_id):
            raise MatrixError(403, "This server requires you to be a moderator in the room to"
                              " edit its room list entry", Codes.FORBIDDEN)
        if visibility == "public" and self.may_publish is not None:
            await self.may_publish(user_id, room_id)
        await self._rooms.set_public(room_id, visibility == "public")

    async def public_rooms(
        self,
        limit: int | None,
        since: str | None,
        search: str | None = None,
        room_types: list[str | None] | None = None,
        server: str | None = None,
        third_party_instance_id: str | None = None,
        include_all_networks: bool = False,
        authenticated: bool = True,
    ) -> dict[str, Any]:
        """One page of the published room list, Synapse's pagination: ``next_batch``
        when more rooms follow, ``prev_batch`` when the page did not start at the top.
        Another server's list is only fetched for an authenticated user (as Synapse:
        no anonymous requests made through us)."""
        if server is not None and server != self._server_name:
            check_server_name(server)
            if self.remote_public_rooms is None:
                raise MatrixError(404, "Federation is not enabled: cannot list another"
                                  " server's rooms", Codes.NOT_FOUND)
            if not authenticated:
                raise MatrixError(401, "Listing another server's rooms needs an access token",
                                  Codes.MISSING_TOKEN)
            return await self.remote_public_rooms(server, {
                "limit": limit, "since": since, "search": search, "room_types": room_types,
                "third_party_instance_id": third_party_instance_id,
                "include_all_networks": include_all_networks})
        if include_all_networks and third_party_instance_id is not None:
            raise MatrixError(400, "Can't use include_all_networks with an explicit network",
                              Codes.INVALID_PARAM)
        if third_party_instance_id is not None:
            return await self._network_list(third_party_instance_id)
        if limit is not None and limit < 0:
            raise MatrixError(400, "limit must not be negative", Codes.INVALID_PARAM)
        page = MAX_PUBLIC_ROOMS_PAGE if not limit else min(limit, MAX_PUBLIC_ROOMS_PAGE)
        bound: tuple[int, str] | None = None
        forwards = True
        if since:
            members, last_room, forwards = _decode_token(since)
            bound = (members, last_room)
        term = search.strip().lower() if search else None
        query = PublicRoomsQuery(search=term or None, room_types=room_types or None, bound=bound,
                                 forwards=forwards, limit=page + 1)
        rows = await self._stats.public_rooms(query)
        more = len(rows) > page
        rows = rows[:page]
        if not forwards:
            rows.reverse()
        out: dict[str, Any] = {"chunk": [room_chunk(r) for r in rows]}
        if rows:
            first, last = rows[0], rows[-1]
            before = since is not None if forwards else more
            after = more if forwards else since is not None
            if before:
                out["prev_batch"] = _encode_token(first.joined_members, first.room_id, False)
            if after:
                out["next_batch"] = _encode_token(last.joined_members, last.room_id, True)
        out["total_room_count_estimate"] = await self._stats.count_public_rooms(
            PublicRoomsQuery(search=query.search, room_types=query.room_types))
        if include_all_networks and since is None and not term and self.network_rooms:
            seen = {c["room_id"] for c in out["chunk"]}
            extra = (await self._network_list(None))["chunk"]
            out["chunk"] += [c for c in extra if c["room_id"] not in seen]
        return out

    async def _network_list(self, instance_id: str | None) -> dict[str, Any]:
        """The rooms application services published on one network (or on all)."""
        ids = await self.network_rooms(instance_id, instance_id is None) \
            if self.network_rooms is not None else []
        chunk = []
        for room_id in ids[:MAX_PUBLIC_ROOMS_PAGE]:
            stats = await self._stats.get_stats(room_id)
            if stats is not None:
                chunk.append(room_chunk(stats))
        return {"chunk": chunk, "total_room_count_estimate": len(chunk)}
