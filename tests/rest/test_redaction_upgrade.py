"""PUT /rooms/{roomId}/redact/{eventId}/{txnId} (who may redact, idempotency, how
redacted events are served everywhere) and POST /rooms/{roomId}/upgrade."""

from __future__ import annotations

from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"


class RedactionTestCase(RoomTestCase):
    async def redact(self, token: str, room: str, event_id: str, txn: str = "r1",
                     body: Any = None) -> Any:
        return await self.request(
            "PUT", f"{CS}/rooms/{q(room)}/redact/{q(event_id)}/{q(txn)}",
            {} if body is None else body, token=token)


class RedactionTest(RedactionTestCase):
    async def test_redact_own_event_served_pruned_everywhere(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        synced = await self.sync(alice)
        target = await self.send_ok(alice, room, "oops, a secret")
        resp = await self.redact(alice, room, target, body={"reason": "typo"})
        self.assertEqual(resp.code, 200, resp)
        redaction_id = resp.json["event_id"]
        self.assertTrue(redaction_id.startswith("$"))

        def check(event: dict) -> None:
            self.assertEqual(event["event_id"], target)
            self.assertEqual(event["content"], {})
            because = event["unsigned"]["redacted_because"]
            self.assertEqual(because["event_id"], redaction_id)
            self.assertEqual(because["content"]["reason"], "typo")
            self.assertEqual(because["redacts"], target)

        check((await self.get_event(alice, room, target)).json)
        page = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=5",
                                  token=alice)
        by_id = {e["event_id"]: e for e in page.json["chunk"]}
        check(by_id[target])
        self.assertEqual(by_id[redaction_id]["type"], "m.room.redaction")
        self.assertEqual(by_id[redaction_id]["redacts"], target)
        ctx = await self.request("GET", f"{CS}/rooms/{q(room)}/context/{q(target)}",
                                 token=alice)
        check(ctx.json["event"])
        inc = await self.sync(alice, synced["next_batch"])
        timeline = {e["event_id"]: e for e in inc["rooms"]["join"][room]["timeline"]["events"]}
        self.assertEqual(timeline[target]["content"], {})
        self.assertIn("redacted_because", timeline[target]["unsigned"])

    async def test_idempotent_per_txn(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        target = await self.send_ok(alice, room, "x")
        first = await self.redact(alice, room, target, txn="same")
        again = await self.redact(alice, room, target, txn="same")
        self.assertEqual(first.json, again.json)
        other = await self.redact(alice, room, target, txn="other")
        self.assertEqual(other.code, 200)
        self.assertNotEqual(other.json["event_id"], first.json["event_id"])
        # A txn id spent on a message is not silently the answer to a redaction.
        await self.send(alice, room, "y", txn="shared")
        self.assertMatrixError(await self.redact(alice, room, target, txn="shared"), 400,
                               "M_INVALID_PARAM")

    async def test_power_to_redact_others(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        await self.join(carol, room)
        by_alice = await self.send_ok(alice, room, "alice says")
        by_carol = await self.send_ok(carol, room, "carol says")
        self.assertMatrixError(await self.redact(bob, room, by_alice), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.redact(bob, room, by_carol), 403, "M_FORBIDDEN")
        self.assertEqual((await self.redact(alice, room, by_carol)).code, 200)
        self.assertEqual((await self.redact(carol, room, by_carol, txn="c")).code, 200)
        # Lower the redact level: now bob may.
        state = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.power_levels",
                                   token=alice)
        levels = {**state.json, "redact": 0}
        self.assertEqual((await self.put_state(alice, room, "m.room.power_levels", levels)).code,
                         200)
        self.assertEqual((await self.redact(bob, room, by_alice, txn="b2")).code, 200)
        # The create event is never redactable, even by its creator.
        create = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.create?format=event",
                                    token=alice)
        self.assertMatrixError(await self.redact(alice, room, create.json["event_id"], txn="c2"),
                               403, "M_FORBIDDEN")

    async def test_unknown_event(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        # As Synapse: a moderator may redact an event we do not (yet) have...
        self.assertEqual((await self.redact(alice, room, "$unknown:elsewhere")).code, 200)
        # ... anyone else gets a 404.
        self.assertMatrixError(await self.redact(bob, room, "$unknown:elsewhere"), 404,
                               "M_NOT_FOUND")

    async def test_bad_input(self) -> None:
        alice = await self.user("alice")
        carol = await self.user("carol")
        room = await self.create_room(alice)
        other = await self.create_room(alice)
        target = await self.send_ok(alice, room, "x")
        elsewhere = await self.send_ok(alice, other, "y")
        self.assertMatrixError(await self.redact(alice, room, "nodollar"), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.redact(alice, "nobang", target), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.redact(alice, "!unknown:test.local", target), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.redact(alice, room, target, body={"reason": 5}), 400,
                               "M_BAD_JSON")
        self.assertMatrixError(await self.redact(alice, room, elsewhere, txn="x"), 400,
                               "M_UNKNOWN")
        # Not in the room: the auth rules say no, even for one's own old event.
        self.assertMatrixError(await self.redact(carol, room, target), 403, "M_FORBIDDEN")
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(target)}/t", {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(target)}/t",
                                  raw_body=b"[1]", token=alice)
        self.assertEqual(resp.code, 400)

    async def test_room_version_11_redaction(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, room_version="11")
        target = await self.send_ok(alice, room, "x")
        resp = await self.redact(alice, room, target)
        self.assertEqual(resp.code, 200)
        event = (await self.get_event(alice, room, resp.json["event_id"])).json
        self.assertEqual(event["content"]["redacts"], target)
        self.assertEqual(event["redacts"], target)

    async def test_redacted_state_does_not_leak_through_prev_content(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        first = (await self.put_state(alice, room, "m.room.topic", {"topic": "secret"})).json
        await self.put_state(alice, room, "m.room.topic", {"topic": "public"})
        self.assertEqual((await self.redact(alice, room, first["event_id"])).code, 200)
        page = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=5",
                                  token=alice)
        topics = [e for e in page.json["chunk"] if e["type"] == "m.room.topic"]
        self.assertEqual(topics[0]["content"], {"topic": "public"})
        self.assertEqual(topics[0]["unsigned"]["prev_content"], {})
        self.assertEqual(topics[1]["content"], {})
        self.assertNotIn("secret", page.raw.decode())


