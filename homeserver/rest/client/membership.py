"""Membership endpoints: join (by id or alias), invite, leave, forget, kick, ban,
unban, knock."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.identity import IdentityHandler
from homeserver.handlers.membership import MembershipHandler
from homeserver.http.errors import Codes, MatrixError
from homeserver.http.router import Router, client_paths
from homeserver.http.server import ApiRequest
from homeserver.identifiers import check_room_id

_REASON = {"reason": {"type": "string", "maxLength": 10000}}
JOIN_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    **_REASON, "third_party_signed": {"type": "object"}}}
TARGET_SCHEMA: dict[str, Any] = {"type": "object", "required": ["user_id"], "properties": {
    **_REASON, "user_id": {"type": "string", "minLength": 1, "maxLength": 255}}}
INVITE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    **_REASON, "user_id": {"type": "string", "minLength": 1, "maxLength": 255},
    "id_server": {"type": "string", "maxLength": 512},
    "id_access_token": {"type": "string", "maxLength": 512},
    "medium": {"type": "string", "minLength": 1, "maxLength": 64},
    "address": {"type": "string", "minLength": 1, "maxLength": 512},
    "is_direct": {"type": "boolean"}}}
REASON_SCHEMA: dict[str, Any] = {"type": "object", "properties": dict(_REASON)}


class MembershipServlets:
    def __init__(self, membership: MembershipHandler,
                 identity: IdentityHandler | None = None) -> None:
        self._m = membership
        self._identity = identity

    def register(self, router: Router) -> None:
        router.add("POST", client_paths("/rooms/{roomId}/join"), self.on_join_room,
                   body_schema=JOIN_SCHEMA, allow_guest=True)
        router.add("POST", client_paths("/join/{roomIdOrAlias}"), self.on_join,
                   body_schema=JOIN_SCHEMA, allow_guest=True)
        router.add("POST", client_paths("/knock/{roomIdOrAlias}"), self.on_knock,
                   body_schema=REASON_SCHEMA)
        router.add("POST", client_paths("/rooms/{roomId}/invite"), self.on_invite,
                   body_schema=INVITE_SCHEMA)
        router.add("POST", client_paths("/rooms/{roomId}/leave"), self.on_leave,
                   body_schema=REASON_SCHEMA, allow_guest=True)
        router.add("POST", client_paths("/rooms/{roomId}/forget"), self.on_forget,
                   body_schema=REASON_SCHEMA)
        for action in ("kick", "ban", "unban"):
            router.add("POST", client_paths(f"/rooms/{{roomId}}/{action}"),
                       self._target_handler(action), body_schema=TARGET_SCHEMA)

    async def on_join_room(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        check_room_id(roomId)
        return await self._join(req, roomId)

    async def on_join(self, req: ApiRequest, roomIdOrAlias: str) -> tuple[int, Any]:  # noqa: N803
        return await self._join(req, roomIdOrAlias)

    async def _join(self, req: ApiRequest, target: str) -> tuple[int, Any]:
        r = req.require_requester()
        if req.body.get("third_party_signed") is not None:
            raise MatrixError(400, "Third-party invites are not supported", Codes.UNRECOGNIZED)
        room_id = await self._m.join(r.user_id, target, req.body.get("reason"), req.body,
                                  is_guest=r.is_guest, servers=_via(req))
        return 200, {"room_id": room_id}

    async def on_knock(self, req: ApiRequest, roomIdOrAlias: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        room_id = await self._m.knock(r.user_id, roomIdOrAlias, req.body.get("reason"),
                                      servers=_via(req))
        return 200, {"room_id": room_id}

    async def on_invite(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        body = req.body
        if "user_id" not in body:
            if {"id_server", "medium", "address"} <= set(body):
                if self._identity is None:
                    raise MatrixError(403, "Third-party invites are not supported",
                                      Codes.FORBIDDEN)
                self._identity.client.check_trusted(body["id_server"])  # 400 first
                if "id_access_token" not in body:
                    raise MatrixError(400, "Missing parameter: id_access_token",
                                      Codes.MISSING_PARAM)
                await self._identity.invite(r.user_id, roomId, body["id_server"],
                                            body["id_access_token"], body["medium"],
                                            body["address"])
                return 200, {}
            raise MatrixError(400, "Missing parameter: user_id", Codes.MISSING_PARAM)
        extra = {"is_direct": True} if body.get("is_direct") else None
        await self._m.update(r.user_id, roomId, body["user_id"], "invite", body.get("reason"),
                             extra)
        return 200, {}

    async def on_leave(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        await self._m.leave(r.user_id, roomId, req.body.get("reason"))
        return 200, {}

    async def on_forget(self, req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
        r = req.require_requester()
        check_room_id(roomId)
        await self._m.forget(r.user_id, roomId)
        return 200, {}

    def _target_handler(self, action: str) -> Any:
        membership = {"kick": "leave", "ban": "ban", "unban": "leave"}[action]

        async def handler(req: ApiRequest, roomId: str) -> tuple[int, Any]:  # noqa: N803
            r = req.require_requester()
            check_room_id(roomId)
            await self._m.change_other(r.user_id, roomId, req.body["user_id"], action,
                                       membership, req.body.get("reason"))
            return 200, {}

        return handler


MAX_VIA = 20


def _via(req: ApiRequest) -> list[str]:
    """The servers a client names to join or knock through (``via``, and the older
    ``server_name``), bounded in number and length."""
    out: list[str] = []
    for name in (b"via", b"server_name"):
        for raw in req.raw.args.get(name) or []:
            server = raw.decode("utf-8", "replace")
            if not server or len(server) > 255:
                raise MatrixError(400, f"Invalid {name.decode()}", Codes.INVALID_PARAM)
            if server not in out:
                out.append(server)
    if len(out) > MAX_VIA:
        raise MatrixError(400, f"At most {MAX_VIA} servers", Codes.INVALID_PARAM)
    return out
