"""Federation keys and X-Matrix over HTTP: our key server, /version, the notary,
remote key fetching and caching (with the test clock), X-Matrix-authenticated
requests between two in-process servers, forged ones refused, and federation off
serving nothing."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

from signedjson.key import decode_verify_key_bytes, get_verify_key
from twisted.internet import reactor

from federation.discovery import ServerTarget
from federation.x_matrix import sign_request
from homeserver.app import Homeserver, build_homeserver
from homeserver.events.hashing import decode_base64
from homeserver.events.signing import (
    SignatureError,
    generate_signing_key,
    sign_json,
    verify_signed_json,
)
from homeserver.http.server import ApiRequest
from tests.harness import HomeserverTestCase, Response, drop_pg_schema, make_config

DAY_MS = 24 * 3600 * 1000
WHOAMI = "/_matrix/federation/v1/_parley_test/whoami"


class StaticDiscovery:
    """Discovery for tests: server name → a loopback port."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}

    async def resolve(self, server_name: str) -> ServerTarget:
        port = self.ports.get(server_name, 1)  # port 1: nothing listens
        return ServerTarget(server_name, server_name, (("127.0.0.1", port),))


def federation_section(**extra: Any) -> dict[str, Any]:
    return {"enabled": True, "ip_range_allowlist": ["127.0.0.0/8"], **extra}


def for_tests(config: Any) -> Any:
    """Plain HTTP between in-process servers (a test-only switch, not in the schema)."""
    return dataclasses.replace(config, federation=dataclasses.replace(
        config.federation, plain_http_for_tests=True))


def verify_key_of(response: dict[str, Any], kid: str) -> Any:
    return decode_verify_key_bytes(kid, decode_base64(response["verify_keys"][kid]["key"]))


class FederationTestCase(HomeserverTestCase):
    """This server (``test.local``) plus a second one (``remote.test``) on the same
    test clock, each able to reach the other through :class:`StaticDiscovery`."""

    remote_federation: dict[str, Any] = {}

    def config_overrides(self) -> dict[str, Any]:
        return {"federation": federation_section()}

    async def setUp(self) -> None:  # type: ignore[override]
        real_make = make_config

        import tests.harness as harness

        harness.make_config = lambda *a, **kw: _with_test_flag(real_make(*a, **kw))
        try:
            await super().setUp()
        finally:
            harness.make_config = real_make
        self.remote = await self.start_remote("remote.test", self.remote_federation)
        self.discovery = StaticDiscovery()
        for hs in (self.hs, self.remote):
            assert hs.federation is not None
            hs.federation.client.discovery = self.discovery  # type: ignore[assignment]
        self.discovery.ports["test.local"] = self.port_of(self.hs)
        self.discovery.ports["remote.test"] = self.port_of(self.remote)
        self.hs.router.add("GET", WHOAMI, _whoami, auth="federation")
        self.hs.router.add("PUT", WHOAMI, _whoami, auth="federation", json_body=True)

    async def start_remote(self, name: str, federation: dict[str, Any]) -> Homeserver:
        data_dir = tempfile.mkdtemp(prefix="parley-remote-")
        config, schema = make_config(data_dir, self.engine, server_name=name,
                                     federation=federation_section(**federation))
        if schema:
            self.addCleanup(drop_pg_schema, schema)
        hs = await build_homeserver(for_tests(config), clock=self.clock)
        hs.listen(reactor)
        self.addCleanup(hs.stop)
        return hs

    @staticmethod
    def port_of(hs: Homeserver) -> int:
        return int(hs.ports[0].getHost().port)

    async def remote_signed(self, method: str, path: str, body: Any = None,
                            header: str | None = None) -> Response:
        """A request from remote.test to this server, X-Matrix signed by default."""
        assert self.remote.federation is not None
        key = self.remote.federation.local_keys.signing_key
        hdrs = {"Authorization": header or sign_request(key, "remote.test", "test.local",
                                                        method, path, body)}
        return await self.request(method, path, body, headers=hdrs)


