"""Application services (homeserver/appservice/), at HTTP level against a fake AS
(tests/rest/fake_appservice.py): one test per SyTest 60app-services case, the
registration file validation, and the persistent transaction queue across a restart."""

from __future__ import annotations

import os
from typing import Any

import yaml
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from homeserver.app import build_homeserver
from homeserver.appservice.config import load_appservices
from homeserver.config.loader import ConfigError
from tests.rest.e2e_helpers import OlmDevice
from tests.rest.fake_appservice import FakeAppservice, Received
from tests.rest.room_helpers import CS, RoomTestCase, q

AS_TOKEN = "as-token-\\[]^_`{|}~@"  # SyTest's tokens use these characters
HS_TOKEN = "hs-token-0123456789"
AS_USER = "@as-user:test.local"


def registration(url: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "AS-0", "url": url, "as_token": AS_TOKEN, "hs_token": HS_TOKEN,
        "sender_localpart": "as-user",
        "namespaces": {
            "users": [{"regex": "@_.*:test.local", "exclusive": False},
                      {"regex": "@astest-.*", "exclusive": True}],
            "aliases": [{"regex": "#astest-.*", "exclusive": True}],
            "rooms": [],
        },
        "protocols": ["ymca"], "rate_limited": False, **extra,
    }


class AppserviceTestCase(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        self.fake = FakeAppservice()
        url = self.fake.start()
        self.addCleanup(self.fake.stop)
        path = os.path.join(self.data_dir, "appserv-0.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(registration(url), f)
        return {"app_service_config_files": [path]}

    async def as_request(self, method: str, path: str, body: Any = None,
                         user_id: str | None = None) -> Any:
        if user_id is not None:
            path += ("&" if "?" in path else "?") + "user_id=" + q(user_id)
        return await self.request(method, path, body, token=AS_TOKEN)

    async def as_register(self, localpart: str, **extra: Any) -> Any:
        return await self.as_request("POST", f"{CS}/register", {
            "type": "m.login.application_service", "username": localpart, **extra})

    async def ghost(self, localpart: str) -> str:
        resp = await self.as_register(localpart)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["user_id"]


class RegistrationTests(AppserviceTestCase):
    async def test_as_can_create_a_user(self) -> None:
        resp = await self.as_register("astest-01create-0")
        self.assertEqual(resp.code, 200, resp)
        for key in ("user_id", "home_server", "access_token", "device_id"):
            self.assertIn(key, resp.json)
        self.assertEqual(resp.json["user_id"], "@astest-01create-0:test.local")
        whoami = await self.request("GET", f"{CS}/account/whoami",
                                    token=resp.json["access_token"])
        self.assertEqual(whoami.json["user_id"], "@astest-01create-0:test.local")

    async def test_as_can_create_a_user_with_an_underscore(self) -> None:
        resp = await self.as_register("_astest-01create-0")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@_astest-01create-0:test.local")

    async def test_as_can_create_a_user_with_inhibit_login(self) -> None:
        resp = await self.as_register("astest-01create-1", inhibit_login=True)
        self.assertEqual(resp.code, 200, resp)
        self.assertNotIn("access_token", resp.json)
        self.assertNotIn("device_id", resp.json)

    async def test_as_cannot_create_users_outside_its_namespace(self) -> None:
        resp = await self.as_register("a-different-user")
        self.assertMatrixError(resp, 400, "M_EXCLUSIVE")

    async def test_application_service_type_needs_an_as_token(self) -> None:
        resp = await self.request("POST", f"{CS}/register", {
            "type": "m.login.application_service", "username": "astest-x"})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("POST", f"{CS}/register", {
            "type": "m.login.application_service", "username": "astest-x"}, token="nope")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_regular_users_cannot_register_within_the_as_namespace(self) -> None:
        first = await self.request("POST", f"{CS}/register",
                                   {"username": "astest-01create-2", "password": "pw-12345678"})
        self.assertMatrixError(first, 400, "M_EXCLUSIVE")
        avail = await self.request("GET", f"{CS}/register/available?username=astest-9")
        self.assertMatrixError(avail, 400, "M_EXCLUSIVE")
        # The non-exclusive namespace stays open to people (who may not use '_' anyway).
        await self.register("astestnot")

    async def test_as_sender_user_exists_at_start(self) -> None:
        resp = await self.as_request("GET", f"{CS}/account/whoami")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], AS_USER)
        profile = await self.request("GET", f"{CS}/profile/{q(AS_USER)}")
        self.assertEqual(profile.code, 200, profile)

    async def test_as_login(self) -> None:
        uid = await self.ghost("astest-login")
        flows = await self.request("GET", f"{CS}/login")
        self.assertIn({"type": "m.login.application_service"}, flows.json["flows"])
        body = {"type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": "astest-login"}}
        resp = await self.as_request("POST", f"{CS}/login", body)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], uid)
        refused = await self.request("POST", f"{CS}/login", body)
        self.assertEqual(refused.code, 403, refused)
        outside = await self.as_request("POST", f"{CS}/login", {
            "type": "m.login.application_service",
            "identifier": {"type": "m.id.user", "user": "someone"}})
        self.assertEqual(outside.code, 403, outside)

    async def test_device_masquerading(self) -> None:
        """MSC4326 / MSC3202: with ``device_id`` the service acts as one of the user's
        devices (its keys, its to-device messages); a device the user does not have is
        refused."""
        uid = await self.ghost("astest-dev")
        login = await self.as_request("POST", f"{CS}/login", {
            "type": "m.login.application_service", "device_id": "BRIDGEDEV",
            "identifier": {"type": "m.id.user", "user": "astest-dev"}})
        self.assertEqual(login.code, 200, login)
        for param in ("device_id", "org.matrix.msc3202.device_id"):
            who = await self.as_request(
                "GET", f"{CS}/account/whoami?{param}=BRIDGEDEV", user_id=uid)
            self.assertEqual(who.code, 200, who)
            self.assertEqual((who.json["user_id"], who.json.get("device_id")),
                             (uid, "BRIDGEDEV"))
        keys = {"device_keys": OlmDevice(uid, "BRIDGEDEV", "").device_keys()}
        up = await self.as_request("POST", f"{CS}/keys/upload?device_id=BRIDGEDEV", keys,
                                   user_id=uid)
        self.assertEqual(up.code, 200, up)
        alice = await self.user("alice")
        query = await self.request("POST", f"{CS}/keys/query",
                                   {"device_keys": {uid: []}}, token=alice)
        self.assertIn("BRIDGEDEV", query.json["device_keys"][uid])
        # Another user's device, or one that does not exist: refused.
        for device in ("NOSUCHDEV", "x" * 300):
            bad = await self.as_request("GET", f"{CS}/account/whoami?device_id={device}",
                                        user_id=uid)
            self.assertMatrixError(bad, 400, "M_UNKNOWN_DEVICE")
        other = await self.ghost("astest-other")
        bad = await self.as_request("GET", f"{CS}/account/whoami?device_id=BRIDGEDEV",
                                    user_id=other)
        self.assertMatrixError(bad, 400, "M_UNKNOWN_DEVICE")


