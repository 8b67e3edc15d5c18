"""GET /devices, GET/PUT/DELETE /devices/{deviceId}, POST /delete_devices."""

from __future__ import annotations

from typing import Any

from homeserver.auth.ui_auth import PASSWORD, UserInteractiveAuth
from homeserver.handlers.devices import DeviceHandler, device_json
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest

UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"display_name": {"type": ["string", "null"], "maxLength": 255}},
}
DELETE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {"auth": {"type": "object"}}}
DELETE_MANY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["devices"],
    "properties": {
        "devices": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
        "auth": {"type": "object"},
    },
}


class DeviceServlets:
    def __init__(self, devices: DeviceHandler, uia: UserInteractiveAuth) -> None:
        self._devices = devices
        self._uia = uia

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/devices"), self.on_list)
        router.add("GET", client_paths("/devices/{deviceId}"), self.on_get)
        router.add("PUT", client_paths("/devices/{deviceId}"), self.on_put,
                   body_schema=UPDATE_SCHEMA)
        router.add("DELETE", client_paths("/devices/{deviceId}"), self.on_delete,
                   body_schema=DELETE_SCHEMA)
        router.add("POST", client_paths("/delete_devices"), self.on_delete_many,
                   body_schema=DELETE_MANY_SCHEMA)

    async def on_list(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        devices = await self._devices.list_devices(r.user_id)
        return 200, {"devices": [device_json(d) for d in devices]}

    async def on_get(self, req: ApiRequest, deviceId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        return 200, device_json(await self._devices.get_device(r.user_id, deviceId))

    async def on_put(self, req: ApiRequest, deviceId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._devices.rename(r.user_id, deviceId, req.body.get("display_name"))
        return 200, {}

    async def on_delete(self, req: ApiRequest, deviceId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        await self._devices.get_device(r.user_id, deviceId)  # 404 before asking for auth
        _, session = await self._uia.check(req.body, [[PASSWORD]], req.raw.path.decode(),
                                           "DELETE", user_id=r.user_id)
        await self._uia.consume(session)  # spent before acting: a replay cannot act again
        await self._devices.delete_devices(r.user_id, [deviceId], req.client, "device_delete")
        return 200, {}

    async def on_delete_many(self, req: ApiRequest) -> tuple[int, Any]:
        r = req.require_requester()
        _, session = await self._uia.check(req.body, [[PASSWORD]], req.raw.path.decode(),
                                           "POST", user_id=r.user_id)
        await self._uia.consume(session)
        await self._devices.delete_devices(r.user_id, list(dict.fromkeys(req.body["devices"])),
                                           req.client, "device_delete")
        return 200, {}
