"""SyTest guest access (tests/30rooms/13guestaccess.pl and the guest cases of
30history-visibility.pl), reproduced at HTTP level (issue 12)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task

from tests.rest.room_helpers import CS, RoomTestCase, q


class GuestAccessTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"registration": {"allow_guests": True}}

    async def _guest(self) -> tuple[str, str]:
        reg = await self.request("POST", f"{CS}/register?kind=guest", {})
        self.assertEqual(reg.code, 200, reg)
        return reg.json["user_id"], reg.json["access_token"]

    async def _guest_room(self, visibility: str | None = None) -> tuple[str, str]:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.put_state(alice, room, "m.room.guest_access",
                                    {"guest_access": "can_join"})
        self.assertEqual(resp.code, 200, resp)
        if visibility is not None:
            resp = await self.put_state(alice, room, "m.room.history_visibility",
                                        {"history_visibility": visibility})
            self.assertEqual(resp.code, 200, resp)
        return alice, room

    async def _membership(self, token: str, room: str, user_id: str) -> str:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(user_id)}", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["membership"]

    # -- 13guestaccess.pl --------------------------------------------------------------

    async def test_guest_users_can_join_guest_access_rooms(self) -> None:
        """SyTest: Guest users can join guest_access rooms."""
        _, room = await self._guest_room()
        _, guest = await self._guest()
        resp = await self.join(guest, room)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["room_id"], room)
        # The /rooms/{id}/join form too (idempotent now).
        resp = await self.member(guest, room, "join")
        self.assertEqual(resp.code, 200, resp)

    async def test_guest_cannot_join_without_guest_access(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat")
        _, guest = await self._guest()
        self.assertMatrixError(await self.join(guest, room), 403, "M_GUEST_ACCESS_FORBIDDEN")
        await self.put_state(alice, room, "m.room.guest_access", {"guest_access": "forbidden"})
        self.assertMatrixError(await self.join(guest, room), 403, "M_GUEST_ACCESS_FORBIDDEN")
        # A real user still joins the public room.
        bob = await self.user("bob")
        self.assertEqual((await self.join(bob, room)).code, 200)

    async def test_guest_users_can_send_messages_if_joined(self) -> None:
        """SyTest: Guest users can send messages to guest_access rooms if joined."""
        alice, room = await self._guest_room()
        guest_id, guest = await self._guest()
        # Not joined yet: refused by the auth rules.
        self.assertEqual((await self.send(guest, room, "early")).code, 403)
        self.assertEqual((await self.join(guest, room)).code, 200)
        await self.send_ok(guest, room, "sup")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=1",
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        (event,) = resp.json["chunk"]
        self.assertEqual(event["sender"], guest_id)
        self.assertEqual(event["content"]["body"], "sup")
        # The guest can leave again.
        self.assertEqual((await self.member(guest, room, "leave")).code, 200)

    async def test_guests_kicked_on_revocation_of_guest_access(self) -> None:
        """SyTest: Guest users are kicked from guest_access rooms on revocation."""
        alice, room = await self._guest_room()
        guest_id, guest = await self._guest()
        bob = await self.user("bob")
        self.assertEqual((await self.join(bob, room)).code, 200)
        self.assertEqual((await self.join(guest, room)).code, 200)
        self.assertEqual(await self._membership(alice, room, guest_id), "join")
        resp = await self.put_state(alice, room, "m.room.guest_access",
                                    {"guest_access": "forbidden"})
        self.assertEqual(resp.code, 200, resp)
        for _ in range(50):
            if await self._membership(alice, room, guest_id) == "leave":
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await self._membership(alice, room, guest_id), "leave")
        # Real users stay.
        self.assertEqual(await self._membership(alice, room, "@bob:test.local"), "join")

    async def test_guest_user_can_set_display_names(self) -> None:
        """SyTest: Guest user can set display names."""
        _, room = await self._guest_room()
        guest_id, guest = await self._guest()
        self.assertEqual((await self.join(guest, room)).code, 200)
        path = f"{CS}/profile/{q(guest_id)}/displayname"
        resp = await self.request("PUT", path, {"displayname": "creeper"}, token=guest)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(guest_id)}", token=guest)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["displayname"], "creeper")

    async def test_guest_user_cannot_call_events_globally(self) -> None:
        """SyTest: Guest user cannot call /events globally (4xx, not a long-poll)."""
        _, guest = await self._guest()
        resp = await self.request("GET", f"{CS}/events?timeout=30000", token=guest)
        self.assertEqual(resp.code, 400, resp)

    # -- 30history-visibility.pl ------------------------------------------------------

    async def test_guest_history_visibility_on_join(self) -> None:
        """SyTest: m.room.history_visibility == X allows/forbids appropriately for Guest
        users (the joins succeed and the visibility rules apply)."""
        for visibility, see_without, see_before in (
                ("world_readable", True, True), ("shared", False, True),
                ("joined", False, False)):
            alice = await self.user(f"a{visibility[:5]}")
            room = await self.create_room(alice, preset="public_chat")
            await self.put_state(alice, room, "m.room.history_visibility",
                                 {"history_visibility": visibility})
            await self.put_state(alice, room, "m.room.guest_access", {"guest_access": "can_join"})
            before = await self.send_ok(alice, room, "Before join")
            _, guest = await self._guest()
            resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=10",
                                      token=guest)
            ids = {e["event_id"] for e in resp.json.get("chunk", [])} if resp.code == 200 else set()
            self.assertEqual(before in ids, see_without, (visibility, resp))
            self.assertEqual((await self.join(guest, room)).code, 200)
            resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=10",
                                      token=guest)
            self.assertEqual(resp.code, 200, resp)
            ids = {e["event_id"] for e in resp.json["chunk"]}
            self.assertEqual(before in ids, see_before, visibility)

    async def test_non_joined_cannot_call_events_on_private_room(self) -> None:
        """SyTest: Guest/Real non-joined user cannot call /events on shared room (a 403
        at once, not a 30 s long-poll)."""
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.send_ok(alice, room, "mice")
        _, guest = await self._guest()
        bob = await self.user("bob")
        for token in (guest, bob):
            resp = await self.request(
                "GET", f"{CS}/events?room_id={q(room)}&timeout=30000", token=token)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_non_joined_can_call_events_on_world_readable_room(self) -> None:
        """SyTest: Guest/Real non-joined user can call /events on world_readable room."""
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        _, guest = await self._guest()
        bob = await self.user("bob")
        for token in (guest, bob):
            sync = await self.request("GET", f"{CS}/rooms/{q(room)}/initialSync", token=token)
            self.assertEqual(sync.code, 200, sync)
            start = sync.json["messages"]["end"]
            event_id = await self.send_ok(alice, room, "mice")
            resp = await self.request(
                "GET", f"{CS}/events?room_id={q(room)}&timeout=0&from={q(start)}", token=token)
            self.assertEqual(resp.code, 200, resp)
            self.assertIn(event_id, [e["event_id"] for e in resp.json["chunk"]])
            self.assertTrue(all(e["room_id"] == room for e in resp.json["chunk"]))

    async def test_non_joined_room_initial_sync_world_readable(self) -> None:
        """SyTest: Guest/Real non-joined users can room initialSync for world_readable
        rooms: the messages since the room became world-readable, with start/end."""
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.send_ok(alice, room, "private")
        await self.put_state(alice, room, "m.room.history_visibility",
                             {"history_visibility": "world_readable"})
        await self.send_ok(alice, room, "public")
        _, guest = await self._guest()
        bob = await self.user("bob")
        for token in (guest, bob):
            resp = await self.request("GET", f"{CS}/rooms/{q(room)}/initialSync", token=token)
            self.assertEqual(resp.code, 200, resp)
            for key in ("room_id", "state", "messages", "presence"):
                self.assertIn(key, resp.json)
            messages = resp.json["messages"]
            for key in ("chunk", "start", "end"):
                self.assertIn(key, messages)
            chunk = messages["chunk"]
            self.assertEqual(len(chunk), 2, chunk)
            self.assertEqual(chunk[0]["type"], "m.room.history_visibility")
            self.assertEqual(chunk[1]["content"]["body"], "public")

    async def test_guest_state_after_leaving_world_readable_room(self) -> None:
        """SyTest: Guest non-joined users can get individual state for world_readable
        rooms after leaving."""
        alice, room = await self._guest_room("world_readable")
        _, guest = await self._guest()
        self.assertEqual((await self.join(guest, room)).code, 200)
        self.assertEqual((await self.member(guest, room, "leave")).code, 200)
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q('@alice:test.local')}",
            token=guest)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["membership"], "join")
        del alice
