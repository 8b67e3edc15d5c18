"""SyTest cases of issue 12 that no other trial module reproduced request for request
(the accounting in docs/sytest.md): the full sequences of
tests/30rooms/30history-visibility.pl for every visibility, guest and real users.

Rooms are made as SyTest's ``local_user_and_room_fixtures`` makes them (private
directory visibility, ``public_chat`` preset: joinable, history ``shared``), and SyTest's
``matrix_set_room_history_visibility(..., "default")`` sends nothing. Each test's
docstring names the SyTest test(s)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_sytest_events import SyTestEventsCase

VISIBILITIES = ("world_readable", "shared", "invited", "joined", "default")
# SyTest's %PERMITTED_ACTIONS: see_without_join, see_before_join, see_after_invite.
PERMITTED = {
    "world_readable": (True, True, True),
    "shared": (False, True, True),
    "invited": (False, False, True),
    "joined": (False, False, False),
    "default": (False, True, True),
}


class HistoryVisibilityResidueTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"registration": {"allow_guests": True}}

    async def guest(self) -> tuple[str, str]:
        reg = await self.request("POST", f"{CS}/register?kind=guest", {})
        self.assertEqual(reg.code, 200, reg)
        return reg.json["user_id"], reg.json["access_token"]

    async def joiner(self, kind: str, name: str) -> tuple[str, str]:
        """A guest (SyTest's guest_user_fixture) or a real user (local_user_fixture)."""
        if kind == "guest":
            return await self.guest()
        return f"@{name}:test.local", await self.user(name)

    async def sytest_room(self, token: str) -> str:
        return await self.create_room(token, visibility="private", preset="public_chat")

    async def set_visibility(self, token: str, room: str, visibility: str) -> None:
        if visibility == "default":
            return
        resp = await self.put_state(token, room, "m.room.history_visibility",
                                    {"history_visibility": visibility})
        self.assertEqual(resp.code, 200, resp)

    async def set_guest_access(self, token: str, room: str) -> None:
        resp = await self.put_state(token, room, "m.room.guest_access",
                                    {"guest_access": "can_join"})
        self.assertEqual(resp.code, 200, resp)

    async def visible_ids(self, token: str, room: str) -> set[str] | None:
        """Event ids of ``/messages?dir=b&limit=10``, or None for a 4xx (SyTest's
        ``expect_4xx_or_empty_chunk`` accepts either)."""
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=10",
                                  token=token)
        if 400 <= resp.code < 500:
            return None
        self.assertEqual(resp.code, 200, resp)
        return {e["event_id"] for e in resp.json["chunk"]}

    async def test_history_visibility_allows_forbids(self) -> None:
        """m.room.history_visibility == "X" allows/forbids appropriately for Guest users
        (and Real users), X in world_readable, shared, invited, joined, default: read
        without joining, invite, send, join, read again."""
        n = 0
        for kind in ("guest", "real"):
            for visibility in VISIBILITIES:
                n += 1
                see_without, see_before, see_after_invite = PERMITTED[visibility]
                creator = await self.user(f"creator{n}")
                room = await self.sytest_room(creator)
                await self.set_visibility(creator, room, visibility)
                await self.set_guest_access(creator, room)
                before = await self.send_ok(creator, room, "Before join")
                joiner_id, joiner = await self.joiner(kind, f"joiner{n}")
                ids = await self.visible_ids(joiner, room)
                label = (kind, visibility)
                if see_without:
                    self.assertIn(before, ids or set(), label)
                else:
                    self.assertFalse(ids, label)
                resp = await self.member(creator, room, "invite", user_id=joiner_id)
                self.assertEqual(resp.code, 200, resp)
                after_invite = await self.send_ok(creator, room, "After invite")
                self.assertEqual((await self.join(joiner, room)).code, 200, label)
                ids = await self.visible_ids(joiner, room)
                self.assertIsNotNone(ids, label)
                assert ids is not None
                self.assertEqual(before in ids, see_before, label)
                self.assertEqual(after_invite in ids, see_after_invite, label)

    async def test_non_joined_cannot_call_events_on_room(self) -> None:
        """Guest/Real non-joined user cannot call /events on shared/invited/joined/default
        room: a 4xx (or an empty chunk) at once, not a long-poll."""
        n = 0
        for kind in ("guest", "real"):
            for visibility in ("shared", "invited", "joined", "default"):
                n += 1
                creator = await self.user(f"creator{n}")
                room = await self.sytest_room(creator)
                await self.set_visibility(creator, room, visibility)
                await self.send_ok(creator, room, "mice")
                _, outsider = await self.joiner(kind, f"outsider{n}")
                resp = await self.request(
                    "GET", f"{CS}/events?room_id={q(room)}&timeout=30000", token=outsider)
                if resp.code == 200:
                    self.assertEqual(resp.json["chunk"], [], (kind, visibility))
                else:
                    self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_users_can_sync_from_guest_access_rooms_if_joined(self) -> None:
        """Guest/Real users can sync from X guest_access rooms if joined, X in
        world_readable, shared, invited, joined, default: the last four timeline events
        of the joiner's /sync."""
        n = 0
        for kind in ("guest", "real"):
            for visibility in VISIBILITIES:
                n += 1
                creator = await self.user(f"creator{n}")
                room = await self.sytest_room(creator)
                await self.set_guest_access(creator, room)
                await self.send_ok(creator, room, "shared")
                await self.set_visibility(creator, room, visibility)
                await self.send_ok(creator, room, "pre_join")
                _, joiner = await self.joiner(kind, f"joiner{n}")
                self.assertEqual((await self.join(joiner, room)).code, 200)
                await self.send_ok(creator, room, "post_join")
                joined = (await self.sync(joiner))["rooms"]["join"][room]
                for key in ("timeline", "state", "ephemeral"):
                    self.assertIn(key, joined)
                for key in ("events", "limited", "prev_batch"):
                    self.assertIn(key, joined["timeline"])
                last = joined["timeline"]["events"][-4:]
                label = (kind, visibility, [(e["type"], e["content"]) for e in last])
                shape = [(e["type"], e["content"].get("body")) for e in last]
                if PERMITTED[visibility][1]:
                    # "shared" is already the room's visibility: setting it again makes
                    # no event (identical state), so the "shared" message comes first.
                    first = ("m.room.message" if visibility in ("shared", "default")
                             else "m.room.history_visibility")
                    self.assertEqual(shape[0][0], first, label)
                    self.assertEqual(shape[1], ("m.room.message", "pre_join"), label)
                else:
                    self.assertEqual(shape[0], ("m.room.message", "shared"), label)
                    self.assertEqual(shape[1][0], "m.room.history_visibility", label)
                self.assertEqual(shape[2][0], "m.room.member", label)
                self.assertEqual(shape[3], ("m.room.message", "post_join"), label)

    async def test_only_see_history_visibility_changes_on_boundaries(self) -> None:
        """Only see history_visibility changes on boundaries: a change is visible if the
        joiner could see the room under the visibility before it or after it."""
        creator, joiner = await self.user("creator"), await self.user("joiner")
        room = await self.sytest_room(creator)
        for visibility, body in (("joined", "1"), ("invited", "2"), ("shared", "3")):
            await self.set_visibility(creator, room, visibility)
            await self.send_ok(creator, room, body)
        self.assertEqual((await self.join(joiner, room)).code, 200)
        joined = (await self.sync(joiner))["rooms"]["join"][room]
        last = joined["timeline"]["events"][-4:]
        self.assertEqual(
            [(e["type"], e["content"].get("history_visibility") or e["content"].get("body")
              or e["content"].get("membership")) for e in last],
            [("m.room.history_visibility", "joined"), ("m.room.history_visibility", "shared"),
             ("m.room.message", "3"), ("m.room.member", "join")])


