"""Fetching room history this server lacks from other servers.

Gaps under a received PDU (:meth:`HistoryFetcher.persist_after_gap`, called by the
ingest, federation/ingest.py, when a PDU of a ``/send`` transaction cites events not
held here), as Synapse's ``_get_missing_events_for_pdu``:

1. unknown auth events: the event's auth chain from the origin (``/event_auth``),
   checked and stored as outliers;
2. unknown prev events: ``POST /get_missing_events`` to the origin (our forward
   extremities and the prev events we hold as ``earliest_events``, the PDU as
   ``latest_events``, limit 10, ``min_depth`` the depth of our oldest event), the
   answer checked and persisted oldest first as ``REMOTE``;
3. still a gap (an event whose prev events nobody sent): the state before it from the
   origin's ``/state_ids``, the state and auth events not held fetched (``/event``,
   or ``/state`` when many are missing), checked and stored as outliers, and the event
   persisted with that state before it. That state is the origin's word: it is never
   the room's current state by itself, which stays the resolution of every forward
   extremity's state (and the event is still checked against the current state).

Client ``/timestamp_to_event`` with no answer here (:meth:`HistoryFetcher.
timestamp_to_event`, the pagination handler's other hook): servers in the room are
asked, and the event one names is fetched and placed as history the same way.

Backfill for clients (:meth:`HistoryFetcher.backfill`, the pagination handler's hook):
the prev events of the oldest events held (by stream order) that are not held (or held
only as outliers, as the state a join brought: promoted into the timeline then) are
asked of a server in the room with ``/backfill``; the answer is checked and persisted
as ``BACKFILLED`` (negative stream positions), the oldest event of it with the state
before it from ``/state_ids``. Every request is bounded (ids, events, sizes, and the
federation client's time and size limits) and a failing server is no error to the
client: the page just ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote

from federation.client import FederationError
from federation.pdu_checks import PduError, parse_pdu
from homeserver.events.model import Event
from homeserver.events.power_levels import domain_of
from homeserver.handlers.event_persister import MissingEventsError, Outcome, PersistKind
from homeserver.http.errors import MatrixError
from storage.stores.events import EventStore, StateMap

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
PREFIX = "/_matrix/federation/v1"
MISSING_EVENTS_LIMIT = 10  # per gap, as Synapse
MAX_EARLIEST = 50  # our extremities named in one request
MAX_STATE_IDS = 50_000  # ids accepted from one /state_ids answer
FETCH_ONE_BY_ONE = 20  # more missing than this: one /state request instead of /event each
MAX_FETCHED = 5_000  # events fetched for one state
BACKFILL_FROM = 5  # oldest held events whose unknown prev events are asked for
MAX_BACKFILL = 100
BACKFILL_SERVERS = 3  # servers tried per backfill
LOWEST = -(2**62)


def _q(value: str) -> str:
    return quote(value, safe="")


def _ids(value: Any, limit: int) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:limit] if isinstance(v, str) and v.startswith("$")
            and len(v.encode("utf-8")) <= 255]


def _pdus(answer: Any, key: str, limit: int) -> list[JsonDict]:
    found = answer.get(key) if isinstance(answer, dict) else None
    return [p for p in found[:limit] if isinstance(p, dict)] if isinstance(found, list) else []


class HistoryFetcher:
    def __init__(self, server_name: str, client: Any, ingest: Any, events: EventStore,
                 is_blocked: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._server_name = server_name
        self._is_blocked = is_blocked  # blocked servers are never asked
        self._client = client  # federation/client.py FederationClient
        self._ingest = ingest  # federation/ingest.py FederationIngest
        self._persister = ingest.persister
        self._events = events

    # -- gaps under a received PDU --------------------------------------------------------

    async def persist_after_gap(self, origin: str, event: Event,
                                missing: MissingEventsError) -> Outcome:
        """Fill the gap ``missing`` reported under ``event`` from ``origin``, then persist
        the event (REMOTE). :class:`MissingEventsError` when the gap stays."""
        room_id = event.room_id
        if missing.what == "auth":
            await self._fetch_auth_chain(origin, room_id, event.event_id)
            try:
                return await self._persist_one(event)
            except MissingEventsError as again:
                if again.what == "auth":
                    raise
        await self.get_missing_events(origin, event)
        try:
            return await self._persist_one(event)
        except MissingEventsError as again:
            if again.what == "auth":
                raise
        state = await self.state_before(origin, room_id, event.event_id)
        if state is None:
            raise missing
        return await self._persist_one(event, state)

    async def _persist_one(self, event: Event, state: StateMap | None = None,
                           kind: PersistKind = PersistKind.REMOTE) -> Outcome:
        return (await self._persister.persist_remote(event.room_id, [event], kind, state))[0]

    async def _oldest_depth(self, room_id: str) -> int:
        oldest = await self._events.paginate_room_events(room_id, LOWEST, "f", 1)
        return oldest[0].depth if oldest else 0

    async def get_missing_events(self, origin: str, event: Event) -> int:
        """Ask ``origin`` for the events between ours and ``event``; persist them
        oldest first. Returns how many were stored."""
        room_id = event.room_id
        snap = await self._persister.snapshot(room_id)
        held = await self._events.get_state_groups(event.prev_event_ids)
        earliest = list(dict.fromkeys([*held, *snap.extremities]))[:MAX_EARLIEST]
        body = {"earliest_events": earliest, "latest_events": [event.event_id],
                "limit": MISSING_EVENTS_LIMIT, "min_depth": await self._oldest_depth(room_id)}
        try:
            answer = await self._client.post_json(
                origin, f"{PREFIX}/get_missing_events/{_q(room_id)}", body)
        except FederationError as e:
            logger.info("get_missing_events from %s failed: %s", origin, e)
            return 0
        found = await self._checked(origin, room_id, _pdus(answer, "events", 2 * MISSING_EVENTS_LIMIT))
        found = [e for e in found if e.event_id != event.event_id]
        found.sort(key=lambda e: (e.depth, e.event_id))
        stored = 0
        for pulled in found:
            try:
                await self._persist_pulled(origin, pulled)
                stored += 1
            except MissingEventsError as e:
                logger.info("Could not place %s from %s: %s", pulled.event_id, origin, e)
        return stored

    async def _persist_pulled(self, origin: str, event: Event) -> Outcome:
        try:
            return await self._persist_one(event)
        except MissingEventsError as missing:
            if missing.what == "auth":
                await self._fetch_auth_chain(origin, event.room_id, event.event_id)
                return await self._persist_one(event)
            state = await self.state_before(origin, event.room_id, event.event_id)
            if state is None:
                raise
            return await self._persist_one(event, state)

    async def _checked(self, origin: str, room_id: str,
                       pdus: Iterable[JsonDict]) -> list[Event]:
        """The PDUs that pass the checks before authorisation (format, signatures,
        hashes, ACLs, blocked servers); the others are dropped."""
        try:
            version = await self._persister.room_version(room_id)
        except MatrixError:
            return []
        parsed: list[Event | PduError] = []
        for pdu in pdus:
            try:
                parsed.append(parse_pdu(pdu, version, room_id))
            except PduError as e:
                parsed.append(e)
        # As a batch: their keys fetched together, the room's ACL read once.
        out, dropped = await self._ingest.check_events(origin, room_id, parsed,
                                                       PersistKind.REMOTE)
        for reason in dropped.values():
            logger.info("Dropped a fetched PDU from %s: %s", origin, reason)
        return out

    async def _store_outliers(self, origin: str, room_id: str, events: Sequence[Event]) -> bool:
        if not events:
            return True
        try:
            await self._persister.persist_remote(room_id, events, PersistKind.OUTLIER)
        except MissingEventsError as e:
            logger.info("Fetched events from %s miss their auth events: %s", origin, e)
            return False
        return True

    async def _fetch_auth_chain(self, origin: str, room_id: str, event_id: str) -> None:
        try:
            answer = await self._client.get_json(
                origin, f"{PREFIX}/event_auth/{_q(room_id)}/{_q(event_id)}")
        except FederationError as e:
            logger.info("event_auth from %s failed: %s", origin, e)
            return
        chain = await self._checked(origin, room_id, _pdus(answer, "auth_chain", MAX_FETCHED))
        held = await self._events.get_events(e.event_id for e in chain)
        await self._store_outliers(origin, room_id, [e for e in chain if e.event_id not in held])

    async def state_before(self, origin: str, room_id: str, event_id: str) -> StateMap | None:
        """The state before ``event_id`` as ``origin`` tells it, with every state and
        auth chain event stored here (as outliers); None when it cannot be had."""
        try:
            answer = await self._client.get_json(
                origin, f"{PREFIX}/state_ids/{_q(room_id)}", args={"event_id": event_id})
        except FederationError as e:
            logger.info("state_ids from %s failed: %s", origin, e)
            return None
        pdu_ids = _ids(answer.get("pdu_ids") if isinstance(answer, dict) else None,
                       MAX_STATE_IDS)
        chain_ids = _ids(answer.get("auth_chain_ids") if isinstance(answer, dict) else None,
                         MAX_STATE_IDS)
        wanted = list(dict.fromkeys([*pdu_ids, *chain_ids]))
        held = await self._events.get_events(wanted)
        missing = [w for w in wanted if w not in held]
        if len(missing) > MAX_FETCHED:
            logger.info("State at %s from %s: too many events to fetch", event_id, origin)
            return None
        fetched = await self._fetch_events(origin, room_id, event_id, missing)
        if not await self._store_outliers(origin, room_id, fetched):
            return None
        state_events = await self._events.get_events(pdu_ids)
        if len(state_events) < len(set(pdu_ids)) or any(
                e.room_id != room_id for e in state_events.values()):
            logger.info("State at %s from %s: events missing or of another room",
                        event_id, origin)
            return None
        return {e.state_pair: e.event_id for e in state_events.values()
                if e.is_state() and not e.internal.rejected_reason}

    async def _fetch_events(self, origin: str, room_id: str, at: str,
                            event_ids: Sequence[str]) -> list[Event]:
        """The events ``event_ids`` from ``origin`` (each checked; ids must match)."""
        wanted = set(event_ids)
        pdus: list[JsonDict] = []
        try:
            if len(event_ids) > FETCH_ONE_BY_ONE:
                answer = await self._client.get_json(
                    origin, f"{PREFIX}/state/{_q(room_id)}", args={"event_id": at})
                pdus = _pdus(answer, "pdus", MAX_STATE_IDS) \
                    + _pdus(answer, "auth_chain", MAX_STATE_IDS)
            else:
                for eid in event_ids:
                    answer = await self._client.get_json(origin, f"{PREFIX}/event/{_q(eid)}")
                    pdus.extend(_pdus(answer, "pdus", 1))
        except FederationError as e:
            logger.info("Fetching events from %s failed: %s", origin, e)
            return []
        out: dict[str, Event] = {}
        for event in await self._checked(origin, room_id, pdus):
            if event.event_id in wanted:
                out[event.event_id] = event
        return list(out.values())

    # -- backfill for clients -------------------------------------------------------------

    async def backfill(self, room_id: str, limit: int) -> int:
        """Fetch up to ``limit`` (at least 10, at most 100) events older than the oldest
        held, from a server in the room; returns how many were stored."""
        oldest = await self._events.paginate_room_events(room_id, LOWEST, "f", BACKFILL_FROM)
        prevs = list(dict.fromkeys(p for e in oldest for p in e.prev_event_ids))
        gaps = (await self._not_in_timeline(prevs))[:20]
        if not gaps:
            return 0  # the room's start is held (or nothing is)
        limit = max(10, min(limit, MAX_BACKFILL))
        for server in (await self._servers(room_id))[:BACKFILL_SERVERS]:
            try:
                answer = await self._client.get_json(
                    server, f"{PREFIX}/backfill/{_q(room_id)}",
                    args={"v": gaps, "limit": str(limit)})
            except FederationError as e:
                logger.info("backfill from %s failed: %s", server, e)
                continue
            events = await self._checked(server, room_id, _pdus(answer, "pdus", limit))
            if events:
                return await self._persist_backfilled(server, room_id, events)
        return 0

    async def _not_in_timeline(self, event_ids: list[str]) -> list[str]:
        """``event_ids`` not held as timeline events: unknown, or held only as outliers
        (no state, not rejected; e.g. a leave that came in a join's state, the newest
        event before the join). Those are gaps too: backfill fetches and promotes them."""
        held = await self._events.get_events(event_ids)
        outliers = [eid for eid, e in held.items()
                    if e.internal.outlier and not e.internal.rejected_reason]
        with_state = await self._events.get_state_groups(outliers) if outliers else {}
        return [eid for eid in event_ids if eid not in held
                or (eid in outliers and eid not in with_state)]

    async def timestamp_to_event(self, room_id: str, ts: int, direction: str) -> str | None:
        """Ask servers in the room for the event closest to ``ts``; the one named is
        fetched and placed as history (with the state before it from ``/state_ids``)
        when not held. Its id, or None."""
        for server in (await self._servers(room_id))[:BACKFILL_SERVERS]:
            try:
                answer = await self._client.get_json(
                    server, f"{PREFIX}/timestamp_to_event/{_q(room_id)}",
                    args={"ts": str(ts), "dir": direction})
            except FederationError as e:
                logger.info("timestamp_to_event from %s failed: %s", server, e)
                continue
            found = _ids([answer.get("event_id") if isinstance(answer, dict) else None], 1)
            if not found:
                continue
            event_id = found[0]
            held = await self._events.get_event(event_id)
            if held is not None:
                if held.room_id == room_id and not held.internal.outlier:
                    return event_id
                continue
            fetched = await self._fetch_events(server, room_id, event_id, [event_id])
            if not fetched:
                continue
            state = await self.state_before(server, room_id, event_id)
            if state is None:
                continue
            try:
                outcome = await self._persist_one(fetched[0], state, PersistKind.BACKFILLED)
            except MissingEventsError as e:
                logger.info("Could not place %s from %s: %s", event_id, server, e)
                continue
            if outcome.status == "backfilled":
                return event_id
        return None

    async def _servers(self, room_id: str) -> list[str]:
        """Servers with users joined to the room (ours left out), most users first."""
        snap = await self._persister.snapshot(room_id)
        ids = [eid for (etype, _sk), eid in snap.state_ids.items() if etype == "m.room.member"]
        counts: dict[str, int] = {}
        for event in (await self._events.get_events(ids)).values():
            server = domain_of(event.state_key or "")
            if event.membership == "join" and server and server != self._server_name:
                counts[server] = counts.get(server, 0) + 1
        servers = sorted(counts, key=lambda s: (-counts[s], s))
        if self._is_blocked is not None:
            servers = [s for s in servers if not await self._is_blocked(s)]
        return servers

    async def _persist_backfilled(self, server: str, room_id: str,
                                  events: list[Event]) -> int:
        # Events held already in the graph stay as they are; what rests on them needs
        # the state before it. Those held only as outliers (e.g. the room's state since
        # the join) are promoted into the graph by the persister.
        held = await self._events.get_events(e.event_id for e in events)
        events = [e for e in events if e.event_id not in held
                  or (held[e.event_id].internal.outlier
                      and not held[e.event_id].internal.rejected_reason)]
        batch = {e.event_id: e for e in events}
        outside = {p for e in events for p in e.prev_event_ids if p not in batch}
        with_state = await self._events.get_state_groups(outside)
        gap_events = sorted(
            (e for e in events if any(p not in batch and p not in with_state
                                      for p in e.prev_event_ids)),
            key=lambda e: (e.depth, e.event_id))
        state: StateMap | None = None
        if gap_events:
            # One state fetch per batch: the oldest event's. Events resting on other
            # gaps wait for a later backfill (their state would be a guess).
            first = gap_events[0]
            state = await self.state_before(server, room_id, first.event_id)
            dropped = {e.event_id for e in gap_events[1:]}
            if state is None:
                dropped.add(first.event_id)
            keep = _without_descendants(events, dropped)
        else:
            keep = events
        if not keep:
            return 0
        try:
            outcomes = await self._persister.persist_remote(room_id, keep,
                                                            PersistKind.BACKFILLED, state)
        except MissingEventsError as e:
            logger.info("Backfilled events from %s miss events: %s", server, e)
            return 0
        return sum(1 for o in outcomes if o.status == "backfilled")


def _without_descendants(events: Sequence[Event], dropped: set[str]) -> list[Event]:
    """``events`` less ``dropped`` and every event of the batch resting on one of them."""
    by_id = {e.event_id: e for e in events}
    gone = set(dropped)
    changed = True
    while changed:
        changed = False
        for event in events:
            if event.event_id not in gone and any(
                    p in gone for p in event.prev_event_ids if p in by_id):
                gone.add(event.event_id)
                changed = True
    return [e for e in events if e.event_id not in gone]