class AliasTests(AppserviceTestCase):
    async def test_as_can_make_room_aliases(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        alias = "#astest-alias:test.local"
        resp = await self.as_request("PUT", f"{CS}/directory/room/{q(alias)}", {"room_id": room})
        self.assertEqual(resp.code, 200, resp)
        got = await self.as_request("GET", f"{CS}/directory/room/{q(alias)}")
        self.assertEqual(got.json["room_id"], room)

    async def test_regular_users_cannot_create_room_aliases_within_the_as_namespace(
            self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.request("PUT", f"{CS}/directory/room/{q('#astest-x:test.local')}",
                                  {"room_id": room}, token=alice)
        self.assertMatrixError(resp, 400, "M_EXCLUSIVE")
        ok = await self.request("PUT", f"{CS}/directory/room/{q('#mine:test.local')}",
                                {"room_id": room}, token=alice)
        self.assertEqual(ok.code, 200, ok)

    async def test_accessing_an_as_hosted_room_alias_asks_the_as(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        alias = "#astest-03passive-1:test.local"

        async def create(rec: Received) -> tuple[int, Any]:
            resp = await self.as_request("PUT", f"{CS}/directory/room/{q(alias)}",
                                         {"room_id": room})
            self.assertEqual(resp.code, 200, resp)
            return 200, {}

        self.fake.handlers["/_matrix/app/v1/rooms/"] = create
        resp = await self.join(bob, alias)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["room_id"], room)
        queries = [r for r in self.fake.requests if r.path.startswith("/_matrix/app/v1/rooms/")]
        self.assertEqual([r.path for r in queries], [f"/_matrix/app/v1/rooms/{alias}"])
        self.assertEqual(queries[0].headers["authorization"], f"Bearer {HS_TOKEN}")
        # An alias outside every namespace is not asked about.
        missing = await self.join(bob, "#nothere:test.local")
        self.assertEqual(missing.code, 404, missing)
        self.assertEqual(len([r for r in self.fake.requests if "/rooms/" in r.path]), 1)


class GhostTests(AppserviceTestCase):
    async def test_as_ghosted_users_can_use_rooms_via_as(self) -> None:
        creator = await self.user("creator")
        room = await self.create_room(creator, preset="public_chat")
        ghost = await self.ghost("astest-ghost")
        resp = await self.as_request("POST", f"{CS}/rooms/{q(room)}/join", {}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)
        member = await self.fake.wait_for_event(
            lambda e: e["type"] == "m.room.member" and e.get("state_key") == ghost)
        self.assertEqual(member.headers["authorization"], f"Bearer {HS_TOKEN}")
        self.assertNotIn("access_token", member.args)
        resp = await self.as_request("PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/t1",
                                     {"msgtype": "m.text", "body": "from AS"}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)
        await self.fake.wait_for_event(
            lambda e: e["type"] == "m.room.message" and e["sender"] == ghost)
        events = (await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b",
                                     token=creator)).json["chunk"]
        self.assertIn(("from AS", ghost), [(e["content"].get("body"), e["sender"])
                                            for e in events])
        ids = [int(t.path.rsplit("/", 1)[1]) for t in self.fake.transactions]
        self.assertEqual(ids, sorted(set(ids)))  # numeric, increasing, never repeated

    async def test_ghost_user_must_register_before_joining_room(self) -> None:
        creator = await self.user("creator")
        room = await self.create_room(creator, preset="public_chat")
        ghost = "@astest-02ghost-1:test.local"
        resp = await self.as_request("POST", f"{CS}/rooms/{q(room)}/join", {}, user_id=ghost)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.ghost("astest-02ghost-1")
        resp = await self.as_request("POST", f"{CS}/rooms/{q(room)}/join", {}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)

    async def test_as_can_set_profile_for_ghosted_users(self) -> None:
        ghost = await self.ghost("astest-profile")
        resp = await self.as_request("PUT", f"{CS}/profile/{q(ghost)}/displayname",
                                     {"displayname": "Ghost"}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.as_request("PUT", f"{CS}/profile/{q(ghost)}/avatar_url",
                                     {"avatar_url": "mxc://test.local/pic"}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)
        got = await self.request("GET", f"{CS}/profile/{q(ghost)}")
        self.assertEqual(got.json, {"displayname": "Ghost", "avatar_url": "mxc://test.local/pic"})

    async def test_as_cant_set_displayname_for_random_users(self) -> None:
        await self.user("random")
        uid = "@random:test.local"
        resp = await self.as_request("PUT", f"{CS}/profile/{q(uid)}/displayname",
                                     {"displayname": "Hacked"}, user_id=uid)
        self.assertMatrixError(resp, 403, "M_EXCLUSIVE")
        got = await self.request("GET", f"{CS}/profile/{q(uid)}/displayname")
        self.assertEqual(got.json["displayname"], "random")

    async def test_as_user_not_ghost_can_join_room_without_registering(self) -> None:
        alice = await self.user("alice")
        for with_param in (False, True):
            room = await self.create_room(alice)
            resp = await self.member(alice, room, "invite", user_id=AS_USER)
            self.assertEqual(resp.code, 200, resp)
            resp = await self.as_request("POST", f"{CS}/join/{q(room)}", {},
                                         user_id=AS_USER if with_param else None)
            self.assertEqual(resp.code, 200, resp)

    async def test_as_can_deactivate_a_user(self) -> None:
        ghost = await self.ghost("astest-deact")
        resp = await self.as_request("POST", f"{CS}/account/deactivate", {}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)
        again = await self.as_request("GET", f"{CS}/account/whoami", user_id=ghost)
        self.assertEqual(again.code, 403, again)

    async def test_events_in_rooms_with_as_hosted_aliases_are_sent_to_as(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.as_request("PUT", f"{CS}/directory/room/{q('#astest-p:test.local')}",
                                     {"room_id": room})
        self.assertEqual(resp.code, 200, resp)
        event_id = await self.send_ok(alice, room, "for the AS")
        await self.fake.wait_for_event(lambda e: e["event_id"] == event_id)
        # A room the service has no interest in sends it nothing.
        other = await self.create_room(alice)
        quiet = await self.send_ok(alice, other, "not for the AS")
        marker = await self.send_ok(alice, room, "marker")
        await self.fake.wait_for_event(lambda e: e["event_id"] == marker)
        self.assertNotIn(quiet, [e["event_id"] for t in self.fake.transactions
                                 for e in t.body["events"]])

    async def test_inviting_an_as_hosted_user_asks_the_as(self) -> None:
        """SyTest 03passive: the service is asked about the unknown invitee before it is
        sent the invite, registers them meanwhile and then hears of the invite; a user
        it does not provide is asked about once, not on every transaction."""
        alice = await self.user("alice")
        room = await self.create_room(alice)
        invitee = "@astest-03passive-1:test.local"

        async def provide(rec: Received) -> tuple[int, Any]:
            if rec.path.endswith(invitee):
                await self.ghost("astest-03passive-1")
                return 200, {}
            return 404, {"errcode": "M_NOT_FOUND"}

        self.fake.handlers["/_matrix/app/v1/users/"] = provide
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/invite",
                                  {"user_id": invitee}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        await self.fake.wait_for_event(lambda e: e["type"] == "m.room.member"
                                       and e["state_key"] == invitee)
        asked = [r.path for r in self.fake.requests if r.path.startswith("/_matrix/app/v1/users/")]
        self.assertEqual(len(asked), 1, asked)
        self.assertTrue(await self.hs.stores.users.user_exists(invitee))
        # Someone the service does not provide: asked once, then remembered for a minute.
        nobody = "@astest-nobody:test.local"
        for _ in range(2):
            resp = await self.request("POST", f"{CS}/rooms/{q(room)}/invite",
                                      {"user_id": nobody}, token=alice)
            marker = await self.send_ok(alice, room, "marker")
            await self.fake.wait_for_event(lambda e, m=marker: e["event_id"] == m)
        asked = [r.path for r in self.fake.requests if "/users/" in r.path and "nobody" in r.path]
        self.assertEqual(len(asked), 1, asked)


class ThirdPartyAndListTests(AppserviceTestCase):
    async def test_hs_provides_query_metadata(self) -> None:
        alice = await self.user("alice")
        self.fake.handlers["/_matrix/app/v1/thirdparty/protocol/ymca"] = lambda r: (200, {
            "user_fields": ["field1", "field2"], "location_fields": ["field3"],
            "instances": [{"network_id": "net", "desc": "YMCA", "fields": {}}]})
        resp = await self.request("GET", f"{CS}/thirdparty/protocols", token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertIn("ymca", resp.json)
        self.assertEqual(resp.json["ymca"]["instances"][0]["instance_id"], "AS-0|net")
        one = await self.request("GET", f"{CS}/thirdparty/protocol/ymca", token=alice)
        self.assertEqual(one.code, 200, one)
        self.assertEqual(one.json["user_fields"], ["field1", "field2"])
        unknown = await self.request("GET", f"{CS}/thirdparty/protocol/irc", token=alice)
        self.assertMatrixError(unknown, 404, "M_NOT_FOUND")

    async def test_hs_proxies_3pu_and_3pl_lookups(self) -> None:
        alice = await self.user("alice")
        result = [{"protocol": "ymca", "fields": {"field1": "r"}, "userid": "@r:bridged"}]
        self.fake.handlers["/_matrix/app/v1/thirdparty/user/ymca"] = lambda r: (200, result)
        resp = await self.request("GET", f"{CS}/thirdparty/user/ymca?field1=ONE&field2=TWO",
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, result)
        sent = [r for r in self.fake.requests if r.path.endswith("/thirdparty/user/ymca")][0]
        self.assertEqual(sent.args, {"field1": ["ONE"], "field2": ["TWO"]})
        failing = await self.request("GET", f"{CS}/thirdparty/location/ymca?f=1", token=alice)
        self.assertEqual(failing.json, [])  # the AS answered 404: nothing found

    async def test_as_can_publish_rooms_in_their_own_list(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat", name="Test Name")
        path = f"{CS}/directory/list/appservice/random-network/{q(room)}"
        refused = await self.request("PUT", path, {"visibility": "public"}, token=alice)
        self.assertMatrixError(refused, 403, "M_FORBIDDEN")
        resp = await self.as_request("PUT", path, {"visibility": "public"})
        self.assertEqual(resp.code, 200, resp)

        async def listed(body: dict[str, Any]) -> list[str]:
            r = await self.request("POST", f"{CS}/publicRooms", body, token=alice)
            self.assertEqual(r.code, 200, r)
            return [c["room_id"] for c in r.json["chunk"]]

        self.assertNotIn(room, await listed({}))
        self.assertIn(room, await listed({"third_party_instance_id": "AS-0|random-network"}))
        self.assertNotIn(room, await listed({"third_party_instance_id": "AS-0|other"}))
        self.assertIn(room, await listed({"include_all_networks": "true"}))
        # The main list and the AS list are separate.
        pub = await self.request("PUT", f"{CS}/directory/list/room/{q(room)}",
                                 {"visibility": "public"}, token=alice)
        self.assertEqual(pub.code, 200, pub)
        self.assertEqual((await listed({"include_all_networks": True})).count(room), 1)
        resp = await self.as_request("DELETE", path)
        self.assertEqual(resp.code, 200, resp)
        self.assertNotIn(room, await listed({"third_party_instance_id": "AS-0|random-network"}))
        self.assertIn(room, await listed({}))

    async def test_ping(self) -> None:
        resp = await self.as_request("POST", "/_matrix/client/v1/appservice/AS-0/ping",
                                     {"transaction_id": "abc"})
        self.assertMatrixError(resp, 502, "M_BAD_STATUS")  # the fake has no /ping yet
        self.fake.handlers["/_matrix/app/v1/ping"] = lambda r: (200, {})
        resp = await self.as_request("POST", "/_matrix/client/v1/appservice/AS-0/ping",
                                     {"transaction_id": "abc"})
        self.assertEqual(resp.code, 200, resp)
        self.assertIsInstance(resp.json["duration_ms"], int)
        ping = [r for r in self.fake.requests if r.path == "/_matrix/app/v1/ping"][-1]
        self.assertEqual(ping.body, {"transaction_id": "abc"})
        wrong = await self.as_request("POST", "/_matrix/client/v1/appservice/other/ping", {})
        self.assertMatrixError(wrong, 403, "M_FORBIDDEN")
        alice = await self.user("alice")
        user = await self.request("POST", "/_matrix/client/v1/appservice/AS-0/ping", {},
                                  token=alice)
        self.assertMatrixError(user, 403, "M_FORBIDDEN")


class QueueTests(AppserviceTestCase):
    async def test_failed_transaction_is_retried_with_the_same_id(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.as_request("PUT", f"{CS}/directory/room/{q('#astest-q:test.local')}",
                              {"room_id": room})
        first_id = await self.send_ok(alice, room, "first")
        await self.fake.wait_for_event(lambda e: e["event_id"] == first_id)
        self.fake.transaction_status = 500
        event_id = await self.send_ok(alice, room, "retry me")
        first = await self.fake.wait_for_event(lambda e: e["event_id"] == event_id)
        self.fake.transaction_status = 200
        again_d = self.fake.wait_for(lambda r: r is not first and r.path == first.path)
        while not again_d.called:  # past the backoff (the server's clock is frozen)
            self.advance(1)
            await deferLater(reactor, 0.05)
        again = await again_d
        self.assertEqual(_event_ids(again), _event_ids(first))

    async def test_queue_survives_a_restart(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.as_request("PUT", f"{CS}/directory/room/{q('#astest-r:test.local')}",
                              {"room_id": room})
        first_id = await self.send_ok(alice, room, "first")
        await self.fake.wait_for_event(lambda e: e["event_id"] == first_id)
        self.fake.transaction_status = 500
        in_flight = await self.send_ok(alice, room, "in flight")
        failed = await self.fake.wait_for_event(lambda e: e["event_id"] == in_flight)
        queued = await self.send_ok(alice, room, "queued while backing off")
        await self.hs.stop()
        self.fake.requests.clear()
        self.fake.transaction_status = 200
        self.hs = await build_homeserver(self.config, clock=self.clock)
        resent = await self.fake.wait_for_event(lambda e: e["event_id"] == in_flight)
        self.assertEqual(resent.path, failed.path)  # same transaction id
        self.assertEqual(_event_ids(resent), _event_ids(failed))
        nxt = await self.fake.wait_for_event(lambda e: e["event_id"] == queued)
        self.assertGreater(int(nxt.path.rsplit("/", 1)[1]), int(resent.path.rsplit("/", 1)[1]))
        # Acknowledged transactions are never sent again, after another restart either.
        await self.hs.stop()
        self.fake.requests.clear()
        self.hs = await build_homeserver(self.config, clock=self.clock)
        marker = await self.send_ok(await self._login_alice(), room, "marker")
        await self.fake.wait_for_event(lambda e: e["event_id"] == marker)
        sent = [e["event_id"] for t in self.fake.transactions for e in t.body["events"]]
        self.assertNotIn(in_flight, sent)
        self.assertNotIn(queued, sent)

    async def test_event_whose_fan_out_never_ran_is_queued_at_start(self) -> None:
        """A crash between storing an event and queueing it for its services (its
        fan-out never ran): the next start looks at it again and sends it, once;
        what the service had acknowledged before is not sent again."""
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.as_request("PUT", f"{CS}/directory/room/{q('#astest-c:test.local')}",
                              {"room_id": room})
        acked = await self.send_ok(alice, room, "acknowledged")
        await self.fake.wait_for_event(lambda e: e["event_id"] == acked)
        self.advance(10)  # a checkpoint passes the acknowledged event
        self.advance(10)

        async def crashed(record: Any) -> None:  # the fan-out never reaches the queue
            return None
        fanout = self.hs.fanout
        fanout._subscribers = [  # noqa: SLF001 (simulating the crash)
            (n, crashed if n == "appservices" else s) for n, s in fanout._subscribers]  # noqa: SLF001
        lost = await self.send_ok(alice, room, "stored, never queued")
        await self.hs.stop()
        self.fake.requests.clear()
        self.hs = await build_homeserver(self.config, clock=self.clock)
        await self.fake.wait_for_event(lambda e: e["event_id"] == lost)
        sent = [e["event_id"] for t in self.fake.transactions for e in t.body["events"]]
        self.assertEqual(sent.count(lost), 1)
        self.assertNotIn(acked, sent)

    async def _login_alice(self) -> str:
        # The new server's listener is not bound: talk to it through a fresh listener.
        from twisted.internet import reactor
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"
        resp = await self.login("alice")
        self.assertEqual(resp.code, 200, resp)
        return resp.json["access_token"]


def _event_ids(txn: Received) -> list[str]:
    return [e["event_id"] for e in txn.body["events"]]


class RegistrationFileTests(unittest.TestCase):
    def write(self, name: str, reg: dict[str, Any]) -> str:
        path = os.path.join(self.mktemp() + "-" + name)
        with open(path, "w") as f:
            yaml.safe_dump(reg, f)
        return path

    def assertRefused(self, paths: list[str], words: str, file: str) -> None:  # noqa: N802
        with self.assertRaises(ConfigError) as cm:
            load_appservices(paths, "test.local")
        self.assertIn(words, str(cm.exception))
        self.assertIn(file, str(cm.exception))

    def test_valid_file_loads(self) -> None:
        [svc] = load_appservices([self.write("a.yaml", registration("http://h:1"))],
                                 "test.local")
        self.assertEqual(svc.sender, AS_USER)
        self.assertTrue(svc.is_exclusive_user("@astest-1:test.local"))
        self.assertFalse(svc.is_exclusive_user("@_x:test.local"))
        self.assertTrue(svc.is_interested_in_user("@_x:test.local"))
        self.assertFalse(svc.rate_limited)

    def test_bad_regex(self) -> None:
        reg = registration("http://h:1")
        reg["namespaces"]["users"] = [{"regex": "@(unclosed", "exclusive": True}]
        path = self.write("bad.yaml", reg)
        self.assertRefused([path], "not a valid regular expression", path)

    def test_exclusive_must_be_a_boolean(self) -> None:
        reg = registration("http://h:1")
        reg["namespaces"]["users"] = [{"regex": "@a.*", "exclusive": "yes"}]
        path = self.write("bool.yaml", reg)
        self.assertRefused([path], "exclusive", path)

    def test_duplicate_token(self) -> None:
        a = self.write("a.yaml", registration("http://h:1"))
        other = registration("http://h:2", id="AS-1", hs_token="different")
        other["namespaces"] = {}
        other["sender_localpart"] = "other"
        b = self.write("b.yaml", other)
        self.assertRefused([a, b], "token", b)

    def test_overlapping_exclusive_namespaces(self) -> None:
        a = self.write("a.yaml", registration("http://h:1"))
        b = self.write("b.yaml", registration("http://h:2", id="AS-1", as_token="t2",
                                              hs_token="t3", sender_localpart="other"))
        self.assertRefused([a, b], "overlaps", a)

    def test_missing_keys_and_bad_url(self) -> None:
        reg = registration("ftp://h")
        path = self.write("url.yaml", reg)
        self.assertRefused([path], "'url'", path)
        reg = registration("http://h:1")
        del reg["as_token"]
        path = self.write("tok.yaml", reg)
        self.assertRefused([path], "'as_token'", path)
        self.assertRefused(["/nonexistent/reg.yaml"], "cannot read", "/nonexistent/reg.yaml")


class RateLimitTests(AppserviceTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(),
                "rate_limits": {"message": {"per_second": 0.001, "burst": 2}}}

    async def test_rate_limited_false_exempts_the_service_users(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat")
        ghost = await self.ghost("astest-fast")
        self.assertEqual((await self.as_request("POST", f"{CS}/join/{q(room)}", {},
                                                user_id=ghost)).code, 200)
        for i in range(5):
            resp = await self.as_request("PUT", f"{CS}/rooms/{q(room)}/send/m.room.message/"
                                         f"g{i}", {"msgtype": "m.text", "body": "x"},
                                         user_id=ghost)
            self.assertEqual(resp.code, 200, resp)
        codes = [(await self.send(alice, room)).code for _ in range(4)]
        self.assertIn(429, codes)  # people are still limited


class EphemeralTests(AppserviceTestCase):
    """MSC2409: a service registered with ``receive_ephemeral`` is sent the typing
    notifications, public receipts and presence of the rooms and users it is interested
    in, in its transactions' ``ephemeral``; nothing of other rooms."""

    def config_overrides(self) -> dict[str, Any]:
        self.fake = FakeAppservice()
        url = self.fake.start()
        self.addCleanup(self.fake.stop)
        path = os.path.join(self.data_dir, "appserv-0.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(registration(url, receive_ephemeral=True), f)
        return {"app_service_config_files": [path]}

    def wait_for_edu(self, pred: Any) -> Any:
        return self.fake.wait_for(lambda r: "/transactions/" in r.path and any(
            pred(e) for e in (r.body or {}).get("ephemeral", [])))

    async def test_typing_receipts_and_presence_of_interesting_rooms(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat")
        ghost = await self.ghost("astest-eph")
        resp = await self.as_request("POST", f"{CS}/rooms/{q(room)}/join", {}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)
        other = await self.create_room(alice)  # no user of the service in it

        resp = await self.request("PUT", f"{CS}/rooms/{q(other)}/typing/{q('@alice:test.local')}",
                                  {"typing": True, "timeout": 10000}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q('@alice:test.local')}",
                                  {"typing": True, "timeout": 10000}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        txn = await self.wait_for_edu(lambda e: e["type"] == "m.typing")
        typing = [e for e in txn.body["ephemeral"] if e["type"] == "m.typing"]
        self.assertEqual(typing, [{"type": "m.typing", "room_id": room,
                                   "content": {"user_ids": ["@alice:test.local"]}}])
        self.assertEqual(txn.body["de.sorunome.msc2409.ephemeral"], txn.body["ephemeral"])

        event_id = await self.send_ok(alice, room, "read me")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}",
                                  {}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        txn = await self.wait_for_edu(lambda e: e["type"] == "m.receipt")
        receipt = [e for e in txn.body["ephemeral"] if e["type"] == "m.receipt"][0]
        self.assertEqual(receipt["room_id"], room)
        self.assertIn("@alice:test.local", receipt["content"][event_id]["m.read"])

        # A private receipt is never sent; presence of a user sharing a room is.
        resp = await self.request("PUT", f"{CS}/presence/{q('@alice:test.local')}/status",
                                  {"presence": "online"}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        txn = await self.wait_for_edu(lambda e: e["type"] == "m.presence"
                                      and e["sender"] == "@alice:test.local")
        presence = [e for e in txn.body["ephemeral"] if e["type"] == "m.presence"
                    and e["sender"] == "@alice:test.local"][0]
        self.assertEqual(presence["content"]["presence"], "online")
        sent = [e for t in self.fake.transactions for e in t.body.get("ephemeral", [])]
        self.assertNotIn(other, [e.get("room_id") for e in sent])



class NoEphemeralTests(AppserviceTestCase):
    async def test_a_service_without_receive_ephemeral_gets_none(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat")
        ghost = await self.ghost("astest-quiet")
        resp = await self.as_request("POST", f"{CS}/rooms/{q(room)}/join", {}, user_id=ghost)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q('@alice:test.local')}",
                                  {"typing": True, "timeout": 10000}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("PUT", f"{CS}/sendToDevice/m.dummy/t1", {
            "messages": {ghost: {"*": {"n": 1}}}}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        marker = await self.send_ok(alice, room, "marker")
        await self.fake.wait_for_event(lambda e: e["event_id"] == marker)
        for key in ("ephemeral", "to_device", "device_lists", "device_one_time_keys_count"):
            self.assertEqual([t.body.get(key) for t in self.fake.transactions
                              if t.body.get(key)], [], key)


class EncryptionTests(AppserviceTestCase):
    """What an encrypting bridge gets in its transactions: to-device messages for its
    users (MSC4203, with receive_ephemeral), and with ``org.matrix.msc3202`` device
    list changes of users sharing rooms with its users and its devices' key counts."""

    def config_overrides(self) -> dict[str, Any]:
        self.fake = FakeAppservice()
        url = self.fake.start()
        self.addCleanup(self.fake.stop)
        path = os.path.join(self.data_dir, "appserv-0.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(registration(url, receive_ephemeral=True,
                                        **{"org.matrix.msc3202": True}), f)
        return {"app_service_config_files": [path]}

    def wait_for_field(self, name: str, pred: Any = lambda v: True) -> Any:
        return self.fake.wait_for(lambda r: "/transactions/" in r.path
                                  and name in (r.body or {}) and pred(r.body[name]))

    async def bridged_device(self, localpart: str) -> tuple[str, OlmDevice]:
        uid = await self.ghost(localpart)
        login = await self.as_request("POST", f"{CS}/login", {
            "type": "m.login.application_service", "device_id": "BRIDGEDEV",
            "identifier": {"type": "m.id.user", "user": localpart}})
        self.assertEqual(login.code, 200, login)
        device = OlmDevice(uid, "BRIDGEDEV", "")
        up = await self.as_request("POST", f"{CS}/keys/upload?device_id=BRIDGEDEV",
                                   {"device_keys": device.device_keys()}, user_id=uid)
        self.assertEqual(up.code, 200, up)
        return uid, device

    async def test_to_device_messages_for_the_service_users(self) -> None:
        uid, _ = await self.bridged_device("astest-td")
        alice = await self.user("alice")
        resp = await self.request("PUT", f"{CS}/sendToDevice/m.room_key_request/t1", {
            "messages": {uid: {"BRIDGEDEV": {"action": "request", "n": 1}}}}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        txn = await self.wait_for_field("to_device")
        self.assertEqual(txn.body["to_device"], [{
            "type": "m.room_key_request", "sender": "@alice:test.local", "to_user_id": uid,
            "to_device_id": "BRIDGEDEV", "content": {"action": "request", "n": 1}}])
        self.assertEqual(txn.body["de.sorunome.msc2409.to_device"], txn.body["to_device"])
        # Sent once: a later transaction does not carry it again.
        marker = await self.request("PUT", f"{CS}/sendToDevice/m.dummy/t2", {
            "messages": {uid: {"BRIDGEDEV": {"n": 2}}}}, token=alice)
        self.assertEqual(marker.code, 200, marker)
        txn = await self.wait_for_field("to_device", lambda v: v[0]["content"] == {"n": 2})
        self.assertEqual(len(txn.body["to_device"]), 1)

    async def test_device_lists_and_key_counts(self) -> None:
        uid, device = await self.bridged_device("astest-dl")
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.as_request("POST", f"{CS}/rooms/{q(room)}/join", {}, user_id=uid)
        self.assertEqual(resp.code, 200, resp)
        # Alice signs in on a new device: the bridge (sharing a room) hears of it.
        await self.login("alice")
        await self.wait_for_field("device_lists", lambda v: "@alice:test.local" in v["changed"])
        # One-time keys uploaded for the bridged device, then one claimed by Alice.
        up = await self.as_request("POST", f"{CS}/keys/upload?device_id=BRIDGEDEV",
                                   {"one_time_keys": device.one_time_keys(3)}, user_id=uid)
        self.assertEqual(up.code, 200, up)
        txn = await self.wait_for_field("device_one_time_keys_count")
        self.assertEqual(txn.body["device_one_time_keys_count"],
                         {uid: {"BRIDGEDEV": {"signed_curve25519": 3}}})
        self.assertEqual(txn.body["org.matrix.msc3202.device_one_time_keys_count"],
                         txn.body["device_one_time_keys_count"])
        self.assertEqual(txn.body["device_unused_fallback_key_types"], {uid: {"BRIDGEDEV": []}})
        claim = await self.request("POST", f"{CS}/keys/claim", {
            "one_time_keys": {uid: {"BRIDGEDEV": "signed_curve25519"}}}, token=alice)
        self.assertEqual(claim.code, 200, claim)
        await self.wait_for_field("device_one_time_keys_count", lambda v: v == {
            uid: {"BRIDGEDEV": {"signed_curve25519": 2}}})
        # Alice leaves the only room she shared with the bridge's users.
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/leave", {}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        await self.wait_for_field("device_lists", lambda v: "@alice:test.local" in v["left"])
