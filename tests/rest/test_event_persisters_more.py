"""Event persisters, part 3 (issue 18): what a process makes in-process for a room another
process writes (server notices, deactivation leaves, profile updates), joins by alias
routed by the room, and the side effects main records for events persisted elsewhere
(presence bumps, device-list membership changes, typing stopped by a leave).

main (self.hs), event persisters p1 and p2 and a client reader share one PostgreSQL
schema and the machine's Redis (tests/rest/test_event_persisters.py)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from homeserver.replication.multi_writer import writer_for_room
from tests.harness import TEST_PASSWORD
from tests.rest.test_event_persisters import V3, WRITERS, PersisterDeploymentCase

SERVER = "test.local"


def q(value: str) -> str:
    return quote(value, safe="")


class InProcessEventsTest(PersisterDeploymentCase):
    def config_overrides(self) -> dict[str, Any]:
        overrides = super().config_overrides()
        overrides["server_notices"] = {"system_mxid_localpart": "notices",
                                       "auto_join": False}
        return overrides

    def _written_by(self) -> dict[str, list[str]]:
        """Event ids each persister writes from now on (its own fan-out)."""
        written: dict[str, list[str]] = {name: [] for name in WRITERS}
        for name in WRITERS:
            self.others[name].fanout.subscribe(
                f"test_{secrets.token_hex(3)}",
                lambda rec, name=name: written[name].append(rec.event.event_id))
        return written

    async def _state(self, room_id: str, event_type: str, state_key: str,
                     token: str) -> Any:
        return await self.request(
            "GET", f"{V3}/rooms/{q(room_id)}/state/{event_type}/{q(state_key)}", token=token)

    async def test_server_notice_sent_from_main(self) -> None:
        token = (await self.register("alice"))["access_token"]
        written = self._written_by()
        notices = self.hs.detection.notices
        event_id = await notices.send_notice(f"@alice:{SERVER}", "first")
        self.assertIsNotNone(event_id)
        room_id = await self.hs.detection.notices._store.get_room(  # noqa: SLF001
            f"@alice:{SERVER}")
        owner = writer_for_room(room_id, WRITERS)
        # The room (made in-process on main) and the notice were written by its writer.
        self.assertIn(event_id, written[owner])
        self.assertEqual(written[{"p1": "p2", "p2": "p1"}[owner]], [])
        second = await notices.send_notice(f"@alice:{SERVER}", "second")
        self.assertIn(second, written[owner])
        joined = await self.request("POST", f"{V3}/rooms/{q(room_id)}/join", {}, token)
        self.assertEqual(joined.code, 200, joined)
        msgs = await self.request("GET", f"{V3}/rooms/{q(room_id)}/messages?dir=b&limit=20",
                                  token=token)
        self.assertEqual(msgs.code, 200, msgs)
        bodies = [e["content"].get("body") for e in msgs.json["chunk"]
                  if e["type"] == "m.room.message"]
        self.assertEqual(bodies, ["second", "first"])

    async def test_deactivation_leaves_rooms_of_both_persisters(self) -> None:
        owner_token = (await self.register("owner"))["access_token"]
        rooms = await self._rooms_per_writer(owner_token, {"preset": "public_chat"})
        token = (await self.register("leaver"))["access_token"]
        for room_id in rooms.values():
            joined = await self.request("POST", f"{V3}/rooms/{q(room_id)}/join", {}, token)
            self.assertEqual(joined.code, 200, joined)
        first = await self.request("POST", f"{V3}/account/deactivate", {}, token)
        self.assertEqual(first.code, 401, first)
        done = await self.request("POST", f"{V3}/account/deactivate", {"auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "leaver"},
            "password": TEST_PASSWORD}}, token)
        self.assertEqual(done.code, 200, done)
        for room_id in rooms.values():
            member = await self._state(room_id, "m.room.member", f"@leaver:{SERVER}",
                                       owner_token)
            self.assertEqual(member.code, 200, member)
            self.assertEqual(member.json["membership"], "leave")

    async def test_profile_change_updates_member_events(self) -> None:
        token = (await self.register("carol"))["access_token"]
        rooms = await self._rooms_per_writer(token)
        written_events: dict[str, list[Any]] = {name: [] for name in WRITERS}
        for name in WRITERS:
            self.others[name].fanout.subscribe(
                f"test_{secrets.token_hex(3)}",
                lambda rec, name=name: written_events[name].append(rec.event))
        resp = await self.request("PUT", f"{V3}/profile/{q('@carol:' + SERVER)}/displayname",
                                  {"displayname": "Carol C"}, token)
        self.assertEqual(resp.code, 200, resp)
        for name, room_id in rooms.items():
            member = await self._state(room_id, "m.room.member", f"@carol:{SERVER}", token)
            self.assertEqual(member.code, 200, member)
            self.assertEqual(member.json.get("displayname"), "Carol C")
            # The new member event was written there (late fan-out of the room's
            # creation may be recorded too: count only this change).
            mine = [e for e in written_events[name] if e.type == "m.room.member"
                    and e.content.get("displayname") == "Carol C"]
            # One per room of carol's that this writer owns (creating one room per
            # writer may have made several), this room's among them, none twice.
            rooms_written = [e.room_id for e in mine]
            self.assertIn(room_id, rooms_written)
            self.assertEqual(len(rooms_written), len(set(rooms_written)))

    async def test_stale_check_is_refused_then_retried(self) -> None:
        """A caller's check runs on main on the state read fresh; the writer refuses the
        draft when the state moved in between (a digest mismatch)."""
        from homeserver.http.errors import MatrixError
        from homeserver.replication.remote_create import StateChanged, state_digest

        token = (await self.register("dave"))["access_token"]
        room_id = (await self._rooms_per_writer(token))["p1"]
        creator = self.hs.internal_calls.creator
        from homeserver.handlers.event_creation import EventDraft

        draft = EventDraft("m.room.topic", {"topic": "x"}, "")
        with self.assertRaises(StateChanged):
            await creator.create_event(room_id, f"@dave:{SERVER}", draft, None, "0" * 64)
        snap = await self.hs.replication.persister.read_snapshot(room_id)
        answer = await creator.create_event(room_id, f"@dave:{SERVER}", draft, None,
                                            state_digest(snap.state_ids))
        self.assertTrue(answer["event_id"].startswith("$"))
        # Validation runs on the writer: a non-member's draft is refused there.
        self.assertIsNotNone(await self.register("eve"))
        with self.assertRaises(MatrixError) as caught:
            await creator.create_event(room_id, f"@eve:{SERVER}", draft, None, None)
        self.assertEqual(caught.exception.code, 403)

    async def test_internal_endpoint_needs_the_secret(self) -> None:
        url = f"http://127.0.0.1:{self.ports['p1']}/_parley/replication/v1/internal/create_event"
        import treq

        resp = await treq.post(url, json={"room_id": "!x:test.local"}, pool=self.pool,
                               headers={"X-Parley-Replication-Secret": "wrong"})
        self.assertEqual(resp.code, 403)
        await resp.content()
        # Not served on a client listener.
        client = await self.on("p1", "POST", "/_parley/replication/v1/internal/create_event",
                               {})
        self.assertEqual(client.code, 404, client)


class RoutingAndSideEffectsTest(PersisterDeploymentCase):
    async def test_join_by_alias_through_main(self) -> None:
        token = (await self.register("frank"))["access_token"]
        alias_room: dict[str, str] = {}
        for i in range(30):
            created = await self.request("POST", f"{V3}/createRoom", {
                "preset": "public_chat", "room_alias_name": f"a{i}x"}, token)
            self.assertEqual(created.code, 200, created)
            room_id = created.json["room_id"]
            if writer_for_room(room_id, WRITERS) == "p2":
                alias_room = {"alias": f"#a{i}x:{SERVER}", "room_id": room_id}
                break
        self.assertTrue(alias_room, "no room on p2")
        joiner = (await self.register("gina"))["access_token"]
        written: list[str] = []
        self.others["p2"].fanout.subscribe("t", lambda rec: written.append(rec.event.type))
        for via in ("main", "reader", "p1"):
            resp = await self.on(via, "POST", f"{V3}/join/{q(alias_room['alias'])}",
                                 {"reason": via}, joiner)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(resp.json, {"room_id": alias_room["room_id"]})
        self.assertEqual(written, ["m.room.member"])  # joined once (then idempotent)
        member = await self.request(
            "GET", f"{V3}/rooms/{q(alias_room['room_id'])}/state/m.room.member/"
            f"{q('@gina:' + SERVER)}", token=joiner)
        self.assertEqual(member.json.get("reason"), "main")
        # An unknown alias: main answers, from any process.
        for via in ("main", "p1"):
            missing = await self.on(via, "POST", f"{V3}/join/{q('#nope:' + SERVER)}", {},
                                    joiner)
            self.assertEqual(missing.code, 404, missing)
            self.assertEqual(missing.json["errcode"], "M_NOT_FOUND")
        # Unauthenticated: refused on the process that serves it, not a 500.
        anon = await self.request("POST", f"{V3}/join/{q(alias_room['alias'])}", {})
        self.assertEqual(anon.code, 401, anon)

    async def test_send_on_persister_marks_sender_online_on_main(self) -> None:
        from tests.rest.test_replication import wait_until

        token = (await self.register("hal"))["access_token"]
        room_id = (await self._rooms_per_writer(token))["p1"]
        # The room creations' own side effects (bumps forwarded to main) land first.
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        for _ in range(2):  # fan-out may queue them a moment after the answers
            await deferLater(reactor, 0.2, lambda: None)
            for name in ("p1", "p2"):
                await self.others[name].internal_calls.side_effects.flush()
        url = f"{V3}/presence/{q('@hal:' + SERVER)}/status"
        online = await self.request("PUT", url, {"presence": "online"}, token)
        self.assertEqual(online.code, 200, online)
        self.advance(20)  # below the sync timeout: still online, active 20 s ago
        before = await self.request("GET", url, token=token)
        self.assertEqual(before.code, 200, before)
        self.assertGreaterEqual(before.json["last_active_ago"], 20_000, before)
        resp = await self.on("p1", "PUT", f"{V3}/rooms/{q(room_id)}/send/m.room.message/t1",
                             {"msgtype": "m.text", "body": "hi"}, token)
        self.assertEqual(resp.code, 200, resp)
        await self.others["p1"].internal_calls.side_effects.flush()
        after = await self.request("GET", url, token=token)
        self.assertEqual(after.json["presence"], "online", after)
        self.assertLess(after.json["last_active_ago"], 20_000, after)  # bumped on main
        self.assertTrue(after.json.get("currently_active"), after)
        self.assertTrue(await wait_until(
            lambda: self.others["p1"].internal_calls.side_effects.sent >= 1))

    async def test_device_list_change_after_join_on_persister(self) -> None:
        alice = await self.register("ida")
        bob = await self.register("jon")
        room_id = (await self._rooms_per_writer(alice["access_token"],
                                                {"preset": "public_chat"}))["p1"]
        first = await self.request("GET", f"{V3}/sync", token=bob["access_token"])
        since = first.json["next_batch"]
        joined = await self.on("p1", "POST", f"{V3}/rooms/{q(room_id)}/join", {},
                               bob["access_token"])
        self.assertEqual(joined.code, 200, joined)
        await self.others["p1"].internal_calls.side_effects.flush()
        sync = await self.request("GET", f"{V3}/sync?since={since}&timeout=3000",
                                  token=bob["access_token"])
        self.assertEqual(sync.code, 200, sync)
        self.assertIn(alice["user_id"], sync.json.get("device_lists", {}).get("changed", []),
                      sync.json.get("device_lists"))

    async def test_leave_on_persister_stops_typing_on_main(self) -> None:
        from tests.rest.test_replication import wait_until

        token = (await self.register("kim"))["access_token"]
        room_id = (await self._rooms_per_writer(token))["p2"]
        other = (await self.register("lee"))["access_token"]
        invite = await self.request("POST", f"{V3}/rooms/{q(room_id)}/invite",
                                    {"user_id": f"@lee:{SERVER}"}, token)
        self.assertEqual(invite.code, 200, invite)
        self.assertEqual((await self.request("POST", f"{V3}/rooms/{q(room_id)}/join", {},
                                             other)).code, 200)
        typing = await self.request("PUT", f"{V3}/rooms/{q(room_id)}/typing/"
                                    f"{q('@lee:' + SERVER)}", {"typing": True,
                                                              "timeout": 30000}, other)
        self.assertEqual(typing.code, 200, typing)
        main_typing = self.hs.replication.typing  # main's TypingHandler
        self.assertIn(f"@lee:{SERVER}", main_typing.typing_users(room_id))
        left = await self.on("p2", "POST", f"{V3}/rooms/{q(room_id)}/leave", {}, other)
        self.assertEqual(left.code, 200, left)
        await self.others["p2"].internal_calls.side_effects.flush()
        self.assertTrue(await wait_until(
            lambda: f"@lee:{SERVER}" not in main_typing.typing_users(room_id)))
