"""The worker roles that take work off the main process (issue 18): ``federation_sender``,
``pusher``, ``appservice``, ``media`` and ``background``.

Each kind of work runs in exactly one place: in a worker of its role when the config has
one, else in the main process as in a single-process deployment
(:meth:`WorkersConfig.runs`). The queues in PostgreSQL stay the truth; only the sending
moves:

- ``federation_sender``: the main process still queues every PDU and EDU (it is where
  events are persisted and EDUs arise; with event persisters each writer queues its own
  events' PDUs and kicks the same way); each federation_sender worker sends the queues
  of its destinations. Destinations are split between the instances by a stable hash of
  the server name (:func:`shard_index`), so two instances never send to one destination.
  The main process's queue for a destination is a :class:`RemoteDestinationQueue`, whose
  kicks (and typing notifications, which live in memory only) are published on Redis.
- ``pusher``: push actions are written where the event is persisted; their notifying
  rows and read receipts are published, and the pusher instance owning the user (hash of
  the user id, so all of a user's pushers and their badge live in one place) delivers.
- ``appservice``: the main process queues transactions; the instance owning the service
  (hash of its id) sends them.
- ``media``: serves the media endpoints (client v1, ``/_matrix/media``, federation
  media); every other process answers them 404 ``M_UNRECOGNIZED``.
- ``background``: the erasure purge, GDPR export jobs and their clean-up, message
  retention and the audit-log retention. Room shutdowns stay with the main process (they
  move members through the event path).

Redis only wakes: every sending worker also re-reads its queues from the database every
``CATCH_UP_INTERVAL_S`` (``BACKGROUND_CATCH_UP_S`` for the background worker), so a lost
message delays work but never loses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from homeserver.config.model import Config
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Route, Router
from homeserver.replication import CATCH_UP_INTERVAL_S
from homeserver.replication.link import JsonDict

logger = logging.getLogger(__name__)

BACKGROUND_CATCH_UP_S = 10.0
MAX_ITEMS = 1000  # destinations / push rows applied from one message at most
# Roles that route requests their own way (not the client worker's read rules).
OWN_ROUTING = ("federation_sender", "pusher", "appservice", "media", "background")
MEDIA_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/",
                  "/_matrix/federation/v1/media/")
_OWN_PREFIXES = ("/_matrix/", "/_synapse/", "/_parley/")


def shard_index(key: str, count: int) -> int:
    """The instance (0 .. count-1) that handles ``key``: the same in every process and
    across restarts (not Python's salted ``hash``)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def is_media_route(template: str) -> bool:
    return template.startswith(MEDIA_PREFIXES)


def _strs(value: Any, limit: int = MAX_ITEMS) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:limit] if isinstance(v, str)]


class RemoteDestinationQueue:
    """The main process's stand-in for a destination a federation_sender worker sends
    to: what the sender does with a queue, published to that worker instead."""

    busy = False

    def __init__(self, destination: str, roles: RoleWiring) -> None:
        self.destination = destination
        self._roles = roles
        self.stopped = False

    def kick(self) -> None:
        self._roles.federation_kick(self.destination, wake=False)

    def wake(self) -> None:
        self._roles.federation_kick(self.destination, wake=True)

    def add_typing(self, room_id: str, user_id: str, content: JsonDict) -> None:
        self._roles.publish({"k": "fed_typing", "d": self.destination, "r": room_id,
                             "u": user_id, "t": bool(content.get("typing"))})

    async def stop(self) -> None:
        self.stopped = True


class RemoteServiceQueue:
    """The main process's stand-in for an application service an appservice worker
    sends to. Ephemeral events are published to it; the in-memory MSC3202/MSC4203 data
    (``crypto``) is not forwarded (see the README, "Workers")."""

    def __init__(self, as_id: str, roles: RoleWiring) -> None:
        from homeserver.appservice.encryption import PendingCrypto

        self.as_id = as_id
        self._roles = roles
        self.crypto = PendingCrypto()
        self.before_send: Any = None
        self.key_counts: Any = None

    def kick(self) -> None:
        self._roles.publish({"k": "as", "s": self.as_id})

    def add_ephemeral(self, edu: JsonDict) -> None:
        self._roles.publish({"k": "as_edu", "s": self.as_id, "e": edu})

    async def stop(self) -> None:
        return None


