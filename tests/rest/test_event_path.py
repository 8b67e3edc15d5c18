"""One event path: redactions apply only as non-state events of the target's room
(issue 11, finding 1), createRoom ``initial_state`` and /redact pass the same checks as
PUT /state and /send (finding 8), and the typed fan-out isolates a failing subscriber."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from homeserver.handlers.event_fanout import PersistedEvent, PersistKind
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_redaction_upgrade import RedactionTestCase

ALICE = "@alice:test.local"


class CrossRoomRedactionTest(RedactionTestCase):
    async def messages(self, token: str, room: str) -> dict[str, dict]:
        page = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=50",
                                  token=token)
        self.assertEqual(page.code, 200, page)
        return {e["event_id"]: e for e in page.json["chunk"]}

    async def test_state_redaction_refused_everywhere(self) -> None:
        alice = await self.user("alice")
        mallory = await self.user("mallory")
        room_x = await self.create_room(alice, preset="public_chat", room_version="11")
        await self.join(mallory, room_x)
        target = await self.send_ok(alice, room_x, "alice's words")
        room_y = await self.create_room(mallory, room_version="11")
        # PUT /state in the attacker's own room.
        resp = await self.put_state(mallory, room_y, "m.room.redaction", {"redacts": target}, "1")
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        # The same through createRoom's initial_state: refused, and no room is made.
        before = await self.request("GET", f"{CS}/joined_rooms", token=mallory)
        resp = await self.request("POST", f"{CS}/createRoom", {
            "room_version": "11",
            "initial_state": [{"type": "m.room.redaction", "state_key": "",
                               "content": {"redacts": target}}],
        }, token=mallory)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        after = await self.request("GET", f"{CS}/joined_rooms", token=mallory)
        self.assertEqual(before.json, after.json)
        # Inside the room too: a member cannot redact by state event.
        resp = await self.put_state(mallory, room_x, "m.room.redaction", {"redacts": target}, "x")
        self.assertIn(resp.code, (400, 403), resp)
        event = (await self.get_event(alice, room_x, target)).json
        self.assertEqual(event["content"]["body"], "alice's words")
        self.assertNotIn("redacted_because", event.get("unsigned", {}))

    async def test_redaction_from_another_room_never_applies(self) -> None:
        alice = await self.user("alice")
        mallory = await self.user("mallory")
        room_x = await self.create_room(alice, preset="public_chat")
        target = await self.send_ok(alice, room_x, "stays")
        room_y = await self.create_room(mallory)
        # /redact names the room: an event of another room is refused outright.
        resp = await self.redact(mallory, room_y, target)
        self.assertEqual(resp.code, 400, resp)
        event = (await self.get_event(alice, room_x, target)).json
        self.assertEqual(event["content"]["body"], "stays")
        # The room's own admin still redacts it, and it is seen redacted everywhere.
        resp = await self.redact(alice, room_x, target, body={"reason": "spam"})
        self.assertEqual(resp.code, 200, resp)
        event = (await self.get_event(alice, room_x, target)).json
        self.assertEqual(event["content"], {})
        self.assertEqual(event["unsigned"]["redacted_because"]["room_id"], room_x)
        self.assertEqual((await self.messages(alice, room_x))[target]["content"], {})

    async def test_stale_rows_from_other_rooms_are_ignored(self) -> None:
        """Rows an older version stored for a state or cross-room "redaction" never apply."""
        alice = await self.user("alice")
        mallory = await self.user("mallory")
        room_x = await self.create_room(alice, preset="public_chat")
        target = await self.send_ok(alice, room_x, "kept")
        room_y = await self.create_room(mallory)
        decoy = await self.send_ok(mallory, room_y, "decoy")
        await self.hs.db.run("plant", lambda txn: txn.execute(
            "INSERT INTO redactions (event_id, redacts, stream_ordering) VALUES (?, ?, ?)",
            (decoy, target, 1)))
        event = (await self.get_event(alice, room_x, target)).json
        self.assertEqual(event["content"]["body"], "kept")
        self.assertEqual((await self.messages(alice, room_x))[target]["content"]["body"], "kept")

    async def test_redact_keeps_only_the_reason(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        target = await self.send_ok(alice, room, "x")
        resp = await self.redact(alice, room, target, body={"reason": "why",
                                                            "body": "smuggled", "redacts": "$x"})
        self.assertEqual(resp.code, 200, resp)
        redaction = (await self.get_event(alice, room, resp.json["event_id"])).json
        self.assertEqual(redaction["content"].get("reason"), "why")
        self.assertNotIn("body", redaction["content"])
        self.assertEqual(redaction.get("redacts", redaction["content"].get("redacts")), target)


class CreateRoomTest(RoomTestCase):
    async def test_same_v12_room_twice_in_one_millisecond(self) -> None:
        """The clock does not move between the two: the second room gets its own id."""
        alice = await self.user("alice")
        first = await self.create_room(alice, room_version="12")
        second = await self.create_room(alice, room_version="12")
        self.assertNotEqual(first, second)
        joined = await self.request("GET", f"{CS}/joined_rooms", token=alice)
        self.assertEqual(sorted(joined.json["joined_rooms"]), sorted([first, second]))


class InitialStateValidationTest(RoomTestCase):
    async def test_canonical_alias_of_another_room_refused(self) -> None:
        alice = await self.user("alice")
        other = await self.create_room(alice, room_alias_name="elsewhere")
        self.assertTrue(other)
        alias = "#elsewhere:test.local"
        resp = await self.request("POST", f"{CS}/createRoom", {
            "initial_state": [{"type": "m.room.canonical_alias", "state_key": "",
                               "content": {"alias": alias}}],
        }, token=alice)
        self.assertMatrixError(resp, 400, "M_BAD_ALIAS")
        # PUT /state gives the same answer.
        room = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.canonical_alias", {"alias": alias})
        self.assertMatrixError(resp, 400, "M_BAD_ALIAS")

    async def test_refused_room_releases_its_alias(self) -> None:
        alice = await self.user("alice")
        body = {"room_alias_name": "wanted",
                "initial_state": [{"type": "m.room.canonical_alias", "state_key": "",
                                   "content": {"alt_aliases": ["#nope:test.local"]}}]}
        resp = await self.request("POST", f"{CS}/createRoom", body, token=alice)
        self.assertMatrixError(resp, 400, "M_BAD_ALIAS")
        resp = await self.request("GET", f"{CS}/directory/room/{q('#wanted:test.local')}")
        self.assertEqual(resp.code, 404, resp)
        room = await self.create_room(alice, room_alias_name="wanted")
        self.assertTrue(room)


    async def test_membership_and_create_refused_in_initial_state(self) -> None:
        alice = await self.user("alice")
        await self.user("bob")
        for event_type, state_key, content in (
            ("m.room.member", "@bob:test.local", {"membership": "invite"}),
            ("m.room.create", "", {"room_version": "10"}),
        ):
            resp = await self.request("POST", f"{CS}/createRoom", {
                "initial_state": [{"type": event_type, "state_key": state_key,
                                   "content": content}]}, token=alice)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        room = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.create", {"room_version": "10"})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")


class InitialStateE2eePolicyTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"e2ee": {"policy": "everywhere"}}

    async def test_plaintext_state_refused_in_initial_state(self) -> None:
        alice = await self.user("alice")
        resp = await self.request("POST", f"{CS}/createRoom", {
            "initial_state": [{"type": "m.room.message", "state_key": "",
                               "content": {"msgtype": "m.text", "body": "plain"}}],
        }, token=alice)
        self.assertMatrixError(resp, 400, "M_FORBIDDEN")
        room = await self.create_room(alice)
        resp = await self.put_state(alice, room, "m.room.message",
                                    {"msgtype": "m.text", "body": "plain"})
        self.assertMatrixError(resp, 400, "M_FORBIDDEN")


class FanoutTest(RoomTestCase):
    async def test_failing_subscriber_blocks_neither_others_nor_wakeup(self) -> None:
        seen: list[PersistedEvent] = []

        def broken(record: PersistedEvent) -> None:
            raise RuntimeError("subscriber bug")

        self.hs.fanout.subscribe("broken", broken)
        self.hs.fanout.subscribe("recorder", seen.append)
        alice = await self.user("alice")
        room = await self.create_room(alice)
        first = await self.sync(alice)
        # A long-poll waiting when the event is saved must wake for it.
        pending = defer.ensureDeferred(self.sync(alice, first["next_batch"], timeout=30_000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        event_id = await self.send_ok(alice, room, "wake up")
        woken = await pending
        timeline = woken["rooms"]["join"][room]["timeline"]["events"]
        self.assertIn(event_id, [e["event_id"] for e in timeline])
        self.assertGreater(self.hs.fanout.failures["broken"], 0)
        record = [r for r in seen if r.event.event_id == event_id][0]
        self.assertIs(record.kind, PersistKind.LOCAL)
        self.assertEqual(record.state_delta, {})
        self.assertEqual(record.position, record.event.internal.stream_ordering)
        states = [r for r in seen if r.event.type == "m.room.member"]
        self.assertEqual(states[0].state_delta,
                         {("m.room.member", ALICE): states[0].event.event_id})
        self.assertIn(ALICE, states[0].members)
        positions = [r.position for r in seen]
        self.assertEqual(positions, sorted(positions))

    async def test_events_stored_before_a_failure_are_published(self) -> None:
        """A createRoom whose third write fails: the two stored events still reach the
        subscribers (and the long-polls), the caller gets the failure."""
        seen: list[PersistedEvent] = []
        self.hs.fanout.subscribe("recorder", seen.append)
        alice = await self.user("alice")
        store = self.hs.stores.events
        real = store.persist_event
        calls: list[Any] = []

        async def failing_third(req: Any) -> int:
            calls.append(req)
            if len(calls) == 3:
                raise RuntimeError("disk full")
            return await real(req)

        store.persist_event = failing_third  # type: ignore[method-assign]
        resp = await self.request("POST", f"{CS}/createRoom", {}, token=alice)
        self.assertEqual(resp.code, 500)
        self.assertEqual([r.event.type for r in seen], ["m.room.create", "m.room.member"])
        self.flushLoggedErrors(RuntimeError)