def _with_test_flag(result: tuple[Any, Any]) -> tuple[Any, Any]:
    config, schema = result
    return for_tests(config), schema


async def _whoami(req: ApiRequest) -> tuple[int, Any]:
    return 200, {"origin": req.origin, "body": req.body}


class KeyServerTest(FederationTestCase):
    async def test_server_keys_signed_and_valid_for_a_day(self) -> None:
        resp = await self.request("GET", "/_matrix/key/v2/server")
        self.assertEqual(resp.code, 200, resp)
        body = resp.json
        assert self.hs.federation is not None
        kid = self.hs.federation.local_keys.key_id
        self.assertEqual(body["server_name"], "test.local")
        self.assertEqual(list(body["verify_keys"]), [kid])
        self.assertEqual(body["old_verify_keys"], {})
        self.assertEqual(body["valid_until_ts"], self.clock.time_msec() + DAY_MS)
        verify_signed_json(body, "test.local", verify_key_of(body, kid))
        # It is the key events are signed with.
        self.assertEqual(verify_key_of(body, kid).encode(),
                         self.hs.federation.local_keys.verify_key.encode())

    async def test_rotated_key_listed_in_old_verify_keys(self) -> None:
        assert self.hs.federation is not None
        local = self.hs.federation.local_keys
        old = get_verify_key(generate_signing_key("old1"))
        store = self.hs.federation.keyring._store  # noqa: SLF001
        from homeserver.events.hashing import encode_base64
        # The key file used to hold ed25519:old1; a restart with the new key retires it.
        await store.note_current_key("ed25519:old1", encode_base64(old.encode()),
                                     self.clock.time_msec() - 1000)
        self.advance(5)
        await local.start()
        body = (await self.request("GET", "/_matrix/key/v2/server")).json
        self.assertEqual(body["old_verify_keys"], {"ed25519:old1": {
            "key": encode_base64(old.encode()), "expired_ts": self.clock.time_msec()}})
        verify_signed_json(body, "test.local", verify_key_of(body, local.key_id))

    async def test_version(self) -> None:
        resp = await self.request("GET", "/_matrix/federation/v1/version")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["server"]["name"], "Parley")
        self.assertIsInstance(resp.json["server"]["version"], str)


class ValidityPeriodTest(FederationTestCase):
    remote_federation = {"key_validity_period": "30d"}

    def config_overrides(self) -> dict[str, Any]:
        return {"federation": federation_section(key_validity_period="2h")}

    async def test_configured_period_and_seven_day_cap(self) -> None:
        body = (await self.request("GET", "/_matrix/key/v2/server")).json
        self.assertEqual(body["valid_until_ts"], self.clock.time_msec() + 2 * 3600 * 1000)
        # remote.test says 30 days; we keep its key for at most 7.
        assert self.hs.federation is not None and self.remote.federation is not None
        kid = self.remote.federation.local_keys.key_id
        key = await self.hs.federation.keyring.get_verify_key("remote.test", kid,
                                                              self.clock.time_msec())
        self.assertIsNotNone(key)
        rec = await self.hs.federation.keyring._store.remote_key("remote.test", kid)  # noqa: SLF001
        assert rec is not None
        self.assertEqual(rec.valid_until_ts, self.clock.time_msec() + 7 * DAY_MS)


