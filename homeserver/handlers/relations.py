"""Event relationships: the ``event_relations`` index, GET /relations, GET /threads and
the bundled aggregations (``unsigned["m.relations"]``) every read path adds.

Why an index written after persisting (and caught up at start-up) rather than a scan
of events: aggregations are asked for on every /sync timeline and /messages page, so
they must be a few indexed queries per page, never a read of the room.

Visibility: the parent of /relations must be visible to the requester (else 404, the
spec's answer), and every child, edit, thread reply and reference served or bundled
passes :meth:`VisibilityHandler.filter_events` too. Counts, orderings and page
boundaries are computed in SQL over the stream positions the requester may see
(:meth:`VisibilityHandler.visible_ranges`): a thread's ``latest_event``, ``count`` and
``current_user_participated`` cover visible replies only, /threads orders threads by
their latest visible reply and /relations pages visible children only, so nothing
reveals activity hidden from them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.events.client_format import serialize_event
from homeserver.events.model import Event
from homeserver.handlers.client_events import ClientEventSerializer
from homeserver.handlers.event_creation import EventCreationHandler
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.opaque_tokens import Int, Str, decode_token, encode_token
from homeserver.http.params import parse_room_token
from storage.stores.events import EventStore
from storage.stores.relations import RECURSION_DEPTH, Relation, RelationRow, RelationsStore

logger = logging.getLogger(__name__)
JsonDict = dict[str, Any]

DEFAULT_LIMIT = 5  # Synapse's default page size for /relations and /threads
MAX_LIMIT = 100
# Relation types that are never themselves aggregated onto (spec: an edit or a reaction
# cannot be the parent of an edit, a thread or a reference).
NO_AGGREGATIONS_FOR = ("m.replace", "m.annotation")
CATCH_UP_BATCH = 500
MAX_THREADS_TOKEN = 600


def relation_of(event: Event) -> tuple[str, str, str | None] | None:
    """(rel_type, parent event id, annotation key) of an event's ``m.relates_to``, or None
    when it has no valid one (a reply's ``m.in_reply_to`` alone is not a relation)."""
    rel = event.content.get("m.relates_to")
    if not isinstance(rel, dict):
        return None
    rel_type, parent = rel.get("rel_type"), rel.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(parent, str):
        return None
    if not 0 < len(rel_type) <= 255 or not parent.startswith("$") or len(parent) > 255:
        return None
    if parent == event.event_id:
        return None
    key = rel.get("key") if rel_type == "m.annotation" else None
    return rel_type, parent, key if isinstance(key, str) and len(key) <= 500 else None


def relation_row(event: Event) -> RelationRow | None:
    rel = relation_of(event)
    if rel is None or event.internal.stream_ordering is None:
        return None
    return RelationRow(event.event_id, event.room_id, rel[1], rel[0], rel[2], event.sender,
                       event.type, event.is_state(), event.origin_server_ts,
                       event.internal.stream_ordering)


class RelationsIndexer:
    """Keeps ``event_relations`` in step with persisted events (a subscriber of the event
    fan-out), and at start-up indexes what a crash between persisting and delivery missed."""

    def __init__(self, store: RelationsStore, events: EventStore) -> None:
        self._store = store
        self._events = events

    async def on_event(self, event: Event) -> None:
        try:
            row = relation_row(event)
            redacts = event.redacts
            remove = [(event.room_id, redacts)] if redacts else []
            if row is not None or remove:
                await self._store.apply([row] if row else [], remove)
        except Exception:
            # The event is persisted; a missed index row must not turn the send into a 500
            # (the next start-up's catch-up writes it).
            logger.exception("Failed to index the relation of an event")

    async def catch_up(self, upto: int) -> int:
        """Index events after the recorded position up to ``upto``; returns how many."""
        position = await self._store.get_progress("relations")
        done = 0
        while position < upto:
            batch = await self._store.events_to_index(position, upto, ["m.room.redaction"], True,
                                                      CATCH_UP_BATCH)
            if not batch:
                break
            found = await self._events.get_events(eid for eid, _ in batch)
            rows: list[RelationRow] = []
            remove: list[tuple[str, str]] = []
            for eid, _ in batch:
                ev = found.get(eid)
                if ev is None:
                    continue
                row = relation_row(ev)
                if row is not None:
                    rows.append(row)
                if ev.redacts:
                    remove.append((ev.room_id, ev.redacts))
            position = batch[-1][1]
            await self._store.apply(rows, remove, progress=position)
            done += len(rows)
            if len(batch) < CATCH_UP_BATCH:
                break
        await self._store.set_progress("relations", upto)
        return done


@dataclass(frozen=True)
class ThreadsToken:
    position: int
    root_id: str

    def encode(self) -> str:
        return encode_token([self.position, self.root_id])

    @classmethod
    def decode(cls, token: str) -> ThreadsToken:
        data = decode_token(token, MAX_THREADS_TOKEN, (Int(), Str(prefix="$")))
        return cls(data[0], data[1])


class RelationsHandler:
    def __init__(self, clock: Clock, store: RelationsStore, events: EventStore,
                 visibility: VisibilityHandler, creation: EventCreationHandler) -> None:
        self._clock = clock
        self._store = store
        self._events = events
        self._visibility = visibility
        self._creation = creation
        # The batch serializer (ClientEventSerializer), wired once it exists: it takes
        # this handler's ``bundle`` for aggregations, so it is built after this one.
        self.serializer: ClientEventSerializer | None = None

    # ------------------------------------------------------------------ serving events

    async def serialize(self, user_id: str, device_id: str | None, events: Sequence[Event],
                        include_room_id: bool = True) -> list[JsonDict]:
        """Client events through the one batch serializer (redactions, erased senders,
        self-destructed messages, aggregations), so /relations, threads and /search
        serve events exactly as /messages and /sync do."""
        if self.serializer is None:
            raise RuntimeError("RelationsHandler.serializer is not wired")
        return await self.serializer.serialize(events, user_id, device_id, include_room_id)

    # ------------------------------------------------------------------ sending

    async def validate_event_relation(self, event: Event, _snap: object) -> None:
        """The same checks as a validator of every local event (the event builder's)."""
        if "m.relates_to" in event.content:
            await self.validate_relation(event.room_id, event.sender, event.type, event.content)

    async def validate_relation(self, room_id: str, sender: str, event_type: str,
                                content: JsonDict) -> None:
        """Synapse's checks on a client-sent relation (``_validate_event_relation``), run
        before the event is created: the parent is in this room (or already a relation
        target; a parent in another room is answered as unknown, unlike Synapse),
        an annotation has a key of at most 500 characters and is not a duplicate, and a
        thread does not start from an event that is itself a relation."""
        rel = content.get("m.relates_to")
        if not isinstance(rel, dict) or not isinstance(rel.get("event_id"), str) \
                or not isinstance(rel.get("rel_type"), str):
            return
        # Only for members: the auth rules answer anyone else, and must answer first, or
        # this would tell non-members which event ids exist.
        snap = await self._creation.snapshot(room_id)
        member_id = snap.state_ids.get(("m.room.member", sender))
        member = await self._events.get_event(member_id) if member_id else None
        if member is None or member.membership != "join":
            return
        rel_type, parent_id = rel["rel_type"], rel["event_id"]
        parent = await self._events.get_event(parent_id)
        if parent is not None and parent.room_id != room_id:
            parent = None  # as unknown: no hint that it exists in another room
        if parent is None and not await self._store.child_kinds(room_id, [parent_id]):
            raise MatrixError(400, "Can't send relation to unknown event", Codes.INVALID_PARAM)
        if rel_type == "m.annotation":
            key = rel.get("key")
            if not isinstance(key, str):
                raise MatrixError(400, "Missing aggregation key", Codes.INVALID_PARAM)
            if len(key) > 500:
                raise MatrixError(400, "Aggregation key is too long", Codes.INVALID_PARAM)
            if await self._store.has_annotation(room_id, parent_id, sender, event_type, key):
                raise MatrixError(400, "Can't send same reaction twice", "M_DUPLICATE_ANNOTATION")
        elif rel_type == "m.thread" and parent is not None and relation_of(parent) is not None:
            raise MatrixError(400, "Cannot start threads from an event with a relation",
                              Codes.INVALID_PARAM)

    # ------------------------------------------------------------------ /relations

    async def get_relations(
        self, user_id: str, device_id: str | None, room_id: str, event_id: str,
        rel_type: str | None, event_type: str | None, from_token: str | None,
        to_token: str | None, limit: int | None, direction: str, recurse: bool | None,
    ) -> JsonDict:
        if limit is not None and limit < 0:
            raise MatrixError(400, "limit must not be negative", Codes.INVALID_PARAM)
        limit = min(DEFAULT_LIMIT if limit is None else limit, MAX_LIMIT)
        from_pos = parse_room_token(from_token, "from") if from_token is not None else None
        to_pos = parse_room_token(to_token, "to") if to_token is not None else None
        parent = await self._events.get_event(event_id)
        if (parent is None or parent.room_id != room_id
                or not await self._visibility.filter_events(user_id, [parent])):
            raise MatrixError(404, "Event not found.", Codes.NOT_FOUND)
        redacted = bool(await self._events.get_redaction_ids([event_id]))
        # Only children the user may see are paged, so neither next_batch nor a short page
        # tells of hidden ones.
        ranges = await self._visibility.visible_ranges(user_id, room_id)
        rows = await self._store.children(room_id, event_id, rel_type, event_type, direction,
                                          from_pos, to_pos, limit + 1, bool(recurse), ranges)
        more = len(rows) > limit
        rows = rows[:limit]
        # Edits of a redacted event would show the content the redaction removed.
        shown = [r for r in rows if not (redacted and r.rel_type == "m.replace")]
        found = await self._events.get_events(r.event_id for r in shown)
        children = [found[r.event_id] for r in shown if r.event_id in found]
        children = await self._visibility.filter_events(user_id, children)
        out: JsonDict = {"chunk": await self.serialize(user_id, device_id, children)}
        if more and rows:
            last = rows[-1].stream_ordering
            out["next_batch"] = f"t{last - 1}" if direction == "b" else f"t{last}"
        if from_token is not None:
            out["prev_batch"] = from_token
        if recurse is not None:
            out["recursion_depth"] = RECURSION_DEPTH if recurse else 1
        return out

    # ------------------------------------------------------------------ /threads

    async def get_threads(self, user_id: str, device_id: str | None, room_id: str,
                          include: str, from_token: str | None, limit: int | None) -> JsonDict:
        if limit is not None and limit <= 0:
            raise MatrixError(400, "limit must be greater than zero", Codes.INVALID_PARAM)
        limit = min(DEFAULT_LIMIT if limit is None else limit, MAX_LIMIT)
        before = ThreadsToken.decode(from_token) if from_token is not None else None
        try:
            await self._creation.room_version(room_id)
            allowed, _ = await self._visibility.can_see_room_state(user_id, room_id)
        except MatrixError:  # unknown room: the same answer as a room they cannot see
            allowed = False
        if not allowed:
            raise MatrixError(403, "You are not allowed to view this room.", Codes.FORBIDDEN)
        # Threads are listed and ordered by their latest reply the user may see.
        ranges = await self._visibility.visible_ranges(user_id, room_id)
        chosen: list[Event] = []
        cursor = (before.position, before.root_id) if before else None
        exhausted = False
        # Participated threads may be sparse: look at a few pages before handing back a token.
        for _page in range(10):
            roots = await self._store.thread_roots(room_id, cursor, limit, ranges)
            if len(roots) < limit:
                exhausted = True
            if not roots:
                break
            cursor = (roots[-1][1], roots[-1][0])
            found = await self._events.get_events(r for r, _ in roots)
            events = [found[r] for r, _ in roots if r in found and found[r].room_id == room_id]
            if include == "participated":
                mine = await self._store.threads_participated(
                    room_id, [e.event_id for e in events], user_id, ranges)
                events = [e for e in events if e.sender == user_id or e.event_id in mine]
            chosen += await self._visibility.filter_events(user_id, events)
            if len(chosen) >= limit or exhausted:
                break
        out: JsonDict = {"chunk": await self.serialize(user_id, device_id, chosen)}
        if not exhausted and cursor is not None:
            out["next_batch"] = ThreadsToken(cursor[0], cursor[1]).encode()
        return out

    # ------------------------------------------------------------------ aggregations

    async def bundle(self, user_id: str, device_id: str | None, events: Sequence[Event],
                     include_room_id: bool = True) -> dict[str, JsonDict]:
        """event id -> its ``m.relations`` object, for the events that have any."""
        parents = [e for e in events if not e.is_state()
                   and (relation_of(e) or ("", "", None))[0] not in NO_AGGREGATIONS_FOR]
        if not parents:
            return {}
        by_room: dict[str, list[Event]] = {}
        for e in parents:
            by_room.setdefault(e.room_id, []).append(e)
        out: dict[str, JsonDict] = {}
        for room_id, room_events in by_room.items():
            await self._bundle_room(user_id, device_id, room_id, room_events, include_room_id,
                                    out)
        return out

    async def _bundle_room(self, user_id: str, device_id: str | None, room_id: str,
                           parents: list[Event], include_room_id: bool,
                           out: dict[str, JsonDict]) -> None:
        kinds = await self._store.child_kinds(room_id, (e.event_id for e in parents))
        if not kinds:
            return
        now = self._clock.time_msec()
        # Threads: only events that are not themselves part of a relation start one.
        roots = [e for e in parents if "m.thread" in kinds.get(e.event_id, ())
                 and relation_of(e) is None]
        threads = await self._threads(user_id, room_id, roots)
        edited = [e for e in parents if "m.replace" in kinds.get(e.event_id, ())]
        redacted = set(await self._events.get_redaction_ids(e.event_id for e in edited)) if edited else set()
        edits = await self._edits(user_id, room_id, [e for e in edited if e.event_id not in redacted]
                                  + [t[0] for t in threads.values()])
        references = await self._references(
            user_id, room_id, [e.event_id for e in parents if "m.reference" in kinds.get(e.event_id, ())])

        def client(ev: Event, relations: JsonDict | None = None) -> JsonDict:
            return serialize_event(ev, now, for_user=user_id, for_device=device_id,
                                   include_room_id=include_room_id, relations=relations)

        for e in parents:
            rel: JsonDict = {}
            edit = edits.get(e.event_id)
            if edit is not None:
                rel["m.replace"] = client(edit)
            thread = threads.get(e.event_id)
            if thread is not None:
                latest, count, participated = thread
                latest_edit = edits.get(latest.event_id)
                rel["m.thread"] = {
                    "latest_event": client(latest, {"m.replace": client(latest_edit)}
                                           if latest_edit is not None else None),
                    "count": count,
                    "current_user_participated": participated or e.sender == user_id,
                }
            refs = references.get(e.event_id)
            if refs:
                rel["m.reference"] = {"chunk": [{"event_id": r} for r in refs]}
            if rel:
                out[e.event_id] = rel

    async def _edits(self, user_id: str, room_id: str, originals: list[Event]) -> dict[str, Event]:
        """original id -> its latest visible valid replacement (same sender and type, not
        state; latest by origin_server_ts then event id, as the spec orders edits)."""
        if not originals:
            return {}
        by_id = {e.event_id: e for e in originals}
        candidates: dict[str, list[Relation]] = {}
        for r in await self._store.relations_of(room_id, by_id, "m.replace"):
            original = by_id[r.relates_to_id]
            if r.is_state or r.sender != original.sender or r.type != original.type:
                continue
            candidates.setdefault(r.relates_to_id, []).append(r)
        if not candidates:
            return {}
        found = await self._events.get_events(r.event_id for rs in candidates.values() for r in rs)
        visible = {e.event_id for e in await self._visibility.filter_events(
            user_id, list(found.values()))}
        out: dict[str, Event] = {}
        for original_id, rs in candidates.items():
            for r in sorted(rs, key=lambda r: (r.origin_server_ts, r.event_id), reverse=True):
                if r.event_id in visible:
                    out[original_id] = found[r.event_id]
                    break
        return out

    async def _threads(self, user_id: str, room_id: str, roots: list[Event]
                       ) -> dict[str, tuple[Event, int, bool]]:
        """root id -> (latest visible reply, visible replies, whether the user replied
        where they can see it). Counted in SQL over the positions the user may see, so a
        summary says nothing about replies hidden from them."""
        if not roots:
            return {}
        ranges = await self._visibility.visible_ranges(user_id, room_id)
        summaries = await self._store.thread_summaries(room_id, (e.event_id for e in roots), ranges)
        if not summaries:
            return {}
        at = await self._store.thread_events_at(room_id, (s.latest_position for s in summaries.values()))
        latest_ids = {root: at[s.latest_position].event_id for root, s in summaries.items()
                      if s.latest_position in at}
        found = await self._events.get_events(latest_ids.values())
        visible = {e.event_id for e in await self._visibility.filter_events(
            user_id, list(found.values()))}
        participated = await self._store.threads_participated(room_id, summaries, user_id, ranges)
        out: dict[str, tuple[Event, int, bool]] = {}
        for root, summary in summaries.items():
            latest_id = latest_ids.get(root)
            if latest_id in visible:  # always, unless ranges and filter ever disagree
                out[root] = (found[latest_id], summary.count, root in participated)
        return out

    async def _references(self, user_id: str, room_id: str, parent_ids: list[str]
                          ) -> dict[str, list[str]]:
        rows = await self._store.relations_of(room_id, parent_ids, "m.reference")
        if not rows:
            return {}
        found = await self._events.get_events(r.event_id for r in rows)
        visible = {e.event_id for e in await self._visibility.filter_events(
            user_id, list(found.values()))}
        out: dict[str, list[str]] = {}
        for r in rows:
            if r.event_id in visible:
                out.setdefault(r.relates_to_id, []).append(r.event_id)
        return out
