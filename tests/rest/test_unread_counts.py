"""Unread notification counts in /sync, from the push actions recorded per event."""

from __future__ import annotations

import json
from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

BOB = "@bob:test.local"
THREADS = json.dumps({"room": {"timeline": {"unread_thread_notifications": True}}})


class UnreadCountsTest(RoomTestCase):
    async def prepare(self) -> None:
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")
        self.room = await self.create_room(self.alice, preset="public_chat")
        resp = await self.join(self.bob, self.room)
        self.assertEqual(resp.code, 200, resp)

    async def counts(self, token: str, room_id: str | None = None, since: str | None = None,
                     filter: str | None = None) -> tuple[dict[str, Any], str]:
        """(the room's /sync entry, next_batch)."""
        body = await self.sync(token, since=since, filter=filter)
        return body["rooms"]["join"].get(room_id or self.room, {}), body["next_batch"]

    async def receipt(self, token: str, event_id: str, receipt_type: str = "m.read",
                      body: dict | None = None, room_id: str | None = None) -> None:
        resp = await self.request(
            "POST", f"{CS}/rooms/{q(room_id or self.room)}/receipt/{receipt_type}/{q(event_id)}",
            body or {}, token=token)
        self.assertEqual(resp.code, 200, resp)

    async def test_counts_messages_from_others_only(self) -> None:
        await self.prepare()
        await self.send_ok(self.alice, self.room, "one")
        await self.send_ok(self.alice, self.room, "two")
        room, _ = await self.counts(self.bob)
        self.assertEqual(room["unread_notifications"], {"notification_count": 2, "highlight_count": 0})
        await self.send_ok(self.bob, self.room, "my own")
        room, _ = await self.counts(self.bob)
        self.assertEqual(room["unread_notifications"]["notification_count"], 2)
        # Alice: only Bob's message (his join does not notify; her own never do).
        room, _ = await self.counts(self.alice)
        self.assertEqual(room["unread_notifications"], {"notification_count": 1, "highlight_count": 0})

    async def test_mentions_highlight(self) -> None:
        await self.prepare()
        await self.send_ok(self.alice, self.room, "nothing here")
        await self.send_ok(self.alice, self.room, "hey bob, look")
        resp = await self.send(self.alice, self.room, content={
            "msgtype": "m.text", "body": "ping", "m.mentions": {"user_ids": [BOB]}})
        self.assertEqual(resp.code, 200, resp)
        room, _ = await self.counts(self.bob)
        self.assertEqual(room["unread_notifications"], {"notification_count": 3, "highlight_count": 2})

    async def test_display_name_from_the_member_event(self) -> None:
        """The per-room cache of display names follows member events."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        await self.send_ok(alice, room, "warm the cache")
        resp = await self.request("PUT", f"{CS}/profile/{q(BOB)}/displayname",
                                  {"displayname": "Robert Tables"}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(bob, room)).code, 200)
        await self.send_ok(alice, room, "hello Robert Tables!")
        await self.send_ok(alice, room, "hello Robert")
        entry, _ = await self.counts(bob, room)
        self.assertEqual(entry["unread_notifications"], {"notification_count": 2, "highlight_count": 1})

    async def test_read_receipt_resets_and_wakes_incremental_sync(self) -> None:
        await self.prepare()
        await self.send_ok(self.alice, self.room, "one")
        last = await self.send_ok(self.alice, self.room, "bob?")
        room, since = await self.counts(self.bob)
        self.assertEqual(room["unread_notifications"], {"notification_count": 2, "highlight_count": 1})
        await self.receipt(self.bob, last)
        room, since = await self.counts(self.bob, since=since)
        self.assertEqual(room["unread_notifications"], {"notification_count": 0, "highlight_count": 0})
        await self.send_ok(self.alice, self.room, "three")
        room, since = await self.counts(self.bob, since=since)
        self.assertEqual(room["unread_notifications"]["notification_count"], 1)
        # A private receipt counts as well, and also brings the room back.
        latest = await self.send_ok(self.alice, self.room, "four")
        room, since = await self.counts(self.bob, since=since)
        self.assertEqual(room["unread_notifications"]["notification_count"], 2)
        await self.receipt(self.bob, latest, "m.read.private")
        room, _ = await self.counts(self.bob, since=since)
        self.assertEqual(room["unread_notifications"]["notification_count"], 0)

    async def test_disabled_message_rule_stops_counting(self) -> None:
        await self.prepare()
        carol = await self.user("carol")
        self.assertEqual((await self.join(carol, self.room)).code, 200)
        await self.send_ok(self.alice, self.room, "counted for both")  # caches Bob's rules
        resp = await self.request(
            "PUT", f"{CS}/pushrules/global/underride/.m.rule.message/enabled",
            {"enabled": False}, token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        await self.send_ok(self.alice, self.room, "only for carol")
        room, _ = await self.counts(self.bob)
        self.assertEqual(room["unread_notifications"]["notification_count"], 1)
        room, _ = await self.counts(carol)
        self.assertEqual(room["unread_notifications"]["notification_count"], 2)

    async def test_thread_counts(self) -> None:
        await self.prepare()
        root = await self.send_ok(self.alice, self.room, "root")
        reply = {"msgtype": "m.text", "body": "in thread",
                 "m.relates_to": {"rel_type": "m.thread", "event_id": root}}
        resp = await self.send(self.alice, self.room, content=reply)
        self.assertEqual(resp.code, 200, resp)
        in_thread = resp.json["event_id"]
        room, _ = await self.counts(self.bob)
        self.assertEqual(room["unread_notifications"]["notification_count"], 2)
        self.assertNotIn("unread_thread_notifications", room)
        room, since = await self.counts(self.bob, filter=THREADS)
        self.assertEqual(room["unread_notifications"], {"notification_count": 1, "highlight_count": 0})
        self.assertEqual(room["unread_thread_notifications"],
                         {root: {"notification_count": 1, "highlight_count": 0}})
        # A threaded receipt reads the thread only.
        await self.receipt(self.bob, in_thread, body={"thread_id": root})
        room, since = await self.counts(self.bob, since=since, filter=THREADS)
        self.assertEqual(room["unread_notifications"]["notification_count"], 1)
        self.assertNotIn("unread_thread_notifications", room)
        # An unthreaded receipt on the reply reads everything before it.
        await self.receipt(self.bob, in_thread)
        room, _ = await self.counts(self.bob, filter=THREADS)
        self.assertEqual(room["unread_notifications"]["notification_count"], 0)

    async def test_redaction_forgets_the_notification(self) -> None:
        await self.prepare()
        event_id = await self.send_ok(self.alice, self.room, "oops")
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(self.room)}/redact/{q(event_id)}/r1", {}, token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        room, _ = await self.counts(self.bob)
        self.assertEqual(room["unread_notifications"]["notification_count"], 0)

    async def test_invite_does_not_break_and_left_rooms_have_no_counts(self) -> None:
        await self.prepare()
        private = await self.create_room(self.alice)
        resp = await self.member(self.alice, private, "invite", user_id=BOB)
        self.assertEqual(resp.code, 200, resp)
        body = await self.sync(self.bob)
        self.assertIn(private, body["rooms"]["invite"])
        await self.send_ok(self.alice, self.room, "x")
        await self.member(self.bob, self.room, "leave")
        body = await self.sync(self.bob, filter=json.dumps({"room": {"include_leave": True}}))
        self.assertNotIn("unread_notifications", body["rooms"]["leave"].get(self.room, {}))
