"""EDUs received in a transaction (``PUT /_matrix/federation/v1/send/{txnId}``).

A server speaks only for its own users: every EDU naming a user of another server
(typing, receipt, presence entry, device list or signing key update, the sender of a
to-device message) is ignored and logged, never applied. Each EDU is bounded (at most
``MAX_ITEMS`` rooms, users, events or presence entries looked at) and a malformed one
is skipped without failing the transaction, as the spec asks (EDUs get no answer).

- ``m.typing``: the user's typing flag in a room they are joined to;
- ``m.receipt``: public read receipts on events of rooms the user is joined to;
  both only where the room's ``m.room.server_acl`` lets the origin in (as Synapse);
- ``m.presence``: shown to local users sharing a room with the user;
- ``m.device_list_update`` / ``m.signing_key_update``: recorded as a device list change
  of that user, so local clients sharing a room re-query their keys (the remote server
  is asked again: no device cache here);
- ``m.direct_to_device``: delivered to local users' devices, once per message id.

Floods (issue 16): besides the per-EDU bounds, one transaction's EDUs share a budget
per EDU type (:data:`TXN_BUDGET`: typing notices, receipts, presence entries, device
list and signing key updates, to-device device messages); an EDU that would go past
it is skipped whole (counted in ``over_budget``). With at most 100 EDUs a transaction,
one transaction per origin at a time and the ``federation_origin`` rate limit on its
requests, what one server's EDUs make this server do is bounded over time too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from homeserver.http.errors import MatrixError
from storage.stores.federation_queue import server_of
from storage.stores.room_members import RoomMemberStore

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]
MAX_ITEMS = 1000
MAX_ID_BYTES = 255
# Per transaction and EDU type: items its EDUs may carry in all (far above what an
# honest server batches: Synapse sends a typing change or a to-device request as one
# EDU, and at most 100 EDUs a transaction).
TXN_BUDGET: dict[str, int] = {
    "m.typing": 50,                # typing notices
    "m.receipt": 1000,             # (user, event) receipts
    "m.presence": 1000,            # presence entries
    "m.device_list_update": 100,
    "m.signing_key_update": 100,
    "m.direct_to_device": 10_000,  # messages, one per recipient device
}


class EduBudget:
    """What the EDUs of one transaction may still cost, per EDU type."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        self._left = dict(TXN_BUDGET if limits is None else limits)

    def take(self, edu_type: str, cost: int) -> bool:
        """Spend ``cost`` of ``edu_type``'s budget; False (nothing spent) past it."""
        left = self._left.get(edu_type)
        if left is None:
            return True
        if cost > left:
            return False
        self._left[edu_type] = left - cost
        return True


def edu_cost(edu_type: str, content: JsonDict) -> int:
    """The items an EDU carries, as :data:`TXN_BUDGET` counts them (each walk stops
    past ``MAX_ITEMS`` entries of its outer level: the handlers look at no more)."""
    if edu_type == "m.presence":
        push = content.get("push")
        return min(len(push), MAX_ITEMS) if isinstance(push, list) else 0
    if edu_type == "m.receipt":
        cost = 0
        for by_type in list(content.values())[:MAX_ITEMS]:
            for by_user in (by_type.values() if isinstance(by_type, dict) else ()):
                if isinstance(by_user, dict):
                    cost += len(by_user)
        return cost
    if edu_type == "m.direct_to_device":
        messages = content.get("messages")
        if not isinstance(messages, dict):
            return 0
        return sum(len(d) if isinstance(d, dict) else 1
                   for d in list(messages.values())[:MAX_ITEMS + 1])
    return 1


def _id(value: Any, sigil: str) -> str | None:
    if isinstance(value, str) and value.startswith(sigil) and ":" in value \
            and len(value.encode("utf-8")) <= MAX_ID_BYTES:
        return value
    return None


