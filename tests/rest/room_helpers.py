"""Helpers for room tests: a mixin over HomeserverTestCase."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.harness import HomeserverTestCase, Response

CS = "/_matrix/client/v3"


def q(value: str) -> str:
    return quote(value, safe="")


class RoomTestCase(HomeserverTestCase):
    _txn = 0

    async def user(self, name: str) -> str:
        """Register ``name``; returns its access token (user id is @name:test.local)."""
        return (await self.register(name))["access_token"]

    async def user_with_role(self, name: str, role: str) -> str:
        """Register ``name`` and give it an admin role; returns its access token."""
        token = await self.user(name)
        await self.hs.stores.roles.set_role(f"@{name}:test.local", role)
        return token

    async def staff(self, support: bool = True) -> None:
        """One user per built-in admin role: ``self.admin`` (ada), ``self.mod`` (mo),
        ``self.auditor`` (audrey) and, unless ``support`` is False, ``self.support``
        (sam)."""
        self.admin = await self.user_with_role("ada", "admin")
        self.mod = await self.user_with_role("mo", "moderator")
        self.auditor = await self.user_with_role("audrey", "auditor")
        if support:
            self.support = await self.user_with_role("sam", "support")

    async def create_room(self, token: str, **body: Any) -> str:
        resp = await self.request("POST", f"{CS}/createRoom", body, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["room_id"]

    async def send(self, token: str, room_id: str, body: str = "hello",
                   event_type: str = "m.room.message", txn: str | None = None,
                   content: dict | None = None) -> Response:
        self._txn += 1
        txn_id = txn or f"t{self._txn}"
        return await self.request(
            "PUT", f"{CS}/rooms/{q(room_id)}/send/{event_type}/{txn_id}",
            content if content is not None else {"msgtype": "m.text", "body": body}, token=token)

    async def send_ok(self, token: str, room_id: str, body: str = "hello") -> str:
        resp = await self.send(token, room_id, body)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["event_id"]

    async def member(self, token: str, room_id: str, action: str, **body: Any) -> Response:
        return await self.request("POST", f"{CS}/rooms/{q(room_id)}/{action}", body, token=token)

    async def join(self, token: str, room: str) -> Response:
        return await self.request("POST", f"{CS}/join/{q(room)}", {}, token=token)

    async def put_state(self, token: str, room_id: str, event_type: str, content: dict,
                        state_key: str = "") -> Response:
        return await self.request(
            "PUT", f"{CS}/rooms/{q(room_id)}/state/{event_type}/{q(state_key)}", content,
            token=token)

    async def get_event(self, token: str, room_id: str, event_id: str) -> Response:
        return await self.request("GET", f"{CS}/rooms/{q(room_id)}/event/{q(event_id)}",
                                  token=token)

    async def sync(self, token: str, since: str | None = None, timeout: int = 0,
                   filter: str | None = None) -> dict:
        params = [f"timeout={timeout}"]
        if since:
            params.append(f"since={q(since)}")
        if filter:
            params.append(f"filter={q(filter)}")
        resp = await self.request("GET", f"{CS}/sync?{'&'.join(params)}", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json
