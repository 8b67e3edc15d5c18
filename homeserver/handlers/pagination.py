"""Reading room history: /messages, /context, /members, /joined_members and
/timestamp_to_event.

Positions and tokens. Every event has a stream ordering. ``t<N>`` names the gap between
positions N and N+1 (a /sync ``prev_batch`` is the gap before the first timeline event;
a sync ``next_batch`` ``s<N>_...`` is read as its event position N). Paging backwards
from ``t<N>`` returns events at positions <= N, forwards events > N; the ``end`` token is
the gap after the last event looked at. Positions never change once handed out and
the live edge is :meth:`EventCreationHandler.current_position` (below which nothing
can still appear), so paging while events arrive neither skips nor repeats.

Visibility. Every returned event passes :meth:`VisibilityHandler.filter_events`. To
know where the requester can see nothing more (so ``end`` can be omitted, as the spec
asks, instead of handing out empty pages for ever), the handler first works out the
requester's *window*: the span of positions holding anything they may see. The
visibility rules only change at history-visibility changes and at the requester's own
membership changes, so one probe per interval between those points, asked of the
visibility handler itself, gives the window without restating its rules here.

History from other servers. Backfilled events (fetched with federation ``/backfill``)
take negative positions, below everything held before, so tokens and windows span
negative positions too (``t-N``). When a backwards page reaches the oldest event held
and the requester may see further back, :attr:`PaginationHandler.backfill` (set by the
federation area; None without federation) asks a server in the room for older events,
and the page continues into them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.events.model import Event, InternalMetadata
from homeserver.events.room_versions import RoomVersion
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.sync_filter import EventFilter
from homeserver.handlers.visibility import MIN_POSITION, VisibilityHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import parse_room_token
from storage.stores.account_data import AccountDataStore
from storage.stores.event_timestamps import EventTimestampStore
from storage.stores.events import EventStore, StateMap
from storage.stores.room_members import RoomMemberStore
from storage.stores.state_history import StateHistoryStore

JsonDict = dict[str, Any]

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000  # as Synapse caps /messages
# Rows looked at per request before handing back a token (bounds the work one request
# can cause when the requester may see little of a long stretch of history).
SCAN_BUDGET = 2000
MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")
HISTORY_VISIBILITY = ("m.room.history_visibility", "")
# Backfill rounds one /messages request may cause (each asks one server, bounded).
MAX_BACKFILL_ROUNDS = 2

# (room id, how many events are wanted) -> how many older events were stored.
Backfiller = Callable[[str, int], Awaitable[int]]
# (room id, ts, direction) -> the id of an event another server found, now held here.
RemoteTimestamp = Callable[[str, int, str], Awaitable[str | None]]


def parse_position(raw: str, name: str) -> int:
    """The event position of a ``t<N>`` or ``s<N>_...`` token; 400 for anything else."""
    return parse_room_token(raw, name)


def check_event_id(event_id: str) -> None:
    if not event_id.startswith("$") or len(event_id) < 2 or len(event_id.encode()) > 255:
        raise MatrixError(400, "Invalid event ID", Codes.INVALID_PARAM)


@dataclass
class HistoryFilter:
    """A RoomEventFilter (already schema-checked): event rules plus rooms/not_rooms."""

    events: EventFilter
    rooms: list[str] | None = None
    not_rooms: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: JsonDict | None) -> HistoryFilter:
        raw = raw or {}
        rooms = raw.get("rooms")
        return cls(EventFilter.parse(raw), list(rooms) if rooms is not None else None,
                   tuple(raw.get("not_rooms", ())))

    def allows(self, event: Event) -> bool:
        if event.room_id in self.not_rooms:
            return False
        if self.rooms is not None and event.room_id not in self.rooms:
            return False
        return self.events.allows(event)

    @property
    def lazy_load_members(self) -> bool:
        return self.events.lazy_load_members


@dataclass(frozen=True)
class Window:
    """Positions [low, high] (high None: up to the live edge) outside which the user
    can see no event of the room; inside it each event is still filtered."""

    low: int
    high: int | None


@dataclass
class Page:
    events: list[Event]
    position: int  # the token position to continue from
    more: bool  # whether events may remain beyond ``position`` in the scanned range


class PaginationHandler:
    def __init__(
        self,
        events: EventStore,
        history: StateHistoryStore,
        members: RoomMemberStore,
        timestamps: EventTimestampStore,
        visibility: VisibilityHandler,
        creation: EventCreationHandler,
        serializer: ClientEventSerializer,
        account_data: AccountDataStore | None = None,
    ) -> None:
        self._events = events
        # m.ignored_user_list is read from here: ignored users' messages are hidden.
        self._account_data = account_data
        self._history = history
        self._members = members
        self._timestamps = timestamps
        self._visibility = visibility
        self._creation = creation
        self._serializer = serializer
        self.backfill: Backfiller | None = None  # federation/missing_events.py, when federating
        self.remote_timestamp: RemoteTimestamp | None = None  # likewise
        # homeserver/handlers/partial_state.py: a room joined with partial state is
        # answered once its members are known (bounded wait), as Synapse does.
        self.await_full_state: Callable[[str], Awaitable[None]] | None = None

    # -- access -------------------------------------------------------------------------

    async def ignored_users(self, user_id: str) -> frozenset[str]:
        """``m.ignored_user_list``: whose messages (not state) this user is not shown, in
        /messages and /context as in /sync (as Synapse)."""
        if self._account_data is None:
            return frozenset()
        content = await self._account_data.get_account_data(user_id, None,
                                                            "m.ignored_user_list")
        users = content.get("ignored_users") if isinstance(content, dict) else None
        return frozenset(u for u in users if isinstance(u, str)) if isinstance(
            users, dict) else frozenset()

    async def _world_readable(self, room_id: str) -> bool:
        state = await self._creation.current_state(room_id, [HISTORY_VISIBILITY])
        event = state.get(HISTORY_VISIBILITY)
        return event is not None and event.content.get("history_visibility") == "world_readable"

    async def _check_can_read(self, user_id: str, room_id: str) -> None:
        """Synapse's gate for history reads: joined, departed (left or banned, and not
        forgotten), or a world-readable room. Which events show is then up to the
        visibility filter."""
        m = await self._members.get_membership(user_id, room_id)
        if m is not None and (m.membership == "join" or (
                m.membership in ("leave", "ban") and not m.forgotten)):
            return
        if await self._world_readable(room_id):
            return
        raise MatrixError(403, "You aren't a member of the room", Codes.FORBIDDEN)

    @staticmethod
    def _probe(room_id: str, version: RoomVersion, position: int) -> Event:
        """A stand-in message at ``position``: asks "could the user see an event here"."""
        pdu = {"room_id": room_id, "type": "m.room.message", "sender": "@probe:invalid",
               "content": {}}
        return Event(f"$probe{position}", pdu, version,
                     InternalMetadata(stream_ordering=position, room_id=room_id))

    async def _visible_at(self, user_id: str, room_id: str, version: RoomVersion,
                          position: int) -> bool:
        return bool(await self._visibility.filter_events(
            user_id, [self._probe(room_id, version, position)]))

    async def _window(self, user_id: str, room_id: str, version: RoomVersion) -> Window | None:
        """The user's window in the room, or None when they can see nothing at all."""
        changes = await self._history.state_changes(room_id, *HISTORY_VISIBILITY)
        own = [pos for _, pos in await self._members.membership_history(user_id, room_id)]
        breaks = sorted({pos for pos, _, _ in changes} | set(own))
        # Interval (prev, b] for each break b, then (last, inf); the rules are constant
        # on each, so the probe at its first position speaks for all of it.
        intervals: list[tuple[int, int | None]] = []
        prev = MIN_POSITION  # backfilled history sits at negative positions
        for b in breaks:
            if b > prev:
                intervals.append((prev + 1, b))
            prev = b
        intervals.append((prev + 1, None))
        probes = [self._probe(room_id, version, lo) for lo, _ in intervals]
        seen = {p.internal.stream_ordering
                for p in await self._visibility.filter_events(user_id, probes)}
        low: int | None = None
        high: int | None = None
        open_ended = False
        for lo, hi in intervals:
            if lo not in seen:
                continue
            low = lo if low is None else low
            if hi is None:
                open_ended = True
            else:
                high = hi if high is None else max(high, hi)
        # A history-visibility change is read under the more visible of its old and new
        # value, so it may be visible where the interval it closes is not.
        hv_probes = []
        for pos, _sk, raw in changes:
            content = json.loads(raw).get("content", {})
            hv_probes.append(Event(f"$probe_hv{pos}", {
                "room_id": room_id, "type": HISTORY_VISIBILITY[0], "state_key": "",
                "sender": "@probe:invalid", "content": content}, version,
                InternalMetadata(stream_ordering=pos, room_id=room_id)))
        for p in await self._visibility.filter_events(user_id, hv_probes):
            pos = p.internal.stream_ordering or 0
            low = pos if low is None else min(low, pos)
            if not open_ended:
                high = pos if high is None else max(high, pos)
        if own:  # a user always sees their own membership events
            low = own[0] if low is None else min(low, own[0])
            high = own[-1] if high is None else max(high, own[-1])
        if low is None:
            return None
        return Window(low, None if open_ended else high)

    # -- scanning -----------------------------------------------------------------------

    async def _scan(self, user_id: str, room_id: str, direction: str, start: int, limit: int,
                    bound: int, event_filter: HistoryFilter | None,
                    ignored: frozenset[str] = frozenset()) -> Page:
        """Up to ``limit`` visible events: ``b`` positions in (bound, start] newest first,
        ``f`` positions in (start, bound] oldest first. Messages (not state) of
        ``ignored`` senders are skipped."""
        backwards = direction == "b"
        cursor = start
        if limit <= 0 or (backwards and start <= bound) or (not backwards and start >= bound):
            return Page([], cursor, False)
        out: list[Event] = []
        batch = min(max(limit, 50), MAX_LIMIT)
        scanned = 0
        while True:
            rows = await self._events.paginate_room_events(
                room_id, cursor + 1 if backwards else cursor, direction, batch,
                to_position=bound)
            if not rows:
                return Page(out, cursor, False)
            candidates = [e for e in rows if (event_filter is None or event_filter.allows(e))
                          and (e.state_key is not None or e.sender not in ignored)]
            visible = {e.event_id for e in
                       await self._visibility.filter_events(user_id, candidates)}
            for ev in rows:
                pos = ev.internal.stream_ordering or 0
                cursor = pos - 1 if backwards else pos
                if ev.event_id in visible:
                    out.append(ev)
                    if len(out) >= limit:
                        return Page(out, cursor, cursor > bound if backwards else cursor < bound)
            scanned += len(rows)
            if len(rows) < batch:
                return Page(out, cursor, False)
            if scanned >= SCAN_BUDGET:
                return Page(out, cursor, True)

    async def _backfilled(self, user_id: str, room_id: str, page: Page, limit: int,
                          bound: int, event_filter: HistoryFilter | None,
                          ignored: frozenset[str]) -> Page:
        """``page`` continued into history fetched from other servers when it ran out
        of held events before ``limit``; ``more`` stays set while backfill finds some."""
        rounds = 0
        fetched = False
        while (self.backfill is not None and not page.more and len(page.events) < limit
               and rounds < MAX_BACKFILL_ROUNDS):
            rounds += 1
            if await self.backfill(room_id, limit - len(page.events)) <= 0:
                break
            fetched = True
            more = await self._scan(user_id, room_id, "b", page.position,
                                    limit - len(page.events), bound, event_filter, ignored)
            page = Page(page.events + more.events, more.position, more.more)
        if fetched:
            # Older history may still be fetched: hand out a token past what was read.
            page.more = True
        return page

    async def _state_after(self, event: Event) -> StateMap:
        group = await self._events.get_state_group_for_event(event.event_id)
        return await self._events.get_state_for_group(group) if group is not None else {}

    async def _member_state(self, event: Event, senders: Sequence[str]) -> list[Event]:
        """The member events of ``senders`` in the state after ``event`` (lazy loading)."""
        state = await self._state_after(event)
        ids = [state[("m.room.member", s)] for s in dict.fromkeys(senders)
               if ("m.room.member", s) in state]
        found = await self._events.get_events(ids)
        return [found[i] for i in ids if i in found]

    # -- /messages ----------------------------------------------------------------------

    async def get_messages(
        self, user_id: str, device_id: str | None, room_id: str, direction: str,
        from_token: str | None, to_token: str | None, limit: int,
        event_filter: HistoryFilter | None,
    ) -> JsonDict:
        version = await self._creation.room_version(room_id)
        start = parse_position(from_token, "from") if from_token is not None else None
        to = parse_position(to_token, "to") if to_token is not None else None
        await self._check_can_read(user_id, room_id)
        live = self._creation.current_position()
        if start is None:
            start = live if direction == "b" else MIN_POSITION
        result: JsonDict = {"chunk": [], "start": from_token if from_token is not None
                            else f"t{start}"}
        window = await self._window(user_id, room_id, version)
        if window is None:
            return result
        ignored = await self.ignored_users(user_id)
        if direction == "b":
            top = min(start, live) if window.high is None else min(start, live, window.high)
            bound = max(to if to is not None else MIN_POSITION, window.low - 1)
            page = await self._scan(user_id, room_id, "b", top, limit, bound, event_filter,
                                    ignored)
            if bound <= MIN_POSITION:  # the requester may see back to the room's start
                page = await self._backfilled(user_id, room_id, page, limit, bound,
                                              event_filter, ignored)
            if page.more:
                result["end"] = f"t{page.position}"
        else:
            low = max(start, window.low - 1)
            hard = min((p for p in (to, window.high) if p is not None), default=None)
            bound = live if hard is None else min(live, hard)
            page = await self._scan(user_id, room_id, "f", low, limit, bound, event_filter,
                                    ignored)
            at_live_edge = hard is None or hard > live
            # At the live edge more may come: hand back a token once anything was read
            # (as Synapse does); against `to` or the user's departure, history is done.
            if page.more or (at_live_edge and page.position != low):
                result["end"] = f"t{page.position}"
        result["chunk"] = await self._serializer.serialize(page.events, user_id, device_id)
        if event_filter is not None and event_filter.lazy_load_members:
            state = (await self._member_state(page.events[0], [e.sender for e in page.events])
                     if page.events else [])
            result["state"] = await self._serializer.serialize(state, user_id, device_id)
        return result

    # -- /context -----------------------------------------------------------------------

    async def get_context(
        self, user_id: str, device_id: str | None, room_id: str, event_id: str, limit: int,
        event_filter: HistoryFilter | None,
    ) -> JsonDict:
        version = await self._creation.room_version(room_id)
        # Who may not read the room at all learns nothing of its events (403 before any
        # lookup, as Synapse).
        await self._check_can_read(user_id, room_id)
        event = await self._events.get_event(event_id)
        ignored = await self.ignored_users(user_id)
        if (event is None or event.room_id != room_id or event.internal.outlier
                or (event.state_key is None and event.sender in ignored)
                or not await self._visibility.filter_events(user_id, [event])):
            raise MatrixError(404, "Event not found.", Codes.NOT_FOUND)
        window = await self._window(user_id, room_id, version)
        assert window is not None  # the event itself is visible
        pos = event.internal.stream_ordering or 0
        before_limit = limit // 2
        before = await self._scan(user_id, room_id, "b", pos - 1, before_limit,
                                  window.low - 1, event_filter, ignored)
        live = self._creation.current_position()
        bound = live if window.high is None else min(live, window.high)
        after = await self._scan(user_id, room_id, "f", pos, limit - before_limit, bound,
                                 event_filter, ignored)
        last = after.events[-1] if after.events else event
        if event_filter is not None and event_filter.lazy_load_members:
            senders = [e.sender for e in (*before.events, event, *after.events)]
            state_events = await self._member_state(last, senders)
        else:
            state = await self._state_after(last)
            found = await self._events.get_events(state.values())
            state_events = [found[i] for i in state.values() if i in found]
        if event_filter is not None:
            state_events = [e for e in state_events if event_filter.allows(e)]
        ser = self._serializer
        return {
            "events_before": await ser.serialize(before.events, user_id, device_id),
            "event": (await ser.serialize([event], user_id, device_id))[0],
            "events_after": await ser.serialize(after.events, user_id, device_id),
            "state": await ser.serialize(state_events, user_id, device_id),
            "start": f"t{before.position}",
            "end": f"t{after.position}",
        }

    # -- /members, /joined_members ------------------------------------------------------

    async def get_members(
        self, user_id: str, device_id: str | None, room_id: str, at_token: str | None,
        membership: str | None, not_membership: str | None,
    ) -> list[JsonDict]:
        """Member events as of ``at`` (or now); a departed user gets them as of their
        departure at the latest. Filters combine as Synapse does: both must hold."""
        version = await self._creation.room_version(room_id)
        at = parse_position(at_token, "at") if at_token is not None else None
        allowed, departed_at = await self._visibility.can_see_room_state(user_id, room_id)
        if not allowed:
            raise MatrixError(403, "You aren't a member of the room", Codes.FORBIDDEN)
        if self.await_full_state is not None:
            await self.await_full_state(room_id)
        if at is not None and (departed_at is None or at < departed_at):
            before = await self._events.paginate_room_events(room_id, at + 1, "b", 1)
            if before:
                position = before[0].internal.stream_ordering or 0
                # The state after that event is what an event right after it would see.
                if not await self._visible_at(user_id, room_id, version, position + 1):
                    raise MatrixError(403, "You may not see the room at that point",
                                      Codes.FORBIDDEN)
                state = await self._state_after(before[0])
            else:
                # Before the create event (a prev_batch of a timeline holding the whole
                # room): no members yet. Synapse says 404, which breaks lazy-loading
                # clients that ask with that token; the empty list is the truth.
                state = {}
        elif departed_at is not None:
            record = await self._members.get_membership(user_id, room_id)
            assert record is not None
            left = await self._events.get_event(record.event_id)
            state = await self._state_after(left) if left is not None else {}
        else:
            state = (await self._creation.snapshot(room_id)).state_ids
        ids = [eid for (etype, _), eid in sorted(state.items()) if etype == "m.room.member"]
        found = await self._events.get_events(ids)
        chunk = []
        for eid in ids:
            ev = found.get(eid)
            if ev is None:
                continue
            if membership is not None and ev.membership != membership:
                continue
            if not_membership is not None and ev.membership == not_membership:
                continue
            chunk.append(ev)
        return await self._serializer.serialize(chunk, user_id, device_id)

    async def get_joined_members(self, user_id: str, room_id: str) -> dict[str, JsonDict]:
        """Current joined members with their room display names and avatars; only for
        joined users (or anyone, in a world-readable room), as in Synapse."""
        await self._creation.room_version(room_id)
        m = await self._members.get_membership(user_id, room_id)
        if (m is None or m.membership != "join") and not await self._world_readable(room_id):
            raise MatrixError(403, "Getting joined members while not being a current member"
                              " of the room is forbidden.", Codes.FORBIDDEN)
        if self.await_full_state is not None:
            await self.await_full_state(room_id)
        state = (await self._creation.snapshot(room_id)).state_ids
        ids = [eid for (etype, _), eid in state.items() if etype == "m.room.member"]
        events = list((await self._events.get_events(ids)).values())
        # Redacted member events keep only "membership": no profile from them.
        served = {e["event_id"]: e for e in await self._serializer.serialize(events, user_id, None)}
        out: dict[str, JsonDict] = {}
        for ev in sorted(events, key=lambda e: e.state_key or ""):
            if ev.membership != "join" or ev.state_key is None:
                continue
            content = served[ev.event_id]["content"]
            # A key is left out when unset: the spec types both as strings, so
            # Synapse's null fails its schema (SyTest expects the null; see README).
            name, avatar = content.get("displayname"), content.get("avatar_url")
            entry: JsonDict = {}
            if isinstance(name, str):
                entry["display_name"] = name
            if isinstance(avatar, str):
                entry["avatar_url"] = avatar
            out[ev.state_key] = entry
        return out

    # -- /timestamp_to_event ------------------------------------------------------------

    async def timestamp_to_event(self, user_id: str, room_id: str, ts: int,
                                 direction: str) -> JsonDict:
        """The visible event closest to ``ts`` in ``direction``, or 404."""
        version = await self._creation.room_version(room_id)
        await self._check_can_read(user_id, room_id)
        window = await self._window(user_id, room_id, version)
        live = self._creation.current_position()
        high = live if window is None or window.high is None else min(live, window.high)
        after: tuple[int, int] | None = None
        scanned = 0
        while window is not None and scanned < SCAN_BUDGET:
            rows = await self._timestamps.events_by_timestamp(
                room_id, ts, direction, window.low, high, after, 100)
            visible = await self._visibility.filter_events(user_id, rows)
            if visible:
                return {"event_id": visible[0].event_id,
                        "origin_server_ts": visible[0].origin_server_ts}
            if len(rows) < 100:
                break
            scanned += len(rows)
            after = (rows[-1].origin_server_ts, rows[-1].internal.stream_ordering or 0)
        if self.remote_timestamp is not None and window is not None \
                and window.low - 1 <= MIN_POSITION:
            # Nothing held: history this server lacks may hold it (the spec's advice:
            # ask a server in the room, and fetch what it names).
            found = await self.remote_timestamp(room_id, ts, direction)
            event = await self._events.get_event(found) if found is not None else None
            if event is not None and event.room_id == room_id and not event.internal.outlier \
                    and await self._visibility.filter_events(user_id, [event]):
                return {"event_id": event.event_id, "origin_server_ts": event.origin_server_ts}
        where = "forward" if direction == "f" else "backward"
        raise MatrixError(404, f"Unable to find event from {ts} in {where} direction",
                          Codes.NOT_FOUND)
