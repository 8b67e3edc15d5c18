"""GET /notifications: the recorded push actions, newest first, with read flags."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from storage.stores.push_actions import PushActionRow, PushActionsStore
from tests.rest.room_helpers import CS, RoomTestCase, q

BOB = "@bob:test.local"
# The spec's response schema (notifications.yaml), with the event reduced to what
# client_event_without_room_id requires.
_EVENT = {"type": "object", "required": ["content", "event_id", "origin_server_ts", "sender", "type"],
          "not": {"required": ["room_id"]}}
SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["notifications"],
    "properties": {
        "next_token": {"type": "string"},
        "notifications": {"type": "array", "items": {
            "type": "object", "required": ["actions", "event", "profile_tag", "read", "room_id", "ts"],
            "properties": {
                "actions": {"type": "array", "items": {"type": ["object", "string"]}},
                "event": _EVENT, "profile_tag": {"type": "string"},
                "read": {"type": "boolean"}, "room_id": {"type": "string"},
                "ts": {"type": "integer"},
            }}},
    },
}
VALIDATOR = Draft202012Validator(SCHEMA)


class NotificationsTest(RoomTestCase):
    async def prepare(self) -> None:
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room = await self.create_room(self.alice, preset="public_chat")
        self.assertEqual((await self.join(self.bob, self.room)).code, 200)

    async def notifications(self, token: str, query: str = "") -> dict:
        resp = await self.request("GET", f"{CS}/notifications{query}", token=token)
        self.assertEqual(resp.code, 200, resp)
        errors = list(VALIDATOR.iter_errors(resp.json))
        self.assertEqual(errors, [], resp.json)
        return resp.json

    async def test_lists_with_read_flags_and_highlight_filter(self) -> None:
        await self.prepare()
        first = await self.send_ok(self.alice, self.room, "one")
        second = await self.send_ok(self.alice, self.room, "hi bob")
        third = await self.send_ok(self.alice, self.room, "three")
        await self.send_ok(self.bob, self.room, "own messages never notify")  # Bob's
        body = await self.notifications(self.bob)
        self.assertNotIn("next_token", body)
        listed = body["notifications"]
        self.assertEqual([n["event"]["event_id"] for n in listed], [third, second, first])
        self.assertEqual({n["room_id"] for n in listed}, {self.room})
        self.assertEqual([n["read"] for n in listed], [False, False, False])
        self.assertIn("notify", listed[0]["actions"])
        self.assertEqual(listed[0]["event"]["content"]["body"], "three")
        only = (await self.notifications(self.bob, "?only=highlight"))["notifications"]
        self.assertEqual([n["event"]["event_id"] for n in only], [second])
        self.assertIn({"set_tweak": "highlight"}, only[0]["actions"])
        # Alice's receipt is not Bob's.
        resp = await self.request(
            "POST", f"{CS}/rooms/{q(self.room)}/receipt/m.read/{q(third)}", {}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request(
            "POST", f"{CS}/rooms/{q(self.room)}/receipt/m.read/{q(second)}", {}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        # Read notifications are no longer listed (as Synapse; SyTest 09_notifications_api).
        listed = (await self.notifications(self.bob))["notifications"]
        self.assertEqual([n["event"]["event_id"] for n in listed], [third])
        self.assertEqual([n["read"] for n in listed], [False])
        self.assertEqual((await self.notifications(self.bob, "?only=highlight"))["notifications"],
                         [])
        mine = (await self.notifications(self.alice))["notifications"]
        self.assertEqual([n["event"]["content"]["body"] for n in mine], ["own messages never notify"])

    async def test_pagination(self) -> None:
        await self.prepare()
        sent = [await self.send_ok(self.alice, self.room, f"m{i}") for i in range(5)]
        seen: list[str] = []
        token: str | None = None
        for _ in range(10):
            query = "?limit=2" + (f"&from={q(token)}" if token else "")
            body = await self.notifications(self.bob, query)
            seen += [n["event"]["event_id"] for n in body["notifications"]]
            token = body.get("next_token")
            if token is None:
                break
            self.assertLessEqual(len(body["notifications"]), 2)
        self.assertEqual(seen, list(reversed(sent)))
        self.assertEqual((await self.notifications(self.bob, "?limit=0"))["notifications"], [])

    async def test_only_visible_events(self) -> None:
        """A row for an event the user may not see (defence in depth) is not served."""
        await self.prepare()
        private = await self.create_room(self.alice)
        hidden = await self.send_ok(self.alice, private, "secret")
        visible = await self.send_ok(self.alice, self.room, "public")
        event = await self.hs.stores.events.get_event(hidden)
        assert event is not None
        await PushActionsStore(self.hs.db).add([PushActionRow(
            BOB, private, hidden, event.internal.stream_ordering or 0, True, False, "main",
            '["notify"]', 1)])
        listed = (await self.notifications(self.bob))["notifications"]
        self.assertEqual([n["event"]["event_id"] for n in listed], [visible])
        # Paging past the hidden one does not leak it either.
        body = await self.notifications(self.bob, "?limit=1")
        self.assertEqual([n["event"]["event_id"] for n in body["notifications"]], [visible])

    async def test_bad_input(self) -> None:
        await self.prepare()
        for query in ("?from=abc", "?from=-1", "?from=" + "9" * 40, "?limit=-1", "?limit=x"):
            resp = await self.request("GET", f"{CS}/notifications{query}", token=self.bob)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.request("GET", f"{CS}/notifications"), 401,
                               "M_MISSING_TOKEN")
        body = await self.notifications(self.bob, "?only=everything&limit=99999")
        self.assertEqual(body["notifications"], [])