class ShardedPusherStore:
    """A pusher worker's view of the pusher store: only the pushers of its users."""

    def __init__(self, inner: Any, owns: Callable[[str], bool]) -> None:
        self._inner = inner
        self._owns = owns

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def http_pushers_for_users(self, user_ids: list[str]) -> list[Any]:
        mine = [u for u in user_ids if self._owns(u)]
        return await self._inner.http_pushers_for_users(mine) if mine else []

    async def http_pushers_with_pending(self) -> list[Any]:
        return [p for p in await self._inner.http_pushers_with_pending()
                if self._owns(p.user_id)]


class RoleWiring:
    """One process's part in the worker roles: what it runs, what it hands to the
    workers (over replication, :meth:`attach`) and which routes it serves."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.wc = config.workers
        self._reactor = reactor
        self._rep: Any = None
        self.handlers: dict[str, Callable[[JsonDict], None]] = {}
        self._catch_ups: list[tuple[float, Callable[[], Awaitable[Any]]]] = []
        self._loops: list[LoopingCall] = []
        self._tasks: set[defer.Deferred[Any]] = set()
        self._fed_kicks: dict[str, bool] = {}
        self._fed_call: Any = None
        self._stopped = False
        self.federation_sender: Any = None  # this worker's FederationSender (tests)
        self.appservices: Any = None  # the AppserviceArea (tests)

    # -- who does what

    def runs(self, role: str) -> bool:
        return self.wc.runs(role)

    def owns(self, role: str, key: str) -> bool:
        """Whether this process handles ``key`` of ``role``'s sharded work."""
        instances = self.wc.instances_of(role)
        if not instances:
            return self.wc.is_main
        return instances[shard_index(key, len(instances))] == self.wc.instance

    @property
    def builds_federation(self) -> bool:
        """Federation (keys, client, sender) is built by the main process, the
        federation senders and the media workers (federation media)."""
        return self.wc.is_main or self.wc.role in ("federation_sender", "media")

    # -- replication

    def publish(self, msg: JsonDict) -> None:
        if self._rep is not None and not self._stopped:
            self._rep.send(msg)

    def attach(self, rep: Any) -> None:
        """Replication is up: receive the roles' messages, start the catch-up loops."""
        if rep is None:
            return
        self._rep = rep
        rep.handlers.update(self.handlers)
        for interval, fn in self._catch_ups:
            loop = LoopingCall(self._run, fn)
            loop.clock = self._reactor
            loop.start(interval, now=False)
            self._loops.append(loop)

    def _run(self, fn: Callable[[], Awaitable[Any]]) -> None:
        if self._stopped:
            return
        d = defer.ensureDeferred(fn())  # type: ignore[arg-type]
        self._tasks.add(d)

        def done(result: Any) -> None:
            self._tasks.discard(d)
            if hasattr(result, "getErrorMessage") and not result.check(defer.CancelledError):
                logger.warning("worker role catch-up failed: %s", result.getErrorMessage())

        d.addBoth(done)

    async def stop(self) -> None:
        self._stopped = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._fed_call is not None and self._fed_call.active():
            self._fed_call.cancel()
        if self._tasks:
            await defer.DeferredList(list(self._tasks), consumeErrors=True)

    # -- federation_sender

    def configure_federation_sender(self, sender: Any) -> None:
        """Called by federation/sender/wiring.py before the sender starts."""
        if self.wc.role == "federation_sender":
            sender.queues_events = False  # the main process queues; this one sends
            sender.sends_to = lambda d: self.owns("federation_sender", d)
            self.federation_sender = sender
            self.handlers["fed"] = self._on_fed
            self.handlers["fed_typing"] = self._on_fed_typing
            self._catch_ups.append((CATCH_UP_INTERVAL_S, sender.kick_pending))
        elif not self.runs("federation_sender"):
            sender.queues_events = self.wc.is_main
            sender.sends_to = lambda _d: False
            sender.remote_queue = lambda d: RemoteDestinationQueue(d, self)
        elif self.wc.is_main and self.wc.event_writers:
            # Main sends, and event persisters queue PDUs too: their kicks wake it, and
            # its periodic catch-up sends what a lost kick left (homeserver/replication/
            # remote_persist.py).
            self.federation_sender = sender
            self.handlers["fed"] = self._on_fed
            self._catch_ups.append((CATCH_UP_INTERVAL_S, sender.kick_pending))

    def configure_writer_queue(self, sender: Any) -> None:
        """An event persister's sender (federation/sender/wiring.py ``start_writer_queue``):
        it queues its local events' PDUs and hands every kick to the process sending to
        the destination."""
        sender.queues_events = True
        sender.sends_to = lambda _d: False
        sender.remote_queue = lambda d: RemoteDestinationQueue(d, self)

    def federation_kick(self, destination: str, wake: bool) -> None:
        """Coalesce the kicks of one reactor turn into one message."""
        self._fed_kicks[destination] = self._fed_kicks.get(destination, False) or wake
        if self._fed_call is None or not self._fed_call.active():
            self._fed_call = self._reactor.callLater(0, self._flush_fed)

    def _flush_fed(self) -> None:
        kicks, self._fed_kicks = self._fed_kicks, {}
        items = list(kicks.items())
        for i in range(0, len(items), MAX_ITEMS):
            chunk = items[i:i + MAX_ITEMS]
            self.publish({"k": "fed", "d": [d for d, _ in chunk],
                          "w": [d for d, w in chunk if w]})

    def _on_fed(self, msg: JsonDict) -> None:
        sender = self.federation_sender
        wakes = set(_strs(msg.get("w")))
        for destination in _strs(msg.get("d")):
            if sender.sends_to(destination):
                q = sender.queue(destination)
                q.wake() if destination in wakes else q.kick()

    def _on_fed_typing(self, msg: JsonDict) -> None:
        destination, room_id, user_id = msg.get("d"), msg.get("r"), msg.get("u")
        if not (isinstance(destination, str) and isinstance(room_id, str)
                and isinstance(user_id, str)):
            return
        if self.federation_sender.sends_to(destination):
            self.federation_sender.queue(destination).add_typing(
                room_id, user_id, {"room_id": room_id, "user_id": user_id,
                                   "typing": msg.get("t") is True})

    # -- pusher

    def pusher_stores(self, stores: Any) -> Any:
        """The stores a pusher pool is built on: a pusher worker sees its users' only."""
        if self.wc.role != "pusher":
            return stores
        return dataclasses.replace(stores, pushers=ShardedPusherStore(
            stores.pushers, lambda user_id: self.owns("pusher", user_id)))

    def wire_pushers(self, pool: Any, push_actions: Any, receipts: Any) -> None:
        """``pool`` is this process's pusher pool (None where pushing is a worker's)."""
        if pool is not None and self.wc.role == "pusher":
            self.handlers["push"] = lambda msg: self._on_push(pool, msg)
            self.handlers["push_read"] = lambda msg: self._on_push_read(pool, msg)
            self._catch_ups.append((CATCH_UP_INTERVAL_S, pool.start))
        elif pool is None and self.wc.instances_of("pusher"):
            push_actions.on_added.append(self._publish_push_actions)
            receipts.on_read.append(
                lambda user_id, _room: self.publish({"k": "push_read", "u": user_id}))

    def _publish_push_actions(self, rows: Any) -> None:
        notifying = [[r.user_id, r.room_id, r.event_id, r.stream_ordering, r.actions_json]
                     for r in rows if r.notify]
        for i in range(0, len(notifying), MAX_ITEMS):
            self.publish({"k": "push", "a": notifying[i:i + MAX_ITEMS]})

    def _on_push(self, pool: Any, msg: JsonDict) -> None:
        from storage.stores.push_actions import PushActionRow

        rows = []
        raw = msg.get("a")
        for item in raw[:MAX_ITEMS] if isinstance(raw, list) else []:
            if not (isinstance(item, list) and len(item) == 5
                    and all(isinstance(v, str) for v in item[:3])
                    and isinstance(item[3], int) and isinstance(item[4], str)):
                continue
            if self.owns("pusher", item[0]):
                rows.append(PushActionRow(user_id=item[0], room_id=item[1], event_id=item[2],
                                          stream_ordering=item[3], notify=True,
                                          highlight=False, thread_id="",
                                          actions_json=item[4], ts=0))
        if rows:
            pool.on_push_actions(rows)

    def _on_push_read(self, pool: Any, msg: JsonDict) -> None:
        user_id = msg.get("u")
        if isinstance(user_id, str) and self.owns("pusher", user_id):
            pool.on_read(user_id, "")

    # -- appservice

    async def start_appservices(self, area: Any) -> bool:
        """Start this process's part of the application services; True if it has one
        (and so must stop them)."""
        scheduler = area.scheduler
        self.appservices = area
        if self.wc.is_main:
            if self.wc.instances_of("appservice"):
                scheduler.queues = {as_id: RemoteServiceQueue(as_id, self)
                                    for as_id in scheduler.queues}
            await area.start()  # sender users, replay into the queue, (remote) kicks
            return True
        if self.wc.role != "appservice":
            return False
        scheduler.queues = {as_id: q for as_id, q in scheduler.queues.items()
                            if self.owns("appservice", as_id)}
        self.handlers["as"] = lambda msg: self._on_as(scheduler, msg)
        self.handlers["as_edu"] = lambda msg: self._on_as_edu(scheduler, msg)

        async def kick_all() -> None:
            scheduler.start()

        self._catch_ups.append((CATCH_UP_INTERVAL_S, kick_all))
        scheduler.start()
        return True

    def _on_as(self, scheduler: Any, msg: JsonDict) -> None:
        as_id = msg.get("s")
        if isinstance(as_id, str) and as_id in scheduler.queues:
            scheduler.kick(as_id)

    def _on_as_edu(self, scheduler: Any, msg: JsonDict) -> None:
        as_id, edu = msg.get("s"), msg.get("e")
        if isinstance(as_id, str) and as_id in scheduler.queues and isinstance(edu, dict):
            scheduler.add_ephemeral(as_id, edu)

    # -- background

    def wire_background(self, erasure: Any, gdpr_export: Any) -> None:
        """Where the background worker runs the jobs: the main process hands the jobs
        its requests start to it; the worker runs them on a message and on its
        periodic catch-up. (Called before the jobs are started.)"""
        if self.wc.is_main and self.wc.instances_of("background"):
            erasure.purge.kick = lambda: self.publish({"k": "bg", "j": "erasure"})
            gdpr_export._start = lambda _export_id: self.publish(  # noqa: SLF001
                {"k": "bg", "j": "export"})
        elif self.wc.role == "background":
            def on_bg(msg: JsonDict) -> None:
                if msg.get("j") == "erasure":
                    erasure.purge.kick()
                elif msg.get("j") == "export":
                    self._run(gdpr_export.resume_pending)

            async def catch_up() -> None:
                erasure.purge.kick()
                await gdpr_export.resume_pending()

            self.handlers["bg"] = on_bg
            self._catch_ups.append((BACKGROUND_CATCH_UP_S, catch_up))

    # -- routes

    def restrict_routes(self, router: Router) -> int:
        """Refuse what this process does not serve: a media worker serves media only, a
        sender or background worker no API at all (health, readiness and metrics stay),
        and the main process no media when a media worker exists."""
        role = self.wc.role
        keep: Callable[[Route], bool]
        if role == "media":
            keep = _media_or_unprefixed
            message = "This process serves media only: route this endpoint elsewhere"
        elif role in OWN_ROUTING:
            keep = _unprefixed_read
            message = f"A {role} worker serves no API: route this endpoint elsewhere"
        elif self.wc.instances_of("media"):
            keep = _not_media
            message = "Media is served by the media worker: route it there"
        else:
            return 0
        turned = 0
        for route in router.routes:
            if not keep(route):
                _refuse_route(route, message)
                turned += 1
        return turned


def _unprefixed_read(route: Route) -> bool:
    """/health, /ready, /.well-known/...: every process answers them."""
    return route.method in ("GET", "HEAD") and not route.template.startswith(_OWN_PREFIXES)


def _media_or_unprefixed(route: Route) -> bool:
    return is_media_route(route.template) or _unprefixed_read(route)


def _not_media(route: Route) -> bool:
    return not is_media_route(route.template)


def _refuse_route(route: Route, message: str) -> None:
    async def refuse(_api: Any, **_params: Any) -> tuple[int, Any]:
        raise MatrixError(404, message, Codes.UNRECOGNIZED)

    route.handler = refuse
    route.auth = "none"
    route.json_body = False
    route.body_validator = None