class XMatrixTest(FederationTestCase):
    async def test_signed_request_from_remote_is_accepted(self) -> None:
        resp = await self.remote_signed("GET", WHOAMI)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["origin"], "remote.test")
        resp = await self.remote_signed("PUT", WHOAMI + "?a=b%20c", {"k": [1, 2]})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["body"], {"k": [1, 2]})

    async def test_outbound_client_signs_requests(self) -> None:
        """remote.test's federation client reaches us, signed; we fetch its key."""
        assert self.remote.federation is not None
        answer = await self.remote.federation.client.put_json(
            "test.local", WHOAMI, {"x": 1}, args={"q": "a b"})
        self.assertEqual(answer, {"origin": "remote.test", "body": {"x": 1}})

    async def assert_refused(self, resp: Response, reason: str) -> None:
        self.assertMatrixError(resp, 401, "M_UNAUTHORIZED")
        events = await self.hs.stores.security_events.list_events(event_type="federation_auth")
        self.assertTrue(any(e.reason == reason for e in events), [e.reason for e in events])

    async def test_forgeries_refused_and_recorded(self) -> None:
        assert self.remote.federation is not None
        key = self.remote.federation.local_keys.signing_key
        kid = self.remote.federation.local_keys.key_id
        # No header, a bearer token, garbage.
        await self.assert_refused(await self.request("GET", WHOAMI),
                                  "missing or malformed X-Matrix header")
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header="Bearer x"),
                                  "missing or malformed X-Matrix header")
        # Signed for another path / method / body / destination.
        forged = sign_request(key, "remote.test", "test.local", "GET", "/other")
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header=forged),
                                  "bad signature")
        forged = sign_request(key, "remote.test", "test.local", "PUT", WHOAMI, {"k": 1})
        await self.assert_refused(
            await self.remote_signed("PUT", WHOAMI, {"k": 2}, header=forged), "bad signature")
        forged = sign_request(key, "remote.test", "test.local", "GET", WHOAMI)
        await self.assert_refused(await self.remote_signed("PUT", WHOAMI, {}, header=forged),
                                  "bad signature")
        forged = sign_request(key, "remote.test", "elsewhere.test", "GET", WHOAMI)
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header=forged),
                                  "request is for another destination")
        # The destination parameter removed: the signature still covers it.
        without_dest = forged.replace(',destination="elsewhere.test"', "")
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header=without_dest),
                                  "bad signature")
        # Someone else's key under remote.test's key id; an unknown key id.
        impostor = generate_signing_key(kid.split(":")[1])
        forged = sign_request(impostor, "remote.test", "test.local", "GET", WHOAMI)
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header=forged),
                                  "bad signature")
        forged = sign_request(generate_signing_key("nope"), "remote.test", "test.local",
                              "GET", WHOAMI)
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header=forged),
                                  "unknown or expired key")
        # Claiming to be us, or a server that does not answer.
        forged = sign_request(key, "test.local", "test.local", "GET", WHOAMI)
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header=forged),
                                  "request claims to come from this server")
        forged = sign_request(key, "ghost.test", "test.local", "GET", WHOAMI)
        await self.assert_refused(await self.remote_signed("GET", WHOAMI, header=forged),
                                  "unknown or expired key")
        # The genuine request still works.
        self.assertEqual((await self.remote_signed("GET", WHOAMI)).code, 200)

    async def test_bad_json_body_is_400(self) -> None:
        resp = await self.request("PUT", WHOAMI, raw_body=b"{nope", headers={
            "Authorization": 'X-Matrix origin="remote.test",key="ed25519:a",sig="x"'})
        self.assertMatrixError(resp, 400, "M_NOT_JSON")


