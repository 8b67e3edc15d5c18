"""Spaces: GET /rooms/{roomId}/hierarchy and GET /room_summary/{roomIdOrAlias}.

Which rooms a user may see a summary of (spec "Room summaries", as Synapse decides it
for local rooms): joined or invited rooms, rooms with a public / knock /
knock_restricted join rule, world-readable rooms, and restricted rooms whose allow list
names a room the user is joined to. Everything else (unknown rooms included) is left
out of a hierarchy, and is a 403 as its root / a 404 for /room_summary, so neither
tells an unknown room from a private one. Only local rooms are known (no federation).

The hierarchy walk is Synapse's depth-first order (children sorted by their ``order``,
then ``origin_server_ts``, then room id; each room once). Pagination is stateless: the
token holds how many rooms were already returned (and the parameters that may not
change), and the walk is redone to that point. Walks are bounded by
:data:`MAX_VISITED` rooms, so a page costs at most that much work.

Children this server does not know are asked of the servers in their ``via`` (the
``remote_hierarchy`` hook, set by federation/remote_queries.py; without it they are
left out): a child space once per walk (at most :data:`MAX_REMOTE_PER_WALK`), other
children from their parent's answer. A remote room is shown if it is open (public,
knock, world-readable), the user is in it, or it is restricted to a room the user is
joined to.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import Event
from homeserver.handlers.directory import DirectoryHandler, room_chunk, summarise_state
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.opaque_tokens import Bool, Int, Str, decode_token, encode_token
from storage.stores.room_directory import RoomDirectoryStore, RoomStats
from storage.stores.room_members import RoomMemberStore

JsonDict = dict[str, Any]

DEFAULT_LIMIT = 50
MAX_LIMIT = 50  # Synapse's MAX_ROOMS
MAX_VISITED = 2000
MAX_TOKEN = 2000
SPACE_CHILD = "m.space.child"
OPEN_JOIN_RULES = ("public", "knock", "knock_restricted")
RESTRICTED_JOIN_RULES = ("restricted", "knock_restricted")
MEGOLM = "m.megolm.v1.aes-sha2"
_SUMMARY_KEYS = [("m.room.create", ""), ("m.room.name", ""), ("m.room.topic", ""),
                 ("m.room.canonical_alias", ""), ("m.room.avatar", ""), ("m.room.join_rules", ""),
                 ("m.room.history_visibility", ""), ("m.room.guest_access", ""),
                 ("m.room.encryption", "")]
_INVALID_ORDER = re.compile(r"[^\x20-\x7E]")
MAX_REMOTE_PER_WALK = 20
# (room id, via servers, suggested_only) -> the federation /hierarchy answer, or None.
RemoteHierarchy = Callable[[str, list[str], bool], Awaitable[JsonDict | None]]


@dataclass(frozen=True)
class _RemoteChild:
    """An m.space.child event from another server's answer (what the walk sorts by)."""

    state_key: str
    content: JsonDict
    origin_server_ts: int
    type: str = SPACE_CHILD
    sender: str = ""


def _remote_children(answer_room: JsonDict, suggested_only: bool) -> list[Any]:
    out = []
    for ev in answer_room.get("children_state", []):
        if not isinstance(ev, dict) or ev.get("type") != SPACE_CHILD:
            continue
        ts = ev.get("origin_server_ts")
        child = _RemoteChild(str(ev.get("state_key") or ""), ev.get("content") or {},
                             ts if isinstance(ts, int) else 0, sender=str(ev.get("sender", "")))
        if not isinstance(child.content, dict) or not _valid_child(child):  # type: ignore[arg-type]
            continue
        if suggested_only and child.content.get("suggested") is not True:
            continue
        out.append(child)
    return sorted(out, key=_child_sort_key)  # type: ignore[arg-type]