class InboundEdus:
    def __init__(self, server_name: str, members: RoomMemberStore, typing: Any,
                 receipts: Any, presence: Any, device_lists: Any, to_device: Any,
                 acl_allows: Callable[[str, str], Awaitable[bool]] | None = None) -> None:
        self._server_name = server_name
        self._acl_allows = acl_allows  # async (room id, server) -> server ACL lets it in
        self._members = members
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        self._device_lists = device_lists
        self._to_device = to_device
        self.ignored = 0  # EDUs or parts refused (forged origin, malformed): tests, metrics
        self.over_budget = 0  # EDUs skipped past their transaction's budget
        self._handlers = {
            "m.typing": self._on_typing,
            "m.receipt": self._on_receipt,
            "m.presence": self._on_presence,
            "m.device_list_update": self._on_device_list_update,
            "m.signing_key_update": self._on_signing_key_update,
            "m.direct_to_device": self._on_to_device,
        }

    async def handle(self, origin: str, edu: Any, budget: EduBudget | None = None) -> None:
        """Apply one EDU of a transaction from ``origin`` (within the transaction's
        ``budget``, if given); never raises for bad input."""
        if not isinstance(edu, dict) or not isinstance(edu.get("content"), dict):
            self.ignored += 1
            return
        edu_type = edu.get("edu_type")
        handler = self._handlers.get(edu_type)  # type: ignore[arg-type]
        if handler is None:
            return  # unknown EDU types are ignored, as the spec says
        assert isinstance(edu_type, str)
        if budget is not None and not budget.take(edu_type, edu_cost(edu_type, edu["content"])):
            self.over_budget += 1
            logger.info("skipping a %s EDU from %s: past the transaction's budget",
                        edu_type, origin)
            return
        try:
            await handler(origin, edu["content"])
        except MatrixError as e:
            self.ignored += 1
            logger.info("ignoring a %s EDU from %s: %s", edu.get("edu_type"), origin, e.msg)
        except Exception:  # one EDU never fails the transaction (nor the other EDUs)
            self.ignored += 1
            logger.exception("failed to apply a %s EDU from %s", edu.get("edu_type"), origin)

    def _theirs(self, origin: str, user_id: Any, what: str) -> str | None:
        """``user_id`` if it is a user of ``origin``; None (logged) otherwise."""
        uid = _id(user_id, "@")
        if uid is None or server_of(uid) != origin:
            self.ignored += 1
            logger.warning("%s sent a %s for a user of another server; ignored", origin, what)
            return None
        return uid

    async def _acl_denies(self, room_id: str, origin: str) -> bool:
        if self._acl_allows is None or await self._acl_allows(room_id, origin):
            return False
        self.ignored += 1
        logger.info("ignoring an EDU from %s: the server ACL of %s denies it", origin, room_id)
        return True

    async def _on_typing(self, origin: str, content: JsonDict) -> None:
        user_id = self._theirs(origin, content.get("user_id"), "m.typing")
        room_id = _id(content.get("room_id"), "!")
        if user_id is None or room_id is None or not isinstance(content.get("typing"), bool):
            return
        if await self._acl_denies(room_id, origin):
            return
        await self._typing.set_remote_typing(user_id, room_id, content["typing"])

    async def _on_receipt(self, origin: str, content: JsonDict) -> None:
        seen = 0
        for room_id, by_type in list(content.items())[:MAX_ITEMS]:
            if _id(room_id, "!") is None or not isinstance(by_type, dict) \
                    or await self._acl_denies(room_id, origin):
                continue
            for receipt_type, by_user in by_type.items():
                if not isinstance(by_user, dict):
                    continue
                for user_id, receipt in by_user.items():
                    seen += 1
                    if seen > MAX_ITEMS:
                        return
                    uid = self._theirs(origin, user_id, "m.receipt")
                    if uid is None or not isinstance(receipt, dict):
                        continue
                    data = receipt.get("data") if isinstance(receipt.get("data"), dict) else {}
                    ts = data.get("ts")
                    thread = data.get("thread_id")
                    thread = thread if isinstance(thread, str) and thread and \
                        len(thread.encode("utf-8")) <= MAX_ID_BYTES else None
                    event_ids = receipt.get("event_ids")
                    if not isinstance(event_ids, list):
                        continue
                    for event_id in event_ids[:10]:
                        if not isinstance(event_id, str) or not event_id.startswith("$") \
                                or len(event_id.encode("utf-8")) > MAX_ID_BYTES:
                            continue
                        await self._receipts.receive_remote_receipt(
                            uid, room_id, receipt_type, event_id, thread,
                            ts if isinstance(ts, int) and ts >= 0 else 0)

    async def _on_presence(self, origin: str, content: JsonDict) -> None:
        push = content.get("push")
        if not isinstance(push, list):
            return
        for entry in push[:MAX_ITEMS]:
            if not isinstance(entry, dict):
                continue
            uid = self._theirs(origin, entry.get("user_id"), "m.presence")
            if uid is None:
                continue
            ago = entry.get("last_active_ago")
            status = entry.get("status_msg")
            await self._presence.receive_remote(
                uid, str(entry.get("presence")),
                status[:1000] if isinstance(status, str) else None,
                ago if isinstance(ago, int) and 0 <= ago < 2**53 else 0,
                entry.get("currently_active") is True)

    async def _shares_room(self, user_id: str) -> bool:
        sharing = await self._members.users_sharing_rooms(user_id)
        return any(server_of(u) == self._server_name for u in sharing)

    async def _on_device_list_update(self, origin: str, content: JsonDict) -> None:
        uid = self._theirs(origin, content.get("user_id"), "m.device_list_update")
        device_id = content.get("device_id")
        if uid is None or not isinstance(device_id, str) or not device_id \
                or len(device_id.encode("utf-8")) > MAX_ID_BYTES:
            return
        if await self._shares_room(uid):
            await self._device_lists.notify_device_change(uid, [device_id])

    async def _on_signing_key_update(self, origin: str, content: JsonDict) -> None:
        uid = self._theirs(origin, content.get("user_id"), "m.signing_key_update")
        if uid is None:
            return
        key_ids: list[str] = []
        for field in ("master_key", "self_signing_key"):
            key = content.get(field)
            if isinstance(key, dict) and isinstance(key.get("keys"), dict):
                key_ids += [k for k in list(key["keys"])[:4] if isinstance(k, str)
                            and len(k.encode("utf-8")) <= MAX_ID_BYTES]
        if key_ids and await self._shares_room(uid):
            await self._device_lists.notify_device_change(uid, key_ids)

    async def _on_to_device(self, origin: str, content: JsonDict) -> None:
        sender = self._theirs(origin, content.get("sender"), "m.direct_to_device")
        event_type, message_id = content.get("type"), content.get("message_id")
        messages = content.get("messages")
        if sender is None or not isinstance(event_type, str) \
                or not isinstance(message_id, str) or not isinstance(messages, dict) \
                or len(messages) > MAX_ITEMS:
            return
        await self._to_device.receive_remote(sender, event_type, message_id, messages)
