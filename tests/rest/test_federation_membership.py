"""Joins, invites, leaves and knocks between two in-process servers (test.local and
remote.test): a local user joins a remote room by id (with ``via``) and by alias,
messages flow both ways through /sync, refused joins give the joining client the
resident's error, invites both ways (accepted, rejected), leaves, a knock, and a
restricted join vouched for by the resident server. The module runs twice: with
``federation.partial_state_joins`` (the default: a join on partial state, which /sync
shows once the members are resynced) and, in the ``...FullJoins`` classes at the end,
without it (the whole state in the send_join answer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import reactor, task

from homeserver.app import Homeserver
from tests.rest.e2e_helpers import OlmDevice
from tests.rest.federation_helpers import current_state, persister_of
from tests.rest.test_federation_queries import CS, QueriesTestCase, q

FED = "/_matrix/federation"
REMOTE = "remote.test"


class MembershipTestCase(QueriesTestCase):
    # federation.partial_state_joins of every server of the test (None: the default).
    partial_state_joins: bool | None = None

    def config_overrides(self) -> dict[str, Any]:
        out = super().config_overrides()
        if self.partial_state_joins is None:
            return out
        return {**out, "federation": {**out.get("federation", {}),
                                      "partial_state_joins": self.partial_state_joins}}

    async def start_remote(self, name: str, federation: dict[str, Any]) -> Homeserver:
        if self.partial_state_joins is not None:
            federation = {**federation, "partial_state_joins": self.partial_state_joins}
        return await super().start_remote(name, federation)

    async def remote_room(self, owner: OlmDevice, **body: Any) -> str:
        room = await self.ok(self.remote, "POST", f"{CS}/createRoom", body, owner.token)
        return str(room["room_id"])

    async def sync_until(self, hs: Homeserver, user: OlmDevice,
                         condition: Callable[[dict[str, Any]], bool],
                         seconds: float = 10.0, query: str = "") -> dict[str, Any]:
        """Full /sync of ``user`` on ``hs`` until ``condition`` holds (federation
        traffic runs in the background, on the real reactor). ``query``: e.g.
        ``?filter=...``."""
        body: dict[str, Any] = {}
        for _ in range(int(seconds / 0.05)):
            body = await self.ok(hs, "GET", f"{CS}/sync{query}", token=user.token)
            if condition(body):
                return body
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"condition never held; last sync: {body.get('rooms')}")

    @staticmethod
    def timeline(body: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
        room = body["rooms"]["join"].get(room_id)
        return room["timeline"]["events"] if room else []

    @staticmethod
    def bodies(body: dict[str, Any], room_id: str) -> list[str]:
        return [e["content"].get("body") for e in MembershipTestCase.timeline(body, room_id)
                if e["type"] == "m.room.message"]

    async def members(self, hs: Homeserver, user: OlmDevice, room_id: str) -> dict[str, str]:
        got = await self.ok(hs, "GET", f"{CS}/rooms/{q(room_id)}/members", token=user.token)
        return {e["state_key"]: e["content"]["membership"] for e in got["chunk"]}

    async def members_until(self, hs: Homeserver, user: OlmDevice, room_id: str,
                            expected: dict[str, str]) -> None:
        got: dict[str, str] = {}
        for _ in range(200):
            got = await self.members(hs, user, room_id)
            if all(got.get(k) == v for k, v in expected.items()):
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"members {got} never had {expected}")

    async def send_text(self, hs: Homeserver, user: OlmDevice, room_id: str, text: str) -> str:
        got = await self.ok(hs, "PUT", f"{CS}/rooms/{q(room_id)}/send/m.room.message/"
                            f"t{self.clock.time_msec()}{text}", {"msgtype": "m.text",
                                                                "body": text}, user.token)
        return str(got["event_id"])


class JoinTest(MembershipTestCase):
    async def test_join_by_id_then_messages_both_ways(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="public_chat", name="Lounge")
        await self.send_text(self.remote, bob, room_id, "before alice")
        # No server to ask: the room is unknown here and its id names remote.test, which
        # is asked anyway (the room id's server is a candidate).
        got = await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                            alice.token)
        self.assertEqual(got["room_id"], room_id)
        body = await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["join"])
        room = body["rooms"]["join"][room_id]
        state = {(e["type"], e["state_key"]): e for e in room["state"]["events"]
                 + room["timeline"]["events"] if "state_key" in e}
        self.assertEqual(state[("m.room.name", "")]["content"]["name"], "Lounge")
        self.assertEqual(state[("m.room.member", bob.user_id)]["content"]["membership"], "join")
        self.assertEqual(state[("m.room.member", alice.user_id)]["content"]["membership"],
                         "join")
        # The resident server has alice joined.
        await self.members_until(self.remote, bob, room_id,
                                 {alice.user_id: "join", bob.user_id: "join"})
        # Messages both ways through /sync.
        await self.send_text(self.remote, bob, room_id, "hello alice")
        await self.sync_until(self.hs, alice,
                              lambda b: "hello alice" in self.bodies(b, room_id))
        await self.send_text(self.hs, alice, room_id, "hello bob")
        await self.sync_until(self.remote, bob,
                              lambda b: "hello bob" in self.bodies(b, room_id))
        # Joining again is idempotent (no second round trip).
        got = await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/join", {},
                            alice.token)
        self.assertEqual(got["room_id"], room_id)
        # Alice leaves: a room this server is in, so an ordinary event the sender delivers.
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/leave", {}, alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "leave"})
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertNotIn(room_id, body["rooms"]["join"])

    async def test_join_by_alias(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="public_chat", room_alias_name="hall")
        got = await self.ok(self.hs, "POST", f"{CS}/join/{q('#hall:remote.test')}", {},
                            alice.token)
        self.assertEqual(got["room_id"], room_id)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "join"})
        await self.send_text(self.remote, bob, room_id, "welcome")
        await self.sync_until(self.hs, alice, lambda b: "welcome" in self.bodies(b, room_id))

    async def test_refused_joins(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        private = await self.remote_room(bob, preset="private_chat")
        resp = await self.request("POST", f"{CS}/join/{q(private)}?via={REMOTE}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        public = await self.remote_room(bob, preset="public_chat")
        await self.ok(self.remote, "POST", f"{CS}/rooms/{q(public)}/ban",
                      {"user_id": alice.user_id}, bob.token)
        resp = await self.request("POST", f"{CS}/join/{q(public)}?via={REMOTE}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Nothing of either room is held here.
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(body["rooms"]["join"], {})
        # No server that knows the room: 404; one that is down: 502.
        resp = await self.request("POST", f"{CS}/join/{q('!nowhere:unknown.test')}", {},
                                  token=alice.token)
        self.assertIn(resp.code, (404, 502), resp)
        resp = await self.request("POST", f"{CS}/join/{q(public)}?via=" + "x" * 300, {},
                                  token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_make_join_checks(self) -> None:
        """The resident side: the user must be the origin's; versions; unknown rooms."""
        alice = await self.account(self.hs, "alice")
        room = await self.ok(self.hs, "POST", f"{CS}/createRoom",
                             {"preset": "public_chat"}, alice.token)
        room_id = room["room_id"]
        path = f"{FED}/v1/make_join/{q(room_id)}/{q('@bob:remote.test')}"
        resp = await self.remote_signed("GET", path + "?ver=10&ver=11")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["room_version"], "10")
        event = resp.json["event"]
        self.assertEqual((event["type"], event["state_key"], event["content"]),
                         ("m.room.member", "@bob:remote.test", {"membership": "join"}))
        resp = await self.remote_signed("GET", path + "?ver=1")
        self.assertMatrixError(resp, 400, "M_INCOMPATIBLE_ROOM_VERSION")
        self.assertEqual(resp.json["room_version"], "10")
        resp = await self.remote_signed(
            "GET", f"{FED}/v1/make_join/{q(room_id)}/{q('@bob:other.test')}?ver=10")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.remote_signed(
            "GET", f"{FED}/v1/make_join/{q('!no:test.local')}/{q('@bob:remote.test')}?ver=10")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", path + "?ver=10")
        self.assertMatrixError(resp, 401, "M_UNAUTHORIZED")
        # A forged send_join (an event that is not what it claims): 400.
        resp = await self.remote_signed(
            "PUT", f"{FED}/v2/send_join/{q(room_id)}/{q('$x')}", dict(event))
        self.assertMatrixError(resp, 400, "M_BAD_JSON")


