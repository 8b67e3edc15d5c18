"""Federation with event persisters (issue 18): what the main process, which runs
federation, hands to the writer of a room, and what a writer hands back to main.

Synapse's event persisters federate the same way: federation ingest runs where the
federation endpoints are, and each room's events are persisted by the room's writer
(its ``ReplicationFederationSendEventsRestServlet``). Here, over the internal,
secret-authenticated calls of remote_create.py (``/_parley/replication/v1/internal/``):

* ``persist_remote`` (main -> the room's writer): events of other servers that main
  checked (format, signatures, content hash, spam: federation/ingest.py) are persisted
  by the writer with :meth:`EventPersister.persist_remote`, the one place the auth
  rules, the state before each event and soft failure are decided, exactly as in one
  process. The writer parses each PDU again for its room version (a malformed one is
  refused) and answers each event's outcome; a :class:`MissingEventsError` travels back
  so main fetches the missing events and calls again. Every path of federation ingest
  goes through it: ``/send`` transactions, send_join/send_leave/send_knock, a remote
  join's state and auth chain, backfill and gap filling. Large batches are split in
  graph order, so each part cites only events stored before it.
* ``store_out_of_band`` (main -> the room's writer): an invite from another server, a
  knock or a leave held without the room's state takes a position of the events stream:
  the writer of the room draws it.
* ``remote_membership`` (a writer -> main): a local user joins, knocks on or leaves a
  room this server holds no state of (the client's request is routed to the room's
  writer): main runs make_*/send_* with its federation client and keyring, and the
  answer's state and the membership event come back to the writer through
  ``persist_remote``.
* ``remote_invite`` (a writer -> main): a local user invites another server's user in
  a room a persister writes: main sends ``/v2/invite`` and checks the invitee server's
  signature; the writer adds it to the event before it is stored.

Outbound, each writer queues the PDUs of its own local events into the durable
federation queue (federation/sender/wiring.py ``start_writer_queue``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.events.power_levels import domain_of
from homeserver.events.room_versions import get_room_version
from homeserver.events.state_res import lexicographical_topological_sort
from homeserver.handlers.event_persister import Outcome, PersistKind, RoomSnapshot
from homeserver.http.errors import Codes, MatrixError
from homeserver.replication.multi_writer import writer_for
from homeserver.replication.remote_create import ProcessUnreachable, _local_user, _str

if TYPE_CHECKING:
    from homeserver.config.model import Config
    from homeserver.config.workers import ReplicationEndpoint, WorkersConfig
    from homeserver.replication.remote_create import InternalCalls, InternalClient
    from storage.stores.events import StateMap

logger = logging.getLogger(__name__)

PERSIST_REMOTE = "persist_remote"
STORE_OUT_OF_BAND = "store_out_of_band"
REMOTE_MEMBERSHIP = "remote_membership"
REMOTE_INVITE = "remote_invite"
# One persist_remote call carries at most this much (a join's state is split).
CHUNK_EVENTS = 2000
# How long main keeps trying a writer it cannot reach before answering 503.
UNREACHABLE_RETRY_S = 10.0
CHUNK_BYTES = 4 * 1024 * 1024
MAX_STATE = 500_000  # state_before entries (a room's full state)
MAX_SERVERS = 50
_KINDS = {k.value: k for k in (PersistKind.REMOTE, PersistKind.OUTLIER, PersistKind.BACKFILLED)}
# What an invitee's server is shown of the room (federation/membership.py's list).
_STRIPPED = ("m.room.create", "m.room.name", "m.room.avatar", "m.room.topic",
             "m.room.join_rules", "m.room.canonical_alias", "m.room.encryption")


def _bad(what: str) -> MatrixError:
    return MatrixError(400, f"'{what}' is missing or invalid", Codes.BAD_JSON)


def _bad_answer() -> MatrixError:
    return MatrixError(502, "Bad answer from another process", Codes.UNKNOWN)


class RemoteWrites:
    """The calling side (every process with several events writers and federation)."""

    def __init__(self, wc: WorkersConfig, client: InternalClient, server_name: str,
                 clock: Clock | None = None) -> None:
        self._wc = wc
        self._client = client
        self._server_name = server_name
        self._clock = clock

    def endpoint(self, name: str) -> ReplicationEndpoint:
        endpoint = self._wc.endpoint(name)
        if endpoint is None:  # refused at start-up (stream_writers.py)
            raise MatrixError(503, f"No replication endpoint for {name}", Codes.UNKNOWN)
        return endpoint

    def writer(self, room_id: str) -> ReplicationEndpoint:
        return self.endpoint(writer_for(self._wc, room_id))

    def main(self) -> ReplicationEndpoint:
        return self.endpoint(self._wc.main_name)

    async def post(self, endpoint: ReplicationEndpoint, name: str, body: dict[str, Any]
                   ) -> dict[str, Any]:
        """Another internal call (homeserver/replication/remote_partial_state.py)."""
        return await self._client.post(endpoint, name, body)

    # ---- main -> writer

    async def persist_remote(self, room_id: str, events: Sequence[Event], kind: PersistKind,
                             state_before: StateMap | None = None) -> list[Outcome]:
        """:meth:`EventPersister.persist_remote`, run by the room's writer."""
        endpoint = self.writer(room_id)
        state = None if state_before is None else \
            [[t, sk, eid] for (t, sk), eid in state_before.items()]
        outcomes: dict[str, Outcome] = {}
        for chunk in _chunks(events):
            answer = await self._post_retrying(endpoint, {
                "room_id": room_id, "kind": kind.value, "state_before": state,
                "events": [[e.event_id, e.pdu] for e in chunk]})
            got = answer.get("outcomes")
            if not isinstance(got, list) or len(got) != len(chunk):
                raise _bad_answer()
            for item in got:
                if not (isinstance(item, list) and len(item) == 3
                        and isinstance(item[0], str) and isinstance(item[1], str)
                        and (item[2] is None or isinstance(item[2], str))):
                    raise _bad_answer()
                outcomes[item[0]] = Outcome(item[0], item[1], item[2])
        missing = [e.event_id for e in events if e.event_id not in outcomes]
        if missing:
            raise _bad_answer()
        return [outcomes[e.event_id] for e in events]

    async def _post_retrying(self, endpoint: ReplicationEndpoint, body: dict[str, Any]
                             ) -> dict[str, Any]:
        """``persist_remote`` to the writer, tried again while it cannot be reached, for
        up to UNREACHABLE_RETRY_S: a writer restarting (seconds) then costs the other
        server a slower answer, not a 503 and its back-off (Synapse's: up to minutes).
        Safe to repeat: the writer skips events it has already stored."""
        delay, waited = 0.25, 0.0
        while True:
            try:
                return await self._client.post(endpoint, PERSIST_REMOTE, body)
            except ProcessUnreachable:
                if self._clock is None or waited + delay > UNREACHABLE_RETRY_S:
                    raise
            pause: defer.Deferred[None] = defer.Deferred()
            self._clock.call_later(delay, pause.callback, None)
            await pause
            waited += delay
            delay = min(delay * 2, 2.0)

    async def store_out_of_band(self, event: Event, version: Any) -> None:
        await self._client.post(self.writer(event.room_id), STORE_OUT_OF_BAND, {
            "room_id": event.room_id, "event_id": event.event_id, "pdu": event.pdu,
            "room_version": version.identifier})

    # ---- writer -> main

    async def remote_membership(self, kind: str, user_id: str, room_id: str,
                                servers: Sequence[str], content: dict[str, Any]) -> None:
        await self._client.post(self.main(), REMOTE_MEMBERSHIP, {
            "kind": kind, "user_id": user_id, "room_id": room_id,
            "servers": list(servers)[:MAX_SERVERS], "content": content})

    async def invite_validator(self, event: Event, snap: RoomSnapshot) -> None:
        """An event validator on a writer: an invite of another server's user goes to
        main, which sends it to the invitee's server (federation/remote_join.py
        ``invite_validator``); that server's signature is added here."""
        invitee = event.state_key
        if event.type != "m.room.member" or event.membership != "invite" or invitee is None:
            return
        server = domain_of(invitee)
        if not server or server == self._server_name:
            return
        keys = [(t, "") for t in _STRIPPED] + [("m.room.member", event.sender)]
        state = [[t, sk, snap.state_ids[(t, sk)]] for t, sk in keys if (t, sk) in snap.state_ids]
        answer = await self._client.post(self.main(), REMOTE_INVITE, {
            "room_id": event.room_id, "event_id": event.event_id, "pdu": event.pdu,
            "room_version": event.room_version.identifier, "state": state})
        theirs = answer.get("signature")
        if isinstance(theirs, dict):
            event.pdu.setdefault("signatures", {})[server] = dict(theirs)


