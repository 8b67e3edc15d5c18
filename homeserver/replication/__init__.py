"""Replication between the processes of one deployment (issue 18, first slice).

The main process is the one writer of every stream. Each of its wake-ups (the
notifier's ``notify``: a stream moved for these users / rooms) is published on Redis
with its readable stream positions; a worker advances its positions to them, drops its
cached state of those rooms and wakes its own long-polls, so a /sync held on a worker
answers as soon as the main process has persisted an event, and never past it.

Session revocations (logout, password change, admin), push-rule changes and typing are
published by whichever process makes them, and applied everywhere else at once.

Redis is not trusted to deliver everything: the main process also records its readable
positions in ``replication_positions`` (a moment after they move), and a worker reads
them when it (re)subscribes and every ``CATCH_UP_INTERVAL_S``. A worker that lost Redis
therefore catches up from PostgreSQL and never skips an event; a revocation missed
during a Redis outage still applies within ``auth.session_cache_ttl``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet import defer
from twisted.internet.task import LoopingCall

from homeserver.clock import Clock
from homeserver.config.model import Config
from homeserver.metrics.registry import PREFIX
from homeserver.notifier import Notifier
from homeserver.replication.link import JsonDict, RedisLink
from homeserver.replication.notifier import ReplicatingNotifier
from homeserver.replication.streams import StreamSet
from homeserver.replication.typing import TypingMirror
from storage.database import Database
from storage.stores.replication import ReplicationStore

logger = logging.getLogger(__name__)

CATCH_UP_INTERVAL_S = 5.0  # a worker re-reads the persisted positions this often
FLUSH_DELAY_S = 0.05  # the main process records its positions this long after a move
MAX_IDS = 10_000  # user / room / session ids applied from one message at most


def make_notifier(config: Config, clock: Clock) -> Notifier:
    """The process's notifier: replicating when workers are configured."""
    return ReplicatingNotifier(clock) if config.workers.enabled else Notifier(clock)


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:MAX_IDS] if isinstance(v, str)]


