"""Blocked remote servers: the admin endpoints (roles, validation, config-listed blocks,
audit entries), ``is_blocked`` (case, ports) and the refusal of local invites to users
of a blocked server, by /invite and by createRoom."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.server_blocks import ServerBlocks
from tests.rest.room_helpers import CS, RoomTestCase, q

PA = "/_parley/admin/v1/federation/blocked_servers"


class BlockedServersTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": {"blocked_servers": ["Config-Blocked.example"]}}

    async def _setup(self) -> None:
        await self.staff()
        self.alice = await self.user("alice")

    async def test_block_list_unblock(self) -> None:
        await self._setup()
        resp = await self.request("PUT", f"{PA}/evil.example", {"reason": "spam"},
                                  token=self.mod)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("PUT", f"{PA}/Evil.Example", {"reason": "spam"},
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["server_name"], "evil.example")
        self.assertEqual(resp.json["source"], "admin")
        self.assertEqual(resp.json["blocked_by"], "@ada:test.local")
        self.assertEqual(resp.json["reason"], "spam")
        await self.request("PUT", f"{PA}/other.example:8448", {}, token=self.admin)

        for token in (self.mod, self.auditor):
            listing = await self.request("GET", PA, token=token)
            self.assertEqual(listing.code, 200, listing)
        self.assertEqual([(e["server_name"], e["source"]) for e in listing.json["blocked_servers"]],
                         [("config-blocked.example", "config"), ("evil.example", "admin"),
                          ("other.example:8448", "admin")])
        self.assertEqual(listing.json["total"], 3)
        page = await self.request("GET", f"{PA}?limit=1&from=1", token=self.mod)
        self.assertEqual([e["server_name"] for e in page.json["blocked_servers"]],
                         ["evil.example"])
        self.assertEqual(page.json["next_token"], 2)
        self.assertMatrixError(await self.request("GET", PA, token=self.support), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await self.request("GET", PA), 401, "M_MISSING_TOKEN")

        one = await self.request("GET", f"{PA}/evil.example", token=self.auditor)
        self.assertEqual((one.code, one.json["reason"]), (200, "spam"))
        cfg = await self.request("GET", f"{PA}/config-blocked.example", token=self.auditor)
        self.assertEqual((cfg.code, cfg.json["source"]), (200, "config"))
        self.assertMatrixError(await self.request("GET", f"{PA}/fine.example",
                                                  token=self.admin), 404, "M_NOT_FOUND")
        for bad in ("bad%20name", "a%2Fb", "x" * 300):
            resp = await self.request("PUT", f"{PA}/{bad}", {}, token=self.admin)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("PUT", f"{PA}/evil.example", {"reason": 5}, token=self.admin)
        self.assertEqual(resp.code, 400, resp)
        resp = await self.request("PUT", f"{PA}/test.local", {}, token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

        resp = await self.request("DELETE", f"{PA}/config-blocked.example", token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("DELETE", f"{PA}/evil.example", token=self.mod)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("DELETE", f"{PA}/evil.example", token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("DELETE", f"{PA}/evil.example", token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        done = [(e.target, e.details["action"]) for e in events if e.outcome == "success"]
        self.assertIn(("evil.example", "block_server"), done)
        self.assertIn(("other.example:8448", "block_server"), done)
        self.assertIn(("evil.example", "unblock_server"), done)

    async def test_is_blocked(self) -> None:
        await self.hs.stores.blocked_servers.block("evil.example", "@a:test.local", 1, None)
        await self.hs.stores.blocked_servers.block("ported.example:1234", "@a:test.local", 1,
                                                   None)
        blocks = ServerBlocks("test.local", self.clock, self.hs.stores.blocked_servers,
                              self.hs.stores.security_events,  # type: ignore[arg-type]
                              ["cfg.example"])
        for name, blocked in (("evil.example", True), ("EVIL.example", True),
                              ("evil.example:8448", True), ("sub.evil.example", False),
                              ("cfg.example", True), ("cfg.example:443", True),
                              ("ported.example:1234", True), ("ported.example", False),
                              ("fine.example", False)):
            self.assertEqual(await blocks.is_blocked(name), blocked, name)

    async def test_invites_to_blocked_servers_refused(self) -> None:
        await self._setup()
        await self.request("PUT", f"{PA}/evil.example", {}, token=self.admin)
        room = await self.create_room(self.alice)
        for invitee in ("@spammer:evil.example", "@spammer:EVIL.example:8448",
                        "@x:config-blocked.example"):
            resp = await self.member(self.alice, room, "invite", user_id=invitee)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            resp = await self.request("POST", f"{CS}/createRoom", {"invite": [invitee]},
                                      token=self.alice)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            state = await self.request(
                "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(invitee)}",
                token=self.alice)
            self.assertEqual(state.code, 404, state)
        # Local users and servers not blocked are unaffected (a remote invite is only
        # stored locally until federation exists).
        await self.user("bob")
        resp = await self.member(self.alice, room, "invite", user_id="@bob:test.local")
        self.assertEqual(resp.code, 200, resp)
        resp = await self.member(self.alice, room, "invite", user_id="@x:fine.example")
        self.assertEqual(resp.code, 200, resp)
        # Unblocked: the invite goes through.
        await self.request("DELETE", f"{PA}/evil.example", token=self.admin)
        resp = await self.member(self.alice, room, "invite", user_id="@spammer:evil.example")
        self.assertEqual(resp.code, 200, resp)
