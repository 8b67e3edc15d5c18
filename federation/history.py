"""Room history served to other servers (server-server API, X-Matrix authenticated):

- ``GET /_matrix/federation/v1/event/{eventId}``: one event;
- ``GET /state/{roomId}?event_id=`` and ``GET /state_ids/{roomId}?event_id=``: the
  room's state before an event, with its auth chain;
- ``GET /event_auth/{roomId}/{eventId}``: an event's auth chain;
- ``POST /get_missing_events/{roomId}``: a breadth-first walk of ``prev_events`` back
  from ``latest_events``, stopping at ``earliest_events`` (at most 20 events, as Synapse);
- ``GET /backfill/{roomId}?v=&limit=``: the given events and those before them (at
  most 100);
- ``GET /timestamp_to_event/{roomId}?ts=&dir=``: the event closest to a time.

Who may ask (as Synapse's ``assert_host_in_room``, and the spec's 403): a server that
is not blocked, not denied by the room's ``m.room.server_acl``, and that has a user
joined to the room now; or any such server when the room is world-readable. An
unknown room reads as one the server is not in (403: nothing is learnt about it).
Rejected events are never served.

What a server may see (Synapse's ``filter_events_for_server``): an event whose room
had ``shared`` or ``world_readable`` history at it is visible; under ``invited`` or
``joined`` only when the asking server had a user joined (or, for ``invited``, invited)
in the state at the event. An event it may not see is served redacted (its graph
links and signatures stay, so the DAG can still be walked); events redacted here are
served redacted too. Outliers have no state here: they are served as they are (they
are auth and state events, which every server of the room needs).

Events of senders erased here (GDPR, deactivated with ``erase``) are served redacted
on every path, whatever the asking server may see (Synapse's ``is_sender_erased`` in
``filter_events_for_server``): pruned by the room version's redaction algorithm, so
their graph links, auth-relevant keys and signatures stay and the content goes, from
the moment of erasure (before the purge job rewrites them here too).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any

from federation.pdu_checks import server_allowed_by_acl
from homeserver.clock import Clock
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import domain_of
from homeserver.events.redaction import prune_event_dict
from homeserver.handlers.server_blocks import ServerBlocks
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import MAX_SAFE_INTEGER
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id
from storage.stores.event_timestamps import EventTimestampStore
from storage.stores.events import EventStore, StateMap
from storage.stores.users import UserStore

JsonDict = dict[str, Any]
PREFIX = "/_matrix/federation/v1"
MAX_MISSING_EVENTS = 20  # per /get_missing_events answer, as Synapse
DEFAULT_MISSING_EVENTS = 10  # the spec's default
MAX_BACKFILL = 100  # per /backfill answer, as Synapse
MAX_REFERENCES = 100  # event ids a request may name (v, earliest/latest_events)
MAX_AUTH_CHAIN = 10_000  # events of one auth chain answer
TIMESTAMP_SCAN = 500  # events looked at for one /timestamp_to_event answer
_ACL: StateKey = ("m.room.server_acl", "")
_HISTORY: StateKey = ("m.room.history_visibility", "")
_ID = {"type": "string", "minLength": 1, "maxLength": 255}

MISSING_EVENTS_SCHEMA: JsonDict = {
    "type": "object",
    "required": ["earliest_events", "latest_events"],
    "properties": {
        "earliest_events": {"type": "array", "maxItems": MAX_REFERENCES, "items": _ID},
        "latest_events": {"type": "array", "maxItems": MAX_REFERENCES, "items": _ID},
        "limit": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
        "min_depth": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
    },
}


def federation_pdu(event: Event, redact: bool = False) -> JsonDict:
    """The event as it travels between servers (our ``unsigned`` stays home)."""
    pdu = prune_event_dict(event.pdu, event.room_version) if redact else event.pdu
    return {k: v for k, v in pdu.items() if k != "unsigned"}


def check_event_id(event_id: str) -> str:
    if not event_id.startswith("$") or len(event_id.encode("utf-8")) > 255:
        raise MatrixError(400, "Invalid event ID", Codes.INVALID_PARAM)
    return event_id


def _visible(visibility: str, memberships: Iterable[str]) -> bool:
    """Synapse's ``check_event_is_visible`` for a server."""
    if visibility not in ("invited", "joined"):
        return True
    for membership in memberships:
        if membership == "join" or (membership == "invite" and visibility == "invited"):
            return True
    return False


