"""POST /search: server-side search of message bodies, off unless ``search.enabled``.

Why off by default: searching needs a plaintext copy of message bodies on the server,
which a privacy-first server should not keep unless the operator asks for it. Encrypted
rooms are never indexed (clients search those locally), and when search is switched
off again the copies are deleted at the next start.

When on, ``event_search`` holds the casefolded ``content.body`` of ``m.room.message``
events of unencrypted rooms (an event fan-out subscriber, caught up at start-up); a room
that turns encrypted has its rows deleted, a redacted event loses its row. A query
covers the requester's joined, currently unencrypted rooms, and within each only the
stream positions the requester may see (``VisibilityHandler.visible_ranges``): the
``count``, the ranking window and the ``next_batch`` positions are computed in SQL over
visible events only, so none of them reveals a match in hidden history. Every result
also passes the history-visibility filter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from homeserver.events.model import Event
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.relations import RelationsHandler
from homeserver.handlers.room_reads import RoomReadHandler
from homeserver.handlers.sync_filter import EventFilter
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.opaque_tokens import Int, Str, decode_token, encode_token
from storage.stores.events import EventStore
from storage.stores.relations import Ranges, RelationsStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.search import SearchQuery, SearchRow, SearchStore

logger = logging.getLogger(__name__)
JsonDict = dict[str, Any]

MESSAGE = "m.room.message"
ENCRYPTION = ("m.room.encryption", "")
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_TERMS = 20
RANK_WINDOW = 200  # newest matches ranked per query when ordering by rank
SCAN_PAGES = 5  # pages of matches looked at to fill one page of visible results
MAX_CONTEXT = 20
CATCH_UP_BATCH = 500
MAX_TOKEN = 200


def search_terms(term: str) -> list[str]:
    return [t for t in term.casefold().split() if t][:MAX_TERMS]


def rank(body: str, terms: Sequence[str]) -> float:
    """Occurrences of the terms, damped by the body's length (longer bodies mention
    everything more often)."""
    hits = sum(body.count(t) for t in terms)
    return round(hits / math.log2(2 + len(body.split())), 6)


# order, then: recent = (position to continue below, 0); rank = (offset, live edge).
_SEARCH_TOKEN = (Str(choices=("recent", "rank")), Int(), Int())


def _decode(token: str) -> list[Any]:
    return decode_token(token, MAX_TOKEN, _SEARCH_TOKEN)


class SearchIndexer:
    """Writes ``event_search`` while search is enabled; see the module docstring."""

    def __init__(self, enabled: bool, store: SearchStore, relations: RelationsStore,
                 events: EventStore, creation: EventCreationHandler) -> None:
        self.enabled = enabled
        self._store = store
        self._progress = relations
        self._events = events
        self._creation = creation

    @staticmethod
    def row(event: Event) -> SearchRow | None:
        body = event.content.get("body")
        if (event.type != MESSAGE or event.is_state() or not isinstance(body, str) or not body
                or event.internal.stream_ordering is None):
            return None
        return SearchRow(event.event_id, event.room_id, event.sender,
                         event.internal.stream_ordering, body.casefold())

    async def on_event(self, event: Event) -> None:
        if not self.enabled:
            return
        try:
            if event.type == ENCRYPTION[0] and event.state_key == "":
                await self._store.remove_room(event.room_id)
                return
            row = self.row(event)
            if row is not None and ENCRYPTION in (await self._creation.snapshot(event.room_id)).state_ids:
                row = None
            redacts = event.redacts
            if row is not None or redacts:
                await self._store.apply([row] if row else [], [(event.room_id, redacts)] if redacts else [])
        except Exception:
            logger.exception("Failed to index an event for search")

    async def start(self, upto: int) -> None:
        """At start-up: forget everything when disabled, else index what is missing."""
        if not self.enabled:
            await self._store.clear()
            return
        position = await self._progress.get_progress("search")
        encrypted: dict[str, bool] = {}
        while position < upto:
            batch = await self._progress.events_to_index(
                position, upto, [MESSAGE, "m.room.redaction"], False, CATCH_UP_BATCH)
            if not batch:
                break
            found = await self._events.get_events(eid for eid, _ in batch)
            rows: list[SearchRow] = []
            remove: list[tuple[str, str]] = []
            for eid, _ in batch:
                ev = found.get(eid)
                if ev is None:
                    continue
                if ev.redacts:
                    remove.append((ev.room_id, ev.redacts))
                row = self.row(ev)
                if row is None:
                    continue
                if ev.room_id not in encrypted:
                    state = await self._events.get_current_state_ids(ev.room_id)
                    encrypted[ev.room_id] = ENCRYPTION in state
                if not encrypted[ev.room_id]:
                    rows.append(row)
            position = batch[-1][1]
            await self._store.apply(rows, remove, progress=position)
            if len(batch) < CATCH_UP_BATCH:
                break
        await self._progress.set_progress("search", upto)


class SearchHandler:
    def __init__(self, enabled: bool, store: SearchStore, events: EventStore,
                 members: RoomMemberStore, visibility: VisibilityHandler,
                 creation: EventCreationHandler, relations: RelationsHandler,
                 reads: RoomReadHandler) -> None:
        self.enabled = enabled
        self._store = store
        self._events = events
        self._members = members
        self._visibility = visibility
        self._creation = creation
        self._relations = relations
        self._reads = reads

    async def search(self, user_id: str, device_id: str | None, body: JsonDict,
                     next_batch: str | None) -> JsonDict:
        token = _decode(next_batch) if next_batch is not None else None
        criteria = body["search_categories"].get("room_events")
        if criteria is None:
            return {"search_categories": {}}
        if not self.enabled:
            return {"search_categories": {"room_events": {"results": [], "count": 0}}}
        order_by = criteria.get("order_by", "rank")
        if token is not None and token[0] != order_by:
            raise MatrixError(400, "next_batch does not match order_by", Codes.INVALID_PARAM)
        terms = search_terms(criteria["search_term"])
        flt = EventFilter.parse(criteria.get("filter"))
        limit = min(flt.limit or DEFAULT_LIMIT, MAX_LIMIT)
        rooms = await self._rooms(user_id, criteria.get("filter") or {})
        empty: JsonDict = {"results": [], "count": 0, "highlights": terms}
        if (not terms or not rooms or "content.body" not in criteria.get("keys", ["content.body"])
                or not flt.allows_type(MESSAGE)):
            return {"search_categories": {"room_events": empty}}
        query = SearchQuery(rooms, terms, flt.senders, flt.not_senders)
        if order_by == "recent":
            hits, more = await self._recent(user_id, query, flt, token, limit)
            next_token = encode_token(["recent", more, 0]) if more is not None else None
        else:
            hits, next_token = await self._ranked(user_id, query, flt, token, limit)
        out: JsonDict = {"results": [], "count": await self._store.count(query), "highlights": terms}
        serialized = await self._relations.serialize(user_id, device_id, [e for e, _ in hits])
        context = criteria.get("event_context")
        for (event, score), client in zip(hits, serialized, strict=True):
            result: JsonDict = {"rank": score, "result": client}
            if isinstance(context, dict):
                result["context"] = await self._context(user_id, device_id, event, context)
            out["results"].append(result)
        if next_token is not None:
            out["next_batch"] = next_token
        self._groups(out, hits, criteria.get("groupings"), next_token)
        if criteria.get("include_state"):
            out["state"] = {}
            for room_id in dict.fromkeys(e.room_id for e, _ in hits):
                state = await self._reads.get_state(user_id, room_id)
                out["state"][room_id] = await self._relations.serialize(user_id, device_id, state)
        return {"search_categories": {"room_events": out}}

    async def _rooms(self, user_id: str, raw_filter: JsonDict) -> dict[str, Ranges]:
        """Joined, currently unencrypted rooms, narrowed by the filter's rooms/not_rooms,
        each with the stream positions the user may see (rooms with none are left out)."""
        joined = [m.room_id for m in await self._members.rooms_for_user(user_id)]
        wanted = raw_filter.get("rooms")
        excluded = set(raw_filter.get("not_rooms") or [])
        out: dict[str, Ranges] = {}
        for room_id in joined:
            if (wanted is not None and room_id not in wanted) or room_id in excluded:
                continue
            if ENCRYPTION in (await self._creation.snapshot(room_id)).state_ids:
                continue
            ranges = await self._visibility.visible_ranges(user_id, room_id)
            if ranges:
                out[room_id] = ranges
        return out

    async def _visible(self, user_id: str, rows: Sequence[SearchRow], flt: EventFilter
                       ) -> dict[str, Event]:
        found = await self._events.get_events(r.event_id for r in rows)
        events = [found[r.event_id] for r in rows if r.event_id in found]
        return {e.event_id: e for e in await self._visibility.filter_events(user_id, flt.filter(events))}

    async def _recent(self, user_id: str, query: SearchQuery, flt: EventFilter,
                      token: list[Any] | None, limit: int
                      ) -> tuple[list[tuple[Event, float]], int | None]:
        """Newest first below the token's position; (hits, position to continue below)."""
        before = token[1] if token else None
        hits: list[tuple[Event, float]] = []
        for _ in range(SCAN_PAGES):
            rows = await self._store.search(query, before, limit)
            visible = await self._visible(user_id, rows, flt)
            for r in rows:
                before = r.stream_ordering
                if r.event_id in visible:
                    hits.append((visible[r.event_id], rank(r.body, query.terms)))
                    if len(hits) == limit:
                        return hits, before
            if len(rows) < limit:
                return hits, None
        return hits, before

    async def _ranked(self, user_id: str, query: SearchQuery, flt: EventFilter,
                      token: list[Any] | None, limit: int
                      ) -> tuple[list[tuple[Event, float]], str | None]:
        """The newest RANK_WINDOW matches (below the first page's live edge, kept in the
        token so later pages rank the same set), best first, sliced by offset."""
        edge = token[2] if token else self._creation.current_position() + 1
        offset = token[1] if token else 0
        rows = await self._store.search(query, edge, RANK_WINDOW)
        ranked = sorted(rows, key=lambda r: (-rank(r.body, query.terms), -r.stream_ordering))
        page = ranked[offset:offset + limit]
        visible = await self._visible(user_id, page, flt)
        hits = [(visible[r.event_id], rank(r.body, query.terms)) for r in page if r.event_id in visible]
        more = offset + limit < len(ranked)
        return hits, encode_token(["rank", offset + limit, edge]) if more else None

    async def _context(self, user_id: str, device_id: str | None, event: Event,
                       spec: JsonDict) -> JsonDict:
        before_n = min(max(int(spec.get("before_limit", 5)), 0), MAX_CONTEXT)
        after_n = min(max(int(spec.get("after_limit", 5)), 0), MAX_CONTEXT)
        pos = event.internal.stream_ordering or 0
        before = await self._events.paginate_room_events(event.room_id, pos, "b", before_n)
        after = await self._events.paginate_room_events(event.room_id, pos, "f", after_n)
        before = await self._visibility.filter_events(user_id, before)
        after = await self._visibility.filter_events(user_id, after)
        start = min((e.internal.stream_ordering or pos for e in before), default=pos) - 1
        end = max((e.internal.stream_ordering or pos for e in after), default=pos)
        out: JsonDict = {
            "start": f"t{max(start, 0)}", "end": f"t{end}",
            "events_before": await self._relations.serialize(user_id, device_id, before),
            "events_after": await self._relations.serialize(user_id, device_id, after),
        }
        if spec.get("include_profile"):
            senders = {e.sender for e in [*before, event, *after]}
            members = await self._creation.current_state(
                event.room_id, [("m.room.member", s) for s in senders])
            profiles: JsonDict = {}
            for (_t, sender), member in members.items():
                info = {k: member.content[k] for k in ("displayname", "avatar_url")
                        if isinstance(member.content.get(k), str)}
                profiles[sender] = info
            out["profile_info"] = profiles
        return out

    @staticmethod
    def _groups(out: JsonDict, hits: list[tuple[Event, float]], groupings: Any,
                next_token: str | None) -> None:
        keys = [g.get("key") for g in (groupings or {}).get("group_by", []) if isinstance(g, dict)]
        if not keys:
            return
        groups: JsonDict = {}
        for key in keys:
            by_value: JsonDict = {}
            for event, _ in hits:
                value = event.room_id if key == "room_id" else event.sender
                group = by_value.setdefault(value, {"results": [], "order": len(by_value)})
                group["results"].append(event.event_id)
            if next_token is not None:
                for group in by_value.values():
                    group["next_batch"] = next_token
            groups[key] = by_value
        out["groups"] = groups