@dataclass
class Replication:
    instance: str
    writer: str  # the main process's instance name
    is_writer: bool
    notifier: ReplicatingNotifier
    streams: StreamSet
    store: ReplicationStore
    session_cache: Any
    push_actions: Any
    persister: Any
    reactor: Any
    link: RedisLink | None = None
    typing: Any = None  # the main process's TypingHandler (its positions)
    typing_mirror: TypingMirror | None = None  # a worker's typing source
    received: Counter | None = None  # messages applied (metrics)
    catch_ups: int = 0
    _flush_call: Any = None
    _loop: LoopingCall | None = None
    _pending: set[defer.Deferred[Any]] = field(default_factory=set)
    _stopped: bool = False

    # -- outgoing

    def _send(self, msg: JsonDict) -> None:
        if self.link is None or self._stopped:
            return
        d = defer.ensureDeferred(self.link.publish({"i": self.instance, **msg}))
        self._pending.add(d)
        d.addBoth(lambda r: (self._pending.discard(d), r)[1])

    def local_notify(self, users: list[str], rooms: list[str]) -> None:
        """The writer's wake-up: publish it with its positions, record them soon."""
        if not self.is_writer or self._stopped:
            return
        self._send({"k": "wake", "p": self.streams.snapshot(), "u": users, "r": rooms})
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.reactor.callLater(FLUSH_DELAY_S, self._flush)

    def sessions_revoked(self, session_ids: list[str]) -> None:
        self._send({"k": "revoke", "s": list(session_ids)})

    def push_rules_changed(self, position: int, user_id: str) -> None:
        self._send({"k": "push_rules", "c": [[position, user_id]]})

    def typing_changed(self, edu: JsonDict) -> None:
        """The writer's ``TypingHandler.on_edu``: a room's typing list changed."""
        self._send({"k": "typing", "r": edu.get("room_id"),
                    "u": list(edu.get("content", {}).get("user_ids", [])),
                    "p": self.typing.current_position()})

    def _flush(self) -> None:
        if not self._stopped:
            self._track(self.flush_positions())

    async def flush_positions(self) -> None:
        await self.store.save_positions(self.instance, self.streams.snapshot())

    def _track(self, coro: Any) -> None:
        d = defer.ensureDeferred(coro)
        self._pending.add(d)

        def done(result: Any) -> None:
            self._pending.discard(d)
            if hasattr(result, "getErrorMessage"):
                logger.warning("replication: %s", result.getErrorMessage())

        d.addBoth(done)

    # -- incoming

    def on_message(self, msg: JsonDict) -> None:
        if msg.get("i") == self.instance:
            return  # our own
        if self.received is not None:
            self.received.inc()
        kind = msg.get("k")
        if kind == "revoke":
            sids = _ids(msg.get("s"))
            if sids:
                self.session_cache.invalidate(sids, propagate=False)
        elif kind == "push_rules":
            for change in (msg.get("c") or [])[:MAX_IDS]:
                if (isinstance(change, list) and len(change) == 2
                        and isinstance(change[1], str)):
                    self.push_actions.on_rules_changed(0, change[1])
        elif kind == "typing" and self.typing_mirror is not None:
            room_id, position = msg.get("r"), msg.get("p")
            if isinstance(room_id, str) and isinstance(position, int) \
                    and self.typing_mirror.apply(room_id, _ids(msg.get("u")), position):
                self.notifier.notify_remote([], [room_id])
        elif kind == "wake" and not self.is_writer and msg.get("i") == self.writer:
            positions = msg.get("p")
            self.apply_wake(positions if isinstance(positions, dict) else {},
                            _ids(msg.get("u")), _ids(msg.get("r")))

    def apply_wake(self, positions: dict[str, Any], users: list[str], rooms: list[str]) -> None:
        self.streams.advance(positions)
        for room_id in rooms:  # its state may have changed: re-read when next needed
            self.persister.forget_room(room_id)
        self.notifier.notify_remote(users, rooms)

    def on_connected(self) -> None:
        """(Re)subscribed: whatever was published meanwhile is in the database."""
        if not self.is_writer and not self._stopped:
            self._track(self.catch_up())

    async def catch_up(self) -> None:
        """Advance to the writer's recorded positions; wake every long-poll to re-check."""
        positions = await self.store.get_positions(self.writer)
        self.catch_ups += 1
        if self.streams.advance(positions):
            self.notifier.wake_all()

    # -- life cycle

    async def start(self, link: RedisLink | None) -> None:
        self.link = link
        if self.is_writer:
            await self.flush_positions()  # a floor for workers starting before any write
        else:
            await self.catch_up()
            self._loop = LoopingCall(lambda: None if self._stopped else self._track(self.catch_up()))
            self._loop.clock = self.reactor
            self._loop.start(CATCH_UP_INTERVAL_S, now=False)

    async def stop(self) -> None:
        """Before the database closes: record the last positions, close Redis."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            if self.is_writer:
                self._track(self.flush_positions())
        if self._pending:
            await defer.DeferredList(list(self._pending), consumeErrors=True)
        if self.link is not None:
            await self.link.close()


async def build_replication(config: Config, clock: Clock, db: Database, notifier: Notifier,
                            accounts: Any, rooms: Any, sync: Any, reactor: Any,
                            registry: CollectorRegistry | None = None) -> Replication | None:
    """Wire replication into a built server (None without workers)."""
    wc = config.workers
    if not wc.enabled or config.redis is None:
        return None
    if not isinstance(notifier, ReplicatingNotifier):
        raise TypeError("replication needs the notifier of make_notifier()")
    writer = next((n for n, w in wc.workers.items() if w.role == "main"), "main")
    rep = Replication(
        instance=wc.instance, writer=writer, is_writer=wc.is_main, notifier=notifier,
        streams=StreamSet(sync.sync, rooms.persister), store=ReplicationStore(db),
        session_cache=accounts.session_cache, push_actions=rooms.push_actions,
        persister=rooms.persister, reactor=reactor)
    notifier.on_local_notify = rep.local_notify
    if wc.is_main:
        rep.typing = sync.typing
        sync.typing.on_edu.append(rep.typing_changed)
    else:  # typing is the main process's: mirror it as /sync's typing source
        rep.typing_mirror = TypingMirror(clock, 0)
        sync.sync.sources[:] = [rep.typing_mirror if src.name == "typing" else src
                                for src in sync.sync.sources]
    accounts.session_cache.add_revocation_listener(rep.sessions_revoked)
    accounts.push_rules.on_change.append(rep.push_rules_changed)
    link = RedisLink(config.redis, reactor, rep.on_message, rep.on_connected)
    _metrics(rep, link, registry)
    await rep.start(link)
    return rep


def _metrics(rep: Replication, link: RedisLink, registry: CollectorRegistry | None) -> None:
    """Whether the subscription is up, and what replication did (read at scrape time)."""
    Gauge(f"{PREFIX}replication_connected",
          "1 while this process is subscribed to the replication channel on Redis.",
          registry=registry).set_function(lambda: 1.0 if link.is_connected else 0.0)
    Gauge(f"{PREFIX}replication_catch_ups",
          "Catch-ups from the database (start, Redis reconnects, periodic).",
          registry=registry).set_function(lambda: float(rep.catch_ups))
    Gauge(f"{PREFIX}replication_publish_failures",
          "Replication messages that could not be published to Redis.",
          registry=registry).set_function(lambda: float(link.publish_failures))
    rep.received = Counter(f"{PREFIX}replication_messages_received",
                           "Replication messages received from other processes.",
                           registry=registry)
