"""Media admin API beyond one media (Synapse's paths, so synapse-admin works): a user's
media (list, delete), a room's media (list, quarantine), a user's media quarantine,
protect/unprotect, deleting local media older than a date, and purging the remote
media cache. Metadata only.

Single-media quarantine and delete stay in homeserver/rest/media.py. Permissions:
homeserver/rest/admin/permissions.py.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_media import AdminMediaBulkHandler, media_json
from homeserver.handlers.admin_users import Actor
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id
from homeserver.rest.admin._auth import AdminAuth, admin_paths
from storage.stores.media import ADMIN_ORDER_COLUMNS

MAX_LIST_LIMIT = 1000
MAX_OFFSET = 10**9
MAX_SIZE = 2**53 - 1
# Below this a before_ts is surely in seconds (Synapse's check: Dec 1970 in ms).
MIN_PURGE_TS = 30_000_000_000


class AdminMediaServlets:
    def __init__(self, handler: AdminMediaBulkHandler, admin_auth: AdminAuth) -> None:
        self._h = handler
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        add = router.add
        add("GET", admin_paths("/users/{userId}/media"), self.on_list_user)
        add("DELETE", admin_paths("/users/{userId}/media"), self.on_delete_user)
        add("GET", admin_paths("/room/{roomId}/media"), self.on_list_room)
        add("POST", admin_paths("/room/{roomId}/media/quarantine"), self.on_quarantine_room,
            json_body=False)
        add("POST", admin_paths("/user/{userId}/media/quarantine"), self.on_quarantine_user,
            json_body=False)
        add("POST", admin_paths("/media/protect/{mediaId}"), self.on_protect, json_body=False)
        add("POST", admin_paths("/media/unprotect/{mediaId}"), self.on_unprotect,
            json_body=False)
        add("POST", admin_paths("/media/delete"), self.on_delete_before, json_body=False)
        add("POST", admin_paths("/purge_media_cache"), self.on_purge_media_cache,
            json_body=False)

    async def _actor(self, req: ApiRequest) -> Actor:
        requester, role = await self._admin.require_role(req)
        return Actor(requester, role, req.client)

    @staticmethod
    def _page(req: ApiRequest) -> tuple[str, bool, int, int]:
        offset = req.query_int("from", 0, maximum=MAX_OFFSET)
        limit = req.query_int("limit", 100, minimum=1, maximum=MAX_LIST_LIMIT)
        order_by = req.query("order_by", "created_ts") or "created_ts"
        if order_by not in ADMIN_ORDER_COLUMNS:
            raise MatrixError(400, "Unknown value for order_by", Codes.INVALID_PARAM)
        direction = req.query("dir", "f")
        if direction not in ("f", "b"):
            raise MatrixError(400, "dir must be f or b", Codes.INVALID_PARAM)
        assert offset is not None and limit is not None
        return order_by, direction == "b", offset, limit

    async def on_list_user(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        order_by, desc, offset, limit = self._page(req)
        rows, total = await self._h.user_media(userId, order_by, desc, offset, limit)
        out: dict[str, Any] = {"media": [media_json(r) for r in rows], "total": total}
        if offset + len(rows) < total:
            out["next_token"] = offset + len(rows)
        return 200, out

    async def on_delete_user(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        order_by, desc, offset, limit = self._page(req)
        deleted = await self._h.delete_user_media(actor, userId, order_by, desc, offset, limit)
        return 200, {"deleted_media": deleted, "total": len(deleted)}

    async def on_list_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        check_room_id(roomId)
        local, remote = await self._h.room_media(roomId)
        return 200, {"local": local, "remote": remote}

    async def on_quarantine_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        check_room_id(roomId)
        return 200, {"num_quarantined": await self._h.quarantine_room_media(actor, roomId)}

    async def on_quarantine_user(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        return 200, {"num_quarantined": await self._h.quarantine_user_media(actor, userId)}

    async def on_protect(self, req: ApiRequest, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        await self._h.set_protected(await self._actor(req), mediaId, True)
        return 200, {}

    async def on_unprotect(self, req: ApiRequest, mediaId: str) -> tuple[int, Any]:  # noqa: N803
        await self._h.set_protected(await self._actor(req), mediaId, False)
        return 200, {}

    async def on_delete_before(self, req: ApiRequest) -> tuple[int, Any]:
        actor = await self._actor(req)
        before_ts = req.query_int("before_ts", None, maximum=MAX_SIZE)
        if before_ts is None:
            raise MatrixError(400, "Missing integer query parameter 'before_ts'",
                              Codes.MISSING_PARAM)
        size_gt = req.query_int("size_gt", 0, maximum=MAX_SIZE)
        keep_profiles = req.query_bool("keep_profiles", True)
        assert size_gt is not None
        deleted = await self._h.delete_before(actor, before_ts, size_gt, keep_profiles)
        return 200, {"deleted_media": deleted, "total": len(deleted)}

    async def on_purge_media_cache(self, req: ApiRequest) -> tuple[int, Any]:
        actor = await self._actor(req)
        before_ts = req.query_int("before_ts", None, maximum=MAX_SIZE)
        if before_ts is None:
            raise MatrixError(400, "Missing integer query parameter 'before_ts'",
                              Codes.MISSING_PARAM)
        if before_ts < MIN_PURGE_TS:
            raise MatrixError(400, "Query parameter before_ts you provided is from the year"
                              " 1970. Double check that you are providing a timestamp in"
                              " milliseconds.", Codes.INVALID_PARAM)
        return 200, {"deleted": await self._h.purge_media_cache(actor, before_ts)}