def _chunks(events: Sequence[Event]) -> list[list[Event]]:
    """``events`` in graph order (auth and prev events first), split by count and size."""
    if len(events) <= 1:
        return [list(events)] if events else []
    by_id = {e.event_id: e for e in events}
    graph = {eid: set(e.prev_event_ids) | set(e.auth_event_ids) for eid, e in by_id.items()}
    order = lexicographical_topological_sort(graph, key=lambda i: (by_id[i].depth, i))
    out: list[list[Event]] = [[]]
    size = 0
    for eid in order:
        event = by_id[eid]
        n = len(json.dumps(event.pdu))
        if out[-1] and (len(out[-1]) >= CHUNK_EVENTS or size + n > CHUNK_BYTES):
            out.append([])
            size = 0
        out[-1].append(event)
        size += n
    return out


# ---- the receiving sides

def persist_remote_handler(persister: Any) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On a writer: persist events of other servers that main checked."""
    from federation.pdu_checks import PduError, parse_pdu

    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        room_id = _str(body, "room_id", "!", limit=255)
        kind = _KINDS.get(body.get("kind"))  # type: ignore[arg-type]
        if kind is None:
            raise _bad("kind")
        items = body.get("events")
        if not isinstance(items, list) or not items or len(items) > CHUNK_EVENTS:
            raise _bad("events")
        state_before = _state_map(body.get("state_before"), optional=True)
        version = await persister.room_version(room_id)
        events: list[Event] = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise _bad("events")
            try:
                event = parse_pdu(item[1], version, room_id)
            except PduError as e:
                raise MatrixError(400, f"Invalid event: {e.reason}", Codes.BAD_JSON) from None
            if event.event_id != item[0]:
                raise MatrixError(400, "An event id does not match its event", Codes.BAD_JSON)
            events.append(event)
        outcomes = await persister.persist_remote(room_id, events, kind, state_before)
        return {"outcomes": [[o.event_id, o.status, o.reason] for o in outcomes]}

    return handle


def _state_map(raw: Any, optional: bool = False) -> dict[tuple[str, str], str] | None:
    if raw is None and optional:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_STATE:
        raise _bad("state")
    out: dict[tuple[str, str], str] = {}
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3
                and all(isinstance(v, str) for v in item)):
            raise _bad("state")
        out[(item[0], item[1])] = item[2]
    return out


def _member_event(body: dict[str, Any]) -> Event:
    version = get_room_version(_str(body, "room_version", limit=64))
    if version is None:
        raise _bad("room_version")
    room_id = _str(body, "room_id", "!", limit=255)
    pdu = body.get("pdu")
    if not isinstance(pdu, dict) or pdu.get("room_id") != room_id \
            or pdu.get("type") != "m.room.member" or not isinstance(pdu.get("state_key"), str):
        raise _bad("pdu")
    event = Event(_str(body, "event_id", "$", limit=255), pdu, version)
    if not isinstance(event.membership, str):
        raise _bad("pdu")
    return event


def out_of_band_handler(store: Callable[[Event, Any], Awaitable[None]]
                        ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On a writer: hold a member event of a room without state (checked by main)."""
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        event = _member_event(body)
        await store(event, event.room_version)
        return {}

    return handle