class HistoryServlets:
    def __init__(self, server_name: str, clock: Clock, events: EventStore,
                 timestamps: EventTimestampStore, persister: Any,
                 blocks: ServerBlocks, users: UserStore | None = None) -> None:
        self._server_name = server_name
        self._users = users  # erased senders (None: no erasure handling)
        self._clock = clock
        self._events = events
        self._timestamps = timestamps
        self._persister = persister  # homeserver/handlers/event_persister.py EventPersister
        self._blocks = blocks

    def register(self, router: Router) -> None:
        fed = {"auth": "federation"}
        router.add("GET", f"{PREFIX}/event/{{eventId}}", self.on_event, **fed)
        router.add("GET", f"{PREFIX}/state/{{roomId}}", self.on_state, **fed)
        router.add("GET", f"{PREFIX}/state_ids/{{roomId}}", self.on_state_ids, **fed)
        router.add("GET", f"{PREFIX}/event_auth/{{roomId}}/{{eventId}}", self.on_event_auth,
                   **fed)
        router.add("POST", f"{PREFIX}/get_missing_events/{{roomId}}",
                   self.on_get_missing_events, body_schema=MISSING_EVENTS_SCHEMA, **fed)
        router.add("GET", f"{PREFIX}/backfill/{{roomId}}", self.on_backfill, **fed)
        router.add("GET", f"{PREFIX}/timestamp_to_event/{{roomId}}",
                   self.on_timestamp_to_event, **fed)

    # -- who may ask ------------------------------------------------------------------

    async def check_access(self, origin: str, room_id: str) -> None:
        """403 unless ``origin`` may read the room's history (see the module)."""
        if await self._blocks.is_blocked(origin):
            raise MatrixError(403, "This server does not federate with yours", Codes.FORBIDDEN)
        snap = await self._persister.snapshot(room_id)
        state = snap.state_ids
        wanted = [eid for (etype, skey), eid in state.items()
                  if etype == "m.room.member" and domain_of(skey) == origin]
        keys = [eid for k, eid in state.items() if k in (_ACL, _HISTORY)]
        found = await self._events.get_events([*wanted, *keys])
        acl = found.get(state.get(_ACL, ""))
        if acl is not None and not server_allowed_by_acl(origin, acl.content):
            raise MatrixError(403, "Server is banned from room", Codes.FORBIDDEN)
        if any(found[e].membership == "join" for e in wanted if e in found):
            return
        history = found.get(state.get(_HISTORY, ""))
        if history is not None and \
                history.content.get("history_visibility") == "world_readable":
            return
        raise MatrixError(403, "Host not in room.", Codes.FORBIDDEN)

    async def _room_event(self, room_id: str, event_id: str) -> Event:
        event = await self._events.get_event(check_event_id(event_id))
        if event is None or event.room_id != room_id or event.internal.rejected_reason:
            raise MatrixError(404, f"Could not find event {event_id}", Codes.NOT_FOUND)
        return event

    @staticmethod
    def _origin(req: ApiRequest) -> str:
        assert req.origin is not None  # the router authenticated it
        return req.origin

    # -- what a server may see ----------------------------------------------------------

    async def visible_to_server(self, server: str, events: Sequence[Event]) -> set[str]:
        """The ids of the events ``server`` may see (see the module)."""
        groups = await self._events.get_state_groups(e.event_id for e in events)
        states: dict[int, StateMap] = {}
        refs: set[str] = set()
        for after, _before in groups.values():
            if after not in states:
                states[after] = await self._events.get_state_for_group(after)
                refs.update(eid for (etype, skey), eid in states[after].items()
                            if (etype, skey) == _HISTORY or (
                                etype == "m.room.member" and domain_of(skey) == server))
        found = await self._events.get_events(refs)
        out: set[str] = set()
        for event in events:
            visible = True
            if event.event_id in groups:
                state = states[groups[event.event_id][0]]
                history = found.get(state.get(_HISTORY, ""))
                value = history.content.get("history_visibility", "shared") \
                    if history is not None else "shared"
                members = (found[eid].membership or "" for (etype, skey), eid in state.items()
                           if etype == "m.room.member" and domain_of(skey) == server
                           and eid in found)
                visible = _visible(value if isinstance(value, str) else "shared", members)
            if visible:
                out.add(event.event_id)
        return out

    async def filter_for_server(self, server: str, events: Sequence[Event]) -> list[JsonDict]:
        """The events as PDUs for ``server``: redacted where it may not see them (or
        where they were redacted here, or their sender was erased); rejected events are
        left out."""
        events = [e for e in events if not e.internal.rejected_reason]
        visible = await self.visible_to_server(server, events)
        redacted = await self._events.get_redaction_ids(e.event_id for e in events)
        erased = await self._users.erased_among({e.sender for e in events}) \
            if self._users is not None and events else set()
        return [federation_pdu(e, redact=e.event_id not in visible or e.event_id in redacted
                               or e.sender in erased)
                for e in events]

    async def _answer(self, server: str, events: Sequence[Event]) -> JsonDict:
        return {"origin": self._server_name, "origin_server_ts": self._clock.time_msec(),
                "pdus": await self.filter_for_server(server, events)}

    async def auth_chain(self, room_id: str, event_ids: Iterable[str]) -> list[Event]:
        """The events named and their auth events, recursively (bounded; events of
        other rooms, which no valid event cites, are never followed)."""
        chain: dict[str, Event] = {}
        todo = list(dict.fromkeys(event_ids))
        while todo and len(chain) < MAX_AUTH_CHAIN:
            found = await self._events.get_events(todo[:MAX_AUTH_CHAIN - len(chain)])
            todo = []
            for eid, event in found.items():
                if eid in chain or event.room_id != room_id:
                    continue
                chain[eid] = event
                todo.extend(a for a in event.auth_event_ids if a not in chain)
            todo = list(dict.fromkeys(todo))
        return [e for e in chain.values() if not e.internal.rejected_reason]

    # -- single events, state, auth chains ---------------------------------------------

    async def on_event(self, req: ApiRequest, eventId: str) -> tuple[int, Any]:  # noqa: N803
        origin = self._origin(req)
        event = await self._events.get_event(check_event_id(eventId))
        if event is None or event.internal.rejected_reason:
            raise MatrixError(404, f"Could not find event {eventId}", Codes.NOT_FOUND)
        await self.check_access(origin, event.room_id)
        return 200, await self._answer(origin, [event])

    async def _state_before(self, req: ApiRequest, room_id: str) -> tuple[str, list[str]]:
        origin = self._origin(req)
        check_room_id(room_id)
        event_id = req.query("event_id")
        if not event_id:
            raise MatrixError(400, "Missing 'event_id'", Codes.MISSING_PARAM)
        await self.check_access(origin, room_id)
        event = await self._room_event(room_id, event_id)
        groups = await self._events.get_state_groups([event.event_id])
        if event.event_id not in groups:  # an outlier: no state known at it
            raise MatrixError(404, f"State not known at event {event_id}", Codes.NOT_FOUND)
        before = groups[event.event_id][1]
        state = await self._events.get_state_for_group(before) if before is not None else {}
        return origin, sorted(state.values())

    async def on_state(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        origin, state_ids = await self._state_before(req, roomId)
        state = await self._events.get_events(state_ids)
        pdus = [state[e] for e in state_ids if e in state]
        chain = await self.auth_chain(roomId, (a for e in pdus for a in e.auth_event_ids))
        return 200, {"pdus": await self.filter_for_server(origin, pdus),
                     "auth_chain": await self.filter_for_server(origin, chain)}

    async def on_state_ids(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        _origin, state_ids = await self._state_before(req, roomId)
        state = await self._events.get_events(state_ids)
        chain = await self.auth_chain(roomId, (a for e in state.values()
                                               for a in e.auth_event_ids))
        return 200, {"pdu_ids": [e for e in state_ids if e in state],
                     "auth_chain_ids": [e.event_id for e in chain]}

    async def on_event_auth(self, req: ApiRequest, roomId: str,  # noqa: N803
                            eventId: str) -> tuple[int, Any]:  # noqa: N803
        origin = self._origin(req)
        check_room_id(roomId)
        await self.check_access(origin, roomId)
        event = await self._room_event(roomId, eventId)
        chain = await self.auth_chain(roomId, event.auth_event_ids)
        return 200, {"auth_chain": await self.filter_for_server(origin, chain)}

    # -- walking the graph ------------------------------------------------------------

    async def on_get_missing_events(self, req: ApiRequest,
                                    roomId: str) -> tuple[int, Any]:  # noqa: N803
        origin = self._origin(req)
        check_room_id(roomId)
        await self.check_access(origin, roomId)
        body = req.body
        limit = min(body.get("limit", DEFAULT_MISSING_EVENTS), MAX_MISSING_EVENTS)
        min_depth = body.get("min_depth", 0)
        seen = set(body["earliest_events"])
        front = [e for e in dict.fromkeys(body["latest_events"]) if e not in seen]
        seen.update(front)
        latest = await self._events.get_events(front)
        front = [e for e in front if e in latest and latest[e].room_id == roomId]
        found: list[Event] = []
        # Breadth first from the latest events (as Synapse's get_missing_events).
        while front and len(found) < limit:
            events = await self._events.get_events(front)
            prevs = [p for e in front if e in events and events[e].room_id == roomId
                     for p in events[e].prev_event_ids]
            front = []
            wanted = [p for p in dict.fromkeys(prevs) if p not in seen]
            seen.update(wanted)
            held = await self._events.get_events(wanted)
            for eid in wanted:
                event = held.get(eid)
                if event is None or event.room_id != roomId or event.depth < min_depth:
                    continue
                front.append(eid)
                if not event.internal.rejected_reason:
                    found.append(event)
                if len(found) >= limit:
                    break
        found.reverse()  # roughly oldest first
        return 200, {"events": await self.filter_for_server(origin, found)}

    async def on_backfill(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        origin = self._origin(req)
        check_room_id(roomId)
        starts = [v.decode("utf-8", "replace") for v in req.raw.args.get(b"v", [])][:MAX_REFERENCES + 1]
        if not starts:
            raise MatrixError(400, "Missing 'v'", Codes.MISSING_PARAM)
        if len(starts) > MAX_REFERENCES:
            raise MatrixError(400, f"At most {MAX_REFERENCES} events in 'v'",
                              Codes.INVALID_PARAM)
        for eid in starts:
            check_event_id(eid)
        limit = req.query_int("limit", maximum=MAX_SAFE_INTEGER)
        if limit is None:
            raise MatrixError(400, "Missing 'limit'", Codes.MISSING_PARAM)
        limit = min(limit, MAX_BACKFILL)
        await self.check_access(origin, roomId)
        return 200, await self._answer(origin, await self.backfill_events(roomId, starts,
                                                                          limit))

    async def backfill_events(self, room_id: str, starts: Sequence[str],
                              limit: int) -> list[Event]:
        """The events ``starts`` and those before them, deepest first (as Synapse's
        get_backfill_events: a walk of prev_events by depth), up to ``limit``."""
        out: list[Event] = []
        seen: set[str] = set()
        queue: list[tuple[int, str]] = []
        held = await self._events.get_events(starts)
        for eid in dict.fromkeys(starts):
            event = held.get(eid)
            if event is not None and event.room_id == room_id:
                seen.add(eid)
                heapq.heappush(queue, (-event.depth, eid))
        cache: dict[str, Event] = dict(held)
        while queue and len(out) < limit:
            _depth, eid = heapq.heappop(queue)
            event = cache.pop(eid, None) or await self._events.get_event(eid)
            if event is None:
                continue
            if not event.internal.rejected_reason:
                out.append(event)
            prevs = [p for p in event.prev_event_ids if p not in seen]
            seen.update(prevs)
            found = await self._events.get_events(prevs)
            for pid, prev in found.items():
                if prev.room_id == room_id:
                    cache[pid] = prev
                    heapq.heappush(queue, (-prev.depth, pid))
        return out

    async def on_timestamp_to_event(self, req: ApiRequest,
                                    roomId: str) -> tuple[int, Any]:  # noqa: N803
        origin = self._origin(req)
        check_room_id(roomId)
        ts = req.query_int("ts", maximum=MAX_SAFE_INTEGER)
        if ts is None:
            raise MatrixError(400, "Missing 'ts'", Codes.MISSING_PARAM)
        direction = req.query("dir")
        if direction not in ("f", "b"):
            raise MatrixError(400, "'dir' must be 'f' or 'b'", Codes.INVALID_PARAM)
        await self.check_access(origin, roomId)
        after: tuple[int, int] | None = None
        scanned = 0
        while scanned < TIMESTAMP_SCAN:
            rows = await self._timestamps.events_by_timestamp(
                roomId, ts, direction, -(2**62), None, after, 50)
            visible = await self.visible_to_server(origin, rows)
            for event in rows:
                if event.event_id in visible:
                    return 200, {"event_id": event.event_id,
                                 "origin_server_ts": event.origin_server_ts}
            if len(rows) < 50:
                break
            scanned += len(rows)
            after = (rows[-1].origin_server_ts, rows[-1].internal.stream_ordering or 0)
        where = "forward" if direction == "f" else "backward"
        raise MatrixError(404, f"Unable to find event from {ts} in {where} direction",
                          Codes.NOT_FOUND)


def register_history(config: Any, clock: Clock, events: Any, router: Router, client: Any,
                     ingest: Any, deps: Any) -> Any:
    """Serve room history to other servers and fetch what this server lacks: gaps under
    received PDUs (the ingest's ``fetcher``) and backfill for clients' /messages (the
    pagination handler's ``backfill`` and ``remote_timestamp``). Returns the fetcher
    (None without rooms)."""
    from federation.missing_events import HistoryFetcher

    if deps is None or deps.stores is None or deps.rooms is None or ingest is None:
        return None
    stores = deps.stores
    blocks = ServerBlocks(config.server_name, clock, stores.blocked_servers, events,
                          config.federation_blocked_servers)
    HistoryServlets(config.server_name, clock, stores.events, stores.event_timestamps,
                    deps.rooms.persister, blocks, stores.users).register(router)
    fetcher = HistoryFetcher(config.server_name, client, ingest, stores.events,
                             blocks.is_blocked)
    ingest.fetcher = fetcher
    deps.rooms.pagination.backfill = fetcher.backfill
    deps.rooms.pagination.remote_timestamp = fetcher.timestamp_to_event
    return fetcher
