"""Replication between the processes of one deployment (issue 18, first slice).

The main process is the one writer of every stream. Each of its wake-ups (the
notifier's ``notify``: a stream moved for these users / rooms) is published on Redis
with its readable stream positions; a worker advances its positions to them, drops its
cached state of those rooms and wakes its own long-polls, so a /sync held on a worker
answers as soon as the main process has persisted an event, and never past it.

Session revocations (logout, password change, admin), push-rule changes and typing are
published by whichever process makes them, and applied everywhere else at once. The
presence asked for by syncs held on workers is reported to the main process, which
writes it (homeserver/replication/presence.py).

Redis is not trusted to deliver everything: the main process also records its readable
positions in ``replication_positions`` (a moment after they move), and a worker reads
them when it (re)subscribes and every ``CATCH_UP_INTERVAL_S``. A worker that lost Redis
therefore catches up from PostgreSQL and never skips an event. A revocation whose
message is lost still reaches every process within ``auth.session_cache_ttl`` (1 s by
default with workers: the bound), since a session cached as active is re-read from the
database once older than that.

With event persisters (``stream_writers.events``) the events stream has several writers
(homeserver/replication/multi_writer.py): every writer publishes its own "persisted up
to" (``"w"``: after each write, and in each of its wake-ups) and records it under its
own name; every process reads the events stream up to the lowest writer's, holds a
remote wake-up until that covers the sender's position, and catches up from every
writer's recorded row. The main process stays the one writer of the other streams.
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
from homeserver.http.params import MAX_POSITION
from homeserver.metrics.registry import PREFIX
from homeserver.notifier import Notifier
from homeserver.replication.link import JsonDict, RedisLink
from homeserver.replication.multi_writer import MultiWriterPositions, writer_for
from homeserver.replication.notifier import ReplicatingNotifier
from homeserver.replication.presence import RemoteSyncs, SyncReporter
from homeserver.replication.streams import StreamSet
from homeserver.replication.typing import TypingMirror
from storage.database import Database
from storage.stores.replication import ReplicationStore

logger = logging.getLogger(__name__)

CATCH_UP_INTERVAL_S = 5.0  # a worker re-reads the persisted positions this often
FLUSH_DELAY_S = 0.05  # the main process records its positions this long after a move
MAX_IDS = 10_000  # user / room / session ids applied from one message at most
# Fan-out subscribers writing the main process's streams: not run by event persisters.
MAIN_ONLY_SUBSCRIBERS = ("presence", "device_lists")
# Worker roles serving /sync (their syncs' presence is reported to main).
SYNCING_ROLES = ("client", "event_persister")


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
    # Messages of other kinds, by kind: the worker roles' (homeserver/replication/roles.py).
    handlers: dict[str, Any] = field(default_factory=dict)
    # Presence from workers' syncs: a worker's SyncReporter, main's RemoteSyncs.
    presence_syncs: Any = None
    # The events stream when it has several writers (None: main writes it).
    events: MultiWriterPositions | None = None
    _claim_call: Any = None
    # Run first when stopping, while messages can still be sent (may return a Deferred).
    on_stop: list[Any] = field(default_factory=list)

    @property
    def writes_events(self) -> bool:
        """This process is one of several events writers."""
        return self.events is not None and self.events.is_writer

    def _own(self) -> dict[str, int]:
        """What this process publishes and records: the main process's streams (main),
        its own claim on the events stream (an events writer)."""
        out = self.streams.snapshot() if self.is_writer else {}
        if self.writes_events:
            assert self.events is not None
            out["events"] = self.events.own_position()
        return out

    # -- outgoing

    def send(self, msg: JsonDict) -> None:
        """Publish ``msg`` (best effort; receivers also catch up from the database)."""
        self._send(msg)

    def _send(self, msg: JsonDict) -> None:
        if self.link is None or self._stopped:
            return
        d = defer.ensureDeferred(self.link.publish({"i": self.instance, **msg}))
        self._pending.add(d)
        d.addBoth(lambda r: (self._pending.discard(d), r)[1])

    def local_notify(self, users: list[str], rooms: list[str]) -> None:
        """The writer's wake-up: publish it with its positions, record them soon."""
        if not (self.is_writer or self.writes_events) or self._stopped:
            return
        msg: JsonDict = {"k": "wake", "u": users, "r": rooms}
        if self.is_writer:
            msg["p"] = self.streams.snapshot()
        if self.writes_events:
            assert self.events is not None
            msg["w"] = {"events": self.events.own_position()}
        self._send(msg)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.reactor.callLater(FLUSH_DELAY_S, self._flush)

    def events_written(self) -> None:
        """An events writer's write ended: publish its new claim (coalesced), since the
        other processes' readable position may wait for it."""
        if self._stopped or (self._claim_call is not None and self._claim_call.active()):
            return
        self._claim_call = self.reactor.callLater(0, self.publish_claim)

    def publish_claim(self) -> None:
        if self._stopped or not self.writes_events:
            return
        assert self.events is not None
        self._send({"k": "pos", "w": {"events": self.events.own_position()}})
        self._schedule_flush()

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
        await self.store.save_positions(self.instance, self._own())

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
        elif kind in ("wake", "pos"):
            self._on_positions(kind, msg)
        elif isinstance(kind, str) and kind in self.handlers:
            self.handlers[kind](msg)

    def _on_positions(self, kind: str, msg: JsonDict) -> None:
        sender = msg.get("i")
        from_main = sender == self.writer and not self.is_writer
        claim = self._writer_claim(sender, msg.get("w"))
        if kind == "wake" and from_main:
            positions = msg.get("p")
            self.streams.advance(positions if isinstance(positions, dict) else {})
        if kind == "wake" and (from_main or claim is not None):
            self.apply_wake({}, _ids(msg.get("u")), _ids(msg.get("r")), claim)

    def _writer_claim(self, sender: Any, w: Any) -> int | None:
        """An events writer's published claim, applied (None: not one)."""
        if self.events is None or not isinstance(sender, str) \
                or sender not in self.events.writers or sender == self.instance \
                or not isinstance(w, dict):
            return None
        position = w.get("events")
        if not isinstance(position, int) or isinstance(position, bool) \
                or not 0 <= position <= MAX_POSITION:
            return None
        if self.events.advance_writer(sender, position):
            self.publish_claim()  # idle: our claim followed theirs (multi_writer.py)
        return position

    def apply_wake(self, positions: dict[str, Any], users: list[str], rooms: list[str],
                   events_position: int | None = None) -> None:
        self.streams.advance(positions)
        owns = self.persister.owns_room
        for room_id in rooms:  # its state may have changed: re-read when next needed
            if owns is None or not owns(room_id):
                self.persister.forget_room(room_id)
        if self.events is not None and events_position is not None:
            # Not before every writer has persisted up to it: woken earlier, a long-poll
            # would find nothing and sleep through the event.
            self.events.notify_when_readable(
                events_position, lambda: self.notifier.notify_remote(users, rooms))
        else:
            self.notifier.notify_remote(users, rooms)

    def on_connected(self) -> None:
        """(Re)subscribed: whatever was published meanwhile is in the database."""
        if self._catches_up and not self._stopped:
            self._track(self.catch_up())

    @property
    def _catches_up(self) -> bool:
        """Every process but a main process writing every stream reads others' positions."""
        return not self.is_writer or self.events is not None

    async def catch_up(self, starting: bool = False) -> None:
        """Advance to the writers' recorded positions; wake every long-poll to re-check.
        ``starting``: a reader begins exactly at them (see ``StreamSet.reset``)."""
        moved = False
        if not self.is_writer:
            mains = await self.store.get_positions(self.writer)
            if starting and mains:
                self.streams.reset(mains)
            moved = self.streams.advance(mains)
        if self.events is not None:
            recorded = await self.store.get_stream_positions("events")
            before = self.events.current()
            claims = {w: p for w, p in recorded.items()
                      if w in self.events.writers and w != self.instance}
            if not self.events.is_writer:
                # A writer that never recorded has never started: nothing in flight.
                # Until every writer has, readers hold at the lowest recorded one.
                floor = min(claims.values(), default=0)
                claims = {w: claims.get(w, floor) for w in self.events.writers}
            if self.events.advance_all(claims):
                self.publish_claim()
            moved = moved or self.events.current() != before
        self.catch_ups += 1
        if moved:
            self.notifier.wake_all()

    # -- life cycle

    async def start(self, link: RedisLink | None) -> None:
        self.link = link
        if self.is_writer or self.writes_events:
            await self.flush_positions()  # a floor for workers starting before any write
            self.publish_claim()
        if self._catches_up:
            await self.catch_up(starting=True)
            self._loop = LoopingCall(lambda: None if self._stopped else self._track(self.catch_up()))
            self._loop.clock = self.reactor
            self._loop.start(CATCH_UP_INTERVAL_S, now=False)

    async def stop(self) -> None:
        """Before the database closes: record the last positions, close Redis."""
        if self._stopped:
            return
        for fn in self.on_stop:
            result = fn()
            if isinstance(result, defer.Deferred):
                self._pending.add(result)
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._claim_call is not None and self._claim_call.active():
            self._claim_call.cancel()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            if self.is_writer or self.writes_events:
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
    positions = rooms.persister.positions
    events = positions if isinstance(positions, MultiWriterPositions) else None
    rep = Replication(
        instance=wc.instance, writer=writer, is_writer=wc.is_main, notifier=notifier,
        streams=StreamSet(sync.sync, rooms.persister, multi_events=events is not None),
        store=ReplicationStore(db),
        session_cache=accounts.session_cache, push_actions=rooms.push_actions,
        persister=rooms.persister, reactor=reactor, events=events)
    notifier.on_local_notify = rep.local_notify
    if events is not None:
        _wire_event_writers(rep, events, wc, rooms)
    if wc.is_main:
        rep.typing = sync.typing
        sync.typing.on_edu.append(rep.typing_changed)
    else:  # typing is the main process's: mirror it as /sync's typing source
        rep.typing_mirror = TypingMirror(clock, 0)
        sync.sync.sources[:] = [rep.typing_mirror if src.name == "typing" else src
                                for src in sync.sync.sources]
    _wire_presence(rep, config, clock, sync.presence, reactor)
    accounts.session_cache.add_revocation_listener(rep.sessions_revoked)
    accounts.push_rules.on_change.append(rep.push_rules_changed)
    link = RedisLink(config.redis, reactor, rep.on_message, rep.on_connected)
    _metrics(rep, link, registry)
    await rep.start(link)
    return rep


