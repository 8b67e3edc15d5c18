"""Read receipts (``m.read``, ``m.read.private``) and the read marker (``m.fully_read``).

Receipts are "read up to here" markers: one per user, room, type and thread
(unthreaded, ``main`` or a thread root), persisted with a position on the ``receipts``
stream. They only move forward: a receipt for an event older than the current one is
accepted and ignored, as Synapse does, so a lagging client cannot rewind it.

Where we are stricter than Synapse (which silently ignores receipts on unknown events
and lets anyone who can see an event send one):
- only members joined to the room may send receipts or set markers (403);
- an unknown event, an event of another room and an event the user may not see are
  all the same 404, so the answer never confirms that a hidden event exists;
- /sync leaves out receipts on events the syncing user may not see (such as history
  from before they joined), not only other users' private receipts.

``m.fully_read`` is room account data, written through the account-data handler (which
wakes the owner's /sync); it never appears under ``m.receipt``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from homeserver.clock import Clock
from homeserver.events.model import Event
from homeserver.handlers.account_data import AccountDataHandler
from homeserver.handlers.stream_positions import StreamPositions
from homeserver.handlers.visibility import VisibilityHandler
from homeserver.http.errors import Codes, MatrixError, forbidden, not_found
from homeserver.identifiers import check_room_id
from homeserver.notifier import NotifierInterface
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore
from storage.stores.receipts import ReceiptRecord, ReceiptStore
from storage.stores.room_members import RoomMemberStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
READ = "m.read"
READ_PRIVATE = "m.read.private"
FULLY_READ = "m.fully_read"
RECEIPT_TYPES = (READ, READ_PRIVATE, FULLY_READ)
MAIN_THREAD = "main"
MAX_ID_LENGTH = 255
# How many relations (a reaction to an edit of a threaded reply, ...) we follow to
# decide whether an event belongs to a thread.
MAX_RELATION_HOPS = 3


def _invalid(msg: str) -> MatrixError:
    return MatrixError(400, msg, Codes.INVALID_PARAM)


def check_event_id(event_id: Any) -> str:
    if not isinstance(event_id, str) or not event_id.startswith("$") or len(event_id) < 2 \
            or len(event_id.encode("utf-8")) > MAX_ID_LENGTH:
        raise _invalid("A valid event ID must be specified")
    return event_id


def _relation(event: Event) -> tuple[str | None, str | None]:
    """(rel_type, target event id) of the event's ``m.relates_to``, if well formed."""
    rel = event.content.get("m.relates_to")
    if not isinstance(rel, dict) or not isinstance(rel.get("event_id"), str):
        return None, None
    rel_type = rel.get("rel_type")
    return (rel_type if isinstance(rel_type, str) else None), rel["event_id"]


def _thread_root(event: Event) -> str | None:
    rel_type, target = _relation(event)
    return target if rel_type == "m.thread" else None


