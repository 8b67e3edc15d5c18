"""Server notices: a room per user, created by the system user on the first notice,
tagged ``m.server_notice``, where the user can read but not send or invite."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.server_notices import ServerNoticesDisabledError, ServerNoticesHandler
from tests.rest.room_helpers import CS, RoomTestCase, q

SYSTEM = "@server:test.local"


class ServerNoticesTest(RoomTestCase):
    @property
    def notices(self) -> ServerNoticesHandler:
        assert self.hs.detection is not None
        return self.hs.detection.notices

    def notice_rooms(self, sync: dict[str, Any]) -> dict[str, Any]:
        """Joined rooms tagged m.server_notice, by id."""
        out = {}
        for room_id, room in sync["rooms"].get("join", {}).items():
            for ev in room.get("account_data", {}).get("events", []):
                if ev["type"] == "m.tag" and "m.server_notice" in ev["content"].get("tags", {}):
                    out[room_id] = room
        return out

    async def test_notice_arrives_in_sync_in_tagged_room(self) -> None:
        token = await self.user("alice")
        event_id = await self.notices.send_notice("@alice:test.local", "Maintenance tonight")
        self.assertIsNotNone(event_id)
        sync = await self.sync(token)
        rooms = self.notice_rooms(sync)
        self.assertEqual(len(rooms), 1, sync["rooms"])
        room_id, room = next(iter(rooms.items()))
        msgs = [e for e in room["timeline"]["events"] if e["type"] == "m.room.message"]
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0]["sender"], SYSTEM)
        # server_notice_type is required by the spec's schema for m.server_notice.
        self.assertEqual(msgs[0]["content"], {"msgtype": "m.server_notice",
                                              "body": "Maintenance tonight",
                                              "server_notice_type": "org.parley.server_notice"})
        self.assertEqual(msgs[0]["event_id"], event_id)
        # The system user's display name and the room name are the configured ones.
        state = {(e["type"], e["state_key"]): e["content"] for e in
                 room["state"]["events"] + room["timeline"]["events"] if "state_key" in e}
        self.assertEqual(state[("m.room.member", SYSTEM)]["displayname"], "Server Notices")
        self.assertEqual(state[("m.room.name", "")], {"name": "Server Notices"})
        resp = await self.request(
            "GET", f"{CS}/user/{q('@alice:test.local')}/rooms/{q(room_id)}/tags", token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertIn("m.server_notice", resp.json["tags"])
        # A second notice goes to the same room.
        await self.notices.send_notice("@alice:test.local", "Done")
        sync2 = await self.sync(token, since=sync["next_batch"])
        self.assertEqual(list(sync2["rooms"]["join"]), [room_id])

    async def test_user_cannot_send_invite_or_change_state(self) -> None:
        token = await self.user("alice")
        await self.user("bob")
        await self.notices.send_notice("@alice:test.local", "hello")
        room_id = next(iter(self.notice_rooms(await self.sync(token))))
        resp = await self.send(token, room_id, "reply")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.member(token, room_id, "invite", user_id="@bob:test.local")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.put_state(token, room_id, "m.room.name", {"name": "mine"})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_leaving_opens_a_new_room_next_time(self) -> None:
        token = await self.user("alice")
        await self.notices.send_notice("@alice:test.local", "one")
        first = next(iter(self.notice_rooms(await self.sync(token))))
        resp = await self.member(token, first, "leave")
        self.assertEqual(resp.code, 200, resp)
        await self.notices.send_notice("@alice:test.local", "two")
        rooms = self.notice_rooms(await self.sync(token))
        self.assertEqual(len(rooms), 1)
        self.assertNotEqual(next(iter(rooms)), first)

    async def test_concurrent_first_notices_share_one_room(self) -> None:
        from twisted.internet import defer

        token = await self.user("alice")
        await defer.gatherResults([
            defer.ensureDeferred(self.notices.send_notice("@alice:test.local", f"n{i}"))
            for i in range(3)])
        rooms = self.notice_rooms(await self.sync(token))
        self.assertEqual(len(rooms), 1)
        msgs = [e for e in next(iter(rooms.values()))["timeline"]["events"]
                if e["type"] == "m.room.message"]
        self.assertEqual(sorted(m["content"]["body"] for m in msgs), ["n0", "n1", "n2"])

    async def test_system_user_is_reserved_and_cannot_log_in(self) -> None:
        body = {"username": "server", "password": "correct-horse-battery"}
        first = await self.request("POST", f"{CS}/register", body)
        self.assertMatrixError(first, 400, "M_USER_IN_USE")
        resp = await self.login("server")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_unknown_and_deactivated_users_get_none(self) -> None:
        self.assertIsNone(await self.notices.send_notice("@nobody:test.local", "x"))
        token = await self.user("carol")
        resp = await self.request("POST", f"{CS}/account/deactivate", {}, token=token)
        if resp.code == 401:
            resp = await self.request("POST", f"{CS}/account/deactivate", {"auth": {
                "type": "m.login.password", "session": resp.json["session"],
                "identifier": {"type": "m.id.user", "user": "carol"},
                "password": "correct-horse-battery"}}, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertIsNone(await self.notices.send_notice("@carol:test.local", "x"))


class ServerNoticesConfiguredTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"server_notices": {"system_mxid_localpart": "notices",
                                   "system_mxid_display_name": "Parley Ops",
                                   "room_name": "Ops notices", "auto_join": False},
                "e2ee": {"policy": "everywhere"}}

    async def test_invite_only_and_exempt_from_e2ee_policy(self) -> None:
        token = await self.user("alice")
        assert self.hs.detection is not None
        await self.hs.detection.notices.send_notice("@alice:test.local", "plain notice")
        sync = await self.sync(token)
        invites = sync["rooms"].get("invite", {})
        self.assertEqual(len(invites), 1, sync["rooms"])
        room_id, invite = next(iter(invites.items()))
        senders = {e["sender"] for e in invite["invite_state"]["events"]}
        self.assertEqual(senders, {"@notices:test.local"})
        names = [e["content"] for e in invite["invite_state"]["events"]
                 if e["type"] == "m.room.name"]
        self.assertEqual(names, [{"name": "Ops notices"}])
        self.assertEqual((await self.join(token, room_id)).code, 200)
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room_id)}/messages?dir=b&limit=20", token=token)
        self.assertEqual(resp.code, 200, resp)
        bodies = [e["content"].get("body") for e in resp.json["chunk"]
                  if e["type"] == "m.room.message"]
        self.assertEqual(bodies, ["plain notice"])
        # No policy_rejection entry for the server's own notice.
        events = await self.hs.stores.security_events.list_events(event_type="policy_rejection")
        self.assertEqual(events, [])


class ServerNoticesDisabledTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"server_notices": {"enabled": False}}

    async def test_disabled(self) -> None:
        await self.user("alice")
        assert self.hs.detection is not None
        with self.assertRaises(ServerNoticesDisabledError):
            await self.hs.detection.notices.send_notice("@alice:test.local", "x")
        self.assertIsNone(await self.hs.stores.users.get_user(SYSTEM))