class AllowListTest(FederationTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": federation_section(allowed_servers=["friend.test"])}

    async def test_inbound_origin_not_allowed(self) -> None:
        resp = await self.remote_signed("GET", WHOAMI)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        events = await self.hs.stores.security_events.list_events(event_type="federation_auth")
        self.assertEqual([e.outcome for e in events], ["denied"])

    async def test_outbound_destination_not_allowed(self) -> None:
        from federation.client import FederationDenied

        assert self.hs.federation is not None
        with self.assertRaises(FederationDenied):
            await self.hs.federation.client.get_json("remote.test", "/_matrix/key/v2/server")
        # And no key of a disallowed server is fetched.
        key = await self.hs.federation.keyring.get_verify_key(
            "remote.test", "ed25519:x", self.clock.time_msec())
        self.assertIsNone(key)


class KeyCacheAndNotaryTest(FederationTestCase):
    def remote_kid(self) -> str:
        assert self.remote.federation is not None
        return self.remote.federation.local_keys.key_id

    async def test_keyring_fetches_caches_and_respects_expiry(self) -> None:
        assert self.hs.federation is not None and self.remote.federation is not None
        keyring = self.hs.federation.keyring
        signed = self.remote.federation.local_keys.sign({"hello": "world"})
        await keyring.verify_json_for_server("remote.test", signed, self.clock.time_msec())
        # Cached: remote.test unreachable, still verifies.
        self.discovery.ports["remote.test"] = 1
        await keyring.verify_json_for_server("remote.test", signed, self.clock.time_msec())
        # A forged signature is refused.
        forged = sign_json({"hello": "world"}, "remote.test",
                           generate_signing_key(self.remote_kid().split(":")[1]))
        with self.assertRaises(SignatureError):
            await keyring.verify_json_for_server("remote.test", forged, self.clock.time_msec())
        # Past valid_until_ts (1 day) the cached key is no longer used, and the server
        # cannot be reached: refused.
        self.advance(DAY_MS / 1000 + 60)
        with self.assertRaises(SignatureError):
            await keyring.verify_json_for_server("remote.test", signed, self.clock.time_msec())
        # Reachable again (after the once-a-minute limit): refetched, verifies.
        self.discovery.ports["remote.test"] = self.port_of(self.remote)
        self.advance(61)
        await keyring.verify_json_for_server("remote.test", signed, self.clock.time_msec())
        # Room versions 1-4 do not enforce validity.
        await keyring.verify_json_for_server("remote.test", signed,
                                             self.clock.time_msec() + 30 * DAY_MS,
                                             enforce_validity=False)

    def check_notary_answer(self, resp: Response) -> dict[str, Any]:
        self.assertEqual(resp.code, 200, resp)
        entries = resp.json["server_keys"]
        self.assertEqual(len(entries), 1, entries)
        entry = entries[0]
        self.assertEqual(entry["server_name"], "remote.test")
        kid = self.remote_kid()
        verify_signed_json(entry, "remote.test", verify_key_of(entry, kid))
        assert self.hs.federation is not None
        verify_signed_json(entry, "test.local", self.hs.federation.local_keys.verify_key)
        return entry

    async def test_notary_get_and_post(self) -> None:
        resp = await self.request("GET", "/_matrix/key/v2/query/remote.test")
        self.check_notary_answer(resp)
        resp = await self.request("POST", "/_matrix/key/v2/query", {"server_keys": {
            "remote.test": {self.remote_kid(): {
                "minimum_valid_until_ts": self.clock.time_msec()}}}})
        self.check_notary_answer(resp)
        # Our own keys through the notary API.
        resp = await self.request("POST", "/_matrix/key/v2/query",
                                  {"server_keys": {"test.local": {}}})
        self.assertEqual(resp.json["server_keys"][0]["server_name"], "test.local")
        # Unknown, unreachable server: left out. No servers: empty list.
        resp = await self.request("GET", "/_matrix/key/v2/query/ghost.test")
        self.assertEqual(resp.json, {"server_keys": []})
        resp = await self.request("POST", "/_matrix/key/v2/query", {"server_keys": {}})
        self.assertEqual(resp.json, {"server_keys": []})

    async def test_notary_answers_from_cache_then_refetches_when_stale(self) -> None:
        self.check_notary_answer(await self.request("GET", "/_matrix/key/v2/query/remote.test"))
        await self.remote.stop()
        # From the cache while valid.
        self.check_notary_answer(await self.request("GET", "/_matrix/key/v2/query/remote.test"))
        # Asking for validity beyond what we hold makes us try the server (down): the
        # stale cached answer is still returned, as Synapse does.
        far = self.clock.time_msec() + 3 * DAY_MS
        resp = await self.request("GET",
                                  f"/_matrix/key/v2/query/remote.test?minimum_valid_until_ts={far}")
        entry = self.check_notary_answer(resp)
        self.assertLess(entry["valid_until_ts"], far)

    async def test_bad_notary_input(self) -> None:
        resp = await self.request("GET", "/_matrix/key/v2/query/bad%20name")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", "/_matrix/key/v2/query/remote.test"
                                          "?minimum_valid_until_ts=-1")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", "/_matrix/key/v2/query", {"server_keys": {
            "remote.test": {"ed25519:a": {"minimum_valid_until_ts": "soon"}}}})
        self.assertEqual(resp.code, 400, resp)
        resp = await self.request("POST", "/_matrix/key/v2/query", {
            "server_keys": {f"s{i}.test": {} for i in range(101)}})
        self.assertEqual(resp.code, 400, resp)
        resp = await self.request("POST", "/_matrix/key/v2/query", {})
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")