class WorldReadableEventsStreamTest(SyTestEventsCase):
    """tests/30rooms/30history-visibility.pl "Guest/Real non-joined user can call /events
    on world_readable room": after the message, the peeker's /events?room_id= stream
    carries the member's presence (not the outsider's), then the receipt, then typing."""

    async def _stream(self, peeker: str, room: str, since: str, pending: list[dict],
                      allowed: set[str]) -> tuple[dict, str]:
        """SyTest's ``await_event_not_history_visibility_or_presence_for``: the first
        event that is not m.room.history_visibility nor presence of a user outside
        ``allowed``; events after it in the same answer are kept for the next call."""
        def wanted(event: dict) -> bool:
            if event.get("type") == "m.room.history_visibility":
                return False
            return event.get("type") != "m.presence" or event["content"]["user_id"] in allowed

        for _ in range(40):
            while pending:
                event = pending.pop(0)
                if wanted(event):
                    return event, since
            body = await self.events(peeker, since, room_id=room)
            since = body["end"]
            pending.extend(body["chunk"])
            if not body["chunk"]:
                await task.deferLater(reactor, 0.05, lambda: None)
        self.fail("no matching event on the peeker's stream")

    async def _setup(self, kind: str) -> tuple[str, str, str, str, str, str, str]:
        """The member's world-readable room, an outsider and a peeker (a guest or a
        real user), and the peeker's stream token after its room initialSync."""
        member, member_id, _ = await self.sytest_user(f"member{kind}")
        outsider, outsider_id, _ = await self.sytest_user(f"outsider{kind}")
        if kind == "guest":
            reg = await self.request("POST", f"{CS}/register?kind=guest", {})
            self.assertEqual(reg.code, 200, reg)
            peeker = reg.json["access_token"]
        else:
            peeker, _, _ = await self.sytest_user("peeker")
        room = await self.create_room(member)
        resp = await self.put_state(member, room, "m.room.history_visibility",
                                    {"history_visibility": "world_readable"})
        self.assertEqual(resp.code, 200, resp)
        since = (await self.room_initial_sync(peeker, room))["messages"]["end"]
        return member, member_id, outsider, outsider_id, peeker, room, since

    async def test_message_receipt_and_typing_reach_the_peeker(self) -> None:
        """The message, receipt and typing steps of the SyTest test."""
        for kind in ("guest", "real"):
            member, member_id, _, _, peeker, room, since = await self._setup(kind)
            pending: list[dict] = []
            sent = await self.send_ok(member, room, "mice")
            event, since = await self._stream(peeker, room, since, pending, set())
            self.assertEqual(event["content"]["body"], "mice", (kind, event))

            resp = await self.request(
                "POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(sent)}", {}, token=member)
            self.assertEqual(resp.code, 200, resp)
            event, since = await self._stream(peeker, room, since, pending, set())
            self.assertEqual(event["type"], "m.receipt", (kind, event))
            self.assertIn(member_id, event["content"][sent]["m.read"])

            resp = await self.request(
                "PUT", f"{CS}/rooms/{q(room)}/typing/{q(member_id)}",
                {"typing": True, "timeout": 5000}, token=member)
            self.assertEqual(resp.code, 200, resp)
            event, since = await self._stream(peeker, room, since, pending, set())
            self.assertEqual((event["type"], event["room_id"], event["content"]["user_ids"][0]),
                             ("m.typing", room, member_id), (kind, event))

    async def test_member_presence_reaches_the_peeker(self) -> None:
        """The presence step of the SyTest test: a member's presence change is on the
        peeker's /events?room_id= stream, an outsider's is not."""
        for kind in ("guest", "real"):
            (member, member_id, outsider, outsider_id, peeker, room,
             since) = await self._setup(kind)
            pending: list[dict] = []
            await self.send_ok(member, room, "mice")  # SyTest's first step
            event, since = await self._stream(peeker, room, since, pending, set())
            self.assertEqual(event["content"]["body"], "mice", (kind, event))
            await self.set_presence(outsider, outsider_id, "online")
            await self.set_presence(member, member_id, "online")
            event, since = await self._stream(peeker, room, since, pending, {member_id})
            self.assertEqual((event["type"], event["content"]["user_id"]),
                             ("m.presence", member_id), (kind, event))

    async def test_member_presence_wakes_the_peekers_long_poll(self) -> None:
        """A member's presence change ends the peeker's /events?room_id= long-poll at
        once (the change notifies the member's rooms, the peeker waits on the room);
        an outsider's does not."""
        for kind in ("guest", "real"):
            (member, member_id, outsider, outsider_id, peeker, room,
             since) = await self._setup(kind)
            # Settles the peeker's own presence (a real user's /events marks them online).
            since = (await self.events(peeker, since, room_id=room))["end"]
            pending = defer.ensureDeferred(self.events(peeker, since, timeout=30000,
                                                       room_id=room))
            await task.deferLater(reactor, 0.2, lambda: None)
            self.assertFalse(pending.called, kind)
            await self.set_presence(outsider, outsider_id, "online")
            await task.deferLater(reactor, 0.2, lambda: None)
            self.assertFalse(pending.called, kind)
            await self.set_presence(member, member_id, "online")
            body = await pending
            self.assertEqual([(e["type"], e["content"]["user_id"]) for e in body["chunk"]],
                             [("m.presence", member_id)], kind)
            self.assertEqual(body["chunk"][0]["content"]["presence"], "online")

    async def test_no_member_presence_without_peek_rights(self) -> None:
        """Not world-readable: /events?room_id= is a 403 for outsiders (nothing leaks);
        a user who left such a room may still read it as it was, but not the
        presence of its current members."""
        member, member_id, _ = await self.sytest_user("member")
        room = await self.create_room(member, preset="public_chat")  # history "shared"
        for kind in ("guest", "real"):
            if kind == "guest":
                reg = await self.request("POST", f"{CS}/register?kind=guest", {})
                outsider = reg.json["access_token"]
            else:
                outsider, _, _ = await self.sytest_user("outsider")
            await self.set_presence(member, member_id, "unavailable")
            resp = await self.request("GET", f"{CS}/events?room_id={q(room)}&timeout=0",
                                      token=outsider)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        leaver, leaver_id, _ = await self.sytest_user("leaver")
        self.assertEqual((await self.join(leaver, room)).code, 200)
        self.assertEqual((await self.member(leaver, room, "leave")).code, 200)
        since = (await self.events(leaver, "", room_id=room))["end"]
        await self.set_presence(member, member_id, "online")
        await self.send_ok(member, room, "after the leave")
        body = await self.events(leaver, since, room_id=room)
        self.assertNotIn(member_id, self.presence_by_user(body["chunk"]))


