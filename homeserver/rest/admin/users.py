"""Users admin API: Synapse's paths (so synapse-admin and scripts work), the spec's
``/_matrix/client/v1/admin/{lock,suspend}/{userId}``, and ours under
``/_parley/admin/v1`` for roles and incident response.

Every endpoint's permission is declared in homeserver/rest/admin/permissions.py and
checked by :class:`AdminAuth` before any account lookup (no enumeration by the
unprivileged). Answers carry metadata only: never message content, never keys.
Shadow-bans: homeserver/rest/admin/shadow_ban.py.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.admin_users import Actor, AdminUsersHandler, user_json
from homeserver.handlers.devices import device_json
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router
from homeserver.http.server import ApiRequest
from homeserver.rest.admin._auth import AdminAuth, admin_paths
from homeserver.rest.admin.permissions import ENDPOINT_PERMISSIONS
from storage.stores.roles import ORDER_COLUMNS, UserQuery

PA = "/_parley/admin/v1"
SPEC_ADMIN = "/_matrix/client/v1/admin"
MAX_LIST_LIMIT = 1000
MAX_NAME_QUERY = 255
MAX_PASSWORD = 512
MAX_DEVICES = 1000

_STR = {"type": "string", "maxLength": 255}
_NULLABLE_STR = {"type": ["string", "null"], "maxLength": 255}

PUT_USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD},
        "logout_devices": {"type": "boolean"},
        "displayname": _NULLABLE_STR,
        "avatar_url": {"type": ["string", "null"], "maxLength": 255,
                       "pattern": "^(mxc://.*)?$"},
        "admin": {"type": "boolean"},
        "deactivated": {"type": "boolean"},
        "locked": {"type": "boolean"},
        # Accepted for synapse-admin, which always sends them; Parley stores no 3PIDs.
        "threepids": {"type": "array", "maxItems": 0},
        "external_ids": {"type": "array", "maxItems": 0},
        "user_type": {"type": "null"},
    },
    "additionalProperties": False,
}
DEACTIVATE_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"erase": {"type": "boolean"}},
}
RESET_PASSWORD_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["new_password"],
    "properties": {
        "new_password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD},
        "logout_devices": {"type": "boolean"},
    },
}
DELETE_DEVICES_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["devices"],
    "properties": {"devices": {"type": "array", "maxItems": MAX_DEVICES, "items": _STR}},
}
SYNAPSE_SUSPEND_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["suspend"], "properties": {"suspend": {"type": "boolean"}},
}
SUSPEND_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["suspended"],
    "properties": {"suspended": {"type": "boolean"}},
}
LOCK_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["locked"], "properties": {"locked": {"type": "boolean"}},
}
ROLE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["role"],
    "properties": {"role": {"type": ["string", "null"], "maxLength": 64}},
    "additionalProperties": False,
}


class AdminUserServlets:
    def __init__(self, handler: AdminUsersHandler, admin_auth: AdminAuth) -> None:
        self._h = handler
        self._admin = admin_auth

    def register(self, router: Router) -> None:
        v2 = ("v2",)
        add = router.add
        add("GET", admin_paths("/users", v2), self.on_list)
        add("GET", admin_paths("/users/{userId}", v2), self.on_get)
        add("PUT", admin_paths("/users/{userId}", v2), self.on_put, body_schema=PUT_USER_SCHEMA)
        add("POST", admin_paths("/deactivate/{userId}"), self.on_deactivate,
            body_schema=DEACTIVATE_SCHEMA)
        add("POST", admin_paths("/reset_password/{userId}"), self.on_reset_password,
            body_schema=RESET_PASSWORD_SCHEMA)
        add("GET", admin_paths("/users/{userId}/devices", v2), self.on_devices)
        add("POST", admin_paths("/users/{userId}/delete_devices", v2), self.on_delete_devices,
            body_schema=DELETE_DEVICES_SCHEMA)
        add("GET", admin_paths("/users/{userId}/devices/{deviceId}", v2), self.on_device)
        add("DELETE", admin_paths("/users/{userId}/devices/{deviceId}", v2),
            self.on_delete_device)
        add("GET", admin_paths("/users/{userId}/joined_rooms"), self.on_joined_rooms)
        add("PUT", admin_paths("/suspend/{userId}"), self.on_synapse_suspend,
            body_schema=SYNAPSE_SUSPEND_SCHEMA)
        add("GET", f"{SPEC_ADMIN}/suspend/{{userId}}", self.on_get_suspended)
        add("PUT", f"{SPEC_ADMIN}/suspend/{{userId}}", self.on_put_suspended,
            body_schema=SUSPEND_SCHEMA)
        add("GET", f"{SPEC_ADMIN}/lock/{{userId}}", self.on_get_locked)
        add("PUT", f"{SPEC_ADMIN}/lock/{{userId}}", self.on_put_locked, body_schema=LOCK_SCHEMA)
        add("GET", f"{PA}/roles", self.on_roles)
        add("GET", f"{PA}/users/{{userId}}/role", self.on_get_role)
        add("PUT", f"{PA}/users/{{userId}}/role", self.on_put_role, body_schema=ROLE_SCHEMA)
        add("POST", f"{PA}/users/{{userId}}/lock_and_revoke", self.on_lock_and_revoke,
            json_body=False)
        add("POST", f"{PA}/users/{{userId}}/logout", self.on_logout, json_body=False)
        add("POST", f"{PA}/users/{{userId}}/force_password_reset", self.on_force_reset,
            json_body=False)

    async def _actor(self, req: ApiRequest) -> Actor:
        requester, role = await self._admin.require_role(req)
        return Actor(requester, role, req.client)

    # -- lookups --

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        await self._actor(req)
        offset = req.query_int("from", 0, maximum=10**9)
        limit = req.query_int("limit", 100, minimum=1, maximum=MAX_LIST_LIMIT)
        order_by = req.query("order_by", "name") or "name"
        if order_by not in ORDER_COLUMNS:
            raise MatrixError(400, "Unknown value for order_by", Codes.INVALID_PARAM)
        direction = req.query("dir", "f")
        if direction not in ("f", "b"):
            raise MatrixError(400, "dir must be f or b", Codes.INVALID_PARAM)
        name = req.query("name") or req.query("user_id")
        if name is not None and len(name) > MAX_NAME_QUERY:
            raise MatrixError(400, "name is too long", Codes.INVALID_PARAM)
        assert offset is not None and limit is not None
        q = UserQuery(name=name or None, guests=req.query_bool("guests", True),
                      deactivated=req.query_bool("deactivated", False), order_by=order_by,
                      descending=direction == "b", offset=offset, limit=limit)
        rows, total = await self._h.list_users(q)
        out: dict[str, Any] = {"users": [user_json(r) for r in rows], "total": total}
        if offset + len(rows) < total:
            out["next_token"] = str(offset + len(rows))
        return 200, out

    async def on_get(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        return 200, user_json(await self._h.get(userId))

    async def on_devices(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        await self._h.get(userId)
        devices = await self._h.list_devices(userId)
        return 200, {"devices": [{**device_json(d), "user_id": userId} for d in devices],
                     "total": len(devices)}

    async def on_device(self, req: ApiRequest, userId: str,  # noqa: N803
                        deviceId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        await self._h.get(userId)
        device = await self._h.get_device(userId, deviceId)
        return 200, {**device_json(device), "user_id": userId}

    async def on_joined_rooms(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        rooms = await self._h.joined_rooms(userId)
        return 200, {"joined_rooms": rooms, "total": len(rooms)}

    async def on_roles(self, req: ApiRequest) -> tuple[int, Any]:
        await self._actor(req)
        roles = self._admin.roles
        return 200, {"roles": {name: sorted(roles.permissions(name)) for name in roles.names()},
                     "endpoints": [{"method": m, "path": t, "permission": p}
                                   for (m, t), p in ENDPOINT_PERMISSIONS.items()]}

    async def on_get_role(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        row = await self._h.get(userId)
        return 200, {"user_id": userId, "role": user_json(row)["admin_role"]}

    # -- changes --

    async def on_put(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        created = await self._h.upsert(actor, userId, req.body)
        return (201 if created else 200), user_json(await self._h.get(userId))

    async def on_deactivate(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.deactivate(actor, userId, bool(req.body.get("erase", False)))
        return 200, {"id_server_unbind_result": "success"}

    async def on_reset_password(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.reset_password(actor, userId, req.body["new_password"],
                                     bool(req.body.get("logout_devices", True)))
        return 200, {}

    async def on_delete_devices(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.delete_devices(actor, userId, list(req.body["devices"]))
        return 200, {}

    async def on_delete_device(self, req: ApiRequest, userId: str,  # noqa: N803
                               deviceId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.delete_devices(actor, userId, [deviceId])
        return 200, {}

    async def on_synapse_suspend(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        suspend = bool(req.body["suspend"])
        await self._h.set_suspended(actor, userId, suspend)
        return 200, {f"user_{userId}_suspended": suspend}

    async def on_get_suspended(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        row = await self._h.get(userId)
        if row.deactivated:
            raise MatrixError(404, "User not found or deactivated", Codes.NOT_FOUND)
        return 200, {"suspended": row.suspended}

    async def on_put_suspended(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.set_suspended(actor, userId, bool(req.body["suspended"]))
        return 200, {"suspended": bool(req.body["suspended"])}

    async def on_get_locked(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        await self._actor(req)
        row = await self._h.get(userId)
        if row.deactivated:
            raise MatrixError(404, "User not found or deactivated", Codes.NOT_FOUND)
        return 200, {"locked": row.locked}

    async def on_put_locked(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.set_locked(actor, userId, bool(req.body["locked"]))
        return 200, {"locked": bool(req.body["locked"])}

    async def on_put_role(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        role = req.body["role"]
        if role in ("", "none"):
            role = None
        previous = await self._h.set_role(actor, userId, role)
        return 200, {"user_id": userId, "role": role, "previous_role": previous}

    async def on_lock_and_revoke(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.set_locked(actor, userId, True, revoke_sessions=True)
        return 200, {"locked": True, "sessions_revoked": True}

    async def on_logout(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.logout_all(actor, userId)
        return 200, {}

    async def on_force_reset(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        actor = await self._actor(req)
        await self._h.force_password_reset(actor, userId)
        return 200, {"password_reset_required": True, "sessions_revoked": True}
