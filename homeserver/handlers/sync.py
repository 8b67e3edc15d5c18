"""GET /sync: initial and incremental, long-polling on the notifier.

A sync token is ``s<events>_<account_data>``: the event stream position and the
account-data position the client has seen. Rooms are sectioned into join / invite /
leave / knock; every event list passes the history-visibility filter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from homeserver.clock import Clock
from homeserver.events.client_format import serialize_event
from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.ignored_users import IgnoredUsers
from homeserver.handlers.sync_filter import SyncFilter
from homeserver.handlers.sync_initial import initial_joined_rooms
from homeserver.handlers.sync_poll import SyncPoll
from homeserver.handlers.sync_summary import summary_event_ids, summary_of
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.params import parse_stream_token
from homeserver.notifier import NotifierInterface
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore, StateMap
from storage.stores.room_members import MembershipRecord, RoomMemberStore

JsonDict = dict[str, Any]
# Positions in a sync token, in order. Older tokens with fewer fields parse with zeros.
EXTRA_STREAMS = ("receipts", "typing", "presence", "to_device", "device_lists")
# Lazy-loaded members already sent, remembered per (user, device) so incremental syncs do
# not resend them (Synapse's lazy-loaded members cache). Bounded: forgetting only resends.
LL_CACHE_DEVICES = 10_000
LL_CACHE_MEMBERS = 1_000
# Rows looked at per room to fill a filtered timeline (past it the timeline is limited).
TIMELINE_SCAN_BUDGET = 1000
STRIPPED_STATE_TYPES = ("m.room.create", "m.room.join_rules", "m.room.name", "m.room.avatar",
                        "m.room.canonical_alias", "m.room.encryption", "m.room.topic")


@dataclass(frozen=True, slots=True)  # two per parked long-poll (issue 18): no __dict__
class SyncToken:
    """``s<events>_<account_data>_<receipts>_<typing>_<presence>_<to_device>_<device_lists>``."""

    events: int
    account_data: int
    extra: tuple[int, ...] = field(default=(0,) * len(EXTRA_STREAMS))

    def __str__(self) -> str:
        return "s" + "_".join(str(p) for p in (self.events, self.account_data, *self.extra))

    def position(self, stream: str) -> int:
        return self.extra[EXTRA_STREAMS.index(stream)]

    @classmethod
    def parse(cls, raw: str) -> SyncToken:
        """Every position is bounded (MAX_POSITION): anything else is 400 M_INVALID_PARAM."""
        try:
            parts = parse_stream_token(raw, "s", 2, len(EXTRA_STREAMS) + 2)
        except MatrixError as e:
            raise MatrixError(400, "Invalid sync token", Codes.INVALID_PARAM) from e
        extra = parts[2:] + [0] * (len(EXTRA_STREAMS) - len(parts[2:]))
        return cls(parts[0], parts[1], tuple(extra))

    def bounded_by(self, now: SyncToken) -> SyncToken:
        """Positions ahead of ``now`` brought back to it (Synapse's ``bound_future_token``):
        a token from the future would otherwise wait for positions that never come and
        skip what arrives meanwhile."""
        return SyncToken(min(self.events, now.events), min(self.account_data, now.account_data),
                         tuple(min(a, b) for a, b in zip(self.extra, now.extra, strict=True)))


class EphemeralSource(Protocol):
    """A stream that adds to /sync outside the room timeline (typing, receipts,
    presence, to-device, device lists). ``name`` is one of ``EXTRA_STREAMS``."""

    name: str

    def current_position(self) -> int: ...

    async def has_updates(self, user_id: str, room_ids: list[str], since: int) -> bool: ...

    async def room_events(self, user_id: str, room_ids: list[str], since: int, upto: int
                          ) -> dict[str, list[JsonDict]]:
        """Per-room ephemeral events (``rooms.join.<id>.ephemeral``)."""
        ...

    async def global_section(self, user_id: str, device_id: str | None, since: int, upto: int
                             ) -> dict[str, Any]:
        """Top-level sections to merge into the response (e.g. ``presence``)."""
        ...


_ALL_MEMBERSHIPS = ("join", "invite", "leave", "ban", "knock")


@dataclass(slots=True)  # one per parked long-poll (issue 18): no per-instance __dict__
class SyncRequest:
    user_id: str
    device_id: str | None
    since: SyncToken | None
    timeout_ms: int
    full_state: bool
    filter: SyncFilter
    # Set by ``_has_updates`` when it answers True (every membership, forgotten
    # included), taken by the ``_build`` right after it: one read of the user's rooms per
    # woken long-poll. Never kept by a parked one.
    memberships: list[MembershipRecord] | None = None


class SyncHandler:
    def __init__(
        self,
        clock: Clock,
        events: EventStore,
        creation: EventCreationHandler,
        members: RoomMemberStore,
        visibility: VisibilityHandler,
        account_data_store: AccountDataStore,
        account_data: AccountDataHandler,
        notifier: NotifierInterface,
        *,
        sources: Sequence[EphemeralSource] = (),
        serializer: Any = None,
        push_rules: Any = None,
        aggregations: Callable[[str, str | None, Sequence[Event], bool],
                               Awaitable[dict[str, JsonDict]]] | None = None,
        unread_counts: Callable[[str, list[str], bool],
                                Awaitable[dict[str, JsonDict]]] | None = None,
    ) -> None:
        self._clock = clock
        self._events = events
        self._creation = creation
        self._members = members
        self._visibility = visibility
        self._ad_store = account_data_store
        self._account_data = account_data
        self._notifier = notifier
        self._ad_position = 0
        # The ephemeral streams (receipts, typing, presence, device lists, to-device).
        self.sources: list[EphemeralSource] = list(sources)
        # Batch serializer (redactions, prev_content pruning, aggregations).
        self.serializer = serializer
        # Push rules are served as the m.push_rules global account data.
        self.push_rules = push_rules
        # Bundled aggregations for timeline events: (user, device, events, include_room_id)
        # -> {event_id: unsigned["m.relations"]} (RelationsHandler.bundle).
        self.aggregations = aggregations
        # Unread notification counts (PushActionsHandler.unread_counts):
        # (user, joined room ids, per-thread) -> {room_id: {"unread_notifications": ...}}.
        self.unread_counts = unread_counts
        self._ll_sent: OrderedDict[tuple[str, str | None], OrderedDict[str, str]] = \
            OrderedDict()
        self._ignored = IgnoredUsers(account_data_store)
        # Rooms joined with partial state (storage/stores/partial_state.py
        # PartialStateStore; None without federation): see ``_partial_state_view``.
        self.partial_state: Any = None

    async def load_positions(self) -> None:
        self._ad_position = await self._ad_store.max_stream_id()

    def note_account_data(self, position: int, user_id: str) -> None:
        """An account data or push rule change (``user_id`` "": another process's,
        whose user is not told)."""
        self._ad_position = max(self._ad_position, position)
        self._ignored.changed(user_id)
        self._notifier.notify(user_ids=[user_id])

    def now_token(self) -> SyncToken:
        positions = {src.name: src.current_position() for src in self.sources}
        return SyncToken(self._creation.current_position(), self._ad_position,
                         tuple(positions.get(n, 0) for n in EXTRA_STREAMS))

    async def sync(self, req: SyncRequest) -> JsonDict:
        token = self.now_token()
        if req.since is not None:
            req.since = req.since.bounded_by(token)
        if req.since is None or req.full_state or req.timeout_ms <= 0:
            return await self._build(req, token)
        deadline = self._clock.time() + req.timeout_ms / 1000
        token = await self.wait_for(req.user_id, token, deadline,
                                    lambda t: self._has_updates(req, t))
        return await self._build(req, token)

    async def sync_or_park(self, req: SyncRequest) -> JsonDict | SyncPoll:
        """:meth:`sync`, except that a long-poll which has to wait comes back parked on
        the notifier as a :class:`SyncPoll` (the HTTP layer answers it when it fires)
        instead of holding this coroutine chain while parked (issue 18)."""
        if not hasattr(self._notifier, "park"):
            return await self.sync(req)
        token = self.now_token()
        if req.since is not None:
            req.since = req.since.bounded_by(token)
        if req.since is None or req.full_state or req.timeout_ms <= 0:
            return await self._build(req, token)
        poll = SyncPoll(self, req, token, self._clock.time() + req.timeout_ms / 1000)
        body = await poll.step()
        return poll if body is None else body

    async def wait_for(self, user_id: str, token: SyncToken, deadline: float,
                       ready: Callable[[SyncToken], Awaitable[bool]],
                       extra_rooms: Sequence[str] = ()) -> SyncToken:
        """The long-poll of /sync and legacy /events: wait until ``ready(now)`` (something
        *relevant to this user*) or the deadline (clock seconds); returns the token the
        answer is built at. A stream moving for other users re-checks and waits again.
        ``extra_rooms`` wake it too (a room legacy /events peeks at)."""
        while not await ready(token):
            remaining = deadline - self._clock.time()
            if remaining <= 0 or self._notifier.closing:  # shutting down: answer now
                break
            # A tuple: the notifier keeps this very object (no second copy per parked poll).
            rooms = tuple([m.room_id for m in await self._members.rooms_for_user(
                user_id, ("join", "invite", "knock"))] + list(extra_rooms))
            # Anything that arrived during the awaits above has already notified;
            # only wait if the position is still the one just checked.
            if self.now_token() == token:
                await self._notifier.wait(user_id, rooms, remaining)
            token = self.now_token()
        return token

    async def _park_rooms(self, user_id: str) -> tuple[str, ...]:
        return tuple([m.room_id for m in await self._members.rooms_for_user(
            user_id, ("join", "invite", "knock"))])

    async def _has_updates(self, req: SyncRequest, token: SyncToken) -> bool:
        assert req.since is not None
        req.memberships = None
        if token.account_data > req.since.account_data:
            return True
        # The rooms are read only when an ephemeral stream moved (a re-issued idle
        # long-poll, the commonest request, moved none: issue 18).
        moved = [src for src in self.sources
                 if token.position(src.name) > req.since.position(src.name)]
        if not moved and token.events <= req.since.events:
            return False
        memberships = await self._members.rooms_for_user(
            req.user_id, _ALL_MEMBERSHIPS, include_forgotten=True)
        if await self._memberships_have_updates(req, token, moved, memberships):
            req.memberships = memberships
            return True
        return False

    async def _memberships_have_updates(self, req: SyncRequest, token: SyncToken,
                                        moved: list[EphemeralSource],
                                        memberships: list[MembershipRecord]) -> bool:
        assert req.since is not None
        if moved:
            joined = [m.room_id for m in memberships
                      if m.membership == "join" and not m.forgotten]
            for src in moved:
                if await src.has_updates(req.user_id, joined, req.since.position(src.name)):
                    return True
        if token.events <= req.since.events:
            return False
        partial, resynced = await self._partial_state_view(req, memberships, token)
        if resynced:
            return True
        left_out = set() if req.filter.state.lazy_load_members else partial
        changed = await self._events.rooms_with_events_between(
            [m.room_id for m in memberships if m.room_id not in left_out],
            req.since.events, token.events)
        return bool(changed)

    async def _partial_state_view(self, req: SyncRequest, memberships: list[MembershipRecord],
                                  token: SyncToken) -> tuple[set[str], set[str]]:
        """(joined rooms with partial state, joined rooms sent as newly joined) for rooms
        joined with partial state (homeserver/handlers/partial_state.py), as Synapse:
        unless the filter lazy-loads members, such a room is left out (its members are
        not known yet) until the resync, and a client whose token is before the
        resync's position then gets it with its full state. A lazy-loading client gets
        it at once, with the members its timeline needs (``_members_from_auth``)."""
        if self.partial_state is None:
            return set(), set()
        joined = [m.room_id for m in memberships if m.membership == "join"]
        if not joined:
            return set(), set()
        partial: set[str] = await self.partial_state.partial_rooms(joined)
        resynced: set[str] = set()
        if req.since is not None and not req.filter.state.lazy_load_members:
            resynced = await self.partial_state.resynced_between(
                joined, req.since.events, token.events)
        return partial, resynced - partial

    async def partial_rooms(self, room_ids: Sequence[str]) -> set[str]:
        """Which of these rooms have partial state (sliding sync leaves them out of
        lists and subscriptions that want members they would lack)."""
        if self.partial_state is None or not room_ids:
            return set()
        return await self.partial_state.partial_rooms(room_ids)  # type: ignore[no-any-return]

    async def _build(self, req: SyncRequest, token: SyncToken) -> JsonDict:
        since = req.since
        rooms: JsonDict = {"join": {}, "invite": {}, "leave": {}, "knock": {}}
        known, req.memberships = req.memberships, None
        memberships = [m for m in known if not m.forgotten] if known is not None else \
            await self._members.rooms_for_user(req.user_id, _ALL_MEMBERSHIPS)
        ignored = await self._ignored_users(req.user_id)
        partial, resynced = await self._partial_state_view(req, memberships, token)
        left_out = set() if req.filter.state.lazy_load_members else partial
        initial_joins: list[MembershipRecord] = []
        for m in memberships:
            if not req.filter.allows_room(m.room_id) or m.stream_ordering > token.events:
                continue
            changed_membership = since is None or m.stream_ordering > since.events
            if m.membership == "join":
                if m.room_id in left_out:
                    continue
                if since is None:  # every joined room is newly joined: built together
                    initial_joins.append(m)
                    continue
                newly_joined = (changed_membership and await self._newly_joined(req, m)) \
                    or m.room_id in resynced
                room = await self._joined_room(req, m, token, newly_joined, ignored,
                                               partial=m.room_id in partial)
                if room is not None:
                    rooms["join"][m.room_id] = room
            elif m.membership == "invite" and changed_membership:
                if await self._inviter(m) in ignored:
                    continue  # spec: invites from ignored users are not sent down
                rooms["invite"][m.room_id] = {"invite_state": {
                    "events": await self._stripped_state(m, req.user_id)}}
            elif m.membership == "knock" and changed_membership:
                rooms["knock"][m.room_id] = {"knock_state": {
                    "events": await self._stripped_state(m, req.user_id)}}
            elif m.membership in ("leave", "ban"):
                if (since is not None and changed_membership) or (
                        since is None and req.filter.include_leave):
                    room = await self._left_room(req, m, ignored)
                    if room is not None:
                        rooms["leave"][m.room_id] = room
        if initial_joins:
            await initial_joined_rooms(self, req, initial_joins, token, ignored, partial,
                                       rooms["join"])
        joined_ids = [m.room_id for m in memberships if m.membership == "join"
                      and req.filter.allows_room(m.room_id) and m.room_id not in left_out]
        extra_sections: dict[str, Any] = {}
        for src in self.sources:
            src_since = since.position(src.name) if since else 0
            upto = token.position(src.name)
            per_room = await src.room_events(req.user_id, joined_ids, src_since, upto)
            for room_id, evs in per_room.items():
                if not evs:
                    continue
                room = rooms["join"].get(room_id)
                if room is None:
                    room = rooms["join"][room_id] = self._empty_room(token)
                room["ephemeral"]["events"].extend(
                    e for e in evs if req.filter.ephemeral.allows_type(str(e.get("type", ""))))
            for key, value in (await src.global_section(
                    req.user_id, req.device_id, src_since, upto)).items():
                if isinstance(value, dict) and isinstance(extra_sections.get(key), dict):
                    extra_sections[key].update(value)
                else:
                    extra_sections[key] = value
        if self.unread_counts is not None and rooms["join"]:
            counts = await self.unread_counts(req.user_id, list(rooms["join"]),
                                              req.filter.timeline.unread_thread_notifications)
            for room_id, fields in counts.items():
                rooms["join"][room_id].update(fields)
        # Account data and push rules share one stream: nothing moved, nothing to read.
        ad_moved = since is None or since.account_data < token.account_data
        global_ad, room_ad = await self._account_data.get_updated_account_data(
            req.user_id, since.account_data if since else 0) if ad_moved else ({}, {})
        for room_id, data in room_ad.items():
            if room_id in rooms["join"]:
                rooms["join"][room_id]["account_data"] = {
                    "events": [{"type": t, "content": c} for t, c in data.items()
                               if req.filter.room_account_data.allows_type(t)]}
        ad_events = [{"type": t, "content": c} for t, c in global_ad.items()
                     if req.filter.account_data.allows_type(t)]
        if self.push_rules is not None and ad_moved and \
                req.filter.account_data.allows_type("m.push_rules"):
            changed = await self.push_rules.get_stream_id(req.user_id)
            if since is None or changed > since.account_data:
                ad_events.append({"type": "m.push_rules",
                                  "content": await self.push_rules.get_push_rules_json(req.user_id)})
        response: JsonDict = {
            "next_batch": str(token),
            "rooms": rooms,
            "account_data": {"events": ad_events},
            "presence": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }
        if since is not None:
            await self._presence_into_view(req, rooms, memberships, since, extra_sections)
        presence = extra_sections.get("presence")
        if isinstance(presence, dict) and isinstance(presence.get("events"), list):
            pf = req.filter.presence
            presence["events"] = [
                e for e in presence["events"]
                if pf.allows_type(str(e.get("type", ""))) and str(e.get("sender", "")) not in
                pf.not_senders and (pf.senders is None or e.get("sender") in pf.senders)]
        response.update(extra_sections)
        return response

    async def _presence_into_view(self, req: SyncRequest, rooms: JsonDict,
                                  memberships: list[MembershipRecord], since: SyncToken,
                                  sections: dict[str, Any]) -> None:
        """Incremental sync: the presence of whoever came into view since ``since``
        (everyone in a newly joined room, anyone newly joined to a room the user is in),
        even with no presence change in the window, as Synapse does."""
        src = next((s for s in self.sources if s.name == "presence"), None)
        presence_events = getattr(src, "presence_events", None)
        if presence_events is None:
            return
        users: set[str] = set()
        for m in memberships:
            if m.membership == "join" and m.room_id in rooms["join"] and \
                    since.events < m.stream_ordering:
                users.update(r.user_id for r in await self._members.members_of_room(m.room_id))
        for room in rooms["join"].values():
            for e in room["timeline"]["events"]:
                prev = (e.get("unsigned") or {}).get("prev_content") or {}
                if e.get("type") == "m.room.member" and prev.get("membership") != "join" \
                        and (e.get("content") or {}).get("membership") == "join":
                    users.add(str(e.get("state_key")))
        section = sections.get("presence")
        have = {e.get("sender") for e in section.get("events", [])} \
            if isinstance(section, dict) else set()
        users -= have | {req.user_id}
        found = await presence_events(users) if users else []
        if found:
            if not isinstance(section, dict) or not isinstance(section.get("events"), list):
                section = sections["presence"] = {"events": []}
            section["events"].extend(found)

    async def _ignored_users(self, user_id: str) -> frozenset[str]:
        """``m.ignored_user_list``: their messages and invites are hidden from this user."""
        return await self._ignored.of(user_id)

    async def _newly_joined(self, req: SyncRequest, m: MembershipRecord) -> bool:
        """Whether a joined room whose membership changed since the token is newly joined
        (full state, whole timeline): not if the user was joined at the token and only
        joins followed, e.g. a display-name change (as Synapse's _get_rooms_changed)."""
        if req.since is None:
            return True
        history = await self._members.membership_history(req.user_id, m.room_id)
        before = [ms for ms, pos in history if pos <= req.since.events]
        after = [ms for ms, pos in history if pos > req.since.events]
        return not before or before[-1] != "join" or any(ms != "join" for ms in after)

    async def _inviter(self, m: MembershipRecord) -> str | None:
        event = await self._events.get_event(m.event_id)
        return event.sender if event is not None else None

    async def _timeline(self, req: SyncRequest, room_id: str, since: int, upto: int,
                        ignored: frozenset[str] = frozenset(), joined: bool = False
                        ) -> tuple[list[Event], bool]:
        """The newest ``timeline_limit`` events in (since, upto] that pass the timeline
        filter and visibility, and whether older such events were cut. Non-state events
        from ignored users are dropped (as Synapse does).

        Why a loop: the filter and visibility are applied before the limit (as Synapse),
        so a filtered timeline is filled from further back instead of coming back short
        and ``limited`` (SyTest "A filtered timeline reaches its limit"); the rows looked
        at per room are bounded by TIMELINE_SCAN_BUDGET. In a joined room, events that are
        part of the current state are shown even where history visibility would hide them
        (Synapse's ``always_include_ids``): the member can read that state anyway, and a
        client needs e.g. the join of someone who joined while it was away."""
        limit = req.filter.timeline_limit
        if limit <= 0:
            return [], bool(await self._events.get_room_events_stream(room_id, since, upto, 1))
        batch = max(limit * 2, 10)
        current: frozenset[str] | None = None
        out: list[Event] = []
        cursor = upto
        scanned = 0
        while True:
            rows = await self._events.get_room_events_stream(room_id, since, cursor, batch,
                                                             shared=True)
            scanned += len(rows)
            candidates = req.filter.timeline.filter(rows)
            if ignored:
                candidates = [e for e in candidates
                              if e.state_key is not None or e.sender not in ignored]
            # A joined room's membership was read with the sync's: not read again.
            visible = await self._visibility.filter_events(
                req.user_id, candidates, joined=(room_id,) if joined else ())
            if joined and len(visible) < len(candidates):
                hidden_state = [e for e in candidates if e.state_key is not None]
                if hidden_state:
                    if current is None:
                        current = frozenset(
                            (await self._creation.snapshot(room_id)).state_ids.values())
                    shown = {e.event_id for e in visible}
                    visible = [e for e in candidates
                               if e.event_id in shown or e.event_id in current]
            out = visible + out
            if len(out) > limit:
                return out[-limit:], True
            if len(rows) < batch:
                return out, False
            if scanned >= TIMELINE_SCAN_BUDGET:
                return out, True
            cursor = (rows[0].internal.stream_ordering or 1) - 1

    async def _state_at(self, room_id: str, position: int) -> StateMap:
        """The room state after the last event at or before ``position``."""
        return await self._events.get_state_at(room_id, position)

    async def _state_delta(self, room_id: str, since: int, start: int) -> StateMap:
        """State entries that changed between the client's token and the timeline start."""
        before = await self._state_at(room_id, since)
        after = await self._state_at(room_id, start)
        return {k: v for k, v in after.items() if before.get(k) != v}

    async def _joined_room(self, req: SyncRequest, m: MembershipRecord, token: SyncToken,
                           newly_joined: bool, ignored: frozenset[str] = frozenset(),
                           partial: bool = False) -> JsonDict | None:
        """A joined room's section (an initial sync's rooms: sync_initial.py)."""
        since = req.since.events if req.since and not newly_joined else 0
        events, limited = await self._timeline(req, m.room_id, since, token.events, ignored,
                                               joined=True)
        if req.since is not None and not newly_joined and not events and not req.full_state:
            return None if not await self._room_has_account_data(req, m.room_id) else \
                self._empty_room(token)
        start = (events[0].internal.stream_ordering or 1) - 1 if events else token.events
        full = req.since is None or newly_joined or req.full_state
        lazy = req.filter.state.lazy_load_members
        state: StateMap = {}
        if full:
            state = await self._state_at(m.room_id, start)
            if lazy:
                keep = self._timeline_senders(events) | {req.user_id}
                state = {k: v for k, v in state.items()
                         if k[0] != "m.room.member" or k[1] in keep}
        else:
            if limited:
                state = await self._state_delta(m.room_id, since, start)
            if lazy:
                senders = self._timeline_senders(events)
                if senders:
                    at_start = await self._state_at(m.room_id, start)
                    for user in senders:
                        key = ("m.room.member", user)
                        if key in at_start:
                            state.setdefault(key, at_start[key])
        if lazy and partial:
            state = await self._members_from_auth(state, events)
        if lazy:
            state = self._dedupe_lazy_members(req, state, events)
        state_events = await self._state_events(req, state, events)
        timeline_json, state_json = await self._serialize_room(events, state_events, req)
        return {
            "timeline": {
                "events": timeline_json,
                "limited": limited or (newly_joined and req.since is not None and limited),
                "prev_batch": f"t{start}",
            },
            "state": {"events": state_json},
            "ephemeral": {"events": []},
            "account_data": {"events": []},
            "unread_notifications": {"notification_count": 0, "highlight_count": 0},
            "summary": await self._summary(m.room_id, req.user_id, token.events),
        }

    async def _members_from_auth(self, state: StateMap, events: list[Event]) -> StateMap:
        """A room with partial state lacks most members: a timeline sender's membership
        missing from ``state`` is taken from the auth events of its first event (they
        cite it; Synapse does the same)."""
        senders = self._timeline_senders(events)
        first: dict[str, Event] = {}
        for e in events:
            if e.sender in senders and ("m.room.member", e.sender) not in state:
                first.setdefault(e.sender, e)
        if not first:
            return state
        found = await self._events.get_events(
            {a for e in first.values() for a in e.auth_event_ids})
        out = dict(state)
        for sender, e in first.items():
            for auth_id in e.auth_event_ids:
                ev = found.get(auth_id)
                if ev is not None and ev.type == "m.room.member" and ev.state_key == sender:
                    out[("m.room.member", sender)] = auth_id
                    break
        return out

    @staticmethod
    def _timeline_senders(events: list[Event]) -> set[str]:
        """Senders the client needs a membership for: not those whose own membership event
        comes in the timeline at or before their first event (the client has it there)."""
        seen_member: set[str] = set()
        senders: set[str] = set()
        for e in events:
            if e.type == "m.room.member" and e.state_key is not None and \
                    e.state_key == e.sender and e.sender not in senders:
                seen_member.add(e.sender)
            if e.sender not in seen_member:
                senders.add(e.sender)
            if e.type == "m.room.member" and e.state_key is not None:
                seen_member.add(e.state_key)
        return senders

    def _dedupe_lazy_members(self, req: SyncRequest, state: StateMap,
                             timeline: list[Event]) -> StateMap:
        """Lazy-loading: drop member events this device was already sent (unless
        ``include_redundant_members``) and remember what it gets now. A new sync sequence
        (no ``since``) starts afresh, as the client may have lost what it had."""
        key = (req.user_id, req.device_id)
        sent = self._ll_sent.pop(key, None)
        if sent is None or req.since is None:
            sent = OrderedDict()
        self._ll_sent[key] = sent
        while len(self._ll_sent) > LL_CACHE_DEVICES:
            self._ll_sent.popitem(last=False)
        if req.since is not None and not req.filter.state.include_redundant_members:
            state = {k: v for k, v in state.items()
                     if k[0] != "m.room.member" or sent.get(k[1]) != v}
        for (etype, skey), eid in state.items():
            if etype == "m.room.member":
                sent[skey] = eid
                sent.move_to_end(skey)
        for e in timeline:
            if e.type == "m.room.member" and e.state_key is not None:
                sent[e.state_key] = e.event_id
                sent.move_to_end(e.state_key)
        while len(sent) > LL_CACHE_MEMBERS:
            sent.popitem(last=False)
        return state

    async def _room_has_account_data(self, req: SyncRequest, room_id: str) -> bool:
        assert req.since is not None
        _, room_ad = await self._account_data.get_updated_account_data(
            req.user_id, req.since.account_data)
        return room_id in room_ad

    @staticmethod
    def _empty_room(token: SyncToken) -> JsonDict:
        return {"timeline": {"events": [], "limited": False, "prev_batch": f"t{token.events}"},
                "state": {"events": []}, "ephemeral": {"events": []},
                "account_data": {"events": []},
                "unread_notifications": {"notification_count": 0, "highlight_count": 0},
                "summary": {}}

    async def _left_room(self, req: SyncRequest, m: MembershipRecord,
                         ignored: frozenset[str] = frozenset()) -> JsonDict | None:
        """Timeline up to the leave. Incremental: state is only what changed since the
        client's token (nothing, if there was no gap), as for a joined room."""
        since = req.since.events if req.since else 0
        events, limited = await self._timeline(req, m.room_id, since, m.stream_ordering,
                                               ignored)
        start = (events[0].internal.stream_ordering or 1) - 1 if events else m.stream_ordering
        if req.since is None or req.full_state:
            state = await self._state_at(m.room_id, start)
            if req.filter.state.lazy_load_members:
                keep = self._timeline_senders(events) | {req.user_id}
                state = {k: v for k, v in state.items()
                         if k[0] != "m.room.member" or k[1] in keep}
        elif limited:
            state = await self._state_delta(m.room_id, since, start)
        else:
            state = {}
        state_events = await self._state_events(req, state, events)
        return {
            "timeline": {"events": req.filter.project(await self._timeline_events(events, req)),
                         "limited": limited, "prev_batch": f"t{start}"},
            "state": {"events": req.filter.project(await self._serialize_state(state_events,
                                                                                req))},
            "account_data": {"events": []},
        }

    async def _state_events(self, req: SyncRequest, state: StateMap,
                            timeline: list[Event]) -> list[Event]:
        """``state`` (already narrowed for lazy-loading) through the state filter, minus
        what the timeline carries."""
        f = req.filter.state
        wanted = [eid for (etype, _), eid in state.items() if f.allows_type(etype)]
        timeline_ids = {e.event_id for e in timeline}
        found = await self._events.get_events((v for v in wanted if v not in timeline_ids),
                                             shared=True)
        return [found[v] for v in wanted if v in found]

    async def _stripped_state(self, m: MembershipRecord, user_id: str) -> list[JsonDict]:
        group = await self._events.get_state_group_for_event(m.event_id)
        if group is None:
            # An invite or knock over federation in a room whose state this server does
            # not hold: the stripped state the other server sent with it.
            return await self._out_of_band_state(m)
        state = await self._events.get_state_for_group(group) if group is not None else {}
        ids = [state[(t, "")] for t in STRIPPED_STATE_TYPES if (t, "") in state]
        # The inviter's own member event too, as Synapse (clients show who invited).
        invite = (await self._events.get_events([m.event_id])).get(m.event_id)
        if invite is not None and invite.sender != user_id and \
                ("m.room.member", invite.sender) in state:
            ids.append(state[("m.room.member", invite.sender)])
        ids.append(m.event_id)
        found = await self._events.get_events(ids)
        return [{"type": e.type, "state_key": e.state_key, "content": e.content,
                 "sender": e.sender} for e in (found.get(i) for i in ids) if e is not None]

    async def _out_of_band_state(self, m: MembershipRecord) -> list[JsonDict]:
        event = await self._events.get_event(m.event_id)
        if event is None:
            return []
        unsigned = event.pdu.get("unsigned")
        given = unsigned.get(f"{m.membership}_room_state") if isinstance(unsigned, dict) else None
        # Only well-formed stripped events (another server's input): /sync and sliding
        # sync read names, avatars and flags out of them.
        out = [{k: s[k] for k in ("type", "state_key", "content", "sender")}
               for s in (given if isinstance(given, list) else []) if isinstance(s, dict)
               and isinstance(s.get("type"), str) and isinstance(s.get("state_key"), str)
               and isinstance(s.get("content"), dict) and isinstance(s.get("sender"), str)
               and (s["type"], s["state_key"]) != ("m.room.member", event.state_key)]
        out.append({"type": event.type, "state_key": event.state_key,
                    "content": event.content, "sender": event.sender})
        return out

    async def _summary(self, room_id: str, user_id: str, position: int) -> JsonDict:
        """Counts and heroes from the room state at the sync position (spec RoomSummary)."""
        # Memberships from their table (no JSON decoded: a big room has thousands);
        # a member event without a row there is read as before.
        state, rows = await self._events.get_state_and_memberships_at(room_id, position)
        found = await self._events.get_events(summary_event_ids(state, rows), shared=True)
        return summary_of(state, rows, found, user_id)

    async def _serialize_room(self, timeline: list[Event], state: list[Event],
                              req: SyncRequest) -> tuple[list[JsonDict], list[JsonDict]]:
        """A room's timeline and state events in their client form. With the batch
        serializer, in one call (one redaction lookup per room, not two); what each event
        becomes does not depend on the others (aggregations only bundle non-state events,
        which are all in the timeline)."""
        if self.serializer is None:
            return (req.filter.project(await self._timeline_events(timeline, req)),
                    req.filter.project(await self._serialize_state(state, req)))
        both = req.filter.project(await self.serializer.serialize(
            timeline + state, req.user_id, req.device_id, include_room_id=False, shared=True))
        return both[:len(timeline)], both[len(timeline):]

    async def _serialize_state(self, events: list[Event], req: SyncRequest) -> list[JsonDict]:
        if self.serializer is not None:
            return await self.serializer.serialize(events, req.user_id, req.device_id,
                                                   include_room_id=False)
        return [await self._client_event(e, req) for e in events]

    async def _timeline_events(self, events: list[Event], req: SyncRequest) -> list[JsonDict]:
        if self.serializer is not None:
            return await self.serializer.serialize(events, req.user_id, req.device_id,
                                                   include_room_id=False)
        bundles = (await self.aggregations(req.user_id, req.device_id, events, False)
                   if self.aggregations is not None and events else {})
        return [await self._client_event(e, req, bundles.get(e.event_id)) for e in events]

    async def _client_event(self, event: Event, req: SyncRequest,
                            relations: JsonDict | None = None) -> JsonDict:
        redactions = await self._events.get_redaction_ids([event.event_id])
        redaction = None
        pruned = None
        if event.event_id in redactions:
            redaction = await self._events.get_event(redactions[event.event_id])
            pruned = prune_event_dict(event.pdu, event.room_version)
        return serialize_event(event, self._clock.time_msec(), for_user=req.user_id,
                               for_device=req.device_id, redaction=redaction, pruned_pdu=pruned,
                               include_room_id=False, relations=relations)

    # -- building blocks shared with sliding sync (homeserver/handlers/sliding_sync.py),
    # so both answer with the same visibility, counts and serialization.

    async def room_timeline(self, user_id: str, device_id: str | None, room_id: str,
                            since: int, upto: int, limit: int, joined: bool,
                            ignored: frozenset[str] | None = None
                            ) -> tuple[list[Event], bool]:
        """The visible timeline window (see ``_timeline``), ignored users applied."""
        req = SyncRequest(user_id, device_id, None, 0, False,
                          SyncFilter.parse({"room": {"timeline": {"limit": limit}}}))
        if ignored is None:
            ignored = await self._ignored_users(user_id)
        return await self._timeline(req, room_id, since, upto, ignored, joined)

    async def serialize_events(self, events: list[Event], user_id: str,
                               device_id: str | None) -> list[JsonDict]:
        req = SyncRequest(user_id, device_id, None, 0, False, SyncFilter.parse({}))
        return await self._timeline_events(events, req)

    async def state_at(self, room_id: str, position: int) -> StateMap:
        return await self._state_at(room_id, position)

    async def room_summary(self, room_id: str, user_id: str, position: int) -> JsonDict:
        return await self._summary(room_id, user_id, position)

    async def stripped_state(self, m: MembershipRecord, user_id: str) -> list[JsonDict]:
        return await self._stripped_state(m, user_id)

    async def ignored_users(self, user_id: str) -> frozenset[str]:
        return await self._ignored_users(user_id)
