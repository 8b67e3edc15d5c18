"""POST /rooms/{roomId}/receipt/..., POST /rooms/{roomId}/read_markers, m.receipt and
m.fully_read in /sync."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def receipts(sync: dict, room: str) -> dict[str, Any]:
    """The merged content of the m.receipt events of ``room`` in a sync response."""
    events = sync["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])
    out: dict[str, Any] = {}
    for e in events:
        if e["type"] == "m.receipt":
            for event_id, by_type in e["content"].items():
                for rtype, users in by_type.items():
                    out.setdefault(event_id, {}).setdefault(rtype, {}).update(users)
    return out


def readers(sync: dict, room: str, rtype: str = "m.read") -> dict[str, str]:
    """{user: event_id} of the receipts of one type."""
    return {user: event_id for event_id, by_type in receipts(sync, room).items()
            for user in by_type.get(rtype, {})}


def fully_read(sync: dict, room: str) -> str | None:
    events = sync["rooms"]["join"].get(room, {}).get("account_data", {}).get("events", [])
    found = [e["content"]["event_id"] for e in events if e["type"] == "m.fully_read"]
    return found[-1] if found else None


class ReceiptTestCase(RoomTestCase):
    async def _room(self) -> tuple[str, str, str]:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.join(bob, room)
        self.assertEqual(resp.code, 200, resp)
        return alice, bob, room

    async def receipt(self, token: str, room: str, event_id: str, rtype: str = "m.read",
                      body: Any = None) -> Any:
        return await self.request(
            "POST", f"{CS}/rooms/{q(room)}/receipt/{q(rtype)}/{q(event_id)}",
            {} if body is None else body, token=token)

    async def markers(self, token: str, room: str, body: Any) -> Any:
        return await self.request("POST", f"{CS}/rooms/{q(room)}/read_markers", body, token=token)


class ReceiptTest(ReceiptTestCase):
    async def test_receipt_in_sync(self) -> None:
        alice, bob, room = await self._room()
        event_id = await self.send_ok(alice, room, "hello")
        start = await self.sync(bob)
        resp = await self.receipt(alice, room, event_id)
        self.assertEqual((resp.code, resp.json), (200, {}))
        inc = await self.sync(bob, start["next_batch"])
        content = receipts(inc, room)
        self.assertEqual(list(content), [event_id])
        receipt = content[event_id]["m.read"][ALICE]
        self.assertIsInstance(receipt["ts"], int)
        self.assertNotIn("thread_id", receipt)
        # Nothing new since: no receipts in the next sync.
        self.assertEqual(receipts(await self.sync(bob, inc["next_batch"]), room), {})
        # An initial sync shows the current receipts of the room.
        self.assertEqual(readers(await self.sync(bob), room), {ALICE: event_id})

    async def test_receipts_only_move_forward(self) -> None:
        alice, bob, room = await self._room()
        first = await self.send_ok(alice, room, "one")
        second = await self.send_ok(alice, room, "two")
        self.assertEqual((await self.receipt(bob, room, second)).code, 200)
        start = await self.sync(alice)
        self.assertEqual(readers(start, room), {BOB: second})
        # Older and same events are accepted but change nothing.
        for event_id in (first, second):
            resp = await self.receipt(bob, room, event_id)
            self.assertEqual(resp.code, 200, resp)
        self.assertEqual(receipts(await self.sync(alice, start["next_batch"]), room), {})
        self.assertEqual(readers(await self.sync(alice), room), {BOB: second})
        third = await self.send_ok(alice, room, "three")
        await self.receipt(bob, room, third)
        self.assertEqual(readers(await self.sync(alice, start["next_batch"]), room), {BOB: third})

    async def test_private_receipts_only_for_their_owner(self) -> None:
        alice, bob, room = await self._room()
        event_id = await self.send_ok(alice, room, "secret read")
        alice_start = await self.sync(alice)
        bob_start = await self.sync(bob)
        resp = await self.receipt(bob, room, event_id, "m.read.private")
        self.assertEqual(resp.code, 200, resp)
        mine = await self.sync(bob, bob_start["next_batch"])
        self.assertEqual(readers(mine, room, "m.read.private"), {BOB: event_id})
        self.assertEqual(readers(mine, room), {})
        theirs = await self.sync(alice, alice_start["next_batch"])
        self.assertEqual(receipts(theirs, room), {})
        self.assertEqual(receipts(await self.sync(alice), room), {})
        self.assertEqual(readers(await self.sync(bob), room, "m.read.private"), {BOB: event_id})
        # The public receipt is separate and seen by both.
        await self.receipt(bob, room, event_id)
        seen = receipts(await self.sync(alice), room)
        self.assertEqual({t: set(users) for t, users in seen[event_id].items()}, {"m.read": {BOB}})
        self.assertEqual(set(receipts(await self.sync(bob), room)[event_id]),
                         {"m.read", "m.read.private"})

    async def test_private_receipt_does_not_wake_others(self) -> None:
        alice, bob, room = await self._room()
        event_id = await self.send_ok(alice, room, "x")
        start = await self.sync(alice)
        waiting = defer.ensureDeferred(self.sync(alice, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        await self.receipt(bob, room, event_id, "m.read.private")
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.receipt(bob, room, event_id)
        result = await waiting
        self.assertEqual(readers(result, room), {BOB: event_id})

    async def test_long_poll_woken_by_receipt(self) -> None:
        alice, bob, room = await self._room()
        event_id = await self.send_ok(alice, room, "x")
        start = await self.sync(alice)
        waiting = defer.ensureDeferred(self.sync(alice, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.receipt(bob, room, event_id)
        result = await waiting
        self.assertEqual(readers(result, room), {BOB: event_id})

    async def test_threaded_receipts(self) -> None:
        alice, bob, room = await self._room()
        root = await self.send_ok(alice, room, "root")
        resp = await self.send(alice, room, content={
            "msgtype": "m.text", "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
        reply = resp.json["event_id"]
        resp = await self.send(bob, room, event_type="m.reaction", content={
            "m.relates_to": {"rel_type": "m.annotation", "event_id": reply, "key": "+1"}})
        reaction = resp.json["event_id"]
        ok = [(root, "main"), (root, root), (reply, root), (reaction, root), (reaction, "main")]
        for event_id, thread in ok:
            resp = await self.receipt(alice, room, event_id, body={"thread_id": thread})
            self.assertEqual(resp.code, 200, (event_id, thread, resp))
        for event_id, thread in [(reply, "main"), (root, reply), (reply, "$other")]:
            resp = await self.receipt(alice, room, event_id, body={"thread_id": thread})
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # One receipt per thread, apart from the unthreaded one.
        await self.receipt(bob, room, root, body={"thread_id": "main"})
        await self.receipt(bob, room, reply, body={"thread_id": root})
        await self.receipt(bob, room, root)
        content = receipts(await self.sync(alice), room)
        self.assertEqual(content[reply]["m.read"][BOB]["thread_id"], root)
        self.assertNotIn("thread_id", content[root]["m.read"][BOB])  # the later, unthreaded one
        start = await self.sync(alice)
        await self.receipt(bob, room, reaction, body={"thread_id": "main"})
        inc = receipts(await self.sync(alice, start["next_batch"]), room)
        self.assertEqual(inc, {reaction: {"m.read": {BOB: inc[reaction]["m.read"][BOB]}}})
        self.assertEqual(inc[reaction]["m.read"][BOB]["thread_id"], "main")

    async def test_receipt_on_history_the_reader_cannot_see(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        carol = await self.user("carol")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.put_state(alice, room, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200, resp)
        await self.join(carol, room)
        early = await self.send_ok(alice, room, "before bob")
        await self.receipt(carol, room, early)
        await self.join(bob, room)
        later = await self.send_ok(alice, room, "after bob")
        # Bob cannot send a receipt for what he cannot see, nor see one on it.
        resp = await self.receipt(bob, room, early)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        self.assertEqual(readers(await self.sync(bob), room), {})
        await self.receipt(alice, room, later)
        self.assertEqual(readers(await self.sync(bob), room), {ALICE: later})
        self.assertEqual(readers(await self.sync(alice), room), {ALICE: later, "@carol:test.local": early})

    async def test_forbidden_and_not_found(self) -> None:
        alice, bob, room = await self._room()
        carol = await self.user("carol")
        event_id = await self.send_ok(alice, room, "x")
        other = await self.create_room(alice, preset="public_chat")
        other_event = await self.send_ok(alice, other, "elsewhere")
        resp = await self.receipt(carol, room, event_id)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.receipt(carol, "!nowhere:test.local", "$nothing")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        for missing in ("$unknown:test.local", other_event):
            resp = await self.receipt(bob, room, missing)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        await self.member(bob, room, "leave")
        resp = await self.receipt(bob, room, event_id)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_bad_input(self) -> None:
        alice, _bob, room = await self._room()
        event_id = await self.send_ok(alice, room, "x")
        for rtype in ("m.unread", "read", "m.receipt"):
            resp = await self.receipt(alice, room, event_id, rtype)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        for bad_event in ("not-an-event", "$", "$" + "x" * 300):
            resp = await self.receipt(alice, room, bad_event)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.receipt(alice, "room", event_id)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        for thread in ("", 5, None, ["main"], {"a": 1}):
            resp = await self.receipt(alice, room, event_id, body={"thread_id": thread})
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.receipt(alice, room, event_id, "m.fully_read", body={"thread_id": "main"})
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}",
                                  raw_body=b"[1]", token=alice)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}",
                                  raw_body=b"{", token=alice)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")
        # No body at all is an empty object (older clients send none).
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}",
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}", {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class ReadMarkerTest(ReceiptTestCase):
    async def test_fully_read_via_receipt_endpoint(self) -> None:
        alice, _bob, room = await self._room()
        first = await self.send_ok(alice, room, "one")
        second = await self.send_ok(alice, room, "two")
        start = await self.sync(alice)
        resp = await self.receipt(alice, room, second, "m.fully_read")
        self.assertEqual(resp.code, 200, resp)
        inc = await self.sync(alice, start["next_batch"])
        self.assertEqual(fully_read(inc, room), second)
        self.assertEqual(receipts(inc, room), {})  # never under m.receipt
        # Backwards is ignored.
        await self.receipt(alice, room, first, "m.fully_read")
        self.assertIsNone(fully_read(await self.sync(alice, inc["next_batch"]), room))
        resp = await self.request(
            "GET", f"{CS}/user/{q(ALICE)}/rooms/{q(room)}/account_data/m.fully_read", token=alice)
        self.assertEqual(resp.json, {"event_id": second})

    async def test_read_markers_sets_all_three(self) -> None:
        alice, bob, room = await self._room()
        event_id = await self.send_ok(alice, room, "x")
        alice_start = await self.sync(alice)
        bob_start = await self.sync(bob)
        resp = await self.markers(bob, room, {"m.fully_read": event_id, "m.read": event_id,
                                              "m.read.private": event_id, "org.unknown": 5})
        self.assertEqual((resp.code, resp.json), (200, {}))
        mine = await self.sync(bob, bob_start["next_batch"])
        self.assertEqual(fully_read(mine, room), event_id)
        self.assertEqual(set(receipts(mine, room)[event_id]), {"m.read", "m.read.private"})
        theirs = await self.sync(alice, alice_start["next_batch"])
        self.assertEqual({t: set(users) for t, users in receipts(theirs, room)[event_id].items()},
                         {"m.read": {BOB}})
        self.assertIsNone(fully_read(theirs, room))
        # Only the marker.
        second = await self.send_ok(alice, room, "y")
        resp = await self.markers(bob, room, {"m.fully_read": second})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(fully_read(await self.sync(bob, mine["next_batch"]), room), second)
        resp = await self.markers(bob, room, {})
        self.assertEqual(resp.code, 200, resp)

    async def test_read_markers_bad_input(self) -> None:
        alice, bob, room = await self._room()
        carol = await self.user("carol")
        event_id = await self.send_ok(alice, room, "x")
        for body in ({"m.fully_read": 5}, {"m.read": ["$a"]}, {"m.read.private": "nope"},
                     {"m.fully_read": event_id, "m.read": True}):
            resp = await self.markers(bob, room, body)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.markers(bob, room, {"m.fully_read": event_id, "m.read": "$missing"})
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # Nothing was applied by the failed request.
        resp = await self.request(
            "GET", f"{CS}/user/{q(BOB)}/rooms/{q(room)}/account_data/m.fully_read", token=bob)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.markers(carol, room, {"m.read": event_id})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.markers(bob, "bad-room", {"m.read": event_id})
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/read_markers",
                                  raw_body=b'"x"', token=bob)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/read_markers", {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
