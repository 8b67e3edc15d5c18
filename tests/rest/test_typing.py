"""PUT /rooms/{roomId}/typing/{userId} and m.typing in /sync."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from tests.rest.room_helpers import CS, RoomTestCase, q

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def typing_events(sync: dict, room: str) -> list[list[str]]:
    """The user_ids of each m.typing event of ``room`` in a sync response."""
    events = sync["rooms"]["join"].get(room, {}).get("ephemeral", {}).get("events", [])
    return [e["content"]["user_ids"] for e in events if e["type"] == "m.typing"]


class TypingTest(RoomTestCase):
    async def _room(self) -> tuple[str, str, str]:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.join(bob, room)
        self.assertEqual(resp.code, 200, resp)
        return alice, bob, room

    async def _type(self, token: str, room: str, body: Any, user: str = ALICE) -> Any:
        return await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(user)}", body,
                                  token=token)

    async def test_typing_shows_in_sync_and_expires(self) -> None:
        alice, bob, room = await self._room()
        start = await self.sync(bob)
        self.assertEqual(typing_events(start, room), [])
        resp = await self._type(alice, room, {"typing": True, "timeout": 10000})
        self.assertEqual((resp.code, resp.json), (200, {}))
        typing = await self.sync(bob, start["next_batch"])
        self.assertEqual(typing_events(typing, room), [[ALICE]])
        # Nothing changed since: no m.typing (and no room) in the next sync.
        same = await self.sync(bob, typing["next_batch"])
        self.assertEqual(typing_events(same, room), [])
        # Initial sync shows who is typing now.
        self.assertEqual(typing_events(await self.sync(bob), room), [[ALICE]])
        self.advance(11)
        expired = await self.sync(bob, typing["next_batch"])
        self.assertEqual(typing_events(expired, room), [[]])
        self.assertEqual(typing_events(await self.sync(bob), room), [])

    async def test_stop_typing_and_renewal(self) -> None:
        alice, bob, room = await self._room()
        start = await self.sync(bob)
        await self._type(alice, room, {"typing": True, "timeout": 10000})
        await self._type(bob, room, {"typing": True}, user=BOB)
        both = await self.sync(bob, start["next_batch"])
        self.assertEqual(typing_events(both, room), [[ALICE, BOB]])
        # Renewing only moves the expiry: nothing new to tell.
        self.advance(8)
        await self._type(alice, room, {"typing": True, "timeout": 10000})
        renewed = await self.sync(bob, both["next_batch"])
        self.assertEqual(typing_events(renewed, room), [])
        self.advance(8)  # 16 s after the first PUT, 8 s after the renewal: still typing
        self.assertEqual(typing_events(await self.sync(bob), room), [[ALICE, BOB]])
        resp = await self._type(alice, room, {"typing": False})
        self.assertEqual(resp.code, 200, resp)
        stopped = await self.sync(bob, renewed["next_batch"])
        self.assertEqual(typing_events(stopped, room), [[BOB]])
        # Stopping when not typing is fine and changes nothing.
        resp = await self._type(alice, room, {"typing": False})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(typing_events(await self.sync(bob, stopped["next_batch"]), room), [])

    async def test_default_and_maximum_timeout(self) -> None:
        alice, bob, room = await self._room()
        await self._type(alice, room, {"typing": True})
        await self._type(bob, room, {"typing": True, "timeout": 10**12}, user=BOB)
        self.advance(29)
        self.assertEqual(typing_events(await self.sync(bob), room), [[ALICE, BOB]])
        self.advance(2)  # 31 s: the default 30 s is over
        self.assertEqual(typing_events(await self.sync(bob), room), [[BOB]])
        self.advance(90)  # 121 s: the 120 s cap is over
        self.assertEqual(typing_events(await self.sync(bob), room), [])

    async def test_long_poll_woken_by_typing(self) -> None:
        alice, bob, room = await self._room()
        start = await self.sync(bob)
        waiting = defer.ensureDeferred(self.sync(bob, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self._type(alice, room, {"typing": True, "timeout": 5000})
        result = await waiting
        self.assertEqual(typing_events(result, room), [[ALICE]])
        # And woken again when the flag expires.
        waiting = defer.ensureDeferred(self.sync(bob, result["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        self.advance(6)
        self.assertEqual(typing_events(await waiting, room), [[]])

    async def test_leaving_stops_typing(self) -> None:
        alice, bob, room = await self._room()
        await self._type(bob, room, {"typing": True}, user=BOB)
        start = await self.sync(alice)
        self.assertEqual(typing_events(start, room), [[BOB]])
        resp = await self.member(bob, room, "leave")
        self.assertEqual(resp.code, 200, resp)
        after = await self.sync(alice, start["next_batch"])
        self.assertEqual(typing_events(after, room), [[]])

    async def test_typing_filtered_out_by_ephemeral_filter(self) -> None:
        alice, bob, room = await self._room()
        await self._type(alice, room, {"typing": True})
        filt = '{"room": {"ephemeral": {"not_types": ["m.typing"]}}}'
        self.assertEqual(typing_events(await self.sync(bob, filter=filt), room), [])

    async def test_forbidden(self) -> None:
        alice, bob, room = await self._room()
        carol = await self.user("carol")
        other = await self.create_room(alice)
        cases = [
            (bob, room, ALICE, "someone else"),
            (carol, room, "@carol:test.local", "not a member"),
            (bob, other, BOB, "not joined (private room)"),
            (bob, "!nowhere:test.local", BOB, "unknown room"),
        ]
        for token, room_id, user, why in cases:
            resp = await self._type(token, room_id, {"typing": True}, user=user)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            del why
        # Left the room: forbidden again.
        await self.member(bob, room, "leave")
        resp = await self._type(bob, room, {"typing": True}, user=BOB)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_bad_input(self) -> None:
        alice, _bob, room = await self._room()
        bodies = [
            ({}, "M_MISSING_PARAM"),
            ({"timeout": 1000}, "M_MISSING_PARAM"),
            ({"typing": "yes"}, "M_BAD_JSON"),
            ({"typing": 1}, "M_BAD_JSON"),
            ({"typing": True, "timeout": "30000"}, "M_BAD_JSON"),
            ({"typing": True, "timeout": 1.5}, "M_BAD_JSON"),
            ({"typing": True, "timeout": -1}, "M_INVALID_PARAM"),
        ]
        for body, errcode in bodies:
            resp = await self._type(alice, room, body)
            self.assertMatrixError(resp, 400, errcode)
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(ALICE)}",
                                  raw_body=b"{not json", token=alice)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(ALICE)}",
                                  raw_body=b'{"typing": true, "timeout": 1e400}', token=alice)
        self.assertEqual(resp.code, 400, resp)
        resp = await self._type(alice, "not-a-room", {"typing": True})
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self._type(alice, room, {"typing": True}, user="alice")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self._type(alice, room, {"typing": True}, user="@x\x00:test.local")
        self.assertEqual(resp.code, 400, resp)
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(ALICE)}",
                                  {"typing": True})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/typing/{q(ALICE)}",
                                  {"typing": True}, token=alice)
        self.assertEqual(resp.code, 405, resp)
