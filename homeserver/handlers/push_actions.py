"""Push actions: which local users each new event notifies, and the unread counts
and notification list built from them.

After every persisted event (a batch subscriber of the event fan-out) the push rules
of each local joined member other than the sender (plus a local invitee, for their
invite) are evaluated, and the notifying outcomes of a published turn (a group
commit: up to 100 events) are written in one transaction to ``event_push_actions``.
Unread counts are then a count of rows after the user's latest ``m.read`` /
``m.read.private`` receipt, so /sync never re-evaluates rules.

Members who run the server-default rules (no rule of their own, no change to a
predefined one: most of them) are evaluated together (homeserver/push/bulk.py), so an
event that notifies nobody costs the same in a room of 5 or 5,000; only members with
rules of their own are evaluated one by one (issue 18).

Caches, bounded LRU: each user's merged ruleset and whether they have rules of their
own (dropped on any push rule change, through ``PushRulesHandler.on_change``), and per
room the joined members' display names, the power levels and the create event. A
room's events reach the hook in stream order; a local member, power levels or create
event updates the room's entry in place (it becomes the current state as written); a
state change of another server's event (after state resolution) drops it, and an entry
is read afresh after ``ROOM_REFRESH_MS`` whatever happened, so a change made without
an event (a partial-state room's resync) is seen within that time.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event, StateKey
from homeserver.events.power_levels import get_user_power_level, parse_level
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.event_fanout import PersistedEvent, PersistKind
from homeserver.handlers.push_rules import PushRulesHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.lru import LruCache
from homeserver.push.bulk import evaluate_defaults
from homeserver.push.evaluator import MAX_SAFE_INTEGER, Evaluation, PushContext, evaluate
from storage.stores.events import EventStore
from storage.stores.push_actions import NO_RECEIPT, PushActionRow, PushActionsStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAIN_THREAD = "main"
MAX_CACHED_RULESETS = 2_000  # a merged default ruleset is about 10 KiB in memory
MAX_CACHED_ROOMS = 1_000
MAX_CACHED_OWN_RULES = 200_000  # user id -> has rules of their own (~150 B each)
# Push rule changes remembered so a room's entry re-checks only the users who changed;
# an entry further behind re-checks all its members.
MAX_RULE_CHANGES_LOGGED = 10_000
# Rows looked at per GET /notifications before handing back a token, so a user who
# may no longer see much of their history cannot make one request scan all of it.
NOTIFICATIONS_SCAN_BUDGET = 2_000
# How long a room's entry is kept up to date in place before it is read afresh.
ROOM_REFRESH_MS = 30_000
_ROOM_CACHE_TYPES = frozenset({"m.room.member", "m.room.power_levels", "m.room.create"})
_POWER_LEVELS: StateKey = ("m.room.power_levels", "")
_CREATE: StateKey = ("m.room.create", "")


@dataclass
class RoomPushInfo:
    """What the evaluator needs about a room's current state, kept up to date by the
    room's local state events."""

    joined: dict[str, str | None]  # user id -> display name, every joined member
    local: dict[str, str | None]  # the same, local members only
    auth_state: dict[StateKey, Event]  # the power levels event, if any
    create: Event | None
    # Stream ordering of the member, power levels and create events read or applied,
    # so an event the entry already reflects (it was read after it) is not re-applied.
    orderings: dict[StateKey, int]
    # Local members with rules of their own (evaluated one by one), and those not yet
    # looked up; ``epoch``: the rule changes (PushActionsHandler._epoch) seen.
    own_rules: set[str] = field(default_factory=set)
    unchecked: set[str] = field(default_factory=set)
    epoch: int = 0
    read_ms: int = 0  # when the entry was read from the room's state

    def apply(self, event: Event, local_suffix: str) -> bool:
        """Take a local state event of ``_ROOM_CACHE_TYPES`` into account (it is now
        the room's current state at its key); False if the entry cannot tell."""
        key = event.state_pair
        position = event.internal.stream_ordering
        if position is None:
            return False
        known = self.orderings.get(key)
        if known is not None and known >= position:
            return True  # read after this event: already reflected
        self.orderings[key] = position
        if event.type == "m.room.member":
            user_id = key[1]
            if event.membership == "join":
                name = event.content.get("displayname")
                name = name if isinstance(name, str) else None
                self.joined[user_id] = name
                if user_id.endswith(local_suffix):
                    if user_id not in self.local and user_id not in self.own_rules:
                        self.unchecked.add(user_id)
                    self.local[user_id] = name
            else:
                self.joined.pop(user_id, None)
                self.local.pop(user_id, None)
                self.own_rules.discard(user_id)
                self.unchecked.discard(user_id)
        elif key == _POWER_LEVELS:
            self.auth_state = {key: event}
        elif key == _CREATE:
            self.create = event
        return True


