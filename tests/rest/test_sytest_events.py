"""SyTest's legacy /events stream, /initialSync, presence and receipts tests (issue 12),
reproduced at HTTP level: tests/42tags.pl, 44account_data.pl, 80torture/03events.pl,
90jira/SYN-606.pl, 21presence-events.pl, 40presence.pl, 30rooms/02members-local.pl,
31sync/03joined.pl, 30rooms/11leaving.pl, 30rooms/21receipts.pl, 30rooms/01state.pl."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task

from tests.rest.room_helpers import CS, RoomTestCase, q

Pred = Callable[[dict], bool]


class SyTestEventsCase(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"registration": {"allow_guests": True}}

    async def sytest_user(self, name: str, with_events: bool = True) -> tuple[str, str, str]:
        """SyTest's ``matrix_register_user``: register, then (``with_events``) one
        ``GET /events?timeout=0`` whose ``end`` is the user's stream token.
        Returns (access token, user id, stream token or "")."""
        reg = await self.register(name)
        token = ""
        if with_events:
            resp = await self.request("GET", f"{CS}/events?timeout=0", token=reg["access_token"])
            self.assertEqual(resp.code, 200, resp)
            token = resp.json["end"]
        return reg["access_token"], reg["user_id"], token

    async def events(self, token: str, since: str, timeout: int = 0, **params: str) -> dict:
        query = "&".join([f"from={q(since)}", f"timeout={timeout}"]
                         + [f"{k}={q(v)}" for k, v in params.items()])
        resp = await self.request("GET", f"{CS}/events?{query}", token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertIsInstance(resp.json["chunk"], list)
        return resp.json

    async def await_event(self, token: str, since: str, pred: Pred, **params: str
                          ) -> tuple[dict, str]:
        """SyTest's ``await_event_for``: poll /events from ``since`` until an event
        matches; returns it and the stream token after it."""
        seen: list[dict] = []
        for _ in range(20):
            body = await self.events(token, since, **params)
            since = body["end"]
            seen.extend(body["chunk"])
            for event in body["chunk"]:
                if pred(event):
                    return event, since
        self.fail(f"no matching event in {seen}")

    async def answered(self, d: defer.Deferred, seconds: float = 3.0) -> Any:
        """The result of a request that must answer at once, not long-poll."""
        for _ in range(int(seconds / 0.05)):
            if d.called:
                return await d
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail("the request did not answer (long-polled instead)")

    async def initial_sync(self, token: str, query: str = "") -> dict:
        resp = await self.request("GET", f"{CS}/initialSync{query}", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def room_initial_sync(self, token: str, room: str, query: str = "") -> dict:
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/initialSync{query}", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def set_presence(self, token: str, user_id: str, state: str) -> None:
        resp = await self.request("PUT", f"{CS}/presence/{q(user_id)}/status",
                                  {"presence": state, "status_msg": state.title()}, token=token)
        self.assertEqual(resp.code, 200, resp)

    def presence_by_user(self, events: list[dict]) -> dict[str, dict]:
        return {e["content"]["user_id"]: e for e in events if e.get("type") == "m.presence"}


class TagsAndAccountDataTest(SyTestEventsCase):
    async def test_tags_appear_in_v1_events_stream(self) -> None:
        """42tags.pl: Tags appear in the v1 /events stream."""
        token, user_id, since = await self.sytest_user("tagger")
        room = await self.create_room(token)
        resp = await self.request("PUT", f"{CS}/user/{q(user_id)}/rooms/{q(room)}/tags/test_tag",
                                  {"order": 1}, token=token)
        self.assertEqual(resp.code, 200, resp)
        event, _ = await self.await_event(
            token, since, lambda e: e["type"] == "m.tag" and e.get("room_id") == room)
        self.assertEqual(event["content"]["tags"], {"test_tag": {"order": 1}})

    async def test_account_data_appears_in_v1_events_stream(self) -> None:
        """44account_data.pl: Account data appears in v1 /events stream (the long-poll
        must wake up for it)."""
        token, user_id, since = await self.sytest_user("acct")
        pending = defer.ensureDeferred(self.events(token, since, timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(pending.called)
        resp = await self.request("PUT", f"{CS}/user/{q(user_id)}/account_data/my.test.type",
                                  {"cats_or_rats": "cats"}, token=token)
        self.assertEqual(resp.code, 200, resp)
        body = await self.answered(pending)
        found = [e for e in body["chunk"] if e["type"] == "my.test.type"]
        self.assertEqual(found, [{"type": "my.test.type", "content": {"cats_or_rats": "cats"}}])
        # Not sent again from the new token.
        again = await self.events(token, body["end"])
        self.assertEqual([e for e in again["chunk"] if e["type"] == "my.test.type"], [])

    async def test_room_account_data_appears_in_v1_events_stream(self) -> None:
        """44account_data.pl: Room account data appears in v1 /events stream."""
        token, user_id, _ = await self.sytest_user("roomacct", with_events=False)
        room = await self.create_room(token)
        since = (await self.request("GET", f"{CS}/events?timeout=0", token=token)).json["end"]
        pending = defer.ensureDeferred(self.events(token, since, timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(pending.called)
        resp = await self.request(
            "PUT", f"{CS}/user/{q(user_id)}/rooms/{q(room)}/account_data/my.test.type",
            {"cats_or_rats": "rats"}, token=token)
        self.assertEqual(resp.code, 200, resp)
        body = await self.answered(pending)
        found = [e for e in body["chunk"] if e["type"] == "my.test.type"]
        self.assertEqual(found, [{"type": "my.test.type", "room_id": room,
                                  "content": {"cats_or_rats": "rats"}}])


class TortureTest(SyTestEventsCase):
    async def test_get_events_with_non_numeric_limit(self) -> None:
        """80torture/03events.pl: GET /events with non-numeric 'limit' is a 4xx at once."""
        token, _, since = await self.sytest_user("spy")
        d = defer.ensureDeferred(self.request(
            "GET", f"{CS}/events?from={q(since)}&limit=hello", token=token))
        self.assertMatrixError(await self.answered(d), 400, "M_INVALID_PARAM")

    async def test_get_events_with_negative_limit(self) -> None:
        """80torture/03events.pl: GET /events with negative 'limit' is a 4xx at once."""
        token, _, since = await self.sytest_user("spy")
        d = defer.ensureDeferred(self.request(
            "GET", f"{CS}/events?from={q(since)}&limit=-2", token=token))
        self.assertMatrixError(await self.answered(d), 400, "M_INVALID_PARAM")

    async def test_event_size_limits(self) -> None:
        """80torture/03events.pl: Event size limits (413 M_TOO_LARGE, as Synapse)."""
        token, _, _ = await self.sytest_user("big", with_events=False)
        room = await self.create_room(token)
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/send/m.room.message",
                                  {"msgtype": "m.text", "body": "A" * 70000}, token=token)
        self.assertMatrixError(resp, 413, "M_TOO_LARGE")
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/state/oooooooh/",
                                  {"key": "O" * 70000}, token=token)
        self.assertMatrixError(resp, 413, "M_TOO_LARGE")


class PeekEventsTest(SyTestEventsCase):
    async def _peek(self, peeker: str, since: str | None) -> None:
        """SYN-606: /events?room_id= on world-readable rooms the peeker is not in. As
        SyTest's ``await_event_for``: from the peeker's own stream token (none for a
        guest: from now), long-polls of the room while the message is sent, and events
        of one call kept to be looked at first by the next one."""
        alice, _, _ = await self.sytest_user("alice")
        rooms = [await self.create_room(alice) for _ in range(2)]
        for room in rooms:
            resp = await self.put_state(alice, room, "m.room.history_visibility",
                                        {"history_visibility": "world_readable"})
            self.assertEqual(resp.code, 200, resp)
        saved: list[dict] = []

        def wanted(e: dict) -> bool:
            return e["type"] not in ("m.room.history_visibility", "m.presence")

        for room, text in zip(rooms, ("moose", "mice"), strict=True):
            await self.room_initial_sync(peeker, room)
            self.assertEqual([e for e in saved if wanted(e)], [], saved)
            sent = False
            found = None
            for _ in range(5):
                query = f"room_id={q(room)}&timeout=30000" + (
                    f"&from={q(since)}" if since else "")
                pending = defer.ensureDeferred(
                    self.request("GET", f"{CS}/events?{query}", token=peeker))
                await task.deferLater(reactor, 0.1, lambda: None)
                if not sent:
                    await self.send_ok(alice, room, text)
                    sent = True
                resp = await self.answered(pending)
                self.assertEqual(resp.code, 200, resp)
                since = resp.json["end"]
                saved.extend(resp.json["chunk"])
                found = next((e for e in saved if wanted(e)), None)
                if found is not None:
                    saved.remove(found)
                    break
            assert found is not None
            self.assertEqual((found["room_id"], found["content"]["body"]), (room, text))

    async def test_guest_user_can_call_events_on_world_readable_room(self) -> None:
        """SYN-606: Guest user can call /events on another world_readable room."""
        reg = await self.request("POST", f"{CS}/register?kind=guest", {})
        self.assertEqual(reg.code, 200, reg)
        await self._peek(reg.json["access_token"], None)

    async def test_real_user_can_call_events_on_world_readable_room(self) -> None:
        """SYN-606: Real user can call /events on another world_readable room."""
        bob, _, since = await self.sytest_user("bob")
        await self._peek(bob, since)

    async def test_empty_from_is_now(self) -> None:
        """``from=`` (SyTest sends it for a user with no stream token yet) is no token,
        as in Synapse, not a 400."""
        token, _, _ = await self.sytest_user("blank", with_events=False)
        resp = await self.request("GET", f"{CS}/events?from=&timeout=0", token=token)
        self.assertEqual(resp.code, 200, resp)


class PresenceInitialSyncTest(SyTestEventsCase):
    def assert_own_presence(self, body: dict, user_id: str) -> dict:
        self.assertIsInstance(body["presence"], list)
        event = self.presence_by_user(body["presence"]).get(user_id)
        self.assertIsNotNone(event, body["presence"])
        assert event is not None
        self.assertEqual(event["type"], "m.presence")
        for key in ("user_id", "presence", "last_active_ago"):
            self.assertIn(key, event["content"])
        return event

    async def test_initial_sync_sees_my_presence_status(self) -> None:
        """21presence-events.pl: initialSync sees my presence status."""
        token, user_id, _ = await self.sytest_user("me")
        resp = await self.request("PUT", f"{CS}/user/{q(user_id)}/account_data/filler",
                                  {}, token=token)
        self.assertEqual(resp.code, 200, resp)
        event = self.assert_own_presence(await self.initial_sync(token), user_id)
        self.assertEqual(event["content"]["presence"], "online")

    async def test_newly_created_users_see_own_presence_in_initial_sync(self) -> None:
        """40presence.pl: Newly created users see their own presence in /initialSync."""
        token, user_id, _ = await self.sytest_user("fresh")
        self.assert_own_presence(await self.initial_sync(token), user_id)

    async def test_all_members_see_all_presence_in_global_initial_sync(self) -> None:
        """02members-local.pl: All room members see all room members' presence in
        global initialSync."""
        first, first_id, _ = await self.sytest_user("first")
        local, local_id, _ = await self.sytest_user("local")
        await self.set_presence(local, local_id, "online")
        room = await self.create_room(first, preset="public_chat")
        self.assertEqual((await self.join(local, room)).code, 200)
        await self.set_presence(first, first_id, "online")
        await self.set_presence(local, local_id, "online")
        for token in (first, local):
            body = await self.initial_sync(token)
            found = self.presence_by_user(body["presence"])
            for user_id in (first_id, local_id):
                self.assertIn(user_id, found, body["presence"])
                content = found[user_id]["content"]
                for key in ("user_id", "presence", "last_active_ago"):
                    self.assertIn(key, content)
                self.assertEqual(content["presence"], "online")

    async def test_newly_joined_room_includes_presence_in_incremental_sync(self) -> None:
        """31sync/03joined.pl: Newly joined room includes presence in incremental sync."""
        a, a_id, _ = await self.sytest_user("usera", with_events=False)
        b, b_id, _ = await self.sytest_user("userb", with_events=False)
        room = await self.create_room(a, preset="public_chat")
        first = await self.sync(b)
        self.assertEqual((await self.join(b, room)).code, 200)
        body = await self.sync(b, first["next_batch"])
        others = [e for e in body["presence"]["events"] if e["sender"] != b_id]
        self.assertEqual(len(others), 1, body["presence"])
        self.assertEqual((others[0]["type"], others[0]["sender"]), ("m.presence", a_id))
        self.assertIn("content", others[0])
        again = await self.sync(b, body["next_batch"])
        self.assertEqual(again["presence"]["events"], [])


class RoomInitialSyncTest(SyTestEventsCase):
    async def test_room_initial_sync_for_departed_room(self) -> None:
        """11leaving.pl: Can get rooms/{roomId}/initialSync for a departed room."""
        leaver, leaver_id, _ = await self.sytest_user("leaver")
        other, other_id, _ = await self.sytest_user("other")
        room = await self.create_room(leaver, preset="public_chat")
        self.assertEqual((await self.join(other, room)).code, 200)
        levels = (await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.power_levels/",
                                     token=leaver)).json
        levels.setdefault("events", {}).update({"m.room.name": 50, "madeup.test.state": 50})
        levels.setdefault("users", {})[other_id] = 50
        self.assertEqual((await self.put_state(leaver, room, "m.room.power_levels",
                                               levels)).code, 200)
        await self.put_state(other, room, "m.room.name", {"name": "N1"})
        await self.put_state(other, room, "madeup.test.state", {"body": "S1"})
        await self.send_ok(other, room, "M1")
        m2 = await self.send_ok(other, room, "M2")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(m2)}", {},
                                  token=other)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.member(leaver, room, "leave")).code, 200)
        await self.send_ok(other, room, "M3")
        await self.put_state(other, room, "m.room.name", {"name": "N2"})
        await self.put_state(other, room, "madeup.test.state", {"body": "S2"})
        body = await self.room_initial_sync(leaver, room, "?limit=2")
        self.assertEqual(body["membership"], "leave")
        state = {e["type"]: e for e in body["state"]}
        self.assertEqual(state["madeup.test.state"]["content"]["body"], "S1")
        self.assertEqual(body["messages"]["chunk"][0]["content"]["body"], "M2")
        self.assertEqual(body["presence"], [])
        self.assertEqual(body["receipts"], [])
        # A joined member gets the room's receipts (and presence) there.
        joined = await self.room_initial_sync(other, room)
        self.assertIn(other_id, joined["receipts"][0]["content"][m2]["m.read"])
        self.assertIsInstance(joined["presence"], list)
        self.assertNotIn(leaver_id, [m["state_key"] for m in joined["state"]
                                     if m["type"] == "m.room.member"
                                     and m["content"]["membership"] == "join"])


class ReceiptsTest(SyTestEventsCase):
    def find_receipt(self, body: dict, room: str, user_id: str) -> str | None:
        for receipt in body["receipts"]:
            if receipt["room_id"] != room or receipt["type"] != "m.receipt":
                continue
            for event_id, by_type in receipt["content"].items():
                if user_id in by_type.get("m.read", {}):
                    self.assertIsInstance(by_type["m.read"][user_id]["ts"], int)
                    return str(event_id)
        return None

    async def my_member_event(self, token: str, room: str, user_id: str) -> str:
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.member/{q(user_id)}"
                                  "?format=event", token=token)
        self.assertEqual(resp.code, 200, resp)
        return str(resp.json["event_id"])

    async def receipt(self, token: str, room: str, event_id: str) -> None:
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}",
                                  {}, token=token)
        self.assertEqual(resp.code, 200, resp)

    async def test_read_receipts_are_visible_to_initial_sync(self) -> None:
        """21receipts.pl: Read receipts are visible to /initialSync."""
        token, user_id, _ = await self.sytest_user("reader")
        room = await self.create_room(token)
        member = await self.my_member_event(token, room, user_id)
        await self.receipt(token, room, member)
        body = await self.initial_sync(token, "?limit=1")
        self.assertIsInstance(body["receipts"], list)
        self.assertEqual(self.find_receipt(body, room, user_id), member)
        message = await self.send_ok(token, room, "a message")
        await self.receipt(token, room, message)
        body = await self.initial_sync(token, "?limit=2")
        self.assertEqual(self.find_receipt(body, room, user_id), message)
        await self.receipt(token, room, member)  # receipts only move forward
        body = await self.initial_sync(token, "?limit=3")
        self.assertEqual(self.find_receipt(body, room, user_id), message)

    async def test_read_receipts_are_sent_as_events(self) -> None:
        """21receipts.pl: Read receipts are sent as events."""
        token, user_id, since = await self.sytest_user("sender")
        room = await self.create_room(token)
        member = await self.my_member_event(token, room, user_id)
        await self.receipt(token, room, member)
        event, _ = await self.await_event(
            token, since, lambda e: e["type"] == "m.receipt" and e.get("room_id") == room)
        self.assertIn("ts", event["content"][member]["m.read"][user_id])


class RoomStateEventsTest(SyTestEventsCase):
    async def test_room_creation_reports_m_room_create_to_myself(self) -> None:
        """01state.pl: Room creation reports m.room.create to myself (legacy events
        carry ``user_id``, as Synapse's v1 client format)."""
        token, user_id, since = await self.sytest_user("creator")
        await self.set_presence(token, user_id, "online")
        room = await self.create_room(token, visibility="public")
        event, _ = await self.await_event(
            token, since, lambda e: e["type"] == "m.room.create" and e.get("room_id") == room)
        self.assertEqual(event["user_id"], user_id)
        self.assertEqual(event["content"]["creator"], user_id)
        member, _ = await self.await_event(
            token, since, lambda e: e["type"] == "m.room.member" and e.get("room_id") == room)
        self.assertEqual((member["user_id"], member["state_key"]), (user_id, user_id))

    async def test_global_initial_sync(self) -> None:
        """01state.pl: Global initialSync."""
        token, user_id, _ = await self.sytest_user("globe")
        await self.set_presence(token, user_id, "online")
        room = await self.create_room(token, visibility="public")
        resp = await self.put_state(token, room, "m.room.topic", {"topic": "Testing topic"})
        self.assertEqual(resp.code, 200, resp)
        body = await self.initial_sync(token)
        for r in body["rooms"]:
            for key in ("room_id", "membership", "state", "messages"):
                self.assertIn(key, r)
        found = {r["room_id"]: r for r in body["rooms"]}[room]
        self.assertEqual((found["membership"], found["visibility"]), ("join", "public"))
        state = {e["type"]: e for e in found["state"]}
        self.assertEqual(state["m.room.topic"]["content"]["topic"], "Testing topic")
        self.assertGreater(state["m.room.power_levels"]["content"]["users"][user_id], 0)
        for key in ("start", "end", "chunk"):
            self.assertIn(key, found["messages"])
        self.assertTrue(found["messages"]["chunk"])
        # Room initialSync: members carry user_id, own presence with status_msg.
        body = await self.room_initial_sync(token, room)
        members = {e["user_id"]: e for e in body["state"] if e["type"] == "m.room.member"}
        self.assertEqual(members[user_id]["content"]["membership"], "join")
        mine = self.presence_by_user(body["presence"])[user_id]["content"]
        self.assertEqual(mine["presence"], "online")
        for key in ("status_msg", "last_active_ago"):
            self.assertIn(key, mine)


class EventsStreamExtrasTest(SyTestEventsCase):
    async def test_limit_caps_the_chunk(self) -> None:
        """``limit`` caps the room events of one answer; the rest come next time."""
        token, _, _ = await self.sytest_user("capped", with_events=False)
        room = await self.create_room(token)
        since = (await self.request("GET", f"{CS}/events?timeout=0", token=token)).json["end"]
        sent = [await self.send_ok(token, room, f"m{i}") for i in range(3)]
        got: list[str] = []
        for _ in range(3):
            body = await self.events(token, since, limit="1")
            room_events = [e["event_id"] for e in body["chunk"] if "event_id" in e]
            self.assertLessEqual(len(room_events), 1)
            got.extend(room_events)
            since = body["end"]
        self.assertEqual(got, sent)

    async def test_own_join_brings_members_presence(self) -> None:
        """A join in the chunk brings the presence of who came into view (Synapse's
        EventStreamHandler), with ``content.user_id``."""
        alice, alice_id, _ = await self.sytest_user("alice")
        room = await self.create_room(alice, preset="public_chat")
        bob, bob_id, since = await self.sytest_user("bob")
        self.assertEqual((await self.join(bob, room)).code, 200)
        body = await self.events(bob, since)
        joins = [e for e in body["chunk"] if e["type"] == "m.room.member"]
        self.assertEqual([(e["state_key"], e["user_id"]) for e in joins], [(bob_id, bob_id)])
        found = self.presence_by_user(body["chunk"])
        self.assertEqual(found[alice_id]["content"]["presence"], "online")
