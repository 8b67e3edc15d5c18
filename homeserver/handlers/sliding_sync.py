"""Simplified sliding sync (MSC4186): a room list sorted by recency, windows of it,
room subscriptions and extensions, over a connection that remembers what it sent.

Built on /sync's pieces (homeserver/handlers/sync.py): the same visibility-filtered
timelines, room summaries, stripped state, serialization, unread counts and the same
notifier long-poll, so both endpoints agree on what a user may see. Per-connection state
lives in memory (homeserver/handlers/sliding_sync_types.py) and is bounded there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.sliding_sync_ext import ExtensionBuilder, extensions_have_data
from homeserver.handlers.sliding_sync_types import (
    BUMP_EVENT_TYPES,
    ConnectionStore,
    ListFilters,
    PositionState,
    RoomConfig,
    SentRoom,
    SlidingSyncRequest,
)
from homeserver.handlers.sync import SyncHandler, SyncToken
from homeserver.lru import LruCache
from homeserver.notifier import NotifierInterface
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore, StateMap
from storage.stores.room_members import MembershipRecord, RoomMemberStore
from storage.stores.sliding_sync import SlidingSyncStore

JsonDict = dict[str, Any]
ALL_MEMBERSHIPS = ("join", "invite", "knock", "leave", "ban")
CACHE_SIZE = 50_000


class SlidingSyncHandler:
    def __init__(self, clock: Clock, sync: SyncHandler, members: RoomMemberStore,
                 events: EventStore, store: SlidingSyncStore,
                 account_data: AccountDataHandler, ad_store: AccountDataStore,
                 notifier: NotifierInterface, *,
                 push_rules: Any = None,
                 unread_counts: Callable[[str, list[str], bool],
                                         Awaitable[dict[str, JsonDict]]] | None = None
                 ) -> None:
        self._clock = clock
        self._sync = sync
        self._members = members
        self._events = events
        self._store = store
        self._account_data = account_data
        self.ad_store = ad_store
        self._notifier = notifier
        self._unread_counts = unread_counts
        self.connections = ConnectionStore()
        self._ext = ExtensionBuilder(sync, account_data, push_rules)
        # room_id -> (position checked up to, newest bump position or 0) of joined rooms.
        self._bumps: LruCache[str, tuple[int, int]] = LruCache(CACHE_SIZE)
        # (room_id, position) -> bump at or before it: fixed once the position is past.
        self._fixed_bumps: LruCache[tuple[str, int], int] = LruCache(CACHE_SIZE)
        # Immutable facts: a membership event's (sender, is_direct); a room's type.
        self._member_events: LruCache[str, tuple[str, bool]] = LruCache(CACHE_SIZE)
        self._room_types: LruCache[str, tuple[str | None]] = LruCache(CACHE_SIZE)

    # -- the request --------------------------------------------------------------------

    async def sync(self, req: SlidingSyncRequest) -> JsonDict:
        prev = self.connections.lookup(req.user_id, req.device_id, req.conn_id, req.pos)
        now = self._sync.now_token()
        since = prev.token.bounded_by(now) if prev is not None else None
        deadline = self._clock.time() + req.timeout_ms / 1000
        while True:
            response, state = await self._build(req, prev, since, now)
            if prev is None or req.timeout_ms <= 0 or response["rooms"] or \
                    extensions_have_data(response["extensions"]):
                break
            built = now

            async def moved(token: SyncToken, built: SyncToken = built) -> bool:
                return token != built

            now = await self._sync.wait_for(req.user_id, now, deadline, moved)
            if now == built:  # timed out (or shutting down): the empty answer stands
                break
        response["pos"] = self.connections.store(req.user_id, req.device_id, req.conn_id,
                                                 state)
        if req.txn_id is not None:
            response["txn_id"] = req.txn_id
        return response

    async def _build(self, req: SlidingSyncRequest, prev: PositionState | None,
                     since: SyncToken | None, now: SyncToken
                     ) -> tuple[JsonDict, PositionState]:
        candidates = await self._candidates(req.user_id, prev, since, now)
        stamps = await self._bump_stamps(candidates, now.events)
        ordered = sorted(candidates, key=lambda r: (-stamps[r], r))
        configs: dict[str, RoomConfig] = {}
        lists_out: JsonDict = {}
        list_rooms: dict[str, list[str]] = {}
        facts = _Facts(self, req.user_id, candidates)
        # Rooms joined with partial state: only where no more members are asked for than
        # it has ($LAZY, $ME), as Synapse; they come as new rooms once resynced.
        partial = await self._sync.partial_rooms(
            [r for r, m in candidates.items() if m.membership == "join"])
        for name, lc in req.lists.items():
            matching = [r for r in ordered if not (
                r in partial and _wants_all_members(lc.room, req.user_id))
                and await facts.matches(lc.filters, r)]
            ops = []
            in_window: list[str] = []
            for start, end in lc.ranges:
                ids = matching[start:end + 1]
                ops.append({"op": "SYNC", "range": [start, end], "room_ids": ids})
                in_window.extend(r for r in ids if r not in in_window)
            for room_id in in_window:
                configs[room_id] = configs[room_id].merge(lc.room) \
                    if room_id in configs else lc.room
            lists_out[name] = {"count": len(matching), "ops": ops}
            list_rooms[name] = in_window
        subscriptions = req.subscriptions_after(prev)
        subscribed = [r for r in subscriptions if r in candidates and not (
            r in partial and _wants_all_members(subscriptions[r], req.user_id))]
        for room_id in subscribed:
            cfg = subscriptions[room_id]
            configs[room_id] = configs[room_id].merge(cfg) if room_id in configs else cfg
        rooms_state: OrderedDict[str, SentRoom] = OrderedDict(prev.rooms) if prev else \
            OrderedDict()
        rooms_out: JsonDict = {}
        dms = await facts.dm_rooms() if configs else set()
        quiet = await self._quiet_rooms(configs, candidates, prev, now)
        ignored = await self._sync.ignored_users(req.user_id) if configs else frozenset()
        for room_id, cfg in configs.items():
            m = candidates[room_id]
            sent = prev.rooms.get(room_id) if prev else None
            if sent is not None and room_id in quiet:
                rooms_state[room_id] = replace(sent, upto=now.events)
                continue
            result, new_sent = await self._room(req, m, cfg, sent, since, now,
                                                stamps[room_id], room_id in dms, ignored)
            rooms_state[room_id] = new_sent
            rooms_state.move_to_end(room_id)
            if result is not None:
                rooms_out[room_id] = result
        await self._add_counts(req.user_id, rooms_out, candidates)
        initial = {r for r, v in rooms_out.items() if v.get("initial")}
        extensions = await self._ext.build(req, since, now, list_rooms, subscribed, initial,
                                           candidates)
        response = {"lists": lists_out, "rooms": rooms_out, "extensions": extensions}
        return response, PositionState(now, rooms_state, subscriptions)

    async def _quiet_rooms(self, configs: dict[str, RoomConfig],
                           candidates: dict[str, MembershipRecord],
                           prev: PositionState | None, now: SyncToken) -> set[str]:
        """Joined rooms the connection already has, asked for with no more state, and
        without any event since: skipped without reading their timeline or state. One
        query per distinct position sent up to (usually the previous ``pos``)."""
        if prev is None:
            return set()
        by_from: dict[int, list[str]] = {}
        for room_id, cfg in configs.items():
            sent = prev.rooms.get(room_id)
            if sent is not None and sent.membership == "join" and \
                    candidates[room_id].membership == "join" and \
                    cfg.required_state <= sent.required_state and sent.upto < now.events:
                by_from.setdefault(sent.upto, []).append(room_id)
        out: set[str] = set()
        for from_pos, rooms in by_from.items():
            changed = await self._events.rooms_with_events_between(rooms, from_pos,
                                                                   now.events)
            out.update(r for r in rooms if r not in changed)
        return out

    # -- which rooms --------------------------------------------------------------------

    async def _candidates(self, user_id: str, prev: PositionState | None,
                          since: SyncToken | None, now: SyncToken
                          ) -> dict[str, MembershipRecord]:
        """The rooms the lists draw from: joined, invited, knocked, banned and left ones,
        as Synapse: a room the user left on their own shows only until the connection
        has seen that leave; invites from ignored users are hidden (as /sync)."""
        memberships = [m for m in await self._members.rooms_for_user(user_id, ALL_MEMBERSHIPS)
                       if m.stream_ordering <= now.events]
        member_events = await self.member_events(
            m.event_id for m in memberships if m.membership in ("leave", "invite"))
        ignored = await self._sync.ignored_users(user_id) if any(
            m.membership == "invite" for m in memberships) else frozenset()
        out: dict[str, MembershipRecord] = {}
        for m in memberships:
            sender = member_events.get(m.event_id, ("", False))[0]
            if m.membership == "leave" and sender == user_id:
                sent = prev.rooms.get(m.room_id) if prev else None
                fresh = since is not None and m.stream_ordering > since.events
                if not fresh and (sent is None or sent.membership == "leave"):
                    continue
            if m.membership == "invite" and sender in ignored:
                continue
            out[m.room_id] = m
        return out

    async def member_events(self, event_ids: Iterable[str]) -> dict[str, tuple[str, bool]]:
        """``event_id -> (sender, content.is_direct)`` of membership events (cached)."""
        out: dict[str, tuple[str, bool]] = {}
        missing = []
        for eid in event_ids:
            hit = self._member_events.get(eid)
            if hit is None:
                missing.append(eid)
            else:
                out[eid] = hit
        if missing:
            for eid, ev in (await self._events.get_events(missing)).items():
                out[eid] = (ev.sender, ev.content.get("is_direct") is True)
                self._member_events.set(eid, out[eid])
        return out

    async def room_types(self, room_ids: list[str]) -> dict[str, str | None]:
        """The ``type`` of each room's create event (None: a plain room; cached)."""
        out: dict[str, str | None] = {}
        missing = []
        for room_id in room_ids:
            hit = self._room_types.get(room_id)
            if hit is not None:
                out[room_id] = hit[0]
            else:
                missing.append(room_id)
        if missing:
            creates = await self._store.current_state_of_type(missing, "m.room.create")
            ids = {room_id: keys.get("") for room_id, keys in creates.items()}
            found = await self._events.get_events(v for v in ids.values() if v)
            for room_id in missing:
                ev = found.get(ids.get(room_id) or "")
                rtype = ev.content.get("type") if ev is not None else None
                out[room_id] = rtype if isinstance(rtype, str) else None
                if ev is not None:
                    self._room_types.set(room_id, (out[room_id],))
        return out

    async def _bump_stamps(self, candidates: dict[str, MembershipRecord], upto: int
                           ) -> dict[str, int]:
        """Per room, the position of its newest event of a bump type (a message, not a
        reaction or a profile change); for a room the user is not in, as of the
        membership; an invite or knock sorts by when it came."""
        out: dict[str, int] = {}
        joined: list[tuple[str, int]] = []
        for room_id, m in candidates.items():
            if m.membership in ("invite", "knock"):
                out[room_id] = m.stream_ordering
            elif m.membership == "join":
                checked, stamp = self._bumps.get(room_id) or (0, 0)
                out[room_id] = stamp
                if checked < upto:
                    joined.append((room_id, checked))
            else:
                key = (room_id, m.stream_ordering)
                fixed = self._fixed_bumps.get(key)
                if fixed is None:
                    found = await self._store.latest_of_types(
                        [(room_id, 0)], BUMP_EVENT_TYPES, m.stream_ordering)
                    fixed = found.get(room_id, 0)
                    self._fixed_bumps.set(key, fixed)
                out[room_id] = fixed
        if joined:
            # Only rooms with any event since they were checked need a look (one query
            # per distinct position checked at: usually one).
            by_from: dict[int, list[str]] = {}
            for room_id, checked in joined:
                by_from.setdefault(checked, []).append(room_id)
            moved: list[tuple[str, int]] = []
            for checked, ids in by_from.items():
                busy = await self._events.rooms_with_events_between(ids, checked, upto)
                moved.extend((r, checked) for r in ids if r in busy)
            found = await self._store.latest_of_types(moved, BUMP_EVENT_TYPES, upto)
            for room_id, _ in joined:
                stamp = max(out[room_id], found.get(room_id, 0))
                self._bumps.set(room_id, (upto, stamp))
                out[room_id] = stamp
        for room_id, m in candidates.items():
            if not out[room_id]:
                out[room_id] = m.stream_ordering
        return out

    # -- one room -----------------------------------------------------------------------

    async def _room(self, req: SlidingSyncRequest, m: MembershipRecord, cfg: RoomConfig,
                    sent: SentRoom | None, since: SyncToken | None, now: SyncToken,
                    bump_stamp: int, is_dm: bool, ignored: frozenset[str]
                    ) -> tuple[JsonDict | None, SentRoom]:
        """The room's entry (None: nothing new for this connection) and what the
        connection has of it afterwards."""
        if m.membership in ("invite", "knock"):
            if sent is not None and sent.membership == m.membership and \
                    sent.upto >= m.stream_ordering:
                return None, sent
            stripped = await self._sync.stripped_state(m, req.user_id)
            result: JsonDict = {"initial": True, "invite_state": stripped,
                                "bump_stamp": bump_stamp}
            for e in stripped:
                if e.get("type") == "m.room.name" and isinstance(
                        e["content"].get("name"), str) and e["content"]["name"]:
                    result["name"] = e["content"]["name"]
                if e.get("type") == "m.room.avatar" and isinstance(
                        e["content"].get("url"), str) and e["content"]["url"]:
                    result["avatar"] = e["content"]["url"]
            if is_dm:
                result["is_dm"] = True
            return result, SentRoom(m.stream_ordering, m.membership, frozenset())
        joined = m.membership == "join"
        upto = now.events if joined else m.stream_ordering
        initial = sent is None or sent.membership in ("invite", "knock") or (
            joined and sent.membership != "join")
        if not initial and sent is not None and sent.upto >= upto and \
                cfg.required_state <= sent.required_state:
            return None, sent
        from_pos = 0 if initial or sent is None else sent.upto
        events, limited = await self._sync.room_timeline(
            req.user_id, req.device_id, m.room_id, from_pos, upto, cfg.timeline_limit, joined,
            ignored)
        state_now = await self._sync.state_at(m.room_id, upto)
        senders = {e.sender for e in events}
        if initial or sent is None:
            lazy = senders if cfg.lazy else set()
            wanted = {k: v for k, v in state_now.items()
                      if cfg.wants(k[0], k[1], req.user_id, lazy)}
            new_sent = SentRoom(upto, m.membership, cfg.required_state)
        else:
            lazy = (senders - sent.lazy_members) if cfg.lazy else set()
            wanted = await self._state_changes(req.user_id, m.room_id, cfg, sent, state_now,
                                               upto, lazy)
            new_sent = SentRoom(upto, m.membership, cfg.required_state | sent.required_state,
                                sent.lazy_members)
            if not events and not wanted:
                return None, new_sent
        new_sent = new_sent.with_lazy({k[1] for k in wanted if k[0] == "m.room.member"
                                       and k[1] in lazy})
        result = await self._room_body(req, m.room_id, state_now, wanted, events, upto)
        start = (events[0].internal.stream_ordering or 1) - 1 if events else upto
        result.update({
            "limited": limited, "prev_batch": f"t{start}", "bump_stamp": bump_stamp,
            "num_live": sum(1 for e in events if since is not None and
                            (e.internal.stream_ordering or 0) > since.events),
        })
        if initial:
            result["initial"] = True
        if is_dm:
            result["is_dm"] = True
        return result, new_sent

    async def _state_changes(self, user_id: str, room_id: str, cfg: RoomConfig,
                             sent: SentRoom, state_now: StateMap, upto: int,
                             lazy: set[str]) -> StateMap:
        """For a room the connection has: required state that changed since it was sent,
        entries a widened ``required_state`` now asks for, and members of new senders."""
        state_then = await self._sync.state_at(room_id, sent.upto) if sent.upto < upto \
            else state_now
        added = RoomConfig(cfg.required_state - sent.required_state, 0)
        known = set(sent.lazy_members)  # a $LAZY member the client has, changed since
        out: StateMap = {}
        for (etype, skey), eid in state_now.items():
            if state_then.get((etype, skey)) != eid and cfg.wants(etype, skey, user_id, known):
                out[(etype, skey)] = eid
            elif added.required_state and added.wants(etype, skey, user_id, lazy):
                out[(etype, skey)] = eid
            elif etype == "m.room.member" and skey in lazy:
                out[(etype, skey)] = eid
        return out

    async def _room_body(self, req: SlidingSyncRequest, room_id: str, state_now: StateMap,
                         wanted: StateMap, events: list[Event], upto: int) -> JsonDict:
        """timeline, required_state, name, avatar, heroes and member counts."""
        summary = await self._sync.room_summary(room_id, req.user_id, upto)
        heroes: list[str] = summary.get("m.heroes") or []
        meta_keys = [("m.room.name", ""), ("m.room.avatar", "")] + [
            ("m.room.member", h) for h in heroes]
        meta_ids = [state_now[k] for k in meta_keys if k in state_now]
        found = await self._events.get_events(list(wanted.values()) + meta_ids)
        result: JsonDict = {"joined_count": summary.get("m.joined_member_count", 0),
                            "invited_count": summary.get("m.invited_member_count", 0)}
        # Empty lists are left out (as Synapse), to save bandwidth.
        if events:
            result["timeline"] = await self._sync.serialize_events(events, req.user_id,
                                                                   req.device_id)
        state_events = [found[v] for v in wanted.values() if v in found]
        if state_events:
            result["required_state"] = await self._sync.serialize_events(
                state_events, req.user_id, req.device_id)
        name_ev = found.get(state_now.get(("m.room.name", ""), ""))
        if name_ev is not None and isinstance(name_ev.content.get("name"), str) and \
                name_ev.content["name"]:
            result["name"] = name_ev.content["name"]
        avatar_ev = found.get(state_now.get(("m.room.avatar", ""), ""))
        if avatar_ev is not None and isinstance(avatar_ev.content.get("url"), str) and \
                avatar_ev.content["url"]:
            result["avatar"] = avatar_ev.content["url"]
        if heroes:
            out = []
            for user in heroes:
                hero: JsonDict = {"user_id": user}
                ev = found.get(state_now.get(("m.room.member", user), ""))
                if ev is not None:
                    if isinstance(ev.content.get("displayname"), str):
                        hero["displayname"] = ev.content["displayname"]
                    if isinstance(ev.content.get("avatar_url"), str):
                        hero["avatar_url"] = ev.content["avatar_url"]
                out.append(hero)
            result["heroes"] = out
        return result

    async def _add_counts(self, user_id: str, rooms: JsonDict,
                          candidates: dict[str, MembershipRecord]) -> None:
        """notification_count / highlight_count, as /sync's unread_notifications."""
        joined = [r for r in rooms if candidates[r].membership == "join"]
        counts = await self._unread_counts(user_id, joined, False) \
            if self._unread_counts is not None and joined else {}
        for room_id, room in rooms.items():
            unread = counts.get(room_id, {}).get("unread_notifications", {})
            room["notification_count"] = int(unread.get("notification_count", 0))
            room["highlight_count"] = int(unread.get("highlight_count", 0))


