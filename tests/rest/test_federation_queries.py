"""Federation queries between two in-process servers (test.local and remote.test):
profiles, aliases, the published room list, device lists and E2EE key queries and
claims both ways (with an unreachable third server in ``failures``), forged remote
device keys dropped, and a blocked server refused in both directions."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import treq
from twisted.internet import protocol, reactor

from federation.remote_queries import _merge_key_answer
from homeserver.app import Homeserver
from tests.harness import TEST_PASSWORD, Response
from tests.rest.e2e_helpers import OlmDevice
from tests.rest.test_cross_signing import Identity
from tests.rest.test_federation_keys import FederationTestCase, federation_section

CS = "/_matrix/client/v3"
FED = "/_matrix/federation/v1"


def q(value: str) -> str:
    return quote(value, safe="")


class QueriesTestCase(FederationTestCase):
    async def on(self, hs: Homeserver, method: str, path: str, body: Any = None,
                 token: str | None = None) -> Response:
        """A client request to ``hs`` (this server or the remote one)."""
        if hs is self.hs:
            return await self.request(method, path, body, token=token)
        hdrs = {"Authorization": [f"Bearer {token}"]} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        resp = await treq.request(method, f"http://127.0.0.1:{self.port_of(hs)}{path}",
                                  data=data, headers=hdrs, pool=self.pool)
        return Response(resp.code, await resp.content(), resp.headers)

    async def account(self, hs: Homeserver, name: str) -> OlmDevice:
        await hs.registration.create_account(name, TEST_PASSWORD)
        resp = await self.on(hs, "POST", f"{CS}/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
            "password": TEST_PASSWORD})
        self.assertEqual(resp.code, 200, resp)
        return OlmDevice(resp.json["user_id"], resp.json["device_id"], resp.json["access_token"])

    async def ok(self, hs: Homeserver, method: str, path: str, body: Any = None,
                 token: str | None = None) -> Any:
        resp = await self.on(hs, method, path, body, token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json


class ProfileTest(QueriesTestCase):
    async def test_profiles_both_ways(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        await self.ok(self.remote, "PUT", f"{CS}/profile/{q(bob.user_id)}/displayname",
                      {"displayname": "Bob"}, bob.token)
        await self.ok(self.remote, "PUT", f"{CS}/profile/{q(bob.user_id)}/avatar_url",
                      {"avatar_url": "mxc://remote.test/abc"}, bob.token)
        await self.ok(self.hs, "PUT", f"{CS}/profile/{q(alice.user_id)}/displayname",
                      {"displayname": "Alice"}, alice.token)
        got = await self.ok(self.hs, "GET", f"{CS}/profile/{q(bob.user_id)}", token=alice.token)
        self.assertEqual(got, {"displayname": "Bob", "avatar_url": "mxc://remote.test/abc"})
        got = await self.ok(self.hs, "GET", f"{CS}/profile/{q(bob.user_id)}/displayname",
                            token=alice.token)
        self.assertEqual(got, {"displayname": "Bob"})
        # And remote.test asks us.
        got = await self.ok(self.remote, "GET", f"{CS}/profile/{q(alice.user_id)}",
                            token=bob.token)
        self.assertEqual(got, {"displayname": "Alice"})
        # Unknown remote user and unset field: 404.
        resp = await self.request("GET", f"{CS}/profile/{q('@nobody:remote.test')}",
                                  token=alice.token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{CS}/profile/{q(bob.user_id)}/m.tz",
                                  token=alice.token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # A server that cannot be reached: 502.
        resp = await self.request("GET", f"{CS}/profile/{q('@x:unreachable.test')}",
                                  token=alice.token)
        self.assertMatrixError(resp, 502, "M_UNKNOWN")
        # Anonymous lookups of remote users are not made; local ones still are.
        resp = await self.request("GET", f"{CS}/profile/{q(bob.user_id)}")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", f"{CS}/profile/{q(bob.user_id)}/displayname")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        got = await self.ok(self.hs, "GET", f"{CS}/profile/{q(alice.user_id)}")
        self.assertEqual(got, {"displayname": "Alice"})

    async def test_query_profile_endpoint(self) -> None:
        alice = await self.account(self.hs, "alice")
        await self.ok(self.hs, "PUT", f"{CS}/profile/{q(alice.user_id)}/displayname",
                      {"displayname": "Alice"}, alice.token)
        path = f"{FED}/query/profile?user_id={q(alice.user_id)}"
        resp = await self.remote_signed("GET", path)
        self.assertEqual((resp.code, resp.json), (200, {"displayname": "Alice"}))
        resp = await self.remote_signed("GET", path + "&field=displayname")
        self.assertEqual(resp.json, {"displayname": "Alice"})
        resp = await self.remote_signed("GET", path + "&field=avatar_url")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.remote_signed("GET", f"{FED}/query/profile?user_id=%40x%3Aother.test")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.remote_signed("GET", f"{FED}/query/profile?user_id=%40ghost%3Atest.local")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.remote_signed("GET", f"{FED}/query/profile")
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        # Not signed: 401.
        resp = await self.request("GET", path)
        self.assertMatrixError(resp, 401, "M_UNAUTHORIZED")


class DirectoryTest(QueriesTestCase):
    async def remote_room(self, public: bool = False) -> tuple[OlmDevice, str]:
        bob = await self.account(self.remote, "bob")
        body: dict[str, Any] = {"room_alias_name": "lounge", "name": "The Lounge"}
        if public:
            body |= {"visibility": "public", "preset": "public_chat"}
        room = await self.ok(self.remote, "POST", f"{CS}/createRoom", body, bob.token)
        return bob, room["room_id"]

    async def test_remote_alias(self) -> None:
        _, room_id = await self.remote_room()
        got = await self.ok(self.hs, "GET", f"{CS}/directory/room/{q('#lounge:remote.test')}")
        self.assertEqual(got["room_id"], room_id)
        self.assertIn("remote.test", got["servers"])
        resp = await self.request("GET", f"{CS}/directory/room/{q('#nope:remote.test')}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # Joins by alias resolve through it too: the join goes to the room's server, which
        # refuses it (the room is invite-only; test_federation_membership joins for real).
        alice = await self.account(self.hs, "alice")
        resp = await self.request("POST", f"{CS}/join/{q('#lounge:remote.test')}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", f"{CS}/join/{q('#nope:remote.test')}", {},
                                  token=alice.token)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        self.assertEqual(resp.json["error"], "Room alias not found")

    async def test_query_directory_endpoint(self) -> None:
        alice = await self.account(self.hs, "alice")
        room = await self.ok(self.hs, "POST", f"{CS}/createRoom",
                             {"room_alias_name": "hall"}, alice.token)
        resp = await self.remote_signed("GET", f"{FED}/query/directory?room_alias="
                                               f"{q('#hall:test.local')}")
        self.assertEqual(resp.json, {"room_id": room["room_id"], "servers": ["test.local"]})
        resp = await self.remote_signed("GET", f"{FED}/query/directory?room_alias="
                                               f"{q('#nope:test.local')}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.remote_signed("GET", f"{FED}/query/directory?room_alias="
                                               f"{q('#hall:remote.test')}")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.remote_signed("GET", f"{FED}/query/directory")
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")

    async def test_public_rooms_of_remote_server(self) -> None:
        _, room_id = await self.remote_room(public=True)
        alice = await self.account(self.hs, "alice")
        got = await self.ok(self.hs, "GET", f"{CS}/publicRooms?server=remote.test",
                            token=alice.token)
        self.assertEqual([r["room_id"] for r in got["chunk"]], [room_id])
        # Not for anonymous users (nothing is asked of another server on their behalf).
        resp = await self.request("GET", f"{CS}/publicRooms?server=remote.test")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        self.assertEqual(got["chunk"][0]["name"], "The Lounge")
        got = await self.ok(self.hs, "POST", f"{CS}/publicRooms?server=remote.test",
                            {"filter": {"generic_search_term": "lounge"}}, alice.token)
        self.assertEqual([r["room_id"] for r in got["chunk"]], [room_id])
        got = await self.ok(self.hs, "POST", f"{CS}/publicRooms?server=remote.test",
                            {"filter": {"generic_search_term": "kitchen"}}, alice.token)
        self.assertEqual(got["chunk"], [])
        resp = await self.request("GET", f"{CS}/publicRooms?server=unreachable.test",
                                  token=alice.token)
        self.assertMatrixError(resp, 502, "M_UNKNOWN")

    async def test_public_rooms_endpoint_lists_only_published_rooms(self) -> None:
        alice = await self.account(self.hs, "alice")
        public = await self.ok(self.hs, "POST", f"{CS}/createRoom",
                               {"visibility": "public", "preset": "public_chat",
                                "name": "Town square"}, alice.token)
        await self.ok(self.hs, "POST", f"{CS}/createRoom", {"name": "Secret"}, alice.token)
        resp = await self.remote_signed("GET", f"{FED}/publicRooms?limit=10")
        self.assertEqual([r["room_id"] for r in resp.json["chunk"]], [public["room_id"]])
        resp = await self.remote_signed("POST", f"{FED}/publicRooms",
                                        {"filter": {"generic_search_term": "square"}})
        self.assertEqual([r["room_id"] for r in resp.json["chunk"]], [public["room_id"]])
        resp = await self.remote_signed("POST", f"{FED}/publicRooms",
                                        {"filter": {"generic_search_term": "secret"}})
        self.assertEqual(resp.json["chunk"], [])
        resp = await self.remote_signed("GET", f"{FED}/publicRooms?limit=-1")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.remote_signed("POST", f"{FED}/publicRooms", {"limit": "many"})
        self.assertEqual(resp.code, 400, resp)


class HierarchyTest(QueriesTestCase):
    async def room(self, token: str, **body: Any) -> str:
        return str((await self.ok(self.hs, "POST", f"{CS}/createRoom", body, token))["room_id"])

    async def test_hierarchy_of_open_rooms_only(self) -> None:
        alice = await self.account(self.hs, "alice")
        space = await self.room(alice.token, preset="public_chat", name="Space",
                                creation_content={"type": "m.space"})
        public = await self.room(alice.token, preset="public_chat", name="Open")
        private = await self.room(alice.token, preset="private_chat", name="Closed")
        for child in (public, private, "!unknown:elsewhere.test"):
            await self.ok(self.hs, "PUT",
                          f"{CS}/rooms/{q(space)}/state/m.space.child/{q(child)}",
                          {"via": ["test.local"], "suggested": child == public}, alice.token)
        resp = await self.remote_signed("GET", f"{FED}/hierarchy/{q(space)}")
        self.assertEqual(resp.code, 200, resp)
        body = resp.json
        self.assertEqual(body["room"]["room_id"], space)
        self.assertEqual(body["room"]["room_type"], "m.space")
        self.assertEqual(len(body["room"]["children_state"]), 3)
        self.assertIn("origin_server_ts", body["room"]["children_state"][0])
        self.assertEqual([c["room_id"] for c in body["children"]], [public])
        self.assertEqual(body["children"][0]["name"], "Open")
        self.assertEqual(body["inaccessible_children"], [private])
        resp = await self.remote_signed("GET", f"{FED}/hierarchy/{q(space)}?suggested_only=true")
        self.assertEqual(len(resp.json["room"]["children_state"]), 1)
        # A private room, an unknown one: 404; a bad id: 400.
        resp = await self.remote_signed("GET", f"{FED}/hierarchy/{q(private)}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.remote_signed("GET", f"{FED}/hierarchy/{q('!nope:test.local')}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.remote_signed("GET", f"{FED}/hierarchy/nope")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # The room's server ACL applies to the asking server.
        await self.ok(self.hs, "PUT", f"{CS}/rooms/{q(space)}/state/m.room.server_acl/",
                      {"allow": ["*"], "deny": ["remote.test"]}, alice.token)
        resp = await self.remote_signed("GET", f"{FED}/hierarchy/{q(space)}")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class RemoteHierarchyTest(QueriesTestCase):
    async def test_local_space_with_remote_children(self) -> None:
        bob = await self.account(self.remote, "bob")

        async def remote_room(**body: Any) -> str:
            got = await self.ok(self.remote, "POST", f"{CS}/createRoom", body, bob.token)
            return str(got["room_id"])

        r_space = await remote_room(preset="public_chat", name="Remote space",
                                    creation_content={"type": "m.space"})
        r_open = await remote_room(preset="public_chat", name="Remote open")
        r_closed = await remote_room(preset="private_chat", name="Remote closed")
        for child in (r_open, r_closed):
            await self.ok(self.remote, "PUT",
                          f"{CS}/rooms/{q(r_space)}/state/m.space.child/{q(child)}",
                          {"via": ["remote.test"]}, bob.token)
        alice = await self.account(self.hs, "alice")
        space = str((await self.ok(self.hs, "POST", f"{CS}/createRoom", {
            "preset": "public_chat", "name": "Home", "creation_content": {"type": "m.space"}},
            alice.token))["room_id"])
        await self.ok(self.hs, "PUT", f"{CS}/rooms/{q(space)}/state/m.space.child/{q(r_space)}",
                      {"via": ["remote.test"]}, alice.token)
        await self.ok(self.hs, "PUT",
                      f"{CS}/rooms/{q(space)}/state/m.space.child/{q('!gone:remote.test')}",
                      {"via": ["remote.test"]}, alice.token)
        path = f"/_matrix/client/v1/rooms/{q(space)}/hierarchy"
        got = await self.ok(self.hs, "GET", path, token=alice.token)
        names = [r.get("name") for r in got["rooms"]]
        self.assertEqual(names, ["Home", "Remote space", "Remote open"])
        self.assertEqual(len(got["rooms"][1]["children_state"]), 2)
        self.assertEqual(got["rooms"][2]["room_id"], r_open)
        # Paginated: the walk is redone, the remote answer comes from the cache.
        await self.remote.stop()
        page = await self.ok(self.hs, "GET", path + "?limit=2", token=alice.token)
        self.assertEqual([r.get("name") for r in page["rooms"]], ["Home", "Remote space"])
        page = await self.ok(self.hs, "GET", path + f"?limit=2&from={page['next_batch']}",
                             token=alice.token)
        self.assertEqual([r.get("name") for r in page["rooms"]], ["Remote open"])
        # After a minute the cache is gone and remote.test is down: local rooms only.
        self.advance(61)
        got = await self.ok(self.hs, "GET", path, token=alice.token)
        self.assertEqual([r.get("name") for r in got["rooms"]], ["Home"])


class KeysTest(QueriesTestCase):
    async def keyed(self, hs: Homeserver, name: str, otks: int = 2) -> OlmDevice:
        dev = await self.account(hs, name)
        await self.ok(hs, "POST", f"{CS}/keys/upload", {
            "device_keys": dev.device_keys(), "one_time_keys": dev.one_time_keys(otks)},
            dev.token)
        return dev

    async def test_query_and_claim_both_ways_with_unreachable_server(self) -> None:
        alice = await self.keyed(self.hs, "alice")
        bob = await self.keyed(self.remote, "bob")
        ident = Identity(bob.user_id)
        await self.ok(self.remote, "POST", f"{CS}/keys/device_signing/upload", ident.body(),
                      bob.token)
        ghost = "@ghost:unreachable.test"
        got = await self.ok(self.hs, "POST", f"{CS}/keys/query", {
            "device_keys": {bob.user_id: [], ghost: [], alice.user_id: []}}, alice.token)
        bob_keys = got["device_keys"][bob.user_id][bob.device_id]
        self.assertEqual(bob_keys["keys"], bob.device_keys()["keys"])
        self.assertIn(alice.device_id, got["device_keys"][alice.user_id])
        self.assertEqual(got["master_keys"][bob.user_id]["keys"],
                         ident.master_key()["keys"])
        self.assertIn(bob.user_id, got["self_signing_keys"])
        self.assertNotIn(bob.user_id, got["user_signing_keys"])
        self.assertEqual(list(got["failures"]), ["unreachable.test"])
        self.assertEqual(got["failures"]["unreachable.test"]["status"], 503)
        # The other way round.
        got = await self.ok(self.remote, "POST", f"{CS}/keys/query",
                            {"device_keys": {alice.user_id: [alice.device_id]}}, bob.token)
        self.assertEqual(list(got["device_keys"][alice.user_id]), [alice.device_id])
        self.assertEqual(got["failures"], {})
        # Claims both ways; the unreachable server in failures.
        got = await self.ok(self.hs, "POST", f"{CS}/keys/claim", {"one_time_keys": {
            bob.user_id: {bob.device_id: "signed_curve25519"},
            ghost: {"DEV": "signed_curve25519"}}, "timeout": 2000}, alice.token)
        (name, key), = got["one_time_keys"][bob.user_id][bob.device_id].items()
        self.assertTrue(name.startswith("signed_curve25519:"))
        self.assertIn(bob.user_id, key["signatures"])
        self.assertEqual(list(got["failures"]), ["unreachable.test"])
        got = await self.ok(self.remote, "POST", f"{CS}/keys/claim", {"one_time_keys": {
            alice.user_id: {alice.device_id: "signed_curve25519"}}}, bob.token)
        self.assertEqual(len(got["one_time_keys"][alice.user_id][alice.device_id]), 1)
        # Keys were really used up on the remote side: one of bob's two is left.
        counts = await self.ok(self.remote, "POST", f"{CS}/keys/upload", {}, bob.token)
        self.assertEqual(counts["one_time_key_counts"]["signed_curve25519"], 1)

    async def test_user_devices_and_keys_endpoints(self) -> None:
        alice = await self.keyed(self.hs, "alice")
        ident = Identity(alice.user_id)
        await self.ok(self.hs, "POST", f"{CS}/keys/device_signing/upload", ident.body(),
                      alice.token)
        await self.ok(self.hs, "PUT", f"{CS}/devices/{alice.device_id}",
                      {"display_name": "Alice's phone"}, alice.token)
        resp = await self.remote_signed("GET", f"{FED}/user/devices/{q(alice.user_id)}")
        self.assertEqual(resp.code, 200, resp)
        body = resp.json
        self.assertEqual(body["user_id"], alice.user_id)
        self.assertIsInstance(body["stream_id"], int)
        self.assertEqual([d["device_id"] for d in body["devices"]], [alice.device_id])
        self.assertEqual(body["devices"][0]["keys"]["keys"], alice.device_keys()["keys"])
        self.assertNotIn("device_display_name", body["devices"][0])  # names stay here
        self.assertEqual(body["master_key"]["keys"], ident.master_key()["keys"])
        self.assertIn("self_signing_key", body)
        self.assertNotIn("user_signing_key", body)
        resp = await self.remote_signed("GET", f"{FED}/user/devices/{q('@x:remote.test')}")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # /user/keys/query: local users only, no display names, no user-signing keys.
        resp = await self.remote_signed("POST", f"{FED}/user/keys/query", {"device_keys": {
            alice.user_id: [], "@x:remote.test": []}})
        self.assertEqual(list(resp.json["device_keys"]), [alice.user_id])
        self.assertEqual(resp.json["device_keys"][alice.user_id][alice.device_id]["unsigned"],
                         {})
        self.assertNotIn("user_signing_keys", resp.json)
        # /user/keys/claim.
        resp = await self.remote_signed("POST", f"{FED}/user/keys/claim", {"one_time_keys": {
            alice.user_id: {alice.device_id: "signed_curve25519"}}})
        self.assertEqual(len(resp.json["one_time_keys"][alice.user_id][alice.device_id]), 1)
        resp = await self.remote_signed("POST", f"{FED}/user/keys/claim",
                                        {"one_time_keys": {alice.user_id: "x"}})
        self.assertEqual(resp.code, 400, resp)
        resp = await self.remote_signed("POST", f"{FED}/user/keys/query", {})
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        many = {f"@u{i}:test.local": [f"D{j}" for j in range(1000)] for i in range(11)}
        resp = await self.remote_signed("POST", f"{FED}/user/keys/query", {"device_keys": many})
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_forged_remote_device_keys_are_dropped(self) -> None:
        bob = OlmDevice("@bob:remote.test", "BOBDEV", "")
        good = bob.device_keys()
        forged = dict(good, keys={**good["keys"], "curve25519:BOBDEV": "AAAA"})
        impostor = OlmDevice("@bob:remote.test", "EVE", "").device_keys()
        impostor["device_id"] = "OTHER"
        other_user = OlmDevice("@carol:remote.test", "CAROL", "").device_keys()
        master = {"user_id": "@mallory:remote.test", "usage": ["master"],
                  "keys": {"ed25519:x": "x"}}
        merged: dict[str, Any] = {"device_keys": {}, "master_keys": {},
                                  "self_signing_keys": {}}
        _merge_key_answer(merged, {"@bob:remote.test": []}, {
            "device_keys": {"@bob:remote.test": {"BOBDEV": good, "FORGED": forged,
                                                 "EVE": impostor, "CAROL": other_user},
                            "@carol:remote.test": {"CAROL": other_user}},
            "master_keys": {"@bob:remote.test": master}})
        self.assertEqual(merged["device_keys"], {"@bob:remote.test": {"BOBDEV": good}})
        self.assertEqual(merged["master_keys"], {})
        # A tampered copy of a good key fails its signature.
        merged = {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}
        _merge_key_answer(merged, {"@bob:remote.test": ["BOBDEV"]},
                          {"device_keys": {"@bob:remote.test": {"BOBDEV": forged}}})
        self.assertEqual(merged["device_keys"], {"@bob:remote.test": {}})


class _Silent(protocol.Protocol):
    """Accepts a connection and never answers (a server that hangs)."""


class SlowServerTest(QueriesTestCase):
    async def test_per_server_timeout_from_the_request(self) -> None:
        factory = protocol.Factory.forProtocol(_Silent)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.discovery.ports["slow.test"] = port.getHost().port
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        started = time.monotonic()
        got = await self.ok(self.hs, "POST", f"{CS}/keys/query", {
            "device_keys": {"@x:slow.test": [], bob.user_id: []}, "timeout": 1000},
            alice.token)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(got["failures"], {"slow.test": {
            "status": 503, "message": "The server could not be reached"}})
        self.assertEqual(got["device_keys"][bob.user_id], {})  # the other server answered
        got = await self.ok(self.hs, "POST", f"{CS}/keys/claim", {
            "one_time_keys": {"@x:slow.test": {"D": "signed_curve25519"}}, "timeout": 500},
            alice.token)
        self.assertEqual(list(got["failures"]), ["slow.test"])


class BlockedServerTest(QueriesTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": federation_section(blocked_servers=["remote.test"])}

    async def test_blocked_server_refused_both_ways(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        # Its requests to us: 403.
        resp = await self.remote_signed("GET", f"{FED}/query/profile?user_id={q(alice.user_id)}")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.remote_signed("POST", f"{FED}/user/keys/query",
                                        {"device_keys": {alice.user_id: []}})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Our clients' lookups on it: refused, nothing sent.
        resp = await self.request("GET", f"{CS}/profile/{q(bob.user_id)}", token=alice.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("GET", f"{CS}/directory/room/{q('#x:remote.test')}")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        got = await self.ok(self.hs, "POST", f"{CS}/keys/query",
                            {"device_keys": {bob.user_id: []}}, alice.token)
        self.assertEqual(got["failures"]["remote.test"]["status"], 403)
        self.assertNotIn(bob.user_id, got["device_keys"])
        # remote.test's clients asking about ours: we refuse it, it passes the 403 on.
        resp = await self.on(self.remote, "GET", f"{CS}/profile/{q(alice.user_id)}",
                             token=bob.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class NoKeyTest(QueriesTestCase):
    """A key-less user: empty device map, and claims of unknown devices give nothing."""

    async def test_user_without_keys(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        got = await self.ok(self.hs, "POST", f"{CS}/keys/query",
                            {"device_keys": {bob.user_id: []}}, alice.token)
        self.assertEqual(got["device_keys"], {bob.user_id: {}})
        self.assertEqual(got["failures"], {})
        got = await self.ok(self.hs, "POST", f"{CS}/keys/claim", {"one_time_keys": {
            bob.user_id: {"NOPE": "signed_curve25519"}}}, alice.token)
        self.assertEqual(got, {"one_time_keys": {}, "failures": {}})
