"""The federation sender: what local users do, queued for the servers that must hear it.

PDUs: every LOCAL event (from the typed fan-out) goes to the servers with a user
joined to its room, plus, for a membership event, the server of its target (an
invitee, a kicked or banned user). EDUs, from the handlers' hook lists:

- ``m.typing`` (local users, to the room's servers; in memory only),
- ``m.receipt`` (public receipts of local users, coalesced per user/room/type),
- ``m.presence`` (local users, to servers sharing a room, coalesced per user),
- ``m.device_list_update`` (a local user's device changed, with ``stream_id`` and
  ``prev_id``, to servers sharing a room),
- ``m.signing_key_update`` (a local user's master/self-signing key changed),
- ``m.direct_to_device`` (to-device messages for remote users, to their server).

Everything but typing is written to the persistent queue (storage/stores/
federation_queue.py); each destination has a :class:`DestinationQueue` sending it.
How far local events were looked at is written every few seconds; on start, local
events after that point are queued again unless already queued (a crash between
storing an event and its fan-out loses nothing).
Blocked servers and servers outside ``federation.allowed_servers`` get nothing (their
queue is dropped).
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from federation.sender.backoff import BackoffPolicy
from federation.sender.queue import DestinationQueue
from homeserver.clock import Clock
from homeserver.config.federation import FederationConfig
from homeserver.handlers.event_fanout import PersistedEvent, PersistKind
from storage.stores.cross_signing import CrossSigningStore
from storage.stores.devices import DeviceStore
from storage.stores.e2e_keys import E2eKeyStore
from storage.stores.events import EventStore
from storage.stores.federation_queue import EduRow, FederationQueueStore, server_of

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
ROOM_CACHE_SIZE = 10_000
# A room's servers are read again after this long even if no member event said so: with
# event persisters, main learns of another process's member events through forwarded
# side effects, which can give up (the writer restarting); this bounds the staleness.
ROOM_CACHE_TTL_S = 60.0
CHECKPOINT_INTERVAL_S = 5.0
REPLAY_BATCH = 500


class FederationSender:
    def __init__(self, server_name: str, clock: Clock, config: FederationConfig,
                 store: FederationQueueStore, events: EventStore, client: Any,
                 is_blocked: Any, devices: DeviceStore, e2e_keys: E2eKeyStore,
                 cross_signing: CrossSigningStore,
                 policy: BackoffPolicy | None = None) -> None:
        self._server_name = server_name
        self._clock = clock
        self._config = config
        self._store = store
        self._events = events
        self._client = client
        self._is_blocked = is_blocked  # async (server) -> bool (homeserver ServerBlocks)
        self._devices = devices
        self._e2e_keys = e2e_keys
        self._cross_signing = cross_signing
        self.policy = policy or BackoffPolicy()
        self.queues: dict[str, DestinationQueue] = {}
        self._room_servers: OrderedDict[str, tuple[frozenset[str], float]] = OrderedDict()
        self._background: set[defer.Deferred[None]] = set()
        self._typing: dict[str, set[str]] = {}  # room -> local users typing there
        self._stopped = False
        self._seen = 0  # highest stream position the fan-out brought
        self._checkpoint_due = 0  # what the next checkpoint writes (seen one tick ago)
        self._written = 0
        self._timer: Any = None
        # Workers (homeserver/replication/roles.py): whether this process queues local
        # events (the main process does), which destinations it sends to itself, and the
        # stand-in queue of any other destination (it hands kicks to the worker owning it).
        self.queues_events = True
        self.sends_to: Callable[[str], bool] = lambda _destination: True
        self.remote_queue: Callable[[str], Any] | None = None
        # The fan-out's lowest position not yet delivered to every subscriber
        # (EventFanout.lowest_undelivered, set by the wiring): the checkpoint stays below.
        self.undelivered: Callable[[], int | None] = lambda: None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Resume: queue local events the last run may not have looked at, then send
        what was queued or in flight when the server last stopped."""
        if self.queues_events:
            await self._replay()
        await self.kick_pending()
        if self.queues_events:
            self._timer = self._clock.call_later(CHECKPOINT_INTERVAL_S, self._tick)

    async def kick_pending(self) -> None:
        """Send what is queued for the destinations this process sends to (start-up, and
        a federation_sender worker's periodic catch-up)."""
        for destination in await self._store.pending_destinations():
            if self.sends_to(destination) and not self._stopped:
                self.queue(destination).kick()

    async def _replay(self) -> None:
        position = await self._store.get_stream_position()
        if position is None:  # first start: history before federation is not sent
            position = await self._events.max_stream_ordering()
        while True:
            rows = await self._store.local_events_after(self._server_name, position,
                                                        REPLAY_BATCH)
            found = await self._events.get_events(eid for _, _, eid in rows)
            for stream_ordering, _, event_id in rows:
                event = found.get(event_id)
                if event is not None:
                    await self._queue_event(event, stream_ordering)
            if rows:
                position = rows[-1][0]
            if len(rows) < REPLAY_BATCH:
                break
        await self._store.set_stream_position(position)
        self._seen = self._checkpoint_due = self._written = position

    def _tick(self) -> None:
        """Checkpoint what the fan-out brought one interval ago (anything older has been
        queued: a room's records are delivered in order, within moments), and never past
        a record the fan-out has not finished delivering (a room stalled longer)."""
        self._timer = self._clock.call_later(CHECKPOINT_INTERVAL_S, self._tick)
        due, self._checkpoint_due = self._checkpoint_due, self._seen
        lowest = self.undelivered()
        if lowest is not None:  # a room's delivery stalled: later rooms do not count
            due = min(due, lowest - 1)
        if due > self._written:
            self._written = due
            self._spawn(self._store.set_stream_position(due))

    async def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        for d in list(self._background):
            d.cancel()
        for queue in list(self.queues.values()):
            await queue.stop()

    def queue(self, destination: str) -> DestinationQueue:
        q = self.queues.get(destination)
        if q is None and self.remote_queue is not None and not self.sends_to(destination):
            q = self.queues[destination] = self.remote_queue(destination)
        if q is None:
            q = self.queues[destination] = DestinationQueue(
                destination, self._server_name, self._store, self._events, self._client,
                self._clock, self.policy, self.may_send)
        return q

    def wake(self, destination: str) -> None:
        """``destination`` is up (it sent us something, or an admin said so): retry now."""
        self.queue(destination).wake()

    async def heard_from(self, origin: str) -> None:
        """``origin`` sent us a transaction, so it is up: clear its backoff (as Synapse
        does for any authenticated request) and send what waits for it now."""
        state = await self._store.get_destination(origin)
        if state is not None and state.retry_last_ts:
            await self._store.reset_retry(origin)  # its listener: wake()
        elif origin in self.queues:
            self.queues[origin].kick()

    async def may_send(self, destination: str) -> bool:
        if destination == self._server_name or not self._config.enabled:
            return False
        if not self._config.server_allowed(destination):
            return False
        return not await self._is_blocked(destination)

    def _spawn(self, coro: Awaitable[None]) -> None:
        if self._stopped:
            return
        d = defer.ensureDeferred(coro)  # type: ignore[arg-type]
        self._background.add(d)

        def done(result: Any) -> None:
            self._background.discard(d)
            if isinstance(result, Failure) and \
                    not result.check(defer.CancelledError):
                logger.error("federation sender hook failed: %s", result.getErrorMessage())
        d.addBoth(done)

    async def _destinations(self, servers: Iterable[str]) -> list[str]:
        out = []
        for server in sorted(set(servers)):
            if server and server != self._server_name and await self.may_send(server):
                out.append(server)
        return out

    async def _room_destinations(self, room_id: str) -> frozenset[str]:
        entry = self._room_servers.get(room_id)
        now = self._clock.time()
        if entry is None or entry[1] <= now:
            servers = frozenset(await self._store.joined_servers(room_id))
            self._room_servers[room_id] = (servers, now + ROOM_CACHE_TTL_S)
            self._room_servers.move_to_end(room_id)
            if len(self._room_servers) > ROOM_CACHE_SIZE:
                self._room_servers.popitem(last=False)
            return servers
        self._room_servers.move_to_end(room_id)
        return entry[0]

    # -- PDUs (the event fan-out) --------------------------------------------------------

    async def event_persisted(self, record: PersistedEvent) -> None:
        event = record.event
        if event.type == "m.room.member":
            # Whoever joined or left, from here or elsewhere: the room's servers moved.
            self._room_servers.pop(event.room_id, None)
        if record.kind is PersistKind.LOCAL and not event.internal.outlier \
                and event.internal.rejected_reason is None:
            await self._queue_event(event, record.position)
        self._seen = max(self._seen, record.position)

    async def _queue_event(self, event: Any, position: int) -> None:
        if server_of(event.sender) != self._server_name:
            return
        servers = set(await self._room_destinations(event.room_id))
        if event.type == "m.room.member" and event.state_key:
            servers.add(server_of(event.state_key))
        destinations = await self._destinations(servers)
        if not destinations:
            return
        await self._store.enqueue_pdu(destinations, position, event.room_id, event.event_id)
        for d in destinations:
            self.queue(d).kick()

    async def forward_event(self, event: Any, origin: str) -> None:
        """A member event of another server's user that this server took as the room's
        resident (send_join, send_leave, send_knock: federation/membership.py): the
        room's other servers learn it from us, as the spec has the resident do."""
        position = event.internal.stream_ordering
        if position is None or position <= 0:
            return
        servers = set(await self._room_destinations(event.room_id)) - {origin}
        destinations = await self._destinations(servers)
        if not destinations:
            return
        await self._store.enqueue_pdu(destinations, position, event.room_id, event.event_id)
        for d in destinations:
            self.queue(d).kick()

    # -- EDUs ----------------------------------------------------------------------------

    async def _enqueue(self, destinations: list[str], edu_type: str, content: JsonDict,
                       key: str | None) -> None:
        if not destinations:
            return
        await self._store.enqueue_edus([EduRow(d, edu_type, key, content)
                                        for d in destinations])
        for d in destinations:
            self.queue(d).kick()

    def typing_edu(self, edu: JsonDict) -> None:
        """TypingHandler.on_edu: the room's full list; we send who started or stopped."""
        room_id = edu.get("room_id")
        users = set((edu.get("content") or {}).get("user_ids") or [])
        if not isinstance(room_id, str):
            return
        before = self._typing.get(room_id, set())
        mine = {u for u in users if server_of(u) == self._server_name}
        changes = [(u, True) for u in sorted(mine - before)] + \
            [(u, False) for u in sorted(before - mine)]
        if mine:
            self._typing[room_id] = mine
        else:
            self._typing.pop(room_id, None)
        if changes:
            self._spawn(self._send_typing(room_id, changes))

    async def _send_typing(self, room_id: str, changes: list[tuple[str, bool]]) -> None:
        for destination in await self._destinations(await self._room_destinations(room_id)):
            q = self.queue(destination)
            for user_id, typing in changes:
                q.add_typing(room_id, user_id, {"room_id": room_id, "user_id": user_id,
                                                "typing": typing})

    def receipt_edu(self, edu: JsonDict) -> None:
        """ReceiptsHandler.on_edu (public receipts only)."""
        room_id = edu.get("room_id")
        if isinstance(room_id, str):
            self._spawn(self._send_receipts(room_id, edu.get("content") or {}))

    async def _send_receipts(self, room_id: str, content: JsonDict) -> None:
        destinations = await self._destinations(await self._room_destinations(room_id))
        for event_id, by_type in content.items():
            for receipt_type, by_user in by_type.items():
                for user_id, data in by_user.items():
                    if server_of(user_id) != self._server_name:
                        continue
                    thread = data.get("thread_id") if isinstance(data, dict) else None
                    fed_data = {"ts": data.get("ts")} if isinstance(data, dict) else {}
                    if thread is not None:
                        fed_data["thread_id"] = thread
                    out = {room_id: {receipt_type: {user_id: {
                        "event_ids": [event_id], "data": fed_data}}}}
                    key = f"receipt|{room_id}|{receipt_type}|{user_id}|{thread or ''}"
                    await self._enqueue(destinations, "m.receipt", out, key)

    def presence_edu(self, edu: JsonDict, rooms: list[str]) -> None:
        """PresenceHandler.on_edu: a local user's broadcast presence and their rooms."""
        user_id = edu.get("sender")
        if isinstance(user_id, str) and server_of(user_id) == self._server_name:
            self._spawn(self._send_presence(user_id, edu.get("content") or {}, rooms))

    async def _send_presence(self, user_id: str, content: JsonDict, rooms: list[str]) -> None:
        servers: set[str] = set()
        for room_id in rooms:
            servers |= await self._room_destinations(room_id)
        push = {"user_id": user_id, "presence": content.get("presence", "offline")}
        for key in ("last_active_ago", "currently_active", "status_msg"):
            if key in content:
                push[key] = content[key]
        await self._enqueue(await self._destinations(servers), "m.presence",
                            {"push": [push]}, f"presence|{user_id}")

    async def device_changed(self, user_id: str, device_ids: list[str], stream_id: int
                             ) -> None:
        """DeviceListHandler hook: a local user's devices or device keys changed."""
        if server_of(user_id) != self._server_name:
            return
        # Cross-signing keys ride the device list stream under their public key (as in
        # Synapse); other servers hear of them as m.signing_key_update instead.
        cross = {pub for key in (await self._cross_signing.get_keys([user_id])).get(
            user_id, {}).values() for pub in (key.get("keys") or {}).values()}
        device_ids = [d for d in device_ids if d not in cross]
        if not device_ids:
            return
        destinations = await self._destinations(
            await self._store.servers_sharing_rooms(user_id))
        if not destinations:
            return
        prev = await self._store.swap_device_list_prev(user_id, stream_id)
        for device_id in device_ids:
            content: JsonDict = {"user_id": user_id, "device_id": device_id,
                                 "stream_id": stream_id, "prev_id": prev}
            device = await self._devices.get_device(user_id, device_id)
            if device is None:
                content["deleted"] = True
            else:
                if device.display_name is not None:
                    content["device_display_name"] = device.display_name
                keys = await self._e2e_keys.get_device_keys(user_id, device_id)
                if keys is not None:
                    content["keys"] = keys
            await self._enqueue(destinations, "m.device_list_update", content, None)
            prev = [stream_id]

    async def signing_keys_changed(self, user_id: str, _targets: list[str]) -> None:
        """CrossSigningHandler.on_change: a local user's cross-signing keys changed."""
        if server_of(user_id) != self._server_name:
            return
        keys = (await self._cross_signing.get_keys([user_id])).get(user_id, {})
        content: JsonDict = {"user_id": user_id}
        for key_type, field in (("master", "master_key"),
                                ("self_signing", "self_signing_key")):
            if key_type in keys:
                content[field] = keys[key_type]
        if len(content) == 1:
            return
        destinations = await self._destinations(
            await self._store.servers_sharing_rooms(user_id))
        await self._enqueue(destinations, "m.signing_key_update", content,
                            f"signing|{user_id}")

    async def to_device(self, sender: str, event_type: str,
                        messages: dict[str, dict[str, JsonDict]]) -> None:
        """ToDeviceHandler hook: messages for remote users (``{user: {device: content}}``),
        one ``m.direct_to_device`` per destination server."""
        by_server: dict[str, dict[str, dict[str, JsonDict]]] = {}
        for user_id, by_device in messages.items():
            by_server.setdefault(server_of(user_id), {})[user_id] = by_device
        for server, batch in by_server.items():
            if not await self.may_send(server):
                logger.info("dropping to-device message(s) for %s: not allowed", server)
                continue
            content = {"sender": sender, "type": event_type,
                       "message_id": secrets.token_urlsafe(16), "messages": batch}
            await self._enqueue([server], "m.direct_to_device", content, None)
