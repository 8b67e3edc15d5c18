"""The deprecated /events, /events/{eventId}, /initialSync and /rooms/{roomId}/initialSync."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from twisted.internet import defer, reactor, task

from tests.rest.room_helpers import CS, RoomTestCase, q

BOB = "@bob:test.local"
_EVENT = {"type": "object",
          "required": ["content", "event_id", "origin_server_ts", "room_id", "sender", "type"]}
_CHUNK = {"type": "object", "required": ["end", "chunk"],
          "properties": {"start": {"type": "string"}, "end": {"type": "string"},
                         "chunk": {"type": "array", "items": _EVENT}}}
# old_sync.yaml / room_initial_sync.yaml RoomInfo (events reduced to their required keys).
ROOM_INFO = {
    "type": "object", "required": ["room_id"],
    "properties": {
        "room_id": {"type": "string", "pattern": "^!"},
        "membership": {"enum": ["invite", "join", "leave", "ban"]},
        "invite": _EVENT, "messages": _CHUNK,
        "state": {"type": "array", "items": _EVENT},
        "visibility": {"enum": ["private", "public"]},
        "account_data": {"type": "array", "items": {"type": "object", "required": ["type"]}},
    },
}
INITIAL_SYNC = Draft202012Validator({
    "type": "object", "required": ["end", "rooms", "presence"],
    "properties": {"end": {"type": "string"}, "rooms": {"type": "array", "items": ROOM_INFO},
                   "presence": {"type": "array"},
                   "account_data": {"type": "array"}},
})
ROOM_INITIAL_SYNC = Draft202012Validator(ROOM_INFO)
# /events chunks also carry presence, typing, receipts and account data (Synapse).
_STREAM_ITEM = {"type": "object", "required": ["type", "content"]}
EVENTS = Draft202012Validator({
    "type": "object", "required": ["chunk", "start", "end"],
    "properties": {"start": {"type": "string"}, "end": {"type": "string"},
                   "chunk": {"type": "array", "items": {"anyOf": [_EVENT, _STREAM_ITEM]}}},
})


def timeline(body: dict) -> list[dict]:
    """The room events of an /events chunk (not presence, typing, receipts...)."""
    return [e for e in body["chunk"] if "event_id" in e]


class LegacyEndpointsTest(RoomTestCase):
    async def prepare(self) -> None:
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room = await self.create_room(self.alice, preset="public_chat", name="Lobby")
        self.assertEqual((await self.join(self.bob, self.room)).code, 200)

    async def get(self, token: str | None, path: str, validator: Draft202012Validator | None = None,
                  code: int = 200) -> Any:
        resp = await self.request("GET", f"{CS}{path}", token=token)
        self.assertEqual(resp.code, code, resp)
        if validator is not None:
            self.assertEqual([e.message for e in validator.iter_errors(resp.json)], [], resp.json)
        return resp.json

    # -- /initialSync -------------------------------------------------------------------

    async def test_initial_sync(self) -> None:
        await self.prepare()
        for i in range(3):
            await self.send_ok(self.alice, self.room, f"m{i}")
        private = await self.create_room(self.alice)
        self.assertEqual((await self.member(self.alice, private, "invite", user_id=BOB)).code, 200)
        left = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, left)
        await self.member(self.bob, left, "leave")
        await self.send_ok(self.alice, left, "after bob left")
        body = await self.get(self.bob, "/initialSync?limit=2", INITIAL_SYNC)
        rooms = {r["room_id"]: r for r in body["rooms"]}
        self.assertEqual(set(rooms), {self.room, private})
        joined = rooms[self.room]
        self.assertEqual(joined["membership"], "join")
        self.assertEqual([e["content"]["body"] for e in joined["messages"]["chunk"]], ["m1", "m2"])
        self.assertIn("start", joined["messages"])
        self.assertEqual(joined["visibility"], "private")
        self.assertIn(("m.room.name", ""), {(e["type"], e["state_key"]) for e in joined["state"]})
        invite = rooms[private]
        self.assertEqual(invite["membership"], "invite")
        self.assertEqual(invite["invite"]["state_key"], BOB)
        self.assertNotIn("messages", invite)
        # Archived: the left room, as of the departure.
        body = await self.get(self.bob, "/initialSync?archived=true&limit=10", INITIAL_SYNC)
        gone = {r["room_id"]: r for r in body["rooms"]}[left]
        self.assertEqual(gone["membership"], "leave")
        bodies = [e.get("content", {}).get("body") for e in gone["messages"]["chunk"]]
        self.assertNotIn("after bob left", bodies)
        self.assertEqual(gone["messages"]["chunk"][-1]["content"]["membership"], "leave")

    async def test_room_initial_sync(self) -> None:
        await self.prepare()
        await self.send_ok(self.alice, self.room, "hello")
        body = await self.get(self.bob, f"/rooms/{q(self.room)}/initialSync", ROOM_INITIAL_SYNC)
        self.assertEqual(body["membership"], "join")
        self.assertEqual(body["messages"]["chunk"][-1]["content"]["body"], "hello")
        carol = await self.user("carol")
        await self.get(carol, f"/rooms/{q(self.room)}/initialSync", code=403)
        await self.get(carol, f"/rooms/{q('!nowhere:test.local')}/initialSync", code=403)
        await self.get(carol, "/rooms/not-a-room/initialSync", code=400)
        resp = await self.put_state(self.alice, self.room, "m.room.history_visibility",
                                    {"history_visibility": "world_readable"})
        self.assertEqual(resp.code, 200, resp)
        await self.send_ok(self.alice, self.room, "for everyone")
        peek = await self.get(carol, f"/rooms/{q(self.room)}/initialSync", ROOM_INITIAL_SYNC)
        self.assertNotIn("membership", peek)
        # The change that made the room world-readable is visible too (SyTest, Synapse).
        self.assertEqual([(e["type"], e["content"].get("body"))
                          for e in peek["messages"]["chunk"]],
                         [("m.room.history_visibility", None), ("m.room.message", "for everyone")])

    # -- /events ------------------------------------------------------------------------

    async def test_events_stream(self) -> None:
        await self.prepare()
        start = (await self.get(self.bob, "/initialSync?limit=0", INITIAL_SYNC))["end"]
        empty = await self.get(self.bob, f"/events?from={q(start)}&timeout=0", EVENTS)
        self.assertEqual(timeline(empty), [])
        mine = await self.send_ok(self.alice, self.room, "new")
        carol = await self.user("carol")
        elsewhere = await self.create_room(carol)
        await self.send_ok(carol, elsewhere, "not for bob")
        body = await self.get(self.bob, f"/events?from={q(empty['end'])}&timeout=0", EVENTS)
        self.assertEqual([e["event_id"] for e in timeline(body)], [mine])
        self.assertEqual(timeline(body)[0]["room_id"], self.room)
        again = await self.get(self.bob, f"/events?from={q(body['end'])}&timeout=0", EVENTS)
        self.assertEqual(timeline(again), [])
        # A /sync token works as well.
        since = (await self.sync(self.bob))["next_batch"]
        later = await self.send_ok(self.alice, self.room, "later")
        body = await self.get(self.bob, f"/events?from={q(since)}&timeout=0", EVENTS)
        self.assertEqual([e["event_id"] for e in timeline(body)], [later])

    async def test_events_long_poll(self) -> None:
        await self.prepare()
        start = (await self.get(self.bob, "/events?timeout=0", EVENTS))["end"]
        pending = defer.ensureDeferred(self.get(self.bob, f"/events?from={q(start)}&timeout=30000"))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called)
        event_id = await self.send_ok(self.alice, self.room, "wake up")
        body = await pending
        self.assertEqual([e["event_id"] for e in timeline(body)], [event_id])
        # Nothing arrives: the timeout ends it with an empty chunk.
        pending = defer.ensureDeferred(self.get(self.bob, f"/events?from={q(body['end'])}&timeout=1000"))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.advance(2)
        body = await pending
        self.assertEqual(body["chunk"], [])

    async def test_events_long_poll_ignores_other_streams(self) -> None:
        """/events waits like /sync: typing in a room the user is not in does not answer
        it; typing in their room comes as an m.typing event with its room_id."""
        await self.prepare()
        start = (await self.get(self.bob, "/events?timeout=0", EVENTS))["end"]
        carol = await self.user("carol")
        elsewhere = await self.create_room(carol)
        pending = defer.ensureDeferred(self.get(self.bob, f"/events?from={q(start)}&timeout=30000",
                                                EVENTS))
        await task.deferLater(reactor, 0.1, lambda: None)
        for i in range(5):
            path = f"{CS}/rooms/{q(elsewhere)}/typing/{q('@carol:test.local')}"
            resp = await self.request("PUT", path, {"typing": i % 2 == 0, "timeout": 30000},
                                      token=carol)
            self.assertEqual(resp.code, 200, resp)
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(pending.called)
        path = f"{CS}/rooms/{q(self.room)}/typing/{q('@alice:test.local')}"
        resp = await self.request("PUT", path, {"typing": True, "timeout": 30000},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        body = await pending
        self.assertIn({"type": "m.typing", "room_id": self.room,
                       "content": {"user_ids": ["@alice:test.local"]}}, body["chunk"])
        self.assertNotIn(elsewhere, [e.get("room_id") for e in body["chunk"]])

    async def test_events_bad_input(self) -> None:
        await self.prepare()
        for query in ("?from=nonsense", "?from=s", "?timeout=abc", "?from=t" + "9" * 30):
            resp = await self.request("GET", f"{CS}/events{query}", token=self.bob)
            self.assertEqual(resp.code, 400, resp)
        for query in ("?limit=-1", "?limit=x", "?archived=maybe"):
            resp = await self.request("GET", f"{CS}/initialSync{query}", token=self.bob)
            self.assertEqual(resp.code, 400, resp)

    # -- /events/{eventId} --------------------------------------------------------------

    async def test_single_event_visibility(self) -> None:
        await self.prepare()
        event_id = await self.send_ok(self.alice, self.room, "hello")
        body = await self.get(self.bob, f"/events/{q(event_id)}")
        self.assertEqual((body["event_id"], body["room_id"]), (event_id, self.room))
        self.assertEqual(body["content"]["body"], "hello")
        private = await self.create_room(self.alice)
        secret = await self.send_ok(self.alice, private, "secret")
        hidden = await self.request("GET", f"{CS}/events/{q(secret)}", token=self.bob)
        unknown = await self.request("GET", f"{CS}/events/{q('$nope')}", token=self.bob)
        self.assertMatrixError(hidden, 404, "M_NOT_FOUND")
        self.assertMatrixError(unknown, 404, "M_NOT_FOUND")
        self.assertEqual(hidden.json, unknown.json)
        bad = await self.request("GET", f"{CS}/events/not-an-id", token=self.bob)
        self.assertEqual(bad.code, 400, bad)

    async def test_missing_token(self) -> None:
        for path in ("/events", "/events/%24x", "/initialSync",
                     f"/rooms/{q('!r:test.local')}/initialSync"):
            self.assertMatrixError(await self.request("GET", f"{CS}{path}"), 401,
                                   "M_MISSING_TOKEN")
