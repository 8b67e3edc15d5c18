"""Events as clients see them, with redactions applied, for many events at once.

Why a batch helper: every history read path (/messages, /context, /members) must serve
redacted events pruned with ``unsigned.redacted_because``, and must not leak redacted
content through another event's ``unsigned.prev_content`` (state events carry the
content of the event they replaced, copied when they were created). Doing both with
two queries per page instead of per event keeps pagination cheap.

Erased senders (deactivated with ``erase``): their events are served pruned (content
emptied by the redaction algorithm, as Synapse) to every user who was not joined to the
room when the event was sent; the original audience keeps seeing them. Whether a sender
is erased is cached per sender for ERASED_CACHE_TTL_MS (an erasure on this process is
seen at once, through :meth:`forget_erased`; on another worker within the TTL).

Self-destructing messages (MSC2228, as Synapse's ``enable_ephemeral_messages``): a
message whose content carries ``org.matrix.self_destruct_after`` (a timestamp in ms) is
served pruned once that time has passed. Only on these read paths: the stored event is
not rewritten (see the issue-12 report).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from homeserver.clock import Clock
from homeserver.events.client_format import serialize_event
from homeserver.events.model import Event
from homeserver.events.redaction import prune_event_dict
from storage.stores.event_cache import DEFAULT_EVENT_CACHE_SIZE
from storage.stores.events import EventStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.users import UserStore

JsonDict = dict[str, Any]
SELF_DESTRUCT_AFTER = "org.matrix.self_destruct_after"
ERASED_CACHE_TTL_MS = 60_000
ERASED_CACHE_SIZE = 50_000


class ClientEventSerializer:
    def __init__(self, clock: Clock, events: EventStore,
                 aggregations: Callable[[str, str | None, Sequence[Event], bool],
                                        Awaitable[dict[str, dict[str, Any]]]] | None = None,
                 users: UserStore | None = None, members: RoomMemberStore | None = None,
                 ) -> None:
        self._clock = clock
        self._events = events
        # Erased senders (both None: no erasure handling, e.g. in unit tests).
        self._users = users
        self._members = members
        self._erased_cache: OrderedDict[str, tuple[bool, int]] = OrderedDict()
        # Bundled aggregations (as RoomReadHandler.aggregations):
        # (user, device, events, include_room_id) -> {event_id: unsigned["m.relations"]}.
        self.aggregations = aggregations
        # Client forms of shared (cached) events, for ``serialize(shared=True)``: (event
        # id, with room id) -> (the PDU it was made from, the form with age 0).
        self._forms: OrderedDict[tuple[str, bool], tuple[JsonDict, JsonDict]] = OrderedDict()
        self.forms_size = DEFAULT_EVENT_CACHE_SIZE

    async def _applied_redactions(self, events: Sequence[Event]) -> dict[str, Event]:
        """event id -> the redaction event that applies to it. A redaction only counts
        in its own room: one pointing at another room's event is ignored."""
        by_id = {e.event_id: e for e in events}
        redaction_ids = await self._events.get_redaction_ids(by_id)
        found = await self._events.get_events(redaction_ids.values())
        out = {}
        for target, rid in redaction_ids.items():
            redaction = found.get(rid)
            if redaction is not None and redaction.room_id == by_id[target].room_id:
                out[target] = redaction
        return out

    def forget_erased(self, user_id: str) -> None:
        """Drop the cached answer for ``user_id`` (called when a user is erased here)."""
        self._erased_cache.pop(user_id, None)

    async def _erased(self, senders: Collection[str]) -> set[str]:
        if self._users is None:
            return set()
        now = self._clock.time_msec()
        cache = self._erased_cache
        stale = [s for s in set(senders)
                 if s not in cache or cache[s][1] + ERASED_CACHE_TTL_MS <= now]
        if stale:
            found = await self._users.erased_among(stale)
            for s in stale:
                cache[s] = (s in found, now)
                cache.move_to_end(s)
            while len(cache) > ERASED_CACHE_SIZE:
                cache.popitem(last=False)
        return {s for s in senders if s in cache and cache[s][0]}

    async def _unseen_by_erasure(self, events: Sequence[Event], user_id: str) -> set[str]:
        """Ids of the events of erased senders that ``user_id`` must only see pruned:
        those sent while the user was not joined (for the user's own membership events,
        the more joined of the old and new membership counts, as Synapse)."""
        erased = await self._erased({e.sender for e in events if e.sender != user_id})
        if not erased or self._members is None:
            return set()
        out: set[str] = set()
        history: dict[str, tuple[list[int], list[str]]] = {}
        for e in events:
            if e.sender not in erased or e.sender == user_id:
                continue
            if e.room_id not in history:
                rows = await self._members.membership_history(user_id, e.room_id)
                history[e.room_id] = ([p for _, p in rows], [m for m, _ in rows])
            positions, memberships = history[e.room_id]
            i = bisect.bisect_left(positions, e.internal.stream_ordering or 0)
            joined = i > 0 and memberships[i - 1] == "join"
            if e.type == "m.room.member" and e.state_key == user_id and e.membership == "join":
                joined = True
            if not joined:
                out.add(e.event_id)
        return out

    async def serialize(self, events: Sequence[Event], user_id: str, device_id: str | None,
                        include_room_id: bool = True, shared: bool = False) -> list[JsonDict]:
        """``shared``: the events came from the event cache (storage/stores/
        event_cache.py) and the caller never changes what it gets: the client form of
        an event shown as it is stored (not redacted, erased or bundled) is copied from
        the one made for the same cached PDU before, its age set."""
        if not events:
            return []
        redactions = await self._applied_redactions(events)
        now = self._clock.time_msec()
        erased = await self._unseen_by_erasure(events, user_id)
        erased.update(e.event_id for e in events if _self_destructed(e, now))
        # prev_content of state events whose predecessor was redacted since.
        replaced: dict[str, str] = {}
        for e in events:
            unsigned = e.pdu.get("unsigned")
            if isinstance(unsigned, dict) and isinstance(unsigned.get("replaces_state"), str):
                replaced[e.event_id] = unsigned["replaces_state"]
        # Only the redacted ones are read (a redaction counts in its own room alone).
        replaced_redactions = (await self._events.get_redaction_ids(set(replaced.values()))
                               if replaced else {})
        replaced_events = (await self._events.get_events(replaced_redactions)
                           if replaced_redactions else {})
        bundles: dict[str, dict[str, Any]] = {}
        if self.aggregations is not None:
            unredacted = [e for e in events if e.event_id not in redactions]
            if unredacted:
                bundles = await self.aggregations(user_id, device_id, unredacted,
                                                  include_room_id)
        out = []
        for e in events:
            redaction = redactions.get(e.event_id)
            if shared and redaction is None and e.event_id not in erased \
                    and e.event_id not in bundles \
                    and replaced.get(e.event_id) not in replaced_redactions:
                out.append(self._form(e, now, user_id, device_id, include_room_id))
                continue
            pruned = prune_event_dict(e.pdu, e.room_version) if redaction is not None else None
            client = serialize_event(e, now, for_user=user_id, for_device=device_id,
                                     redaction=redaction, pruned_pdu=pruned,
                                     include_room_id=include_room_id,
                                     relations=bundles.get(e.event_id))
            unsigned = client.get("unsigned", {})
            if redaction is None and e.event_id in erased:
                client["content"] = prune_event_dict(e.pdu, e.room_version)["content"]
                unsigned.pop("m.relations", None)
            if redaction is not None or e.event_id in erased:
                # Nothing of a redacted event's history either (as Synapse prunes unsigned).
                unsigned.pop("prev_content", None)
                unsigned.pop("prev_sender", None)
            else:
                prev_id = replaced.get(e.event_id)
                prev = replaced_events.get(prev_id) if prev_id else None
                if prev is not None and prev.event_id in replaced_redactions and \
                        "prev_content" in unsigned:
                    unsigned["prev_content"] = prune_event_dict(
                        prev.pdu, prev.room_version)["content"]
            out.append(client)
        return out


    def _form(self, e: Event, now: int, user_id: str, device_id: str | None,
              include_room_id: bool) -> JsonDict:
        """``serialize_event`` of an event shown as stored, from the remembered form of
        its (shared, never changed) PDU."""
        key = (e.event_id, include_room_id)
        entry = self._forms.get(key)
        if entry is None or entry[0] is not e.pdu:
            entry = (e.pdu, serialize_event(e, 0, include_room_id=include_room_id))
            self._forms[key] = entry
            if len(self._forms) > self.forms_size:
                self._forms.popitem(last=False)
        else:
            self._forms.move_to_end(key)
        client = dict(entry[1])
        unsigned = dict(client["unsigned"])
        unsigned["age"] = max(0, now - e.origin_server_ts)
        if (e.internal.txn_id and user_id == e.sender and device_id is not None
                and device_id == e.internal.device_id):
            unsigned["transaction_id"] = e.internal.txn_id
        client["unsigned"] = unsigned
        return client


def _self_destructed(event: Event, now_ms: int) -> bool:
    """A message (not state) whose MSC2228 self-destruct time has passed."""
    if event.is_state():
        return False
    after = event.content.get(SELF_DESTRUCT_AFTER)
    return isinstance(after, int) and not isinstance(after, bool) and after <= now_ms