class ReceiptsHandler:
    """POST /receipt and /read_markers; an ``EphemeralSource`` for ``m.receipt``."""

    name = "receipts"

    def __init__(
        self,
        clock: Clock,
        store: ReceiptStore,
        events: EventStore,
        members: RoomMemberStore,
        visibility: VisibilityHandler,
        account_data: AccountDataHandler,
        account_data_store: AccountDataStore,
        notifier: NotifierInterface,
        presence: Any = None,
    ) -> None:
        self._clock = clock
        self._store = store
        self._events = events
        self._members = members
        self._visibility = visibility
        self._account_data = account_data
        self._ad_store = account_data_store
        self._notifier = notifier
        self._presence = presence  # PresenceHandler: receipts count as activity
        self._positions = StreamPositions(store.allocate_stream_id)
        # Called with (user, room) when a read receipt moved (push badge updates).
        self.on_read: list[Callable[[str, str], None]] = []
        # Told each new public receipt as an m.receipt EDU (application services).
        self.on_edu: list[Callable[[JsonDict], None]] = []

    async def load_position(self) -> None:
        self._positions.start_at(await self._store.max_stream_id())

    @property
    def positions(self) -> StreamPositions:
        """The stream's positions (replication advances a reader's from the writer's)."""
        return self._positions

    def current_position(self) -> int:
        return self._positions.current()

    # Writes

    async def post_receipt(self, user_id: str, device_id: str | None, room_id: str,
                           receipt_type: str, event_id: str, body: JsonDict) -> None:
        """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}."""
        check_room_id(room_id)
        check_event_id(event_id)
        if receipt_type not in RECEIPT_TYPES:
            raise _invalid(f"Receipt type must be one of {', '.join(RECEIPT_TYPES)}")
        thread_id: str | None = None
        if "thread_id" in body:
            raw = body["thread_id"]
            if not isinstance(raw, str) or not raw or len(raw.encode("utf-8")) > MAX_ID_LENGTH:
                raise _invalid("thread_id field must be a non-empty string")
            if receipt_type == FULLY_READ:
                raise _invalid(f"thread_id is not compatible with {FULLY_READ} receipts")
            thread_id = raw
        await self._require_joined(user_id, room_id)
        event = await self._visible_event(user_id, room_id, event_id)
        if thread_id is not None and not await self._in_thread(event, thread_id):
            raise _invalid("event_id is not related to thread_id")
        if receipt_type == FULLY_READ:
            await self._set_fully_read(user_id, room_id, event)
        else:
            await self._set_receipt(user_id, room_id, receipt_type, event, thread_id)
        await self._bump(user_id, device_id)

    async def set_read_markers(self, user_id: str, device_id: str | None, room_id: str,
                               body: JsonDict) -> None:
        """POST /rooms/{roomId}/read_markers: any of the three, all checked before any
        is applied. Unknown keys are ignored (receipt types must stay extensible)."""
        check_room_id(room_id)
        wanted = {t: check_event_id(body[t]) for t in RECEIPT_TYPES if body.get(t) not in (None, "")}
        await self._require_joined(user_id, room_id)
        events = {t: await self._visible_event(user_id, room_id, eid) for t, eid in wanted.items()}
        for receipt_type, event in events.items():
            if receipt_type == FULLY_READ:
                await self._set_fully_read(user_id, room_id, event)
            else:
                await self._set_receipt(user_id, room_id, receipt_type, event, None)
        await self._bump(user_id, device_id)

    async def _require_joined(self, user_id: str, room_id: str) -> None:
        membership = await self._members.get_membership(user_id, room_id)
        if membership is None or membership.membership != "join":
            raise forbidden("You are not in this room")

    async def _visible_event(self, user_id: str, room_id: str, event_id: str) -> Event:
        event = await self._events.get_event(event_id)
        if event is None or event.room_id != room_id \
                or not await self._visibility.filter_events(user_id, [event]):
            raise not_found("Event not found")
        return event

    async def _in_thread(self, event: Event, thread_id: str) -> bool:
        """Synapse's rule: ``main`` takes any event that is not itself in a thread; a
        thread root takes the root, its thread's events, and events related (through
        a few hops of any relation) to those."""
        if thread_id == MAIN_THREAD:
            return _thread_root(event) is None
        current = event
        for _ in range(MAX_RELATION_HOPS + 1):
            if current.event_id == thread_id or _thread_root(current) == thread_id:
                return True
            _, target = _relation(current)
            if target is None:
                return False
            parent = await self._events.get_event(target)
            if parent is None or parent.room_id != event.room_id:
                return False
            current = parent
        return False

    async def _set_receipt(self, user_id: str, room_id: str, receipt_type: str, event: Event,
                           thread_id: str | None) -> None:
        async with self._positions.write() as position:
            written = await self._store.upsert_receipt(
                room_id, receipt_type, user_id, thread_id, event.event_id,
                event.internal.stream_ordering or 0, self._clock.time_msec(), position)
        if not written:
            return
        for listener in self.on_read:
            listener(user_id, room_id)
        if receipt_type != READ_PRIVATE and self.on_edu:
            data: JsonDict = {"ts": self._clock.time_msec()}
            if thread_id is not None:
                data["thread_id"] = thread_id
            edu = {"type": "m.receipt", "room_id": room_id,
                   "content": {event.event_id: {receipt_type: {user_id: data}}}}
            for edu_listener in self.on_edu:
                edu_listener(edu)
        if receipt_type == READ_PRIVATE:
            self._positions.notify_when_readable(
                position, lambda: self._notifier.notify(user_ids=[user_id]))
        else:
            self._positions.notify_when_readable(
                position, lambda: self._notifier.notify(room_ids=[room_id]))

    async def receive_remote_receipt(self, user_id: str, room_id: str, receipt_type: str,
                                     event_id: str, thread_id: str | None, ts: int) -> bool:
        """A public receipt from the user's own server (federation checked that), kept
        if the user is joined and the event is one of the room's; False if ignored."""
        if receipt_type != READ:
            return False
        membership = await self._members.get_membership(user_id, room_id)
        if membership is None or membership.membership != "join":
            return False
        event = await self._events.get_event(event_id)
        if event is None or event.room_id != room_id:
            return False
        async with self._positions.write() as position:
            written = await self._store.upsert_receipt(
                room_id, receipt_type, user_id, thread_id, event.event_id,
                event.internal.stream_ordering or 0, ts, position)
        if written:
            self._positions.notify_when_readable(
                position, lambda: self._notifier.notify(room_ids=[room_id]))
        return written

    async def _set_fully_read(self, user_id: str, room_id: str, event: Event) -> None:
        """Move the read marker, forward only (as Synapse without ``allow_backward``)."""
        current = await self._ad_store.get_account_data(user_id, room_id, FULLY_READ)
        current_id = current.get("event_id") if isinstance(current, dict) else None
        if isinstance(current_id, str):
            if current_id == event.event_id:
                return
            previous = await self._events.get_event(current_id)
            if previous is not None and previous.room_id == room_id and \
                    (previous.internal.stream_ordering or 0) > (event.internal.stream_ordering or 0):
                return
        await self._account_data.set_account_data(user_id, room_id, FULLY_READ,
                                                  {"event_id": event.event_id})

    async def _bump(self, user_id: str, device_id: str | None) -> None:
        if self._presence is not None:
            await self._presence.bump_active(user_id, device_id)

    # EphemeralSource

    async def has_updates(self, user_id: str, room_ids: list[str], since: int) -> bool:
        if not room_ids:
            return False
        return await self._store.has_receipts_since(room_ids, user_id, READ_PRIVATE, since)

    async def room_events(self, user_id: str, room_ids: list[str], since: int, upto: int
                          ) -> dict[str, list[JsonDict]]:
        """One ``m.receipt`` per room with receipts written in (since, upto] (all current
        ones on an initial sync) that ``user_id`` may see."""
        if not room_ids or upto <= since:
            return {}
        records = [r for r in await self._store.get_receipts(room_ids, since, upto)
                   if r.receipt_type != READ_PRIVATE or r.user_id == user_id]
        if not records:
            return {}
        found = await self._events.get_events(r.event_id for r in records)
        visible = {e.event_id for e in await self._visibility.filter_events(
            user_id, sorted(found.values(), key=lambda e: e.internal.stream_ordering or 0))}
        out: dict[str, list[JsonDict]] = {}
        by_room: dict[str, JsonDict] = {}
        for rec in records:
            if rec.event_id not in visible:
                continue
            content = by_room.setdefault(rec.room_id, {})
            content.setdefault(rec.event_id, {}).setdefault(rec.receipt_type, {})[rec.user_id] = \
                self._receipt_data(rec)
        for room_id, content in by_room.items():
            out[room_id] = [{"type": "m.receipt", "content": content}]
        return out

    @staticmethod
    def _receipt_data(rec: ReceiptRecord) -> JsonDict:
        data: JsonDict = {"ts": rec.ts}
        if rec.thread_id is not None:
            data["thread_id"] = rec.thread_id
        return data

    async def global_section(self, user_id: str, device_id: str | None, since: int, upto: int
                             ) -> dict[str, Any]:
        return {}
