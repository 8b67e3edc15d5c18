"""What an encrypting bridge needs in its transactions besides events: to-device
messages for its users (MSC4203, sent to services with ``receive_ephemeral``), and,
for services registered with ``org.matrix.msc3202: true``, device list changes of the
users sharing rooms with its users and the one-time and fallback key counts of its
users' devices (MSC3202).

Each service's pending part lives in memory, bounded, beside its ephemeral events
(homeserver/appservice/scheduler.py) and rides with its next transaction, under the
stable names and the unstable ones (``de.sorunome.msc2409.to_device``,
``org.matrix.msc3202.*``) that mautrix and Synapse use. Key counts are read when the
transaction is built, so a service always gets the current count. As with ephemeral
events, what is pending when the process stops is not kept: a bridge re-reads its
key counts with ``/keys/upload`` and device lists with ``/keys/query`` when it starts.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from homeserver.appservice.config import ApplicationService

JsonDict = dict[str, Any]
MAX_TO_DEVICE_QUEUED = 1000
MAX_TO_DEVICE_PER_TXN = 100
MAX_DEVICE_CHANGES = 10_000
MAX_KEY_COUNTS_PER_TXN = 1000

# (user id, device id) -> (one-time key counts, unused fallback key types)
KeyCounts = Callable[[str, str], Awaitable[tuple[dict[str, int], list[str]]]]


@dataclass
class PendingCrypto:
    """One service's to-device messages, device list changes and devices whose key
    counts changed, waiting for its next transaction."""

    to_device: list[JsonDict] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)
    key_devices: dict[tuple[str, str], None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.to_device or self.changed or self.left or self.key_devices)

    def add_to_device(self, message: JsonDict) -> None:
        if len(self.to_device) >= MAX_TO_DEVICE_QUEUED:
            self.to_device.pop(0)
        self.to_device.append(message)

    def device_changed(self, user_id: str) -> None:
        if len(self.changed) < MAX_DEVICE_CHANGES:
            self.changed.add(user_id)
            self.left.discard(user_id)

    def device_left(self, user_id: str) -> None:
        if len(self.left) < MAX_DEVICE_CHANGES:
            self.left.add(user_id)
            self.changed.discard(user_id)

    def keys_changed(self, user_id: str, device_id: str) -> None:
        self.key_devices[(user_id, device_id)] = None

    async def take(self, key_counts: KeyCounts | None
                   ) -> tuple[JsonDict, Callable[[], None]]:
        """The transaction fields, and a function that drops what they carried (called
        once the service has acknowledged the transaction)."""
        body: JsonDict = {}
        to_device = self.to_device[:MAX_TO_DEVICE_PER_TXN]
        if to_device:
            body["to_device"] = body["de.sorunome.msc2409.to_device"] = to_device
        changed, left = sorted(self.changed), sorted(self.left)
        if changed or left:
            lists = {"changed": changed, "left": left}
            body["device_lists"] = body["org.matrix.msc3202.device_lists"] = lists
        devices = list(self.key_devices)[:MAX_KEY_COUNTS_PER_TXN] if key_counts else []
        counts: dict[str, dict[str, dict[str, int]]] = {}
        fallback: dict[str, dict[str, list[str]]] = {}
        for user_id, device_id in devices:
            assert key_counts is not None
            otk, unused = await key_counts(user_id, device_id)
            counts.setdefault(user_id, {})[device_id] = otk
            fallback.setdefault(user_id, {})[device_id] = unused
        if counts:
            body["device_one_time_keys_count"] = counts
            body["org.matrix.msc3202.device_one_time_keys_count"] = counts
            body["org.matrix.msc3202.device_one_time_key_counts"] = counts  # Synapse's alias
            body["device_unused_fallback_key_types"] = fallback
            body["org.matrix.msc3202.device_unused_fallback_key_types"] = fallback

        def done() -> None:
            del self.to_device[:len(to_device)]
            self.changed.difference_update(changed)
            self.left.difference_update(left)
            for pair in devices:
                self.key_devices.pop(pair, None)
        return body, done


def to_device_message(sender: str, event_type: str, user_id: str, device_id: str,
                      content_json: str) -> JsonDict:
    """A to-device message as a service receives it (MSC4203)."""
    return {"type": event_type, "sender": sender, "to_user_id": user_id,
            "to_device_id": device_id, "content": json.loads(content_json)}


def wants_to_device(svc: ApplicationService, user_id: str) -> bool:
    return svc.receive_ephemeral and svc.url is not None and svc.is_interested_in_user(user_id)


def wants_device_lists(svc: ApplicationService) -> bool:
    return svc.msc3202 and svc.url is not None


class AppserviceCrypto:
    """Routes to-device messages, device list changes and key count changes to the
    services that want them (hooks on the to-device, device-list and keys handlers)."""

    def __init__(self, services: list[ApplicationService], scheduler: Any, members: Any,
                 keys: Any) -> None:
        self._services = [s for s in services if s.url is not None]
        self._scheduler = scheduler
        self._members = members
        self._keys = keys

    def _pending(self, svc: ApplicationService) -> PendingCrypto:
        return self._scheduler.queues[svc.id].crypto

    def _kick(self, svc: ApplicationService) -> None:
        self._scheduler.kick(svc.id)

    def to_device_stored(self, sender: str, event_type: str,
                         rows: list[tuple[str, str, str]]) -> None:
        for svc in self._services:
            mine = [r for r in rows if wants_to_device(svc, r[0])]
            for user_id, device_id, content in mine:
                self._pending(svc).add_to_device(
                    to_device_message(sender, event_type, user_id, device_id, content))
            if mine:
                self._kick(svc)

    def device_list_changed(self, user_id: str, audience: set[str]) -> None:
        """``audience``: who hears of the change (the user and everyone sharing a room)."""
        for svc in self._services:
            if wants_device_lists(svc) and any(svc.is_interested_in_user(u) for u in audience):
                self._pending(svc).device_changed(user_id)
                self._kick(svc)

    async def left_room(self, user_id: str, room_id: str) -> None:
        """``user_id`` left ``room_id``: a service whose users were in that room and now
        share no room with the user hears it in ``device_lists.left``."""
        wanting = [s for s in self._services
                   if wants_device_lists(s) and not s.is_interested_in_user(user_id)]
        if not wanting:
            return
        in_room = [m.user_id for m in await self._members.members_of_room(room_id, ("join",))]
        sharing: set[str] | None = None
        for svc in wanting:
            if not any(svc.is_interested_in_user(u) for u in in_room):
                continue
            if sharing is None:
                sharing = await self._members.users_sharing_rooms(user_id)
            if not any(svc.is_interested_in_user(u) for u in sharing):
                self._pending(svc).device_left(user_id)
                self._kick(svc)

    def keys_changed(self, devices: list[tuple[str, str]]) -> None:
        for svc in self._services:
            mine = [d for d in devices if wants_device_lists(svc) and svc.is_interested_in_user(
                d[0])]
            for user_id, device_id in mine:
                self._pending(svc).keys_changed(user_id, device_id)
            if mine:
                self._kick(svc)

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        counts = await self._keys.count_one_time_keys(user_id, device_id)
        counts.setdefault("signed_curve25519", 0)
        return counts, await self._keys.unused_fallback_key_types(user_id, device_id)