class GuestTest(MembershipTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(), "registration": {"allow_guests": True}}

    async def test_guests_do_not_join_rooms_on_other_servers(self) -> None:
        bob = await self.account(self.remote, "bob")
        guest = await self.request("POST", f"{CS}/register?kind=guest", {})
        self.assertEqual(guest.code, 200, guest)
        room_id = await self.remote_room(bob, preset="public_chat")
        resp = await self.request("POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                                  token=guest.json["access_token"])
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class InviteTest(MembershipTestCase):
    async def test_remote_invite_accepted_then_left(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="private_chat", name="Secret")
        await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                      {"user_id": alice.user_id}, bob.token)
        body = await self.sync_until(self.hs, alice,
                                     lambda b: room_id in b["rooms"]["invite"])
        invite_state = body["rooms"]["invite"][room_id]["invite_state"]["events"]
        by_type = {(e["type"], e["state_key"]): e for e in invite_state}
        self.assertEqual(by_type[("m.room.name", "")]["content"]["name"], "Secret")
        self.assertEqual(by_type[("m.room.member", alice.user_id)]["content"]["membership"],
                         "invite")
        self.assertEqual(by_type[("m.room.member", alice.user_id)]["sender"], bob.user_id)
        # Accepting: a join through the inviting server (no via needed).
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/join", {}, alice.token)
        await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["join"])
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "join"})
        await self.send_text(self.hs, alice, room_id, "thanks")
        await self.sync_until(self.remote, bob, lambda b: "thanks" in self.bodies(b, room_id))

    async def test_remote_invite_rejected(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="private_chat")
        await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                      {"user_id": alice.user_id}, bob.token)
        await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["invite"])
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/leave", {}, alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "leave"})
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertNotIn(room_id, body["rooms"]["invite"])
        # Rejecting twice: no longer invited.
        resp = await self.request("POST", f"{CS}/rooms/{q(room_id)}/leave", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_local_user_invites_remote_user(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        room = await self.ok(self.hs, "POST", f"{CS}/createRoom",
                             {"preset": "private_chat", "name": "Ours"}, alice.token)
        room_id = room["room_id"]
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                      {"user_id": bob.user_id}, alice.token)
        # The stored invite carries the invitee's server's signature too.
        members = await self.ok(self.hs, "GET", f"{CS}/rooms/{q(room_id)}/state/"
                                f"m.room.member/{q(bob.user_id)}", token=alice.token)
        self.assertEqual(members["membership"], "invite")
        state = await current_state(self.hs, room_id)
        invite = state[("m.room.member", bob.user_id)]
        self.assertIn(REMOTE, invite.pdu["signatures"])
        self.assertIn("test.local", invite.pdu["signatures"])
        body = await self.sync_until(self.remote, bob, lambda b: room_id in b["rooms"]["invite"])
        names = [e for e in body["rooms"]["invite"][room_id]["invite_state"]["events"]
                 if e["type"] == "m.room.name"]
        self.assertEqual(names[0]["content"]["name"], "Ours")
        await self.ok(self.remote, "POST", f"{CS}/join/{q(room_id)}", {}, bob.token)
        await self.members_until(self.hs, alice, room_id, {bob.user_id: "join"})
        await self.send_text(self.hs, alice, room_id, "hi bob")
        await self.sync_until(self.remote, bob, lambda b: "hi bob" in self.bodies(b, room_id))

    async def test_invite_into_a_room_both_servers_are_in(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        dave = await self.account(self.hs, "dave")
        room_id = await self.remote_room(bob, preset="public_chat", name="Shared")
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "join"})
        await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                      {"user_id": dave.user_id}, bob.token)
        # The invite comes in the room's timeline (this server holds the room): its
        # stripped state is read from the room's state here.
        body = await self.sync_until(self.hs, dave, lambda b: room_id in b["rooms"]["invite"])
        names = [e["content"]["name"] for e in
                 body["rooms"]["invite"][room_id]["invite_state"]["events"]
                 if e["type"] == "m.room.name"]
        self.assertEqual(names, ["Shared"])
        # Accepting is a local join now (this server is in the room).
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/join", {}, dave.token)
        await self.members_until(self.remote, bob, room_id, {dave.user_id: "join"})

    async def test_invite_endpoint_checks(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        room_id = await self.remote_room(bob, preset="private_chat")
        # Not signed by remote.test's key: refused.
        remote_state = await persister_of(self.remote).snapshot(room_id)
        event = {"room_id": room_id, "type": "m.room.member", "state_key": alice.user_id,
                 "sender": bob.user_id, "content": {"membership": "invite"},
                 "origin": REMOTE, "origin_server_ts": 1, "depth": 5,
                 "prev_events": remote_state.extremities, "auth_events": [],
                 "hashes": {"sha256": "x"}, "signatures": {}}
        from homeserver.events.hashing import compute_event_id
        from homeserver.events.signing import generate_signing_key, sign_event
        forged = sign_event(event, REMOTE, generate_signing_key("zz"), "10")
        eid = compute_event_id(forged, "10")
        path = f"{FED}/v2/invite/{q(room_id)}/{q(eid)}"
        resp = await self.remote_signed("PUT", path, {"room_version": "10", "event": forged})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.remote_signed("PUT", path, {"room_version": "99", "event": forged})
        self.assertMatrixError(resp, 400, "M_INCOMPATIBLE_ROOM_VERSION")
        resp = await self.remote_signed("PUT", f"{FED}/v2/invite/{q(room_id)}/{q('$other')}",
                                        {"room_version": "10", "event": forged})
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        # An unknown invitee: 404.
        assert self.remote.federation is not None
        good = sign_event({**event, "state_key": "@ghost:test.local"}, REMOTE,
                          self.remote.federation.local_keys.signing_key, "10")
        gid = compute_event_id(good, "10")
        resp = await self.remote_signed("PUT", f"{FED}/v2/invite/{q(room_id)}/{q(gid)}",
                                        {"room_version": "10", "event": good})
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(body["rooms"]["invite"], {})


class KnockTest(MembershipTestCase):
    async def test_knock_on_remote_room_then_invited_in(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="private_chat", name="Knockers",
                                         initial_state=[{"type": "m.room.join_rules",
                                                         "state_key": "",
                                                         "content": {"join_rule": "knock"}}])
        got = await self.ok(self.hs, "POST", f"{CS}/knock/{q(room_id)}?via={REMOTE}",
                            {"reason": "let me in"}, alice.token)
        self.assertEqual(got["room_id"], room_id)
        body = await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["knock"])
        knock_state = body["rooms"]["knock"][room_id]["knock_state"]["events"]
        self.assertIn("Knockers", [e["content"].get("name") for e in knock_state])
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "knock"})
        # Bob lets alice in: the invite reaches test.local, alice joins.
        await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                      {"user_id": alice.user_id}, bob.token)
        await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["invite"])
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/join", {}, alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "join"})

    async def test_knock_refused_on_an_invite_only_room(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="private_chat")
        resp = await self.request("POST", f"{CS}/knock/{q(room_id)}?via={REMOTE}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # A room version without knocking: the resident says so.
        old = await self.remote_room(bob, preset="private_chat", room_version="6")
        resp = await self.request("POST", f"{CS}/knock/{q(old)}?via={REMOTE}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 400, "M_INCOMPATIBLE_ROOM_VERSION")
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(body["rooms"]["knock"], {})

    async def test_knock_withdrawn(self) -> None:
        """In v12 (room ids name no server): the server is found from the knock state."""
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="private_chat", room_version="12",
                                         initial_state=[{"type": "m.room.join_rules",
                                                         "state_key": "",
                                                         "content": {"join_rule": "knock"}}])
        await self.ok(self.hs, "POST", f"{CS}/knock/{q(room_id)}?via={REMOTE}", {},
                      alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "knock"})
        await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/leave", {}, alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "leave"})
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(body["rooms"]["knock"], {})