class UpgradeTestCase(RoomTestCase):
    async def upgrade(self, token: str, room: str, body: Any) -> Any:
        return await self.request("POST", f"{CS}/rooms/{q(room)}/upgrade", body, token=token)

    async def state(self, token: str, room: str, event_type: str, key: str = "") -> Any:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/state/{event_type}/{q(key)}", token=token)
        return resp.json if resp.code == 200 else None


class UpgradeTest(UpgradeTestCase):
    async def test_upgrade_copies_state_and_restricts_old_room(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        resp = await self.request("POST", f"{CS}/createRoom", {
            "preset": "public_chat", "visibility": "public", "room_alias_name": "lobby",
            "name": "Lobby", "topic": "Chat", "initial_state": [
                {"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                {"type": "m.room.avatar", "content": {"url": "mxc://test.local/av"}}]},
            token=alice)
        old = resp.json["room_id"]
        await self.join(bob, old)
        await self.join(carol, old)
        await self.member(alice, old, "ban", user_id=CAROL, reason="spam")
        last = await self.send_ok(alice, old, "last words")
        resp = await self.upgrade(alice, old, {"new_version": "11"})
        self.assertEqual(resp.code, 200, resp)
        new = resp.json["replacement_room"]
        self.assertNotEqual(new, old)

        tombstone = await self.state(alice, old, "m.room.tombstone")
        self.assertEqual(tombstone["replacement_room"], new)
        create = await self.state(alice, new, "m.room.create")
        self.assertEqual(create["room_version"], "11")
        self.assertEqual(create["predecessor"]["room_id"], old)
        self.assertEqual(create["predecessor"]["event_id"], last)
        self.assertEqual((await self.state(alice, new, "m.room.name"))["name"], "Lobby")
        self.assertEqual((await self.state(alice, new, "m.room.topic"))["topic"], "Chat")
        self.assertEqual((await self.state(alice, new, "m.room.join_rules"))["join_rule"],
                         "public")
        self.assertEqual((await self.state(alice, new, "m.room.avatar"))["url"],
                         "mxc://test.local/av")
        self.assertEqual((await self.state(alice, new, "m.room.encryption"))["algorithm"],
                         "m.megolm.v1.aes-sha2")
        self.assertEqual(
            (await self.state(alice, new, "m.room.history_visibility"))["history_visibility"],
            "shared")
        self.assertEqual((await self.state(alice, new, "m.room.guest_access"))["guest_access"],
                         "forbidden")
        old_pl = await self.state(alice, old, "m.room.power_levels")
        new_pl = await self.state(alice, new, "m.room.power_levels")
        self.assertEqual(new_pl["users"], {ALICE: 100})
        self.assertEqual((old_pl["events_default"], old_pl["invite"]), (50, 50))
        self.assertEqual(new_pl["events_default"], 0)
        ban = await self.state(alice, new, "m.room.member", CAROL)
        self.assertEqual(ban["membership"], "ban")
        # The alias and the canonical alias moved; the directory listing too.
        alias = await self.request("GET", f"{CS}/directory/room/{q('#lobby:test.local')}")
        self.assertEqual(alias.json["room_id"], new)
        self.assertEqual((await self.state(alice, new, "m.room.canonical_alias"))["alias"],
                         "#lobby:test.local")
        self.assertNotIn("alias", await self.state(alice, old, "m.room.canonical_alias") or {})
        self.assertEqual((await self.request(
            "GET", f"{CS}/directory/list/room/{q(new)}")).json["visibility"], "public")
        self.assertEqual((await self.request(
            "GET", f"{CS}/directory/list/room/{q(old)}")).json["visibility"], "private")
        # Ordinary members can no longer talk in the old room; they can join the new one.
        self.assertMatrixError(await self.send(bob, old, "still here?"), 403, "M_FORBIDDEN")
        self.assertEqual((await self.join(bob, new)).code, 200)

    async def test_upgrade_to_v12_makes_upgrader_creator(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        old = await self.create_room(alice, preset="public_chat")
        await self.join(bob, old)
        levels = await self.state(alice, old, "m.room.power_levels")
        levels["users"][BOB] = 50
        await self.put_state(alice, old, "m.room.power_levels", levels)
        resp = await self.upgrade(alice, old, {"new_version": "12",
                                               "additional_creators": [BOB]})
        self.assertEqual(resp.code, 200, resp)
        new = resp.json["replacement_room"]
        self.assertNotIn(":", new)
        create = await self.request("GET", f"{CS}/rooms/{q(new)}/state/m.room.create/?format=event",
                                    token=alice)
        self.assertEqual(create.json["sender"], ALICE)
        self.assertEqual(create.json["content"]["additional_creators"], [BOB])
        new_pl = await self.state(alice, new, "m.room.power_levels")
        self.assertEqual(new_pl["users"], {})
        self.assertEqual(new_pl["events"]["m.room.tombstone"], 150)
        # And back from v12: the old creators get 100 explicitly.
        resp = await self.upgrade(alice, new, {"new_version": "11"})
        self.assertEqual(resp.code, 200, resp)
        newest = resp.json["replacement_room"]
        newest_pl = await self.state(alice, newest, "m.room.power_levels")
        self.assertEqual(newest_pl["users"].get(ALICE), 100)

    async def test_forbidden_and_bad_input(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        await self.join(bob, room)
        self.assertMatrixError(await self.upgrade(bob, room, {"new_version": "11"}), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await self.upgrade(carol, room, {"new_version": "11"}), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await self.upgrade(alice, room, {"new_version": "13"}), 400,
                               "M_UNSUPPORTED_ROOM_VERSION")
        self.assertMatrixError(await self.upgrade(alice, room, {}), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.upgrade(alice, room, {"new_version": 11}), 400,
                               "M_BAD_JSON")
        self.assertMatrixError(await self.upgrade(alice, room, {
            "new_version": "12", "additional_creators": ["not-a-user"]}), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.upgrade(alice, "!nope:test.local",
                                                  {"new_version": "11"}), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.upgrade(alice, "nope", {"new_version": "11"}), 400,
                               "M_INVALID_PARAM")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/upgrade", {"new_version": "11"})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        # Nothing happened to the room.
        self.assertIsNone(await self.state(alice, room, "m.room.tombstone"))