class _Facts:
    """What list filters need, fetched once per request and only if a filter asks."""

    def __init__(self, handler: SlidingSyncHandler, user_id: str,
                 candidates: dict[str, MembershipRecord]) -> None:
        self._h = handler
        self._user_id = user_id
        self._candidates = candidates
        self._dms: set[str] | None = None
        self._encrypted: set[str] | None = None
        self._stripped: dict[str, list[JsonDict]] | None = None
        self._types: dict[str, str | None] | None = None
        self._space_children: dict[tuple[str, ...], set[str]] = {}

    async def dm_rooms(self) -> set[str]:
        """Rooms in ``m.direct``, and invites flagged ``is_direct``."""
        if self._dms is None:
            content = await self._h.ad_store.get_account_data(self._user_id, None, "m.direct")
            dms: set[str] = set()
            if isinstance(content, dict):
                for rooms in content.values():
                    if isinstance(rooms, list):
                        dms.update(r for r in rooms if isinstance(r, str))
            invites = [m.event_id for m in self._candidates.values()
                       if m.membership == "invite"]
            flags = await self._h.member_events(invites)
            dms.update(m.room_id for m in self._candidates.values()
                       if m.membership == "invite" and flags.get(m.event_id, ("", False))[1])
            self._dms = dms
        return self._dms

    async def matches(self, f: ListFilters, room_id: str) -> bool:
        m = self._candidates[room_id]
        if f.is_invite is not None and (m.membership == "invite") != f.is_invite:
            return False
        if f.is_dm is not None and (room_id in await self.dm_rooms()) != f.is_dm:
            return False
        stripped: list[JsonDict] | None = None
        if f.is_encrypted is not None or f.room_types is not None or f.not_room_types:
            stripped = (await self.out_of_band()).get(room_id)
        if f.is_encrypted is not None:
            if self._encrypted is None:
                found = await self._h._store.current_state_of_type(
                    list(self._candidates), "m.room.encryption")
                self._encrypted = {r for r, keys in found.items() if "" in keys}
            encrypted = room_id in self._encrypted if stripped is None else \
                _stripped_encrypted(stripped)
            # Unknown (a remote invite that came with no state): in no filtered list.
            if encrypted is None or encrypted != f.is_encrypted:
                return False
        if f.room_types is not None or f.not_room_types:
            if self._types is None:
                self._types = await self._h.room_types(list(self._candidates))
            if stripped is None:
                rtype = self._types.get(room_id)
            else:
                known, rtype = _stripped_type(stripped)
                if not known:
                    return False
            if f.room_types is not None and rtype not in f.room_types:
                return False
            if rtype in f.not_room_types:
                return False
        if f.spaces is not None:
            if f.spaces not in self._space_children:
                self._space_children[f.spaces] = await self._children(f.spaces)
            if room_id not in self._space_children[f.spaces]:
                return False
        return True

    async def out_of_band(self) -> dict[str, list[JsonDict]]:
        """The stripped state of invites and knocks to rooms whose state this server
        does not hold (over federation, the remote server's stripped state): the only
        source of their type and encryption."""
        if self._stripped is None:
            pending = [r for r, m in self._candidates.items()
                       if m.membership in ("invite", "knock")]
            creates = await self._h._store.current_state_of_type(pending, "m.room.create") \
                if pending else {}
            self._stripped = {}
            for room_id in pending:
                if "" not in creates.get(room_id, {}):
                    self._stripped[room_id] = await self._h._sync.stripped_state(
                        self._candidates[room_id], self._user_id)
        return self._stripped

    async def _children(self, spaces: tuple[str, ...]) -> set[str]:
        """Children (``m.space.child`` with a ``via``) of the listed spaces the user is
        joined to."""
        mine = [s for s in spaces if s in self._candidates
                and self._candidates[s].membership == "join"]
        found = await self._h._store.current_state_of_type(mine, "m.space.child")
        ids = [eid for keys in found.values() for eid in keys.values()]
        events = await self._h._events.get_events(ids)
        return {ev.state_key for ev in events.values()
                if ev.state_key and isinstance(ev.content.get("via"), list)
                and ev.content["via"]}


def _stripped_encrypted(stripped: list[JsonDict]) -> bool | None:
    """Whether stripped state says the room is encrypted; None if the other server
    sent no state at all (only the membership event is there)."""
    if not any(e.get("type") != "m.room.member" for e in stripped):
        return None
    return any(e.get("type") == "m.room.encryption" and e.get("state_key") == ""
               for e in stripped)


def _stripped_type(stripped: list[JsonDict]) -> tuple[bool, str | None]:
    """(known, room type) from the stripped create event (unknown without one)."""
    for e in stripped:
        if e.get("type") == "m.room.create" and e.get("state_key") == "":
            rtype = e["content"].get("type") if isinstance(e.get("content"), dict) else None
            return True, rtype if isinstance(rtype, str) else None
    return False, None


def _wants_all_members(cfg: RoomConfig, user_id: str) -> bool:
    """Whether ``required_state`` asks for members beyond the timeline's senders and the
    user (what a room joined with partial state cannot answer yet)."""
    return any(etype in ("m.room.member", "*") and skey not in ("$LAZY", "$ME", user_id)
               and not (etype == "*" and skey == "")
               for etype, skey in cfg.required_state)