def _child_sort_key(ev: Event) -> tuple[bool, str, int, str]:
    """Spec ordering of m.space.child: a valid ``order`` first (lexicographically), then
    ``origin_server_ts``, then the room id."""
    order = ev.content.get("order")
    if not isinstance(order, str) or len(order) > 50 or _INVALID_ORDER.search(order):
        order = None
    return (order is None, order or "", ev.origin_server_ts, ev.state_key or "")


def _valid_child(ev: Event) -> bool:
    via = ev.content.get("via")
    return (isinstance(via, list) and bool(via) and all(isinstance(v, str) for v in via)
            and bool(ev.state_key) and (ev.state_key or "").startswith("!"))


# offset, root room, suggested_only, max_depth
_HIERARCHY_TOKEN = (Int(), Str(prefix="!"), Bool(), Int(nullable=True))


@dataclass(frozen=True)
class HierarchyToken:
    offset: int
    room_id: str
    suggested_only: bool
    max_depth: int | None

    def encode(self) -> str:
        return encode_token([self.offset, self.room_id, self.suggested_only, self.max_depth])

    @classmethod
    def decode(cls, token: str) -> HierarchyToken:
        data = decode_token(token, MAX_TOKEN, _HIERARCHY_TOKEN)
        return cls(data[0], data[1], data[2], data[3])


class _RemoteWalk:
    """How many more rooms one walk may ask other servers about."""

    def __init__(self, budget: int) -> None:
        self._left = budget

    def take(self) -> bool:
        if self._left <= 0:
            return False
        self._left -= 1
        return True


