"""Rooms admin API (issue 15): list/search, details, members, state metadata (never
content), block/unblock, and room shutdown/purge jobs (members moved through the
normal event path, aliases removed and blocked, events purged, jobs resumed after a
restart)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task

from homeserver.handlers import room_creation
from homeserver.handlers.room_shutdown import RoomShutdownHandler
from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS, RoomTestCase, q

SA = "/_synapse/admin"
ROOMS = f"{SA}/v1/rooms"


def keys_anywhere(value: Any) -> set[str]:
    """Every dict key at any depth of a JSON value."""
    if isinstance(value, dict):
        out = set(value)
        for v in value.values():
            out |= keys_anywhere(v)
        return out
    if isinstance(value, list):
        out = set()
        for v in value:
            out |= keys_anywhere(v)
        return out
    return set()


class AdminRoomsTestBase(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        self.admin = (await self.login("admin")).json["access_token"]

    async def get(self, path: str, token: str | None = None) -> Any:
        return await self.request("GET", path, token=token or self.admin)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        resp = await self.request(method, path, body, token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def shutdown(self, room_id: str, **body: Any) -> str:
        resp = await self.request("DELETE", f"{SA}/v2/rooms/{q(room_id)}", body,
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        delete_id = resp.json["delete_id"]
        self.assertIsInstance(delete_id, str)
        return delete_id

    async def await_done(self, delete_id: str) -> dict[str, Any]:
        for _ in range(500):
            resp = await self.get(f"{SA}/v2/rooms/delete_status/{q(delete_id)}")
            self.assertEqual(resp.code, 200, resp)
            if resp.json["status"] in ("complete", "failed"):
                return resp.json
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail("shutdown never finished")


class AdminRoomReadsTest(AdminRoomsTestBase):
    async def test_list_search_order_and_pages(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        names = ["Charlie room", "alpha room", "Bravo Room"]
        ids = {}
        for name in names:
            extra = {"preset": "public_chat"} if name == "Bravo Room" else {}
            ids[name] = await self.create_room(alice, name=name, **extra)
        self.assertEqual((await self.join(bob, ids["Bravo Room"])).code, 200)
        await self.create_room(alice)  # unnamed
        body = await self.ok("GET", ROOMS)
        self.assertEqual(body["total_rooms"], 4)
        self.assertEqual(body["offset"], 0)
        self.assertNotIn("next_batch", body)
        self.assertNotIn("prev_batch", body)
        listed = [r["name"] for r in body["rooms"]]
        # By name (case as stored), unnamed rooms last.
        self.assertEqual(listed[-1], None)
        self.assertEqual(sorted(listed[:3]), sorted(names))
        row = next(r for r in body["rooms"] if r["name"] == "Bravo Room")
        self.assertEqual(row["room_id"], ids["Bravo Room"])
        self.assertEqual(row["joined_members"], 2)
        self.assertEqual(row["joined_local_members"], 2)
        self.assertEqual(row["creator"], "@alice:test.local")
        self.assertEqual(row["join_rules"], "public")
        self.assertIs(row["public"], False)
        self.assertIs(row["federatable"], True)
        self.assertIsNone(row["encryption"])
        self.assertGreater(row["state_events"], 4)
        for key in ("version", "guest_access", "history_visibility", "room_type",
                    "canonical_alias"):
            self.assertIn(key, row)
        # Order by joined members, descending.
        body = await self.ok("GET", f"{ROOMS}?order_by=joined_members&dir=b")
        self.assertEqual(body["rooms"][0]["room_id"], ids["Bravo Room"])
        # Search: name substring, case-insensitively; room id exactly.
        body = await self.ok("GET", f"{ROOMS}?search_term=bravo")
        self.assertEqual([r["room_id"] for r in body["rooms"]], [ids["Bravo Room"]])
        self.assertEqual(body["total_rooms"], 1)
        body = await self.ok("GET", f"{ROOMS}?search_term={q(ids['alpha room'])}")
        self.assertEqual([r["room_id"] for r in body["rooms"]], [ids["alpha room"]])
        body = await self.ok("GET", f"{ROOMS}?search_term=nothing-like-it")
        self.assertEqual((body["rooms"], body["total_rooms"]), ([], 0))
        # Filters: published or not, with or without joined members.
        resp = await self.request("PUT", f"{CS}/directory/list/room/{q(ids['alpha room'])}",
                                  {"visibility": "public"}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        body = await self.ok("GET", f"{ROOMS}?public_rooms=true")
        self.assertEqual([r["room_id"] for r in body["rooms"]], [ids["alpha room"]])
        self.assertEqual((await self.ok("GET", f"{ROOMS}?public_rooms=false"))["total_rooms"], 3)
        self.assertEqual((await self.member(alice, ids["Charlie room"], "leave")).code, 200)
        body = await self.ok("GET", f"{ROOMS}?empty_rooms=true")
        self.assertEqual([r["room_id"] for r in body["rooms"]], [ids["Charlie room"]])
        body = await self.ok("GET", f"{ROOMS}?empty_rooms=false&search_term=room")
        self.assertEqual(body["total_rooms"], 2)
        # Pages.
        seen = []
        page = await self.ok("GET", f"{ROOMS}?limit=3")
        self.assertEqual(page["next_batch"], 3)
        seen += [r["room_id"] for r in page["rooms"]]
        page = await self.ok("GET", f"{ROOMS}?limit=3&from=3")
        self.assertNotIn("next_batch", page)
        self.assertEqual(page["prev_batch"], 0)
        seen += [r["room_id"] for r in page["rooms"]]
        self.assertEqual(len(seen), 4)
        self.assertEqual(len(set(seen)), 4)

    async def test_bad_list_parameters(self) -> None:
        for query in ("limit=0", "limit=1001", "limit=abc", "from=-1", "from=x",
                      "from=99999999999999999999", "order_by=nope", "dir=up",
                      "order_by=federatable", f"search_term={'x' * 256}", "search_term=",
                      "public_rooms=yes", "empty_rooms=1"):
            resp = await self.get(f"{ROOMS}?{query}")
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_order_by_every_column(self) -> None:
        alice = await self.user("alice")
        await self.create_room(alice, name="one")
        await self.create_room(alice, name="two", preset="public_chat")
        for column in ("name", "canonical_alias", "joined_members", "joined_local_members",
                       "version", "creator", "encryption", "public", "join_rules",
                       "guest_access", "history_visibility", "state_events"):
            pages = {}
            for direction in ("f", "b"):
                body = await self.ok("GET", f"{ROOMS}?order_by={column}&dir={direction}")
                self.assertEqual(len(body["rooms"]), 2, column)
                pages[direction] = [r["room_id"] for r in body["rooms"]]
            if column not in ("name", "canonical_alias", "encryption", "join_rules",
                              "guest_access", "history_visibility"):  # nulls last both ways
                self.assertEqual(pages["f"], pages["b"][::-1], column)

    async def test_details_members_and_state_metadata(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, name="Secret plans", topic="the topic",
                                      preset="public_chat", initial_state=[{
                                          "type": "m.room.encryption", "state_key": "",
                                          "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        await self.join(bob, room)
        await self.send_ok(alice, room, "top secret message body")
        body = await self.ok("GET", f"{ROOMS}/{q(room)}")
        self.assertEqual(body["room_id"], room)
        self.assertEqual(body["name"], "Secret plans")
        self.assertEqual(body["topic"], "the topic")
        self.assertEqual(body["encryption"], "m.megolm.v1.aes-sha2")
        self.assertEqual(body["joined_members"], 2)
        self.assertEqual(body["join_rules"], "public")
        self.assertIs(body["blocked"], False)

        members = await self.ok("GET", f"{ROOMS}/{q(room)}/members")
        self.assertEqual(sorted(members["members"]), ["@alice:test.local", "@bob:test.local"])
        self.assertEqual(members["total"], 2)

        state = await self.ok("GET", f"{ROOMS}/{q(room)}/state")
        entries = state["state"]
        self.assertEqual(keys_anywhere(state), {"state", "type", "state_key", "sender",
                                               "event_id", "origin_server_ts"})
        self.assertNotIn("content", keys_anywhere(state))
        types = {(e["type"], e["state_key"]) for e in entries}
        for key in (("m.room.create", ""), ("m.room.name", ""), ("m.room.topic", ""),
                    ("m.room.member", "@bob:test.local"), ("m.room.encryption", "")):
            self.assertIn(key, types)
        self.assertNotIn("Secret plans", str(state))
        self.assertNotIn("the topic", str(state))
        member = next(e for e in entries if e["state_key"] == "@bob:test.local")
        self.assertEqual(member["sender"], "@bob:test.local")
        self.assertTrue(member["event_id"].startswith("$"))
        self.assertIsInstance(member["origin_server_ts"], int)

    async def test_unknown_and_invalid_rooms(self) -> None:
        for suffix in ("", "/members", "/state"):
            resp = await self.get(f"{ROOMS}/{q('!nope:test.local')}{suffix}")
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
            resp = await self.get(f"{ROOMS}/not-a-room{suffix}")
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_not_for_non_admins(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for path in (ROOMS, f"{ROOMS}/{q(room)}", f"{ROOMS}/{q(room)}/state"):
            self.assertMatrixError(await self.get(path, token=alice), 403, "M_FORBIDDEN")
        resp = await self.request("DELETE", f"{SA}/v2/rooms/{q(room)}", {}, token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class AdminRoomBlockTest(AdminRoomsTestBase):
    async def test_block_refuses_joins_and_invites(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        path = f"{ROOMS}/{q(room)}/block"
        self.assertEqual(await self.ok("GET", path), {"block": False})
        self.assertEqual(await self.ok("PUT", path, {"block": True}), {"block": True})
        self.assertEqual(await self.ok("GET", path),
                         {"block": True, "user_id": "@admin:test.local"})
        self.assertIs((await self.ok("GET", f"{ROOMS}/{q(room)}"))["blocked"], True)
        self.assertMatrixError(await self.join(bob, room), 403, "M_FORBIDDEN")
        resp = await self.member(alice, room, "invite", user_id="@bob:test.local")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Members may still leave.
        self.assertEqual((await self.member(alice, room, "leave")).code, 200)
        # Unblocked: joins work again.
        self.assertEqual(await self.ok("PUT", path, {"block": False}), {"block": False})
        self.assertEqual((await self.join(bob, room)).code, 200)
        audit = await self.hs.stores.security_events.list_events(event_type="admin_action")
        actions = [e.details.get("action") for e in audit]
        self.assertIn("block_room", actions)
        self.assertIn("unblock_room", actions)

    async def test_blocked_room_id_cannot_be_created(self) -> None:
        alice = await self.user("alice")
        self.patch(room_creation, "generate_room_localpart", lambda: "chosenid")
        room = "!chosenid:test.local"
        await self.ok("PUT", f"{ROOMS}/{q(room)}/block", {"block": True})
        resp = await self.request("POST", f"{CS}/createRoom", {}, token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.ok("PUT", f"{ROOMS}/{q(room)}/block", {"block": False})
        self.assertEqual(await self.create_room(alice), room)

    async def test_block_unknown_room_and_bad_bodies(self) -> None:
        path = f"{ROOMS}/{q('!future:test.local')}/block"
        self.assertEqual(await self.ok("PUT", path, {"block": True}), {"block": True})
        self.assertEqual((await self.ok("GET", path))["block"], True)
        for body in ({}, {"block": "yes"}, {"block": 1}):
            resp = await self.request("PUT", path, body, token=self.admin)
            self.assertEqual(resp.code, 400, resp)
        resp = await self.request("PUT", f"{ROOMS}/nope/block", {"block": True},
                                  token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")


class RoomShutdownTest(AdminRoomsTestBase):
    async def _populated_room(self) -> tuple[str, dict[str, str]]:
        tokens = {name: await self.user(name) for name in ("alice", "bob", "carol")}
        await self.hs.registration.create_account("notices", TEST_PASSWORD)
        room = await self.create_room(tokens["alice"], preset="public_chat",
                                      room_alias_name="badplace", visibility="public")
        await self.join(tokens["bob"], room)
        resp = await self.member(tokens["alice"], room, "invite", user_id="@carol:test.local")
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("PUT", f"{CS}/directory/room/{q('#other:test.local')}",
                                  {"room_id": room}, token=tokens["alice"])
        self.assertEqual(resp.code, 200, resp)
        for i in range(5):
            await self.send_ok(tokens["bob"], room, f"message {i}")
        return room, tokens

    async def test_shutdown_moves_members_blocks_aliases_and_purges(self) -> None:
        room, tokens = await self._populated_room()
        delete_id = await self.shutdown(
            room, new_room_user_id="@notices:test.local", room_name="Closed",
            message="This room broke the rules", block=True)
        status = await self.await_done(delete_id)
        self.assertEqual(status["status"], "complete", status)
        result = status["shutdown_room"]
        self.assertEqual(sorted(result["kicked_users"]),
                         ["@alice:test.local", "@bob:test.local", "@carol:test.local"])
        self.assertEqual(result["failed_to_kick_users"], [])
        self.assertEqual(sorted(result["local_aliases"]),
                         ["#badplace:test.local", "#other:test.local"])
        new_room = result["new_room_id"]
        self.assertTrue(new_room.startswith("!"))

        # Members were moved to the notice room, through real member events.
        for name, token in tokens.items():
            body = await self.sync(token)
            self.assertIn(new_room, body["rooms"]["join"], name)
            self.assertNotIn(room, body["rooms"]["join"], name)
        notice = await self.request(
            "GET", f"{CS}/rooms/{q(new_room)}/messages?dir=b&limit=50", token=tokens["bob"])
        self.assertEqual(notice.code, 200, notice)
        bodies = [e["content"].get("body") for e in notice.json["chunk"]
                  if e["type"] == "m.room.message"]
        self.assertEqual(bodies, ["This room broke the rules"])
        name = await self.request("GET", f"{CS}/rooms/{q(new_room)}/state/m.room.name",
                                  token=tokens["bob"])
        self.assertEqual(name.json, {"name": "Closed"})
        # Members cannot speak in the notice room.
        self.assertMatrixError(await self.send(tokens["bob"], new_room, "hi"), 403,
                               "M_FORBIDDEN")

        # The aliases are gone and cannot be created again.
        resp = await self.get(f"{CS}/directory/room/{q('#badplace:test.local')}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        other = await self.create_room(tokens["alice"])
        resp = await self.request("PUT", f"{CS}/directory/room/{q('#other:test.local')}",
                                  {"room_id": other}, token=tokens["alice"])
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", f"{CS}/createRoom", {"room_alias_name": "badplace"},
                                  token=tokens["alice"])
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # An alias nobody blocked still works.
        resp = await self.request("POST", f"{CS}/createRoom", {"room_alias_name": "fine"},
                                  token=tokens["alice"])
        self.assertEqual(resp.code, 200, resp)

        # Purged: no events left, the room is unknown, and blocked.
        self.assertEqual(await self.hs.rooms_admin.rooms._store.count_room_events(room), 0)  # noqa: SLF001
        self.assertMatrixError(await self.get(f"{ROOMS}/{q(room)}"), 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b",
                                  token=tokens["bob"])
        self.assertIn(resp.code, (403, 404), resp)
        self.assertMatrixError(await self.join(tokens["bob"], room), 403, "M_FORBIDDEN")
        self.assertEqual((await self.ok("GET", f"{ROOMS}/{q(room)}/block"))["block"], True)
        self.assertNotIn(room, [r["room_id"] for r in (await self.ok("GET", ROOMS))["rooms"]])
        public = await self.request("GET", f"{CS}/publicRooms", token=tokens["bob"])
        self.assertNotIn(room, [r["room_id"] for r in public.json["chunk"]])

        # Status by room, and the audit trail.
        by_room = await self.ok("GET", f"{SA}/v2/rooms/{q(room)}/delete_status")
        self.assertEqual([r["delete_id"] for r in by_room["results"]], [delete_id])
        self.assertEqual(by_room["results"][0]["status"], "complete")
        audit = await self.hs.stores.security_events.list_events(event_type="admin_action")
        actions = {e.details.get("action"): e for e in audit}
        self.assertEqual(actions["room_shutdown"].details["delete_id"], delete_id)
        self.assertEqual(actions["room_shutdown_finished"].details["status"], "complete")
        self.assertEqual(actions["room_shutdown_finished"].user_id, "@admin:test.local")

    async def test_shutdown_without_purge_keeps_events_and_unblocked_room(self) -> None:
        room, tokens = await self._populated_room()
        delete_id = await self.shutdown(room, purge=False)
        status = await self.await_done(delete_id)
        self.assertEqual(status["status"], "complete", status)
        self.assertIsNone(status["shutdown_room"]["new_room_id"])
        self.assertGreater(
            await self.hs.rooms_admin.rooms._store.count_room_events(room), 5)  # noqa: SLF001
        details = await self.ok("GET", f"{ROOMS}/{q(room)}")
        self.assertEqual(details["joined_members"], 0)
        self.assertIs(details["blocked"], False)
        self.assertIs(details["public"], False)
        # Members left as themselves, with the message as reason.
        state = await self.ok("GET", f"{ROOMS}/{q(room)}/state")
        bob = next(e for e in state["state"] if e["state_key"] == "@bob:test.local")
        self.assertEqual(bob["sender"], "@bob:test.local")
        event = await self.hs.stores.events.get_event(bob["event_id"])
        assert event is not None
        self.assertEqual(event.content["membership"], "leave")
        self.assertIn("not permitted", event.content["reason"])

    async def test_bad_requests(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        path = f"{SA}/v2/rooms/{q(room)}"
        for body in ({"block": "yes"}, {"purge": 1}, {"new_room_user_id": "notauser"},
                     {"message": 5}, {"room_name": "x" * 300}):
            resp = await self.request("DELETE", path, body, token=self.admin)
            self.assertEqual(resp.code, 400, (body, resp))
        resp = await self.request("DELETE", path, {"new_room_user_id": "@x:elsewhere.org"},
                                  token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("DELETE", path, {"new_room_user_id": "@ghost:test.local"},
                                  token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("DELETE", f"{SA}/v2/rooms/{q('!nope:test.local')}", {},
                                  token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("DELETE", f"{SA}/v2/rooms/nope", {}, token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        for path in (f"{SA}/v2/rooms/delete_status/nope",
                     f"{SA}/v2/rooms/delete_status/shutdown_unknown",
                     f"{SA}/v2/rooms/{q(room)}/delete_status"):
            self.assertMatrixError(await self.get(path), 404, "M_NOT_FOUND")

    async def test_unknown_room_with_block_is_blocked(self) -> None:
        room = "!notyet:test.local"
        status = await self.await_done(await self.shutdown(room, block=True))
        self.assertEqual(status["status"], "complete", status)
        self.assertEqual((await self.ok("GET", f"{ROOMS}/{q(room)}/block"))["block"], True)

    async def test_one_shutdown_per_room_at_a_time(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        store = self.hs.rooms_admin.rooms._store  # noqa: SLF001
        await store.create_job("shutdown_pending", room, "@admin:test.local", {"purge": True},
                               {}, self.clock.time_msec())
        resp = await self.request("DELETE", f"{SA}/v2/rooms/{q(room)}", {}, token=self.admin)
        self.assertMatrixError(resp, 400, "M_UNKNOWN")

    async def test_interrupted_job_resumes_after_restart(self) -> None:
        """A job a stopped process left half-way (alice already moved, the rest not)
        is finished by a new runner at start-up."""
        room, tokens = await self._populated_room()
        store = self.hs.rooms_admin.rooms._store  # noqa: SLF001
        await self.member(tokens["alice"], room, "leave")
        delete_id = "shutdown_interrupted"
        params = {"new_room_user_id": "@notices:test.local", "room_name": "Closed",
                  "message": "bye", "block": True, "purge": True, "force_purge": False}
        await store.create_job(delete_id, room, "@admin:test.local", params,
                               {"kicked_users": ["@alice:test.local"],
                                "failed_to_kick_users": [], "local_aliases": [],
                                "new_room_id": None, "purged_events": 0},
                               self.clock.time_msec())
        await store.update_job(delete_id, "shutting_down",
                               {"kicked_users": ["@alice:test.local"],
                                "failed_to_kick_users": [], "local_aliases": [],
                                "new_room_id": None, "purged_events": 0},
                               None, self.clock.time_msec())
        status = await self.get(f"{SA}/v2/rooms/delete_status/{delete_id}")
        self.assertEqual(status.json["status"], "shutting_down")
        # "Restart": a fresh runner over the same dependencies resumes the job.
        runner = RoomShutdownHandler(self.hs.rooms_admin.shutdown._d)  # noqa: SLF001
        self.assertEqual(await runner.resume_pending(), 1)
        status = await self.await_done(delete_id)
        self.assertEqual(status["status"], "complete", status)
        result = status["shutdown_room"]
        self.assertEqual(sorted(result["kicked_users"]),
                         ["@alice:test.local", "@bob:test.local", "@carol:test.local"])
        self.assertEqual(len(result["local_aliases"]), 2)
        new_room = result["new_room_id"]
        # Alice, moved before the interruption, also ends up in the notice room.
        for token in tokens.values():
            self.assertIn(new_room, (await self.sync(token))["rooms"]["join"])
        self.assertEqual(await store.count_room_events(room), 0)
        await runner.stop()

    async def test_purge_job_resumes_in_purging_phase(self) -> None:
        room, tokens = await self._populated_room()
        for token in tokens.values():
            await self.member(token, room, "leave")
        store = self.hs.rooms_admin.rooms._store  # noqa: SLF001
        # Half a purge done: the oldest events already deleted.
        await store.purge_room_batch(room, 3)
        self.assertGreater(await store.count_room_events(room), 0)
        delete_id = "shutdown_purging"
        await store.create_job(delete_id, room, "@admin:test.local",
                               {"purge": True, "force_purge": True}, {},
                               self.clock.time_msec())
        await store.update_job(delete_id, "purging", {"purged_events": 3}, None,
                               self.clock.time_msec())
        runner = RoomShutdownHandler(self.hs.rooms_admin.shutdown._d, purge_batch=4)  # noqa: SLF001
        await runner.resume_pending()
        status = await self.await_done(delete_id)
        self.assertEqual(status["status"], "complete", status)
        self.assertEqual(await store.count_room_events(room), 0)
        self.assertMatrixError(await self.get(f"{ROOMS}/{q(room)}"), 404, "M_NOT_FOUND")
        job = await store.get_job(delete_id)
        assert job is not None
        self.assertGreater(job.result["purged_events"], 3)

    async def test_purge_refused_while_local_users_are_joined_unless_forced(self) -> None:
        """As Synapse: a purge never runs under users still joined (here: a job resumed
        straight into its purge phase), unless force_purge."""
        room, _ = await self._populated_room()
        store = self.hs.rooms_admin.rooms._store  # noqa: SLF001
        runner = RoomShutdownHandler(self.hs.rooms_admin.shutdown._d)  # noqa: SLF001
        for delete_id, force in (("shutdown_unforced", False), ("shutdown_forced", True)):
            await store.create_job(delete_id, room, "@admin:test.local",
                                   {"purge": True, "force_purge": force}, {},
                                   self.clock.time_msec())
            await store.update_job(delete_id, "purging", {}, None, self.clock.time_msec())
            await runner.resume_pending()
            status = await self.await_done(delete_id)
            if force:
                self.assertEqual(status["status"], "complete", status)
                self.assertEqual(await store.count_room_events(room), 0)
            else:
                self.assertEqual(status["status"], "failed", status)
                self.assertEqual(status["error"], "Users are still joined to this room")
                self.assertGreater(await store.count_room_events(room), 0)

    async def test_room_version_12_ids(self) -> None:
        """v12 room ids carry no server name (``!hash``)."""
        alice = await self.user("alice")
        room = await self.create_room(alice, room_version="12", name="twelve")
        self.assertNotIn(":", room)
        details = await self.ok("GET", f"{ROOMS}/{q(room)}")
        self.assertEqual((details["version"], details["name"]), ("12", "twelve"))
        await self.send_ok(alice, room, "hello")
        status = await self.await_done(await self.shutdown(room, block=True))
        self.assertEqual(status["status"], "complete", status)
        self.assertEqual(status["shutdown_room"]["kicked_users"], ["@alice:test.local"])
        self.assertMatrixError(await self.get(f"{ROOMS}/{q(room)}"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.join(alice, room), 403, "M_FORBIDDEN")