class RestrictedJoinTest(MembershipTestCase):
    async def test_restricted_join_vouched_by_resident(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        space = await self.remote_room(bob, preset="public_chat")
        allow = [{"type": "m.room_membership", "room_id": space}]
        room_id = await self.remote_room(bob, preset="private_chat", initial_state=[
            {"type": "m.room.join_rules", "state_key": "",
             "content": {"join_rule": "restricted", "allow": allow}}])
        # Not in the space yet: refused by the resident.
        resp = await self.request("POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.ok(self.hs, "POST", f"{CS}/join/{q(space)}?via={REMOTE}", {}, alice.token)
        await self.members_until(self.remote, bob, space, {alice.user_id: "join"})
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        await self.members_until(self.remote, bob, room_id, {alice.user_id: "join"})
        state = await current_state(self.hs, room_id)
        join = state[("m.room.member", alice.user_id)]
        self.assertEqual(join.content["join_authorised_via_users_server"], bob.user_id)
        self.assertIn(REMOTE, join.pdu["signatures"])


class RoomVersionsTest(MembershipTestCase):
    async def check_join(self, version: str) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="public_chat", room_version=version,
                                         name=f"v{version}")
        await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {}, alice.token)
        body = await self.sync_until(self.hs, alice, lambda b: room_id in b["rooms"]["join"])
        room = body["rooms"]["join"][room_id]
        names = [e["content"]["name"] for e in room["state"]["events"]
                 + room["timeline"]["events"] if e["type"] == "m.room.name"]
        self.assertEqual(names, [f"v{version}"])
        await self.send_text(self.hs, alice, room_id, "hi")
        await self.sync_until(self.remote, bob, lambda b: "hi" in self.bodies(b, room_id))
        await self.send_text(self.remote, bob, room_id, "ho")
        await self.sync_until(self.hs, alice, lambda b: "ho" in self.bodies(b, room_id))

    async def test_v11(self) -> None:
        await self.check_join("11")

    async def test_v12(self) -> None:
        """The room id is the create event's hash (no server in it): ``via`` is needed."""
        await self.check_join("12")

    async def test_v12_without_via_has_no_server(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="public_chat", room_version="12")
        resp = await self.request("POST", f"{CS}/join/{q(room_id)}", {}, token=alice.token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")


class BlockedServerTest(MembershipTestCase):
    async def test_blocked_server_can_neither_invite_nor_be_joined_through(self) -> None:
        bob = await self.account(self.remote, "bob")
        alice = await self.account(self.hs, "alice")
        room_id = await self.remote_room(bob, preset="public_chat")
        await self.hs.stores.blocked_servers.block(REMOTE, alice.user_id,
                                                   self.clock.time_msec(), None)
        resp = await self.request("POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")  # no server we may ask
        resp = await self.on(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                             {"user_id": alice.user_id}, bob.token)
        self.assertEqual(resp.code, 403, resp)
        # A local room: remote.test's users may not join it either.
        room = await self.ok(self.hs, "POST", f"{CS}/createRoom", {"preset": "public_chat"},
                             alice.token)
        resp = await self.remote_signed(
            "GET", f"{FED}/v1/make_join/{q(room['room_id'])}/{q(bob.user_id)}?ver=10")
        self.assertEqual(resp.code, 403, resp)
        body = await self.ok(self.hs, "GET", f"{CS}/sync", token=alice.token)
        self.assertEqual(body["rooms"]["invite"], {})


class ThreeServersTest(MembershipTestCase):
    async def test_resident_forwards_joins_to_the_other_servers(self) -> None:
        third = await self.start_remote("third.test", {})
        assert third.federation is not None
        third.federation.client.discovery = self.discovery  # type: ignore[assignment]
        self.discovery.ports["third.test"] = self.port_of(third)
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        carol = await self.account(third, "carol")
        room = await self.ok(self.hs, "POST", f"{CS}/createRoom", {"preset": "public_chat"},
                             alice.token)
        room_id = room["room_id"]
        await self.ok(self.remote, "POST", f"{CS}/join/{q(room_id)}?via=test.local", {},
                      bob.token)
        await self.ok(third, "POST", f"{CS}/join/{q(room_id)}?via=test.local", {},
                      carol.token)
        # remote.test learns of carol's join from test.local, the resident she joined by.
        await self.members_until(self.remote, bob, room_id,
                                 {carol.user_id: "join", alice.user_id: "join"})
        await self.send_text(third, carol, room_id, "from carol")
        await self.sync_until(self.remote, bob, lambda b: "from carol" in self.bodies(b, room_id))
        await self.send_text(self.remote, bob, room_id, "from bob")
        await self.sync_until(third, carol, lambda b: "from bob" in self.bodies(b, room_id))
        await self.sync_until(self.hs, alice, lambda b: "from bob" in self.bodies(b, room_id)
                              and "from carol" in self.bodies(b, room_id))


# The same tests with full joins (federation.partial_state_joins off on every server).


class JoinTestFullJoins(JoinTest):
    partial_state_joins = False


class GuestTestFullJoins(GuestTest):
    partial_state_joins = False


class InviteTestFullJoins(InviteTest):
    partial_state_joins = False


class KnockTestFullJoins(KnockTest):
    partial_state_joins = False


class RestrictedJoinTestFullJoins(RestrictedJoinTest):
    partial_state_joins = False


class RoomVersionsTestFullJoins(RoomVersionsTest):
    partial_state_joins = False


class BlockedServerTestFullJoins(BlockedServerTest):
    partial_state_joins = False


class ThreeServersTestFullJoins(ThreeServersTest):
    partial_state_joins = False