def remote_membership_handler(membership: Any, server_name: str
                              ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On main: a writer's local user joins, knocks on or leaves a room through a
    resident server (federation/remote_join.py ``RemoteMembership``)."""
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        kind = body.get("kind")
        user_id = _local_user(body, "user_id", server_name)
        room_id = _str(body, "room_id", "!", limit=255)
        servers = body.get("servers") or []
        content = body.get("content")
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers) \
                or not isinstance(content, dict):
            raise _bad("servers")
        servers = servers[:MAX_SERVERS]
        if kind == "join":
            await membership.join(user_id, room_id, servers, content)
        elif kind == "knock":
            await membership.knock(user_id, room_id, servers, content)
        elif kind == "leave":
            await membership.leave(user_id, room_id, content)
        else:
            raise _bad("kind")
        return {}

    return handle


def remote_invite_handler(membership: Any) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On main: send a writer's invite of another server's user to that server."""
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        event = _member_event(body)
        if event.membership != "invite":
            raise _bad("pdu")
        state = _state_map(body.get("state")) or {}
        await membership.invite_validator(event, RoomSnapshot(state, [], None, 0))
        server = domain_of(event.state_key or "")
        return {"signature": event.pdu.get("signatures", {}).get(server)}

    return handle


# ---- wiring

def wire_federation_calls(config: Config, calls: InternalCalls | None, rooms: Any,
                          stores: Any, db: Any, notifier: Any, clock: Any,
                          federation: Any) -> RemoteWrites | None:
    """With event persisters and federation on: the handlers this process serves and
    the hooks that hand work to another process (None otherwise)."""
    from federation.membership import OutOfBandWriter
    from storage.stores.out_of_band import OutOfBandStore

    wc = config.workers
    if calls is None or calls.client is None or calls.resource is None \
            or not config.federation.enabled or not wc.event_writers:
        return None
    remote = RemoteWrites(wc, calls.client, config.server_name, clock)
    resource = calls.resource
    is_writer = wc.instance in wc.event_writers
    if is_writer:
        resource.add(PERSIST_REMOTE, persist_remote_handler(rooms.persister), large=True)
        oob = OutOfBandWriter(clock, stores.rooms, rooms.persister,
                              OutOfBandStore(db, stores.events.codec), notifier)
        resource.add(STORE_OUT_OF_BAND, out_of_band_handler(oob.store))
    membership = getattr(federation, "membership", None)  # RemoteMembership
    if wc.is_main and membership is not None:
        rooms.persister.remote_persist = remote.persist_remote
        membership.servlets.remote_out_of_band = remote.store_out_of_band
        resource.add(REMOTE_MEMBERSHIP, remote_membership_handler(membership,
                                                                  config.server_name))
        resource.add(REMOTE_INVITE, remote_invite_handler(membership))
    elif is_writer:
        handlers = rooms.membership

        async def join(user: str, room: str, servers: list[str], content: Any) -> None:
            await remote.remote_membership("join", user, room, servers, content)

        async def knock(user: str, room: str, servers: list[str], content: Any) -> None:
            await remote.remote_membership("knock", user, room, servers, content)

        async def leave(user: str, room: str, content: Any) -> None:
            await remote.remote_membership("leave", user, room, [], content)

        handlers.remote_join, handlers.remote_knock, handlers.remote_leave = join, knock, leave
        rooms.event_creation.event_validators.append(remote.invite_validator)
    return remote