def _counts(notify: int, highlight: int) -> JsonDict:
    return {"notification_count": notify, "highlight_count": highlight}


class PushActionsHandler:
    def __init__(self, server_name: str, clock: Clock, store: PushActionsStore,
                 push_rules: PushRulesHandler, creation: EventCreationHandler,
                 events: EventStore, visibility: VisibilityHandler,
                 serializer: ClientEventSerializer) -> None:
        self._suffix = ":" + server_name
        self._visibility = visibility
        self._serializer = serializer
        self._clock = clock
        self._store = store
        self._push_rules = push_rules
        self._creation = creation
        self._events = events
        self._rules: LruCache[str, dict[str, list[JsonDict]]] = LruCache(MAX_CACHED_RULESETS)
        self._own_rules: LruCache[str, bool] = LruCache(MAX_CACHED_OWN_RULES)
        self._rooms: LruCache[str, RoomPushInfo] = LruCache(MAX_CACHED_ROOMS)
        # Push rule changes: their count, and the last users who changed (newest last).
        self._epoch = 0
        self._changes: deque[str] = deque(maxlen=MAX_RULE_CHANGES_LOGGED)
        # Called with a batch's rows (stream order) once written (the pusher pool,
        # push/sender/; replication to a pusher worker).
        self.on_added: list[Callable[[list[PushActionRow]], None]] = []

    # -- caches -------------------------------------------------------------------------

    def on_rules_changed(self, _position: int, user_id: str) -> None:
        """``PushRulesHandler.on_change`` listener: the next event re-reads the rules."""
        self._rules.pop(user_id)
        self._own_rules.pop(user_id)
        self._epoch += 1
        self._changes.append(user_id)

    async def _ruleset(self, user_id: str) -> dict[str, list[JsonDict]]:
        rules = self._rules.get(user_id)
        if rules is not None:
            return rules
        rules = await self._push_rules.get_ruleset(user_id)
        self._rules.set(user_id, rules)
        return rules

    async def _room_info(self, room_id: str) -> RoomPushInfo:
        info = self._rooms.get(room_id)
        now = self._clock.time_msec()
        if info is not None and now - info.read_ms < ROOM_REFRESH_MS:
            return info
        snap = await self._creation.snapshot(room_id)
        keys = {k for k in snap.state_ids
                if k[0] == "m.room.member" or k in (_POWER_LEVELS, _CREATE)}
        state = await self._creation.current_state(room_id, list(keys))
        joined: dict[str, str | None] = {}
        for (etype, skey), ev in state.items():
            if etype == "m.room.member" and ev.membership == "join":
                name = ev.content.get("displayname")
                joined[skey] = name if isinstance(name, str) else None
        local = {u: n for u, n in joined.items() if u.endswith(self._suffix)}
        auth = {k: v for k, v in state.items() if k == _POWER_LEVELS}
        orderings = {k: ev.internal.stream_ordering or 0 for k, ev in state.items()}
        info = RoomPushInfo(joined, local, auth, state.get(_CREATE), orderings,
                            unchecked=set(local), epoch=self._epoch, read_ms=now)
        self._rooms.set(room_id, info)
        return info

    async def _members_with_own_rules(self, info: RoomPushInfo) -> set[str]:
        """The room's local members whose rules are more than the server defaults."""
        behind = self._epoch - info.epoch
        if behind:
            if behind > len(self._changes):
                info.unchecked = set(info.local)
                info.own_rules.clear()
            else:
                for user_id in list(self._changes)[-behind:]:
                    if user_id in info.local:
                        info.unchecked.add(user_id)
                        info.own_rules.discard(user_id)
            info.epoch = self._epoch
        if info.unchecked:
            pending, info.unchecked = info.unchecked, set()
            ask = []
            for user_id in pending:
                own = self._own_rules.get(user_id)
                if own is None:
                    ask.append(user_id)
                elif own:
                    info.own_rules.add(user_id)
            if ask:
                epoch = self._epoch
                found = await self._push_rules.users_with_own_rules(ask)
                for user_id in ask:
                    if epoch == self._epoch:  # else a change raced the read
                        self._own_rules.set(user_id, user_id in found)
                    if user_id in found and user_id in info.local:
                        info.own_rules.add(user_id)
        return info.own_rules

    # -- the persist hook ---------------------------------------------------------------

    async def on_event(self, event: Event) -> None:
        """Evaluate and record one event; a failure is logged, never raised (the event
        is already persisted and the send must not fail)."""
        await self.on_events([event])

    async def on_records(self, records: Sequence[PersistedEvent]) -> None:
        """Batch fan-out subscriber: the live events (LOCAL and REMOTE) of one turn."""
        live = [r for r in records if r.kind in (PersistKind.LOCAL, PersistKind.REMOTE)]
        for r in live:
            if r.kind is PersistKind.REMOTE and r.state_delta:
                # A resolution may change any key: the entry is read again.
                self._rooms.pop(r.event.room_id)
        await self.on_events([r.event for r in live],
                             {r.event.event_id for r in live if r.kind is PersistKind.LOCAL})

    async def on_events(self, events: Sequence[Event], local: set[str] | None = None) -> None:
        """Evaluate each event in order (a room's state changes reach the caches in
        order), then write every notifying row of the batch in one transaction and tell
        ``on_added`` once. A redaction first writes the rows gathered so far, so the
        rows of an event it redacts in the same batch are removed as before. A failure
        is logged per event, never raised. ``local``: the ids of the events written by
        this server's persister (their state is the room's current state as is)."""
        rows: list[PushActionRow] = []
        for event in events:
            try:
                if event.type == "m.room.redaction" and event.redacts:
                    await self._write(rows)
                    rows = []
                    await self._store.remove_event(event.room_id, event.redacts)
                rows.extend(await self._rows_for(
                    event, local is not None and event.event_id in local))
            except Exception:
                logger.exception("push actions failed for %s", event.event_id)
        try:
            await self._write(rows)
        except Exception:
            logger.exception("push actions failed for %d events from %s", len(events),
                             events[0].event_id)

    async def _write(self, rows: list[PushActionRow]) -> None:
        if not rows:
            return
        await self._store.add(rows)
        for listener in self.on_added:
            listener(rows)

    def _track_state(self, event: Event, local: bool) -> None:
        """Keep the room's entry in step with a state event of the cached types."""
        if not (event.is_state() and event.type in _ROOM_CACHE_TYPES):
            return
        info = self._rooms.get(event.room_id)
        if info is None:
            return
        if not (local and not event.internal.outlier and info.apply(event, self._suffix)):
            self._rooms.pop(event.room_id)

    async def _rows_for(self, event: Event, local: bool = False) -> list[PushActionRow]:
        """The notifying rows of one event (none written here)."""
        room_id = event.room_id
        self._track_state(event, local)
        if event.internal.outlier:
            return []
        info = await self._room_info(room_id)
        invitee = None
        if event.type == "m.room.member" and event.membership == "invite" \
                and (event.state_key or "").endswith(self._suffix) \
                and event.state_key not in info.joined:
            invitee = event.state_key or ""
        if not info.local and invitee is None:
            return []
        if len(info.local) == 1 and event.sender in info.local and invitee is None:
            return []  # only the sender is here
        own_rules = await self._members_with_own_rules(info)
        ctx_base = self._sender_context(event, info)
        event_json: JsonDict = {k: v for k, v in event.pdu.items()
                                if k in ("type", "content", "sender", "state_key")}
        event_json["room_id"] = room_id
        event_json["event_id"] = event.event_id
        member_count = len(info.joined)
        sender = event.sender
        results: list[tuple[str, Evaluation]] = []
        bulk = evaluate_defaults(event_json, info.local, member_count, **ctx_base)
        if bulk.rest.notify:
            results.extend((u, bulk.users.get(u, bulk.rest)) for u in info.local
                           if u != sender and u not in own_rules)
        else:
            results.extend((u, r) for u, r in bulk.users.items()
                           if u != sender and u not in own_rules)
        one_by_one = [u for u in own_rules if u != sender]
        if invitee is not None:
            one_by_one.append(invitee)
        for user_id in one_by_one:
            ctx = PushContext(user_id=user_id, member_count=member_count,
                              display_name=info.joined.get(user_id), **ctx_base)
            results.append((user_id, evaluate(await self._ruleset(user_id), event_json, ctx)))
        thread_id: str | None = None
        rows: list[PushActionRow] = []
        now = self._clock.time_msec()
        for user_id, result in results:
            if not result.notify:
                continue
            if thread_id is None:
                thread_id = await self._thread_of(event)
            rows.append(PushActionRow(
                user_id, room_id, event.event_id, event.internal.stream_ordering or 0,
                True, result.highlight, thread_id,
                json.dumps(result.actions, separators=(",", ":")), now))
        return rows

    def _sender_context(self, event: Event, info: RoomPushInfo) -> dict[str, Any]:
        if info.create is None:
            return {"sender_power_level": None, "notification_power_levels": {}}
        level = get_user_power_level(event.sender, info.auth_state, info.create)
        pl = info.auth_state.get(_POWER_LEVELS)
        notifications = pl.content.get("notifications") if pl is not None else None
        return {
            "sender_power_level": MAX_SAFE_INTEGER if level == math.inf else int(level),
            # v1-v9 rooms may write levels as integer strings.
            "notification_power_levels": {
                k: lvl for k, v in notifications.items() if (lvl := parse_level(v)) is not None
            } if isinstance(notifications, dict) else {},
        }

    async def _thread_of(self, event: Event) -> str:
        """``main``, or the thread root: of an ``m.thread`` relation, or of the event
        another relation (a reaction, an edit) points at, one hop (as Synapse)."""
        rel = event.content.get("m.relates_to")
        if not isinstance(rel, dict) or not isinstance(rel.get("event_id"), str):
            return MAIN_THREAD
        if rel.get("rel_type") == "m.thread":
            return rel["event_id"]
        parent = await self._events.get_event(rel["event_id"])
        if parent is None or parent.room_id != event.room_id:
            return MAIN_THREAD
        prel = parent.content.get("m.relates_to")
        if isinstance(prel, dict) and prel.get("rel_type") == "m.thread" \
                and isinstance(prel.get("event_id"), str):
            return prel["event_id"]
        return MAIN_THREAD

    # -- reads --------------------------------------------------------------------------

    async def unread_counts(self, user_id: str, room_ids: list[str], by_thread: bool
                            ) -> dict[str, JsonDict]:
        """Per room, the ``unread_notifications`` (and with ``by_thread`` the main
        timeline's, plus ``unread_thread_notifications`` when any thread has some)."""
        if not room_ids:
            return {}
        bounds, rows = await self._store.unread_rows(user_id, room_ids)
        base = {rid: bounds.get(rid, NO_RECEIPT).unthreaded for rid in room_ids}
        per_thread: dict[str, dict[str, tuple[int, int]]] = {}
        for room_id, thread_id, notify, highlight in rows:
            bound = bounds.get(room_id, NO_RECEIPT).for_thread(thread_id)
            if bound > base[room_id]:  # a threaded receipt reads further in this thread
                notify, highlight = await self._store.thread_counts_after(
                    user_id, room_id, thread_id, bound)
            if notify or highlight:
                per_thread.setdefault(room_id, {})[thread_id] = (notify, highlight)
        out: dict[str, JsonDict] = {}
        for room_id in room_ids:
            threads = per_thread.get(room_id, {})
            if not by_thread:
                out[room_id] = {"unread_notifications": _counts(
                    sum(n for n, _ in threads.values()), sum(h for _, h in threads.values()))}
                continue
            main = threads.get(MAIN_THREAD, (0, 0))
            entry: JsonDict = {"unread_notifications": _counts(*main)}
            others = {t: _counts(*c) for t, c in threads.items() if t != MAIN_THREAD}
            if others:
                entry["unread_thread_notifications"] = others
            out[room_id] = entry
        return out

    async def get_notifications(self, user_id: str, device_id: str | None,
                                before: int | None, limit: int, only_highlight: bool
                                ) -> JsonDict:
        """GET /notifications: newest first, only events the user may (still) see and
        has not read yet (a read receipt at or after the event removes it, as in Synapse,
        whose clients and SyTest expect the list to empty once read); ``next_token`` (the
        position to continue below) only when more may remain. ``profile_tag`` is always
        present, as clients (and SyTest) expect: empty, since no rule has a profile tag
        (Synapse sends null, which the spec's string type does not allow)."""
        picked: list[PushActionRow] = []
        events: dict[str, Event] = {}
        cursor = before
        more = False
        scanned = 0
        batch = min(max(limit + 1, 20), 500)
        while limit > 0:
            rows = await self._store.list_for_user(user_id, cursor, batch, only_highlight,
                                                   unread_only=True)
            found = await self._events.get_events(r.event_id for r in rows)
            visible = {e.event_id: e for e in await self._visibility.filter_events(
                user_id, sorted(found.values(), key=lambda e: e.internal.stream_ordering or 0))}
            for row in rows:
                if len(picked) >= limit:
                    more = True
                    break
                cursor = row.stream_ordering
                if row.event_id in visible:
                    picked.append(row)
                    events[row.event_id] = visible[row.event_id]
            scanned += len(rows)
            if more or len(rows) < batch:
                break
            if scanned >= NOTIFICATIONS_SCAN_BUDGET:
                more = True
                break
        ordered = [events[r.event_id] for r in picked]
        serialized = await self._serializer.serialize(ordered, user_id, device_id,
                                                      include_room_id=False)
        out: JsonDict = {"notifications": [
            {"actions": json.loads(row.actions_json), "event": ev, "read": False,
             "room_id": row.room_id, "ts": row.ts, "profile_tag": ""}
            for row, ev in zip(picked, serialized, strict=True)]}
        if more and cursor is not None:
            out["next_token"] = str(cursor)
        return out
