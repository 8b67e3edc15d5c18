"""PUT /sendToDevice and the ``to_device`` section of /sync.

Messages go into a per-device inbox positioned on the ``to_device`` stream and are
delivered at least once: a message handed out in a sync response stays queued until
the device syncs again with that response's token (or a later one), so a response
lost on the way never loses the Olm messages that carry room keys.

At most ``MAX_PER_SYNC`` messages go into one response. The sync token's to_device
position is global (the ``EphemeralSource`` protocol cannot cap it per device), so
instead of relying on positions for the remainder, the inbox records *at which
position* each message was delivered and only deletes it once acknowledged; what is
left over is delivered by the next sync whatever its ``since``. To make that next sync
return at once instead of long-polling, a device with leftovers is remembered and the
stream is ticked.

Messages for remote users go to ``remote_send`` (the federation sender queues them as
``m.direct_to_device``); without federation they are dropped with a warning. Messages
from remote users arrive through :meth:`receive_remote`. Where we differ from Synapse:
a message body over 64 KiB is refused with 400 ``M_TOO_LARGE``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.clock import Clock
from homeserver.handlers.stream_positions import StreamPositions
from homeserver.http.errors import Codes, MatrixError
from homeserver.identifiers import check_event_type, split_user_id
from homeserver.notifier import NotifierInterface
from storage.stores.devices import DeviceStore
from storage.stores.to_device import ToDeviceStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAX_MESSAGE_BYTES = 64 * 1024
MAX_PER_SYNC = 100
MAX_TXN_ID_BYTES = 255
MAX_DEVICE_ID_BYTES = 255
ALL_DEVICES = "*"


class ToDeviceHandler:
    """Queues to-device messages; an ``EphemeralSource`` for /sync's ``to_device``."""

    name = "to_device"

    def __init__(self, server_name: str, clock: Clock, store: ToDeviceStore,
                 devices: DeviceStore, notifier: NotifierInterface) -> None:
        self._server_name = server_name
        self._clock = clock
        self._store = store
        self._devices = devices
        self._notifier = notifier
        self._positions = StreamPositions(store.allocate_stream_id)
        # user_id -> devices whose last sync left messages undelivered.
        self._leftovers: dict[str, set[str]] = {}
        # Federation (federation/sender/): async fn(sender, type, {user: {device: content}})
        # for messages to remote users; None: federation off, they are dropped.
        self.remote_send: Callable[[str, str, dict[str, dict[str, Any]]],
                                   Awaitable[None]] | None = None
        # Told (sender, type, [(user, device, content JSON)]) of each stored batch
        # (application services: homeserver/appservice/encryption.py).
        self.on_stored: list[Callable[[str, str, list[tuple[str, str, str]]], None]] = []

    async def load_position(self) -> None:
        # Inbox rows are deleted once read, so the table's max can go backwards; a fresh
        # position from the stream itself is always at or past any token handed out.
        self._positions.start_at(await self._store.allocate_stream_id())

    @property
    def positions(self) -> StreamPositions:
        """The stream's positions (replication advances a reader's from the writer's)."""
        return self._positions

    def current_position(self) -> int:
        return self._positions.current()

    async def send(self, sender: str, sender_device: str | None, event_type: str, txn_id: str,
                   messages: Any) -> None:
        """Queue ``messages`` (``{user_id: {device_id or "*": content}}``) once per
        (sender, sender device, txn id)."""
        check_event_type(event_type)
        if not txn_id or len(txn_id.encode()) > MAX_TXN_ID_BYTES:
            raise MatrixError(400, "Invalid transaction ID", Codes.INVALID_PARAM)
        rows, recipients, remote = await self._expand(messages)
        async with self._positions.write() as position:
            stored = await self._store.add_messages(
                sender, sender_device or "", txn_id, position, rows, event_type,
                self._clock.time_msec())
        if stored and rows:
            for listener in self.on_stored:
                listener(sender, event_type, rows)
        if stored and remote and self.remote_send is not None:
            await self.remote_send(sender, event_type, remote)
        if stored and recipients:
            self._positions.notify_when_readable(
                position, lambda: self._notifier.notify(user_ids=sorted(recipients)))

    async def receive_remote(self, sender: str, event_type: str, message_id: str,
                             messages: Any) -> None:
        """An ``m.direct_to_device`` EDU from ``sender``'s server (which federation has
        checked): delivered to local users' inboxes once per (sender, message id)."""
        check_event_type(event_type)
        if not message_id or len(message_id.encode()) > MAX_TXN_ID_BYTES:
            raise MatrixError(400, "Invalid message ID", Codes.INVALID_PARAM)
        if not isinstance(messages, dict):
            raise MatrixError(400, "'messages' must be an object", Codes.BAD_JSON)
        local = {u: m for u, m in messages.items()
                 if isinstance(u, str) and u.endswith(":" + self._server_name)}
        rows, recipients, _ = await self._expand(local)
        async with self._positions.write() as position:
            stored = await self._store.add_messages(
                sender, "", message_id, position, rows, event_type, self._clock.time_msec())
        if stored and rows:
            for listener in self.on_stored:
                listener(sender, event_type, rows)
        if stored and recipients:
            self._positions.notify_when_readable(
                position, lambda: self._notifier.notify(user_ids=sorted(recipients)))

    async def _expand(self, messages: Any) -> tuple[list[tuple[str, str, str]], set[str],
                                                    dict[str, dict[str, Any]]]:
        """Validate the request body's ``messages`` and resolve ``*`` to the devices that
        exist now. Unknown local devices are skipped, as Synapse does. Messages for
        remote users are returned apart, as given."""
        if not isinstance(messages, dict):
            raise MatrixError(400, "'messages' must be an object", Codes.BAD_JSON)
        rows: list[tuple[str, str, str]] = []
        recipients: set[str] = set()
        remote: dict[str, dict[str, Any]] = {}
        for user_id, by_device in messages.items():
            _, server = split_user_id(user_id)
            if not isinstance(by_device, dict):
                raise MatrixError(400, "Messages for a user must be an object", Codes.BAD_JSON)
            encoded: dict[str, str] = {}
            for device_id, content in by_device.items():
                if not isinstance(content, dict):
                    raise MatrixError(400, "A to-device message must be an object",
                                      Codes.BAD_JSON)
                if not device_id or len(device_id.encode()) > MAX_DEVICE_ID_BYTES:
                    raise MatrixError(400, "Invalid device ID", Codes.INVALID_PARAM)
                body = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
                if len(body.encode()) > MAX_MESSAGE_BYTES:
                    raise MatrixError(400, f"A to-device message may not exceed "
                                           f"{MAX_MESSAGE_BYTES} bytes", Codes.TOO_LARGE)
                encoded[device_id] = body
            if server != self._server_name:
                if self.remote_send is None:
                    logger.warning("dropping %d to-device message(s) for remote user on %s:"
                                   " federation is not available", len(encoded), server)
                else:
                    remote[user_id] = dict(by_device)
                continue
            known = {d.device_id for d in await self._devices.list_devices(user_id)}
            targets: dict[str, str] = {}
            if ALL_DEVICES in encoded:
                targets.update((d, encoded[ALL_DEVICES]) for d in known)
            # An explicit device id wins over "*" for that device.
            targets.update((d, c) for d, c in encoded.items() if d != ALL_DEVICES and d in known)
            rows.extend((user_id, d, c) for d, c in sorted(targets.items()))
            if targets:
                recipients.add(user_id)
        return rows, recipients, remote

    async def on_device_deleted(self, user_id: str, device_id: str) -> None:
        """A deleted device will never read its inbox: drop it."""
        self._forget_leftovers(user_id, device_id)
        await self._store.delete_device_inbox(user_id, device_id)

    def _forget_leftovers(self, user_id: str, device_id: str) -> None:
        devices = self._leftovers.get(user_id)
        if devices is not None:
            devices.discard(device_id)
            if not devices:
                del self._leftovers[user_id]

    # --- EphemeralSource ---------------------------------------------------------------

    async def has_updates(self, user_id: str, room_ids: list[str], since: int) -> bool:
        # The protocol does not pass the device: a message for any of the user's devices
        # (or leftovers of one of them) counts, at worst waking a sync for nothing.
        if user_id in self._leftovers:
            return True
        return await self._store.has_messages_after(user_id, since)

    async def room_events(self, user_id: str, room_ids: list[str], since: int, upto: int
                          ) -> dict[str, list[JsonDict]]:
        return {}

    async def global_section(self, user_id: str, device_id: str | None, since: int, upto: int
                             ) -> dict[str, Any]:
        if device_id is None:
            return {}
        messages, more = await self._store.take_messages(user_id, device_id, since, upto,
                                                         MAX_PER_SYNC)
        if more:
            self._leftovers.setdefault(user_id, set()).add(device_id)
            # Move the stream past this response's token so the next sync re-checks.
            async with self._positions.write():
                pass
        else:
            self._forget_leftovers(user_id, device_id)
        if not messages:
            return {}
        return {"to_device": {"events": [
            {"sender": m.sender, "type": m.message_type, "content": m.content}
            for m in messages]}}
