"""GET /user/{userId}/rooms/{roomId}/tags and PUT/DELETE .../tags/{tag}.

Tags are the ``m.tag`` room account data (``{"tags": {tag: {"order": 0.5}}}``), so a
change reaches the user's other devices through /sync like any account data. Only the
owner may read or change them (403). As in Synapse, the user need not be in the room:
tags are the user's own notes about a room id, readable by nobody else.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from homeserver.handlers.account_data import AccountDataHandler, is_valid_room_id
from homeserver.http.errors import Codes, MatrixError, forbidden
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from storage.stores.account_data import AccountDataStore

TAG_TYPE = "m.tag"
MAX_TAG_LENGTH = 255  # bytes
MAX_TAGS_PER_ROOM = 100
# definitions/tag.yaml: order is a number in [0, 1]; other keys are kept as given.
TAG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"order": {"type": "number", "minimum": 0, "maximum": 1}},
}


class TagServlets:
    def __init__(self, account_data: AccountDataHandler, store: AccountDataStore) -> None:
        self._account_data = account_data
        self._store = store
        # Read-modify-write of one user's m.tag: serialised per user.
        self._locks: dict[str, defer.DeferredLock] = {}

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/user/{userId}/rooms/{roomId}/tags"), self.on_get)
        tag_path = client_paths("/user/{userId}/rooms/{roomId}/tags/{tag}")
        router.add("PUT", tag_path, self.on_put, body_schema=TAG_SCHEMA)
        router.add("DELETE", tag_path, self.on_delete)

    @staticmethod
    def _check(requester_id: str, user_id: str, room_id: str, tag: str | None = None) -> None:
        if requester_id != user_id:
            raise forbidden("Cannot access tags for other users")
        if not is_valid_room_id(room_id):
            raise MatrixError(400, "Invalid room ID", Codes.INVALID_PARAM)
        if tag is not None and (not tag or len(tag.encode("utf-8")) > MAX_TAG_LENGTH
                                or any(ord(c) < 0x20 for c in tag)):
            raise MatrixError(400, "Invalid tag", Codes.INVALID_PARAM)

    async def _tags(self, user_id: str, room_id: str) -> dict[str, Any]:
        content = await self._store.get_account_data(user_id, room_id, TAG_TYPE)
        tags = content.get("tags") if isinstance(content, dict) else None
        return {k: v for k, v in tags.items() if isinstance(v, dict)} if isinstance(tags, dict) else {}

    async def on_get(self, req: ApiRequest, userId: str, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        self._check(r.user_id, userId, roomId)
        return 200, {"tags": await self._tags(userId, roomId)}

    async def on_put(self, req: ApiRequest, userId: str, roomId: str,  # noqa: N803
                     tag: str) -> tuple[int, Any]:
        r = req.require_requester()
        self._check(r.user_id, userId, roomId, tag)
        await self._change(userId, roomId, tag, req.body)
        return 200, {}

    async def on_delete(self, req: ApiRequest, userId: str, roomId: str,  # noqa: N803
                        tag: str) -> tuple[int, Any]:
        r = req.require_requester()
        self._check(r.user_id, userId, roomId, tag)
        await self._change(userId, roomId, tag, None)
        return 200, {}

    async def _change(self, user_id: str, room_id: str, tag: str, value: dict[str, Any] | None) -> None:
        lock = self._locks.setdefault(user_id, defer.DeferredLock())
        await lock.acquire()
        try:
            tags = await self._tags(user_id, room_id)
            if value is None:
                if tag not in tags:
                    return  # deleting an absent tag succeeds (as in Synapse), nothing to sync
                del tags[tag]
            else:
                if tag not in tags and len(tags) >= MAX_TAGS_PER_ROOM:
                    raise MatrixError(400, "Too many tags on this room", Codes.INVALID_PARAM)
                tags[tag] = value
            await self._account_data.set_account_data(user_id, room_id, TAG_TYPE, {"tags": tags})
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(user_id, None)
