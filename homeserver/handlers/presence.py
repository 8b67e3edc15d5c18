"""Presence: online / unavailable / offline, a status message, and when a user was last
active, shown to the users who share a room with them.

The model follows Synapse so clients see what they expect:

- Each device has its own state, set by ``PUT /presence`` or by ``/sync?set_presence=``
  (``offline`` there means "this sync does not count"); the user's state is the
  highest of their devices' (online > unavailable > offline).
- A device that neither syncs nor does anything for ``SYNC_ONLINE_TIMEOUT_MS`` after
  its last sync ends is gone; an online device idle for ``IDLE_TIMER_MS`` becomes
  unavailable. Sending events, receipts, read markers and typing count as activity.
- ``currently_active`` is "active in the last minute"; a change is only broadcast
  (written on the ``presence`` stream) when it is worth telling others about.

State lives in memory for users with devices and is persisted on every broadcast
change, so a restart restores it (as one pseudo-device that then times out normally).
With ``presence.enabled: false`` nothing is tracked or sent and every user reads as
offline, as Synapse does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.handlers.stream_positions import StreamPositions
from homeserver.http.errors import forbidden, not_found
from homeserver.identifiers import split_user_id
from homeserver.notifier import NotifierInterface
from storage.stores.presence import PresenceRecord, PresenceStore
from storage.stores.room_members import RoomMemberStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
ONLINE, UNAVAILABLE, OFFLINE = "online", "unavailable", "offline"
STATES = (ONLINE, UNAVAILABLE, OFFLINE)
_PRIORITY = {OFFLINE: 0, UNAVAILABLE: 1, ONLINE: 2}

LAST_ACTIVE_GRANULARITY_MS = 60_000  # "currently active" = active in the last minute
SYNC_ONLINE_TIMEOUT_MS = 30_000  # a device is gone this long after its last sync ended
IDLE_TIMER_MS = 5 * 60_000  # online but idle this long: unavailable
CHECK_INTERVAL_S = 5.0
MAX_PEEKED_MEMBERS = 500  # presence changes of a peeked room's members per answer


@dataclass
class _Device:
    state: str
    last_active_ts: int = 0
    alive_until: int = 0  # ms; a sync in progress keeps the device until then
    # Syncs held by other processes (client workers), by process: when the one reported
    # last ends (ms). Dropped when that process stops reporting (``process_gone``).
    remote: dict[str, int] = field(default_factory=dict)

    def alive(self) -> int:
        """Until when the device stays (ms), whatever process its syncs are held by."""
        remote = max(self.remote.values(), default=0)
        return max(self.alive_until, remote + SYNC_ONLINE_TIMEOUT_MS,
                   self.last_active_ts + SYNC_ONLINE_TIMEOUT_MS)


@dataclass
class _Live:
    """What is known in memory of a user with devices (or not yet offline)."""

    devices: dict[str | None, _Device] = field(default_factory=dict)
    status_msg: str | None = None
    last_active_ts: int = 0
    last_sync_ts: int = 0


def _default(user_id: str) -> PresenceRecord:
    return PresenceRecord(user_id, OFFLINE, None, 0, 0, False, 0)


def should_notify(old: PresenceRecord, new: PresenceRecord) -> bool:
    """Whether the change from the last broadcast state is worth broadcasting."""
    if old.state != new.state or old.status_msg != new.status_msg:
        return True
    moved = new.last_active_ts - old.last_active_ts > LAST_ACTIVE_GRANULARITY_MS
    if new.state == ONLINE:
        return new.currently_active != old.currently_active or (moved and not new.currently_active)
    return moved


def format_presence(rec: PresenceRecord, now_ms: int) -> JsonDict:
    """The client form (GET /presence/.../status and m.presence content)."""
    out: JsonDict = {"presence": rec.state}
    if rec.last_active_ts:
        out["last_active_ago"] = max(0, now_ms - rec.last_active_ts)
    if rec.status_msg:
        out["status_msg"] = rec.status_msg
    if rec.state == ONLINE:
        out["currently_active"] = rec.currently_active
    return out


class PresenceHandler:
    """Tracks local users' presence; an ``EphemeralSource`` for /sync's ``presence``."""

    name = "presence"

    def __init__(self, server_name: str, clock: Clock, store: PresenceStore,
                 members: RoomMemberStore, users: UserStore, notifier: NotifierInterface,
                 enabled: bool = True) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._members = members
        self._users = users
        self._notifier = notifier
        self.enabled = enabled
        self._positions = StreamPositions(store.allocate_stream_id)
        self._live: dict[str, _Live] = {}
        self._broadcast: dict[str, PresenceRecord] = {}  # last written state of live users
        self._timer: IDelayedCall | None = None
        self._checking: defer.Deferred[None] | None = None
        # Told each broadcast m.presence EDU with the user's rooms (application services).
        self.on_edu: list[Callable[[JsonDict, list[str]], None]] = []
        # In a process that does not write presence (a client worker): its syncs'
        # ``set_presence`` go here (homeserver/replication/presence.py reports them to
        # the main process); None in the writer.
        self.report_sync: Callable[[str, str | None, str, int], None] | None = None

    def read_only(self) -> None:
        """This process does not write presence: forget what ``load`` put in memory so
        reads come from the database (the writer's broadcasts), never from a stale copy."""
        self._live.clear()
        self._broadcast.clear()

    async def load(self) -> None:
        """Start-up: the stream position, and everyone not offline (to time them out)."""
        if not self.enabled:
            return
        self._positions.start_at(await self._store.max_stream_id())
        for rec in await self._store.not_offline():
            alive = max(rec.last_sync_ts, rec.last_active_ts) + SYNC_ONLINE_TIMEOUT_MS
            self._live[rec.user_id] = _Live(
                {None: _Device(rec.state, rec.last_active_ts, alive)}, rec.status_msg,
                rec.last_active_ts, rec.last_sync_ts)
            self._broadcast[rec.user_id] = rec

    def start(self) -> None:
        """Check timeouts every few seconds (idle, stopped syncing, no longer active)."""
        if self.enabled and self._timer is None:
            self._timer = self._clock.call_later(CHECK_INTERVAL_S, self._tick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = self._clock.call_later(CHECK_INTERVAL_S, self._tick)
        if self._checking is None:
            self._checking = defer.ensureDeferred(self.check_timeouts())
            self._checking.addErrback(
                lambda f: logger.error("presence timeout check failed: %s", f.getErrorMessage()))
            self._checking.addBoth(lambda _: setattr(self, "_checking", None))

    async def check_timeouts(self) -> None:
        for user_id in list(self._live):
            await self._refresh(user_id)

    # Changes

    async def set_from_client(self, requester: str, device_id: str | None, user_id: str,
                              state: str, status_msg: str | None) -> None:
        """PUT /presence/{userId}/status: yourself only; counts as activity."""
        split_user_id(user_id)
        if requester != user_id:
            raise forbidden("Can only set your own presence state")
        if not self.enabled:
            return
        now = self._clock.time_msec()
        live = await self._live_for(user_id)
        device = live.devices.setdefault(device_id, _Device(OFFLINE))
        device.state = state
        device.last_active_ts = now
        live.last_active_ts = now
        live.status_msg = status_msg
        await self._refresh(user_id)

    async def user_syncing(self, user_id: str, device_id: str | None, set_presence: str,
                           timeout_ms: int) -> None:
        """A /sync started with ``set_presence``: the device is in that state (and
        alive) until the sync has ended plus ``SYNC_ONLINE_TIMEOUT_MS``."""
        if not self.enabled or set_presence not in (ONLINE, UNAVAILABLE):
            return
        try:
            now = self._clock.time_msec()
            live = await self._live_for(user_id)
            device = live.devices.setdefault(device_id, _Device(OFFLINE))
            device.state = set_presence
            device.last_active_ts = now
            device.alive_until = max(device.alive_until,
                                     now + timeout_ms + SYNC_ONLINE_TIMEOUT_MS)
            live.last_sync_ts = now
            if set_presence == ONLINE:
                live.last_active_ts = now
            await self._refresh(user_id)
        except Exception:  # noqa: BLE001 (a presence hiccup must not fail the sync)
            logger.exception("failed to update presence for a sync")

    async def remote_syncing(self, process: str, user_id: str, device_id: str | None,
                             state: str, remaining_ms: int, active_ago_ms: int) -> None:
        """A sync held by another process (a client worker's report, bounded by the
        caller): as :meth:`user_syncing`, with the device kept until that process's
        sync ends (``remaining_ms`` from now) plus ``SYNC_ONLINE_TIMEOUT_MS``, or until
        that process stops reporting. ``active_ago_ms``: since that sync started."""
        if not self.enabled or state not in (ONLINE, UNAVAILABLE) or not self._is_mine(user_id):
            return
        now = self._clock.time_msec()
        started = now - active_ago_ms
        live = await self._live_for(user_id)
        device = live.devices.setdefault(device_id, _Device(OFFLINE))
        device.state = state
        device.last_active_ts = max(device.last_active_ts, started)
        device.remote[process] = now + remaining_ms
        live.last_sync_ts = max(live.last_sync_ts, started)
        if state == ONLINE:
            live.last_active_ts = max(live.last_active_ts, started)
        await self._refresh(user_id)

    async def process_gone(self, process: str) -> None:
        """``process`` stopped (or stopped reporting): its syncs no longer keep devices;
        they time out as if those syncs had just ended."""
        for user_id, live in list(self._live.items()):
            touched = False
            for device in live.devices.values():
                touched = device.remote.pop(process, None) is not None or touched
            if touched:
                await self._refresh(user_id)

    async def bump_active(self, user_id: str, device_id: str | None) -> None:
        """The user did something (sent an event, a receipt, typed). Never raises: a
        presence hiccup must not fail the action that caused it."""
        if not self.enabled or not self._is_mine(user_id):
            return
        try:
            now = self._clock.time_msec()
            live = await self._live_for(user_id)
            device = live.devices.setdefault(device_id, _Device(OFFLINE))
            device.last_active_ts = now
            device.alive_until = max(device.alive_until, now)
            live.last_active_ts = now
            await self._refresh(user_id)
        except Exception:  # noqa: BLE001
            logger.exception("failed to update presence activity")

    async def after_persist(self, event: Event) -> None:
        """Sending an event is activity (the hook runs for every local event)."""
        await self.bump_active(event.sender, event.internal.device_id)

    async def _live_for(self, user_id: str) -> _Live:
        live = self._live.get(user_id)
        if live is not None:
            return live
        stored = (await self._store.get_many([user_id])).get(user_id) or _default(user_id)
        live = self._live.setdefault(user_id, _Live(
            status_msg=stored.status_msg, last_active_ts=stored.last_active_ts,
            last_sync_ts=stored.last_sync_ts))
        self._broadcast.setdefault(user_id, stored)
        return live

    def _compute(self, user_id: str, live: _Live, now: int) -> PresenceRecord:
        """The user's state now, applying device timeouts (mutates ``live.devices``)."""
        for device_id, device in list(live.devices.items()):
            if device.state == ONLINE and now - device.last_active_ts > IDLE_TIMER_MS:
                device.state = UNAVAILABLE
            if now > device.alive():
                del live.devices[device_id]
        state = max((d.state for d in live.devices.values()), key=_PRIORITY.__getitem__,
                    default=OFFLINE)
        active = state == ONLINE and now - live.last_active_ts < LAST_ACTIVE_GRANULARITY_MS
        return PresenceRecord(user_id, state, live.status_msg, live.last_active_ts,
                              live.last_sync_ts, active)

    async def _refresh(self, user_id: str) -> None:
        """Recompute; write and broadcast if worth it; forget users gone offline."""
        live = self._live.get(user_id)
        if live is None:
            return
        now = self._clock.time_msec()
        new = self._compute(user_id, live, now)
        old = self._broadcast.get(user_id) or _default(user_id)
        if should_notify(old, new):
            async with self._positions.write() as position:
                new = replace(new, stream_id=position)
                await self._store.store(new)
            if self._live.get(user_id) is live:
                self._broadcast[user_id] = new
            rooms = [m.room_id for m in await self._members.rooms_for_user(user_id)]
            if self.on_edu:
                edu = {"type": "m.presence", "sender": user_id,
                       "content": format_presence(new, now)}
                for listener in self.on_edu:
                    listener(edu, rooms)
            self._positions.notify_when_readable(
                new.stream_id, lambda: self._notifier.notify(user_ids=[user_id], room_ids=rooms))
        if not live.devices and new.state == OFFLINE and self._live.get(user_id) is live:
            del self._live[user_id]
            self._broadcast.pop(user_id, None)

    async def receive_remote(self, user_id: str, state: str, status_msg: str | None,
                             last_active_ago: int, currently_active: bool) -> bool:
        """A remote user's presence from their own server (federation checked that):
        stored and shown to local users sharing a room with them; False if ignored
        (presence off, an unknown state, or nobody here shares a room with them)."""
        if not self.enabled or state not in STATES or self._is_mine(user_id):
            return False
        rooms = [m.room_id for m in await self._members.rooms_for_user(user_id)]
        if not rooms:
            return False
        now = self._clock.time_msec()
        rec = PresenceRecord(user_id, state, status_msg, max(0, now - last_active_ago), 0,
                             currently_active and state == ONLINE)
        async with self._positions.write() as position:
            rec = replace(rec, stream_id=position)
            await self._store.store(rec)
        self._positions.notify_when_readable(
            position, lambda: self._notifier.notify(room_ids=rooms))
        return True

    # Reads

    async def current(self, user_id: str) -> PresenceRecord:
        live = self._live.get(user_id)
        if live is not None:
            return self._compute(user_id, live, self._clock.time_msec())
        return (await self._store.get_many([user_id])).get(user_id) or _default(user_id)

    async def get_for_client(self, requester: str, user_id: str) -> JsonDict:
        """GET /presence/{userId}/status: yourself, or someone you share a room with."""
        _, server = split_user_id(user_id)
        if not self.enabled:
            return {"presence": OFFLINE}
        if requester != user_id:
            if server == self._server_name and not await self._users.user_exists(user_id):
                raise not_found("Unknown user")
            mine = {m.room_id for m in await self._members.rooms_for_user(requester)}
            theirs = {m.room_id for m in await self._members.rooms_for_user(user_id)}
            if not mine & theirs:
                raise forbidden("You are not allowed to see their presence")
        return format_presence(await self.current(user_id), self._clock.time_msec())

    async def presence_events(self, user_ids: Iterable[str]) -> list[JsonDict]:
        """m.presence events of the current state of ``user_ids`` (offline for users
        never seen), for views of a given set of people: a room initialSync, members
        coming into view in an incremental /sync or legacy /events."""
        if not self.enabled:
            return []
        ids = sorted(set(user_ids))
        stored = await self._store.get_many([u for u in ids if u not in self._live])
        now = self._clock.time_msec()
        out = []
        for user_id in ids:
            live = self._live.get(user_id)
            rec = self._compute(user_id, live, now) if live is not None else \
                stored.get(user_id) or _default(user_id)
            out.append({"type": "m.presence", "sender": user_id,
                        "content": format_presence(rec, now)})
        return out

    def _is_mine(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name)

    # EphemeralSource

    @property
    def positions(self) -> StreamPositions:
        """The stream's positions (replication advances a reader's from the writer's)."""
        return self._positions

    def current_position(self) -> int:
        return self._positions.current()

    async def has_updates(self, user_id: str, room_ids: list[str], since: int) -> bool:
        return self.enabled and bool(await self._store.visible_changes(user_id, since, limit=1))

    async def room_events(self, user_id: str, room_ids: list[str], since: int, upto: int
                          ) -> dict[str, list[JsonDict]]:
        return {}

    async def global_section(self, user_id: str, device_id: str | None, since: int, upto: int,
                             peeked_room: str | None = None) -> dict[str, Any]:
        """Initial sync: everyone visible who is not offline; incremental: whoever
        visible changed in (since, upto]. ``peeked_room`` (legacy /events?room_id= of
        a room the caller may read, as Synapse's explicit room) adds its joined
        members, at most ``MAX_PEEKED_MEMBERS`` of them."""
        if not self.enabled:
            return {}
        if 0 < since >= upto:  # an incremental sync and no presence change since: no read
            return {"presence": {"events": []}}
        now = self._clock.time_msec()
        events = []
        records = await self._store.visible_changes(user_id, since, upto)
        if peeked_room is not None:
            seen = {rec.user_id for rec in records}
            records.extend(rec for rec in await self._store.room_member_changes(
                peeked_room, since, upto, MAX_PEEKED_MEMBERS) if rec.user_id not in seen)
            records.sort(key=lambda rec: rec.stream_id)
        for rec in records:
            if since == 0 and rec.state == OFFLINE:
                continue
            live = self._live.get(rec.user_id)
            if live is not None and live.last_active_ts > rec.last_active_ts:
                # Activity since the broadcast: report the true last_active_ago.
                active = rec.state == ONLINE and \
                    now - live.last_active_ts < LAST_ACTIVE_GRANULARITY_MS
                rec = replace(rec, last_active_ts=live.last_active_ts, currently_active=active)
            events.append({"type": "m.presence", "sender": rec.user_id,
                           "content": format_presence(rec, now)})
        return {"presence": {"events": events}}