def _wire_presence(rep: Replication, config: Config, clock: Clock, presence: Any,
                   reactor: Any) -> None:
    """Presence is written by the main process: a worker reports its syncs to it
    (homeserver/replication/presence.py) and reads what main broadcast."""
    wc = config.workers
    if not wc.is_main:
        presence.read_only()
    if not config.presence_enabled:
        return
    if wc.is_main:
        remote = RemoteSyncs(clock, presence, set(wc.workers) - {wc.instance})
        rep.handlers.update(remote.handlers())
        remote.start()
        rep.presence_syncs = remote
        rep.on_stop.append(lambda: defer.ensureDeferred(remote.stop()))
    elif wc.role in SYNCING_ROLES:
        reporter = SyncReporter(clock, reactor, rep.send)
        presence.report_sync = reporter.user_syncing
        reporter.start()
        rep.presence_syncs = reporter
        rep.on_stop.append(reporter.stop)


def _wire_event_writers(rep: Replication, events: MultiWriterPositions, wc: Any,
                        rooms: Any) -> None:
    """Several events writers: this process writes only the rooms it owns (and draws new
    rooms' ids among them); an event persister writes no other stream."""
    def owns(room_id: str) -> bool:
        return writer_for(wc, room_id) == wc.instance

    rooms.persister.owns_room = owns
    rooms.room_creation.owns_room = owns
    if events.is_writer:
        events.on_written = rep.events_written
    if not wc.is_main:
        # Presence and device-list changes are the main process's streams (single
        # writer); a persister recording them would be a second, unseen writer.
        rooms.fanout._subscribers[:] = [  # noqa: SLF001 (no unsubscribe in the fan-out)
            (n, s) for n, s in rooms.fanout._subscribers  # noqa: SLF001
            if n not in MAIN_ONLY_SUBSCRIBERS]


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
