"""createRoom, send (idempotency), state, events, joined_rooms at the HTTP level."""

from __future__ import annotations

from twisted.internet import defer

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


class CreateRoomTest(RoomTestCase):
    async def test_private_room_state(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, name="Plans", topic="secret stuff")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state", token=alice)
        self.assertEqual(resp.code, 200, resp)
        by_type = {(e["type"], e["state_key"]): e for e in resp.json}
        self.assertEqual(by_type[("m.room.create", "")]["content"]["room_version"], "10")
        self.assertEqual(by_type[("m.room.member", ALICE)]["content"]["membership"], "join")
        self.assertEqual(by_type[("m.room.join_rules", "")]["content"], {"join_rule": "invite"})
        self.assertEqual(by_type[("m.room.history_visibility", "")]["content"],
                         {"history_visibility": "shared"})
        self.assertEqual(by_type[("m.room.power_levels", "")]["content"]["users"], {ALICE: 100})
        self.assertEqual(by_type[("m.room.name", "")]["content"], {"name": "Plans"})
        self.assertEqual(by_type[("m.room.topic", "")]["content"], {"topic": "secret stuff"})
        joined = await self.request("GET", f"{CS}/joined_rooms", token=alice)
        self.assertEqual(joined.json, {"joined_rooms": [room]})
        name = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.name", token=alice)
        self.assertEqual(name.json, {"name": "Plans"})
        name = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.name/", token=alice)
        self.assertEqual(name.json, {"name": "Plans"})

    async def test_room_versions(self) -> None:
        alice = await self.user("alice")
        for version in ("10", "11", "12"):
            room = await self.create_room(alice, room_version=version, preset="public_chat")
            resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.create",
                                      token=alice)
            self.assertEqual(resp.json["room_version"], version)
            if version == "10":
                self.assertEqual(resp.json["creator"], ALICE)
            else:
                self.assertNotIn("creator", resp.json)
            if version == "12":
                self.assertNotIn(":", room)
            await self.send_ok(alice, room, f"hi in v{version}")
        bad = await self.request("POST", f"{CS}/createRoom", {"room_version": "13"}, token=alice)
        self.assertMatrixError(bad, 400, "M_UNSUPPORTED_ROOM_VERSION")

    async def test_alias_and_duplicate(self) -> None:
        alice = await self.user("alice")
        resp = await self.request("POST", f"{CS}/createRoom", {"room_alias_name": "lobby",
                                  "preset": "public_chat"}, token=alice)
        self.assertEqual(resp.json["room_alias"], "#lobby:test.local")
        again = await self.request("POST", f"{CS}/createRoom", {"room_alias_name": "lobby"},
                                   token=alice)
        self.assertMatrixError(again, 400, "M_ROOM_IN_USE")
        bob = await self.user("bob")
        joined = await self.join(bob, "#lobby:test.local")
        self.assertEqual(joined.json["room_id"], resp.json["room_id"])

    async def test_bad_create_bodies(self) -> None:
        alice = await self.user("alice")
        for body in ({"preset": "nope"}, {"invite": "bob"}, {"initial_state": [{"type": "x"}]},
                     {"room_alias_name": "bad:alias"}, {"visibility": "secret"}):
            resp = await self.request("POST", f"{CS}/createRoom", body, token=alice)
            self.assertEqual(resp.code, 400, (body, resp))
        resp = await self.request("POST", f"{CS}/createRoom", {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_invite_on_create_and_trusted_preset(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, invite=[BOB], preset="trusted_private_chat",
                                      is_direct=True)
        member = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(BOB)}",
                                    token=alice)
        self.assertEqual(member.json, {"membership": "invite", "is_direct": True})
        self.assertEqual((await self.join(bob, room)).code, 200)
        power = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.power_levels",
                                   token=bob)
        self.assertEqual(power.json["users"][BOB], 100)


class SendTest(RoomTestCase):
    async def test_send_and_get_event(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.send(alice, room, "hi there", txn="abc")
        event_id = resp.json["event_id"]
        got = await self.get_event(alice, room, event_id)
        self.assertEqual(got.code, 200, got)
        self.assertEqual(got.json["content"], {"msgtype": "m.text", "body": "hi there"})
        self.assertEqual(got.json["sender"], ALICE)
        self.assertEqual(got.json["room_id"], room)
        self.assertEqual(got.json["unsigned"]["transaction_id"], "abc")
        missing = await self.get_event(alice, room, "$nope")
        self.assertMatrixError(missing, 404, "M_NOT_FOUND")

    async def test_txn_idempotent_including_concurrent_retries(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        first = await self.send(alice, room, "once", txn="same")
        again = await self.send(alice, room, "once", txn="same")
        self.assertEqual(first.json["event_id"], again.json["event_id"])
        results = await defer.gatherResults([
            defer.ensureDeferred(self.send(alice, room, "race", txn="race")) for _ in range(5)])
        self.assertEqual(len({r.json["event_id"] for r in results}), 1)
        rows = await self.hs.db.query("count", "SELECT COUNT(*) FROM events WHERE room_id = ?"
                                      " AND txn_id IS NOT NULL", room)
        self.assertEqual(rows[0][0], 2)
        # Another room with the same txn id is a different event.
        other = await self.create_room(alice)
        elsewhere = await self.send(alice, other, "once", txn="same")
        self.assertNotEqual(elsewhere.json["event_id"], first.json["event_id"])

    async def test_non_member_cannot_send_or_read(self) -> None:
        alice = await self.user("alice")
        mallory = await self.user("mallory")
        room = await self.create_room(alice)
        event_id = await self.send_ok(alice, room)
        self.assertMatrixError(await self.send(mallory, room), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.get_event(mallory, room, event_id), 404, "M_NOT_FOUND")
        state = await self.request("GET", f"{CS}/rooms/{q(room)}/state", token=mallory)
        self.assertMatrixError(state, 403, "M_FORBIDDEN")

    async def test_bad_input(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/t1",
                                  raw_body=b"[1]", token=alice)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/t2",
                                  raw_body=b"{nope", token=alice)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")
        resp = await self.send(alice, "not-a-room", "x")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.send(alice, "!unknown:test.local", "x")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        big = await self.send(alice, room, "x" * 70000)
        self.assertEqual(big.code, 413, big)
        self.assertIn(big.json["errcode"], ("M_TOO_LARGE",))

    async def test_state_needs_power(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        resp = await self.put_state(bob, room, "m.room.name", {"name": "bob's room"})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.put_state(alice, room, "m.room.name", {"name": "alice's room"})
        self.assertEqual(resp.code, 200)
        # Membership through PUT /state takes the membership checks: nobody joins for
        # someone else.
        resp = await self.put_state(alice, room, "m.room.member", {"membership": "join"}, BOB)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Power levels: bob cannot raise himself.
        resp = await self.put_state(bob, room, "m.room.power_levels", {"users": {BOB: 100}})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class CreateRoomBadContentTest(RoomTestCase):
    async def test_bad_additional_creators_is_400(self) -> None:
        alice = await self.user("alice")
        resp = await self.request("POST", f"{CS}/createRoom", {
            "room_version": "12", "creation_content": {"additional_creators": [1]}}, token=alice)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_deeply_nested_sync_filter_is_400(self) -> None:
        alice = await self.user("alice")
        deep = '{"a":' + "[" * 1500 + "]" * 1500 + "}"
        resp = await self.request("GET", f"{CS}/sync?filter={q(deep)}", token=alice)
        self.assertEqual(resp.code, 400, resp)