class PeekedPresenceDisabledTest(SyTestEventsCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"registration": {"allow_guests": True}, "presence": {"enabled": False}}

    async def test_no_presence_when_disabled(self) -> None:
        """presence.enabled: false: the peeker's stream has the member's messages and
        no presence at all."""
        member, member_id, _ = await self.sytest_user("member")
        reg = await self.request("POST", f"{CS}/register?kind=guest", {})
        peeker = reg.json["access_token"]
        room = await self.create_room(member)
        resp = await self.put_state(member, room, "m.room.history_visibility",
                                    {"history_visibility": "world_readable"})
        self.assertEqual(resp.code, 200, resp)
        since = (await self.room_initial_sync(peeker, room))["messages"]["end"]
        await self.set_presence(member, member_id, "online")
        await self.send_ok(member, room, "done")
        seen: list[dict] = []
        for _ in range(20):
            body = await self.events(peeker, since, room_id=room)
            since = body["end"]
            seen.extend(body["chunk"])
            if any(e.get("content", {}).get("body") == "done" for e in seen):
                break
        else:
            self.fail("the message never reached the peeker")
        self.assertEqual([e for e in seen if e.get("type") == "m.presence"], [])


class RoomMemberPresenceStoreTest(SyTestEventsCase):
    async def test_room_member_changes(self) -> None:
        """PresenceStore.room_member_changes: changes of the room's joined members only,
        in (since, upto], in stream order, the latest ``limit`` of them."""
        store = self.hs.stores.presence
        alice, alice_id, _ = await self.sytest_user("alice")
        bob, bob_id, _ = await self.sytest_user("bob")
        carol, carol_id, _ = await self.sytest_user("carol")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        before = await store.max_stream_id()
        await self.set_presence(alice, alice_id, "online")
        await self.set_presence(carol, carol_id, "online")  # not in the room
        await self.set_presence(bob, bob_id, "unavailable")
        now = await store.max_stream_id()
        got = await store.room_member_changes(room, before, now, 10)
        self.assertEqual([(r.user_id, r.state) for r in got],
                         [(alice_id, "online"), (bob_id, "unavailable")])
        self.assertEqual([r.user_id for r in await store.room_member_changes(
            room, before, now, 1)], [bob_id])
        self.assertEqual(await store.room_member_changes(room, now, now, 10), [])
        self.assertEqual(await store.room_member_changes("!nowhere:test.local", before,
                                                         now, 10), [])
