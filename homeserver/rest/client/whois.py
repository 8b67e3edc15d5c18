"""GET /admin/whois/{userId}: a user's devices with their last-seen IP and user agent.

Allowed for the user themself and for server admins (the spec leaves the policy to
the server; this is Synapse's). The admin check runs before any lookup, so a
non-admin cannot learn whether another account exists. Also served at Synapse's
admin path ``/_synapse/admin/v1/whois/{userId}``.
"""

from __future__ import annotations

from typing import Any

from homeserver.handlers.devices import DeviceHandler
from homeserver.http.errors import Codes, MatrixError, not_found
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import split_user_id
from homeserver.rest.admin._auth import AdminAuth, admin_paths
from storage.stores.devices import DeviceRecord
from storage.stores.users import UserStore


def device_sessions(d: DeviceRecord) -> dict[str, Any]:
    """The spec's DeviceInfo. A device has one live session in Parley (a new login on
    the device ends the old one), and last-seen is tracked per device, so it is one
    session with at most one connection."""
    connections = []
    if d.last_seen_ts is not None:
        conn: dict[str, Any] = {"last_seen": int(d.last_seen_ts)}
        if d.last_seen_ip is not None:
            conn["ip"] = d.last_seen_ip
        if d.last_seen_user_agent is not None:
            conn["user_agent"] = d.last_seen_user_agent
        connections.append(conn)
    return {"sessions": [{"connections": connections}]}


class WhoisServlets:
    def __init__(
        self, server_name: str, users: UserStore, devices: DeviceHandler, admin_auth: AdminAuth
    ) -> None:
        self._server_name = server_name
        self._users = users
        self._devices = devices
        self._admin_auth = admin_auth

    def register(self, router: Router) -> None:
        router.add("GET", client_paths("/admin/whois/{userId}") + admin_paths("/whois/{userId}"),
                   self.on_whois)

    async def on_whois(self, req: ApiRequest, userId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        _, server = split_user_id(userId)
        if userId != r.user_id:
            await self._admin_auth.require_admin(req)
        if server != self._server_name:
            raise MatrixError(400, "Can only whois a local user", Codes.INVALID_PARAM)
        if await self._users.get_user(userId) is None:
            raise not_found("User not found")
        devices = await self._devices.list_devices(userId)
        return 200, {"user_id": userId,
                     "devices": {d.device_id: device_sessions(d) for d in devices}}
