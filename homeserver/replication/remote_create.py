"""Events made inside a process for a room another process writes (issue 18, event
persisters).

Client requests that create events are routed to the room's writer before anything runs
(room_routing.py). Events a process makes *itself* cannot be: a server notice, the leaves
of a deactivated account, the member events of a profile change, a room shutdown's kicks,
an upgrade's follow-ups, a room created for a notice or a shutdown. The one builder of
local events (homeserver/handlers/event_creation.py ``send``) and of rooms
(room_creation.py ``create_room``) therefore hand the draft to the writer over internal
HTTP when this process does not write the room, and get back the event (or room id) as if
it had been made here. Validation, consent, shadow-bans and the auth rules run once, on
the writer, in the room's queue, exactly as for a local draft.

A caller's ``check`` (a function of the room's snapshot, run in the room's queue) cannot
travel: it runs here on the state read fresh from the database, and the writer refuses
the draft (409, retried a few times here) unless the room's state is still the one the
check saw (a digest of the state map). Message events sent meanwhile do not count.

Side effects the main process alone records (presence bumps on send, device-list
membership changes on joins and leaves, typing stopped by a leave) are forwarded by an
events writer to main after each persist (:class:`SideEffectForwarder`): batched per
reactor turn, retried a few times; main loads the events from the shared database and
runs its own handlers on them. A writer killed between the persist and the forward loses
those bumps (presence is soft state; a lost device-list change is repaired by the next).

Receiving side: :class:`InternalResource` under ``INTERNAL_PREFIX`` (a ``replication``
listener only, as forwarding.py), with the deployment's shared secret, compared in
constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from homeserver.handlers.event_persister import MissingEventsError
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.server import MatrixResource, parse_json_object
from homeserver.replication.forwarding import SECRET_HEADER
from homeserver.replication.multi_writer import writer_for

if TYPE_CHECKING:
    from homeserver.config.model import Config
    from homeserver.config.workers import ReplicationEndpoint, WorkersConfig
    from homeserver.events.model import Event, StateKey

logger = logging.getLogger(__name__)

INTERNAL_PREFIX = "/_parley/replication/v1/internal/"
CREATE_EVENT = "create_event"
CREATE_ROOM = "create_room"
PERSISTED = "persisted"
TIMEOUT_S = 120.0  # a room creation with many invites: slow but bounded
MAX_BODY = 1024 * 1024  # an event is at most 64 KiB; a room's initial state more
MAX_SIDE_EFFECTS = 500  # events per forwarded batch
SIDE_EFFECT_ATTEMPTS = 3
STATE_CHANGED = "state_changed"  # the answer's "reason" when an expectation failed
MISSING_EVENTS = "missing_events"  # the answer's "reason": events the writer does not hold
CHECK_ATTEMPTS = 3
# A call added with ``large`` (a remote room's state handed to its writer) may carry up
# to this, within the HTTP site's own limit (http.max_request_body_size), checked first.
MAX_LARGE_BODY = 64 * 1024 * 1024


def state_digest(state_ids: Mapping[StateKey, str]) -> str:
    """A digest of a room's state map (equal maps, equal digests)."""
    h = hashlib.sha256()
    for (event_type, state_key), event_id in sorted(state_ids.items()):
        h.update(json.dumps([event_type, state_key, event_id]).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


class StateChanged(MatrixError):
    """The room's state moved between the check here and the write there."""

    def __init__(self) -> None:
        super().__init__(409, "The room's state changed meanwhile; try again", Codes.UNKNOWN)


class ProcessUnreachable(MatrixError):
    """The other process could not be reached (refused, reset, timed out): a 502."""

    def __init__(self) -> None:
        super().__init__(502, "The process writing this room could not be reached; "
                         "try again", Codes.UNKNOWN)


class InternalClient:
    """POSTs JSON to another process's ``INTERNAL_PREFIX`` with the shared secret. Never
    retried automatically: a draft is built once."""

    def __init__(self, reactor: Any, secret: str) -> None:
        self._reactor = reactor
        self._secret = secret
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 16
        self._pool.retryAutomatically = False
        self._agent = Agent(reactor, pool=self._pool, connectTimeout=5)

    async def post(self, endpoint: ReplicationEndpoint, name: str,
                   body: dict[str, Any]) -> dict[str, Any]:
        """The answer's JSON on 200; the answer's Matrix error raised otherwise (a 502
        when the process cannot be reached)."""
        url = (endpoint.base_url + INTERNAL_PREFIX + name).encode("ascii")
        headers = Headers({SECRET_HEADER: [self._secret],
                           "Content-Type": ["application/json"]})
        producer = FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8")))
        try:
            d = self._agent.request(b"POST", url, headers, producer)
            d.addTimeout(TIMEOUT_S, self._reactor)
            response = await d
            d = readBody(response)
            d.addTimeout(TIMEOUT_S, self._reactor)
            payload = await d
        except Exception as e:  # noqa: BLE001 (refused, timeout, reset...)
            logger.warning("internal %s to %s:%d failed: %s", name, endpoint.host,
                           endpoint.port, type(e).__name__)
            raise ProcessUnreachable() from e
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise MatrixError(502, "Bad answer from the process writing this room",
                              Codes.UNKNOWN)
        if response.code == 200:
            return answer
        if answer.get("reason") == STATE_CHANGED:
            raise StateChanged()
        if answer.get("reason") == MISSING_EVENTS:
            raise _missing_from(answer)
        errcode = answer.get("errcode")
        error = answer.get("error")
        raise MatrixError(response.code,
                          error if isinstance(error, str) else "Request failed",
                          errcode if isinstance(errcode, str) else Codes.UNKNOWN)

    async def close(self) -> None:
        await self._pool.closeCachedConnections()


class RemoteCreator:
    """The sending side, held by a process that does not write every room."""

    def __init__(self, wc: WorkersConfig, client: InternalClient) -> None:
        self._wc = wc
        self._client = client

    def writes(self, room_id: str) -> bool:
        return self._wc.instance in self._wc.event_writers and \
            writer_for(self._wc, room_id) == self._wc.instance

    def _endpoint(self, name: str) -> ReplicationEndpoint:
        endpoint = self._wc.endpoint(name)
        if endpoint is None:  # refused at start-up (stream_writers.py); never here
            raise MatrixError(503, "No endpoint for this room's writer", Codes.UNKNOWN)
        return endpoint

    async def create_event(self, room_id: str, sender: str, draft: Any,
                           txn: tuple[str, str] | None, expect_state: str | None
                           ) -> dict[str, Any]:
        """The writer's answer: ``{"event_id", "pdu"}``."""
        body = {"room_id": room_id, "sender": sender, "type": draft.type,
                "content": draft.content, "state_key": draft.state_key,
                "redacts": draft.redacts, "txn": list(txn) if txn is not None else None,
                "expect_state": expect_state}
        answer = await self._client.post(self._endpoint(writer_for(self._wc, room_id)),
                                         CREATE_EVENT, body)
        if not isinstance(answer.get("event_id"), str) or not isinstance(answer.get("pdu"), dict):
            raise MatrixError(502, "Bad answer from the process writing this room",
                              Codes.UNKNOWN)
        return answer

    async def create_room(self, user_id: str, body: dict[str, Any]) -> tuple[str, str | None]:
        """A room made by any events writer (each draws ids among the rooms it writes)."""
        import random

        writer = random.choice(self._wc.event_writers)  # noqa: S311 (load spreading only)
        answer = await self._client.post(self._endpoint(writer), CREATE_ROOM,
                                         {"user_id": user_id, "body": body})
        room_id, alias = answer.get("room_id"), answer.get("alias")
        if not isinstance(room_id, str) or not (alias is None or isinstance(alias, str)):
            raise MatrixError(502, "Bad answer from the process writing this room",
                              Codes.UNKNOWN)
        return room_id, alias

    async def persisted(self, events: list[list[Any]]) -> None:
        await self._client.post(self._endpoint(self._wc.main_name), PERSISTED,
                                {"events": events})


class SideEffectForwarder:
    """On an events writer other than main: the events main must see after each persist,
    batched per reactor turn and sent in order (one batch in flight)."""

    def __init__(self, reactor: Any, creator: RemoteCreator, server_name: str) -> None:
        self._reactor = reactor
        self._creator = creator
        self._suffix = ":" + server_name
        self._queue: list[list[Any]] = []
        self._running: defer.Deferred[None] | None = None
        self.sent = 0
        self.lost = 0

    def on_persisted(self, event: Event) -> None:
        """A live event persisted here: membership changes always, others when a local
        user sent them (a presence bump)."""
        if event.type != "m.room.member" and not event.sender.endswith(self._suffix):
            return
        self._queue.append([event.event_id, event.internal.device_id])
        if self._running is None:
            self._running = defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                await _later(self._reactor)  # gather the rest of this turn's events
                batch, self._queue = self._queue[:MAX_SIDE_EFFECTS], self._queue[MAX_SIDE_EFFECTS:]
                await self._send(batch)
        finally:
            self._running = None

    async def _send(self, batch: list[list[Any]]) -> None:
        for attempt in range(SIDE_EFFECT_ATTEMPTS):
            try:
                await self._creator.persisted(batch)
                self.sent += len(batch)
                return
            except MatrixError:
                if attempt + 1 < SIDE_EFFECT_ATTEMPTS:
                    await _later(self._reactor, 0.5 * (attempt + 1))
        self.lost += len(batch)
        logger.warning("side effects of %d event(s) could not reach the main process",
                       len(batch))

    async def flush(self) -> None:
        """Wait until everything queued was sent (tests, shutdown)."""
        while self._running is not None:
            await self._running


def _missing_from(answer: dict[str, Any]) -> MissingEventsError:
    """The writer's MissingEventsError, raised again on the calling side."""
    missing = answer.get("missing")
    event_id, what = answer.get("event_id"), answer.get("what")
    return MissingEventsError(
        event_id if isinstance(event_id, str) else "",
        [m for m in missing if isinstance(m, str)] if isinstance(missing, list) else [],
        what if what in ("prev", "auth") else "prev")


def _later(reactor: Any, seconds: float = 0.0) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class InternalResource(resource.Resource):
    """The receiving side of the internal calls (``INTERNAL_PREFIX`` + name)."""

    isLeaf = True

    def __init__(self, secret: str | None, handlers: dict[str, Callable[[dict[str, Any]],
                                                                       Awaitable[Any]]]) -> None:
        super().__init__()
        self._secret = secret.encode("utf-8") if secret else None
        self._handlers = handlers
        self._large: set[str] = set()
        self.refused = 0

    def add(self, name: str, handler: Callable[[dict[str, Any]], Awaitable[Any]],
            large: bool = False) -> None:
        """Serve ``name`` too (``large``: a body up to ``MAX_LARGE_BODY``)."""
        self._handlers[name] = handler
        if large:
            self._large.add(name)

    def render(self, request: server.Request) -> Any:  # type: ignore[override]
        defer.ensureDeferred(self._render(request))
        return server.NOT_DONE_YET

    async def _render(self, request: server.Request) -> None:
        path = request.path.decode("ascii", "replace")
        try:
            answer = await self._dispatch(request, path)
            status, body = 200, answer
        except StateChanged as e:
            status, body = e.code, {**e.to_json(), "reason": STATE_CHANGED}
        except MissingEventsError as e:  # federation: the caller fetches them and retries
            status, body = 409, {"errcode": Codes.UNKNOWN, "error": "Events not held",
                                 "reason": MISSING_EVENTS, "event_id": e.event_id,
                                 "missing": e.missing[:1000], "what": e.what}
        except MatrixError as e:
            status, body = e.code, e.to_json()
        except Exception:
            logger.exception("internal call %s failed", path[len(INTERNAL_PREFIX):][:40])
            status, body = 500, {"errcode": Codes.UNKNOWN, "error": "Internal server error"}
        MatrixResource._respond(request, status, body, {}, path)  # noqa: SLF001

    async def _dispatch(self, request: server.Request, path: str) -> Any:
        if self._secret is None:
            raise MatrixError(404, "Unrecognized request", Codes.UNRECOGNIZED)
        given = request.getHeader(SECRET_HEADER) or ""
        if not hmac.compare_digest(given.encode("utf-8", "replace"), self._secret):
            self.refused += 1
            raise MatrixError(403, "Invalid replication secret", Codes.FORBIDDEN)
        handler = self._handlers.get(path[len(INTERNAL_PREFIX):])
        if handler is None:
            raise MatrixError(404, "Unrecognized request", Codes.UNRECOGNIZED)
        if request.method != b"POST":
            raise MatrixError(405, "Unrecognized request: method not allowed",
                              Codes.UNRECOGNIZED)
        request.content.seek(0)
        limit = MAX_LARGE_BODY if path[len(INTERNAL_PREFIX):] in self._large else MAX_BODY
        raw = request.content.read(limit + 1)
        if len(raw) > limit:
            raise MatrixError(413, "Request body too large", Codes.TOO_LARGE)
        body = parse_json_object(raw, "Content not JSON", "Content must be a JSON object")
        return await handler(body)


# ---- the handlers of the receiving side

def _str(body: dict[str, Any], key: str, prefix: str = "", optional: bool = False,
         limit: int = 65536) -> Any:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.startswith(prefix) or len(value) > limit:
        raise MatrixError(400, f"'{key}' is missing or invalid", Codes.BAD_JSON)
    return value


def _local_user(body: dict[str, Any], key: str, server_name: str) -> str:
    user_id = _str(body, key, "@", limit=255)
    if not user_id.endswith(":" + server_name):
        raise MatrixError(400, f"'{key}' is not a local user", Codes.BAD_JSON)
    return str(user_id)


def create_event_handler(creation: Any, server_name: str
                         ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On an events writer: build, validate and persist a draft made elsewhere."""
    from homeserver.handlers.event_creation import EventDraft

    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        room_id = _str(body, "room_id", "!", limit=255)
        sender = _local_user(body, "sender", server_name)
        content = body.get("content")
        if not isinstance(content, dict):
            raise MatrixError(400, "'content' must be an object", Codes.BAD_JSON)
        txn = body.get("txn")
        if txn is not None and not (isinstance(txn, list) and len(txn) == 2
                                    and all(isinstance(t, str) and len(t) <= 255 for t in txn)):
            raise MatrixError(400, "'txn' is invalid", Codes.BAD_JSON)
        expected = _str(body, "expect_state", optional=True, limit=64)
        draft = EventDraft(_str(body, "type", limit=255), content,
                           _str(body, "state_key", optional=True, limit=255),
                           _str(body, "redacts", "$", optional=True, limit=255))
        check = None
        if expected is not None:
            async def check(snap: Any) -> None:
                if state_digest(snap.state_ids) != expected:
                    raise StateChanged()

        event = await creation.send(room_id, sender, draft.type, draft.content,
                                    draft.state_key, tuple(txn) if txn else None,
                                    draft.redacts, check=check)
        return {"event_id": event.event_id, "pdu": event.pdu}

    return handle


def create_room_handler(room_creation: Any, server_name: str
                        ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        user_id = _local_user(body, "user_id", server_name)
        request = body.get("body")
        if not isinstance(request, dict):
            raise MatrixError(400, "'body' must be an object", Codes.BAD_JSON)
        room_id, alias = await room_creation.create_room(user_id, request)
        return {"room_id": room_id, "alias": alias}

    return handle


def persisted_handler(events: Any, subscribers: list[Callable[[Event], Any]]
                      ) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    """On main: run its own side-effect handlers on events another writer persisted."""
    async def handle(body: dict[str, Any]) -> dict[str, Any]:
        items = body.get("events")
        if not isinstance(items, list) or len(items) > MAX_SIDE_EFFECTS:
            raise MatrixError(400, "'events' is invalid", Codes.BAD_JSON)
        done = 0
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and (item[1] is None or isinstance(item[1], str))):
                continue
            event = await events.get_event(item[0])
            if event is None:
                continue
            event.internal.device_id = item[1]
            for subscriber in subscribers:
                try:
                    result = subscriber(event)
                    if hasattr(result, "__await__"):
                        await result
                except Exception:  # noqa: BLE001 (one handler failing stops no other)
                    logger.exception("side effect of a forwarded event failed")
            done += 1
        return {"applied": done}

    return handle


class InternalCalls:
    """What :func:`wire_internal_calls` built, for the app's shutdown and tests."""

    def __init__(self, client: InternalClient | None, creator: RemoteCreator | None,
                 side_effects: SideEffectForwarder | None,
                 resource: InternalResource | None = None) -> None:
        self.client = client
        self.creator = creator
        self.side_effects = side_effects
        self.resource = resource  # more handlers are added to it (remote_persist.py)

    async def close(self) -> None:
        if self.side_effects is not None:
            await self.side_effects.flush()
        if self.client is not None:
            await self.client.close()


def wire_internal_calls(config: Config, root: Any, rooms: Any, stores: Any,
                        side_effect_handlers: list[Callable[[Event], Any]],
                        reactor: Any) -> InternalCalls | None:
    """With several events writers: the internal endpoints every process serves, and
    the sending side of this process (None without event persisters)."""
    from homeserver.handlers.event_persister import live_events

    wc = config.workers
    if not wc.event_writers or wc.replication_secret is None:
        return None
    handlers: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {}
    is_writer = wc.instance in wc.event_writers
    if is_writer:
        handlers[CREATE_EVENT] = create_event_handler(rooms.event_creation, config.server_name)
        handlers[CREATE_ROOM] = create_room_handler(rooms.room_creation, config.server_name)
    if wc.is_main:
        handlers[PERSISTED] = persisted_handler(stores.events, side_effect_handlers)
    internal = InternalResource(wc.replication_secret, handlers)
    root.mount_prefix(INTERNAL_PREFIX, internal)
    client = InternalClient(reactor, wc.replication_secret)
    creator = RemoteCreator(wc, client)
    rooms.event_creation.remote = creator
    if not is_writer:
        rooms.room_creation.remote_create_room = creator.create_room
    side_effects = None
    if is_writer and not wc.is_main:
        side_effects = SideEffectForwarder(reactor, creator, config.server_name)
        rooms.fanout.subscribe("main_side_effects", live_events(side_effects.on_persisted))
    return InternalCalls(client, creator, side_effects, internal)