class HierarchyHandler:
    def __init__(self, creation: EventCreationHandler, members: RoomMemberStore,
                 stats: RoomDirectoryStore, directory: DirectoryHandler) -> None:
        self._creation = creation
        self._members = members
        self._stats = stats
        self._directory = directory
        self.remote_hierarchy: RemoteHierarchy | None = None  # set by federation

    async def _state(self, room_id: str) -> dict[tuple[str, str], Event] | None:
        try:
            await self._creation.room_version(room_id)
        except MatrixError:
            return None
        return await self._creation.current_state(room_id, _SUMMARY_KEYS)

    async def accessible(self, user_id: str | None, room_id: str,
                         state: dict[tuple[str, str], Event]) -> bool:
        join_rules = state.get(("m.room.join_rules", ""))
        join_rule = join_rules.content.get("join_rule") if join_rules else None
        if join_rule in OPEN_JOIN_RULES:
            return True
        vis = state.get(("m.room.history_visibility", ""))
        if vis is not None and vis.content.get("history_visibility") == "world_readable":
            return True
        if user_id is None:
            return False
        membership = await self._members.get_membership(user_id, room_id)
        if membership is not None and membership.membership in ("join", "invite"):
            return True
        if join_rule in RESTRICTED_JOIN_RULES and join_rules is not None:
            for allowed in self._allowed_rooms(join_rules):
                m = await self._members.get_membership(user_id, allowed)
                if m is not None and m.membership == "join":
                    return True
        return False

    @staticmethod
    def _allowed_rooms(join_rules: Event) -> list[str]:
        allow = join_rules.content.get("allow")
        return [a["room_id"] for a in allow if isinstance(a, dict)
                and a.get("type") == "m.room_membership" and isinstance(a.get("room_id"), str)
                ] if isinstance(allow, list) else []

    async def _summary(self, room_id: str, state: dict[tuple[str, str], Event]) -> JsonDict:
        """The spec's RoomSummary of a local room."""
        stats = await self._stats.get_stats(room_id)
        if stats is None:  # not summarised yet: the same fields from current state
            fields = summarise_state(state)
            joined = await self._members.members_of_room(room_id, ("join",))
            stats = RoomStats(room_id, fields["name"], fields["topic"], fields["canonical_alias"],
                              fields["avatar"], fields["join_rules"], fields["history_visibility"],
                              fields["guest_access"], fields["room_type"], len(joined))
        out = room_chunk(stats)
        out["room_version"] = (await self._creation.room_version(room_id)).identifier
        encryption = state.get(("m.room.encryption", ""))
        if encryption is not None and encryption.content.get("algorithm") == MEGOLM:
            out["encryption"] = MEGOLM
        join_rules = state.get(("m.room.join_rules", ""))
        if join_rules is not None and join_rules.content.get("join_rule") in RESTRICTED_JOIN_RULES:
            allowed = self._allowed_rooms(join_rules)
            if allowed:
                out["allowed_room_ids"] = allowed
        return out

    async def _children(self, room_id: str, suggested_only: bool) -> list[Event]:
        snap = await self._creation.snapshot(room_id)
        keys = [k for k in snap.state_ids if k[0] == SPACE_CHILD]
        if not keys:
            return []
        found = await self._creation.current_state(room_id, keys)
        children = [e for e in found.values() if _valid_child(e)]
        if suggested_only:
            children = [e for e in children if e.content.get("suggested") is True]
        return sorted(children, key=_child_sort_key)

    # ------------------------------------------------------------------ /hierarchy

    async def hierarchy(self, user_id: str, root_id: str, suggested_only: bool,
                        max_depth: int | None, limit: int | None, from_token: str | None) -> JsonDict:
        if limit is not None and limit <= 0:
            raise MatrixError(400, "limit must be greater than zero", Codes.INVALID_PARAM)
        if max_depth is not None and max_depth < 0:
            raise MatrixError(400, "max_depth must not be negative", Codes.INVALID_PARAM)
        limit = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        offset = 0
        if from_token is not None:
            token = HierarchyToken.decode(from_token)
            if (token.room_id != root_id or token.suggested_only != suggested_only
                    or token.max_depth != max_depth):
                raise MatrixError(400, "suggested_only and max_depth cannot change on paginated"
                                  " requests", Codes.INVALID_PARAM)
            offset = token.offset
        root_state = await self._state(root_id)
        if root_state is None or not await self.accessible(user_id, root_id, root_state):
            raise MatrixError(403, "You are not allowed to view this room.", Codes.FORBIDDEN)

        rooms: list[JsonDict] = []
        queue: list[tuple[str, int]] = [(root_id, 0)]
        processed: set[str] = set()
        via: dict[str, list[str]] = {}  # child room -> servers its parent names
        known: dict[str, JsonDict] = {}  # remote summaries from a parent's answer
        walk = _RemoteWalk(MAX_REMOTE_PER_WALK)
        seen = 0  # accessible rooms walked, returned or skipped as already paged
        while queue and len(rooms) < limit and len(processed) < MAX_VISITED:
            room_id, depth = queue.pop()
            if room_id in processed:
                continue
            processed.add(room_id)
            state = root_state if room_id == root_id else await self._state(room_id)
            if state is None:
                found = await self._remote_room(user_id, room_id, via.get(room_id, []),
                                                suggested_only, known, walk)
                if found is None:
                    continue
                summary, children = found
            elif not await self.accessible(user_id, room_id, state):
                continue
            else:
                summary, children = None, await self._children(room_id, suggested_only)
            if seen >= offset:
                entry = summary if summary is not None else await self._summary(room_id, state)
                entry["children_state"] = [
                    {"type": e.type, "state_key": e.state_key, "content": e.content,
                     "sender": e.sender, "origin_server_ts": e.origin_server_ts}
                    for e in children]
                rooms.append(entry)
            seen += 1
            if max_depth is None or depth < max_depth:
                for e in children:
                    servers = e.content.get("via")
                    via.setdefault(e.state_key or "", [v for v in servers
                                                       if isinstance(v, str)][:10])
                queue.extend((e.state_key or "", depth + 1) for e in reversed(children))
        out: JsonDict = {"rooms": rooms}
        if any(rid not in processed for rid, _ in queue) and len(processed) < MAX_VISITED:
            out["next_batch"] = HierarchyToken(seen, root_id, suggested_only, max_depth).encode()
        return out

    async def _remote_room(self, user_id: str, room_id: str, via: list[str],
                           suggested_only: bool, known: dict[str, JsonDict],
                           walk: _RemoteWalk) -> tuple[JsonDict, list[Any]] | None:
        """(summary, children) of a room this server does not know, from its parent's
        answer (not a space) or from the servers in ``via``; None if unknown or not
        accessible to ``user_id``."""
        summary = known.get(room_id)
        children: list[Any] = []
        if (summary is None or summary.get("room_type") == "m.space") \
                and self.remote_hierarchy is not None and via and walk.take():
            answer = await self.remote_hierarchy(room_id, via, suggested_only)
            if answer is not None:
                summary = {k: v for k, v in answer["room"].items() if k != "children_state"}
                children = _remote_children(answer["room"], suggested_only)
                for child in answer.get("children", []):
                    known.setdefault(child["room_id"], child)
        if summary is None or not await self._remote_accessible(user_id, room_id, summary):
            return None
        return dict(summary), children

    async def _remote_accessible(self, user_id: str, room_id: str, summary: JsonDict) -> bool:
        """Synapse's rule for another server's room: open, or the user is in it, or it
        is restricted to a room the user is joined to."""
        join_rule = summary.get("join_rule")
        if join_rule in OPEN_JOIN_RULES or summary.get("world_readable") is True:
            return True
        membership = await self._members.get_membership(user_id, room_id)
        if membership is not None and membership.membership in ("join", "invite"):
            return True
        if join_rule in RESTRICTED_JOIN_RULES:
            allowed = summary.get("allowed_room_ids")
            for allowed_id in allowed if isinstance(allowed, list) else []:
                if not isinstance(allowed_id, str):
                    continue
                m = await self._members.get_membership(user_id, allowed_id)
                if m is not None and m.membership == "join":
                    return True
        return False

    # ------------------------------------------------------------------ federation

    async def federation_hierarchy(self, room_id: str, suggested_only: bool) -> JsonDict:
        """The federation ``/hierarchy`` answer (not paginated): the room and its direct
        children that another server could peek or join (public, knock or world-readable
        rooms; a requesting server has no user to judge membership by). Children we know
        but that are not open are listed in ``inaccessible_children``; unknown ones are
        left out. 404 if the room itself is unknown or not open."""
        state = await self._state(room_id)
        if state is None or not await self.accessible(None, room_id, state):
            raise MatrixError(404, "Unknown room", Codes.NOT_FOUND)
        children = await self._children(room_id, suggested_only)
        room = await self._summary(room_id, state)
        room["children_state"] = [
            {"type": e.type, "state_key": e.state_key, "content": e.content, "sender": e.sender,
             "origin_server_ts": e.origin_server_ts} for e in children]
        summaries: list[JsonDict] = []
        inaccessible: list[str] = []
        for child in children[:MAX_VISITED]:
            child_id = child.state_key or ""
            child_state = await self._state(child_id)
            if child_state is None:
                continue
            if await self.accessible(None, child_id, child_state):
                summaries.append(await self._summary(child_id, child_state))
            else:
                inaccessible.append(child_id)
        return {"room": room, "children": summaries, "inaccessible_children": inaccessible}

    # ------------------------------------------------------------------ /room_summary

    async def room_summary(self, user_id: str | None, room_id_or_alias: str) -> JsonDict:
        not_found = MatrixError(404, "Room not found or is not accessible", Codes.NOT_FOUND)
        room_id: str | None = room_id_or_alias
        if room_id_or_alias.startswith("#"):
            room_id = await self._directory.resolve_alias(room_id_or_alias)
        if room_id is None:
            raise not_found
        state = await self._state(room_id)
        if state is None or not await self.accessible(user_id, room_id, state):
            raise not_found
        out = await self._summary(room_id, state)
        if user_id is not None:
            membership = await self._members.get_membership(user_id, room_id)
            out["membership"] = membership.membership if membership else "leave"
        return out