class NotaryFetchTest(FederationTestCase):
    """Keys of a server we cannot reach, through a trusted notary (remote.test)."""

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.third = await self.start_remote("third.test", {})
        assert self.third.federation is not None and self.remote.federation is not None
        self.third.federation.client.discovery = self.discovery  # type: ignore[assignment]
        self.discovery.ports["third.test"] = self.port_of(self.third)

    def config_overrides(self) -> dict[str, Any]:
        # The notary's key is only known after it starts: filled in by the test.
        return {"federation": federation_section()}

    async def test_key_via_trusted_notary(self) -> None:
        assert self.hs.federation is not None
        assert self.third.federation is not None and self.remote.federation is not None
        from homeserver.config.federation import TrustedKeyServer
        from homeserver.events.hashing import encode_base64

        notary = self.remote.federation.local_keys
        keyring = self.hs.federation.keyring
        signed = self.third.federation.local_keys.sign({"x": 1})
        # Only the notary can reach third.test.
        notary_discovery = StaticDiscovery()
        notary_discovery.ports = dict(self.discovery.ports)
        self.remote.federation.client.discovery = notary_discovery  # type: ignore[assignment]
        self.discovery.ports["third.test"] = 1
        # A notary whose configured key is wrong is not believed.
        keyring._notaries = (TrustedKeyServer("remote.test", {  # noqa: SLF001
            notary.key_id: encode_base64(get_verify_key(generate_signing_key("z")).encode())}),)
        with self.assertRaises(SignatureError):
            await keyring.verify_json_for_server("third.test", signed, self.clock.time_msec())
        # With its real key: fetched through it and verified.
        keyring._notaries = (TrustedKeyServer("remote.test", {  # noqa: SLF001
            notary.key_id: encode_base64(notary.verify_key.encode())}),)
        self.advance(61)
        await keyring.verify_json_for_server("third.test", signed, self.clock.time_msec())
        rec = await keyring._store.remote_key(  # noqa: SLF001
            "third.test", self.third.federation.local_keys.key_id)
        assert rec is not None
        self.assertEqual(rec.from_server, "remote.test")


class FederationOffTest(HomeserverTestCase):
    async def test_no_federation_routes(self) -> None:
        self.assertIsNone(self.hs.federation)
        for path in ("/_matrix/key/v2/server", "/_matrix/federation/v1/version",
                     "/_matrix/key/v2/query/remote.test"):
            self.assertMatrixError(await self.request("GET", path), 404, "M_UNRECOGNIZED")
        # A federation-auth route cannot authenticate anything with federation off.
        self.hs.router.add("GET", WHOAMI, _whoami, auth="federation")
        self.assertMatrixError(await self.request("GET", WHOAMI), 404, "M_UNRECOGNIZED")
        # OpenID userinfo stays (served with federation off).
        resp = await self.request("GET", "/_matrix/federation/v1/openid/userinfo")
        self.assertEqual(resp.code, 401, resp)

