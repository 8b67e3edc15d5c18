"""/keys/upload, /keys/query, /keys/claim: real vodozemac keys, forged signatures,
ownership, malformed input and concurrent claims."""

from __future__ import annotations

import copy
import json
from typing import Any

from twisted.internet import defer

from storage.stores.e2e_keys import E2eKeyStore
from tests.harness import DatabaseTestCase
from tests.rest.e2e_helpers import KEYS, OlmDevice
from tests.rest.room_helpers import RoomTestCase


class KeysTestCase(RoomTestCase):
    async def device(self, name: str) -> OlmDevice:
        reg = await self.register(name)
        return OlmDevice(reg["user_id"], reg["device_id"], reg["access_token"])

    async def upload(self, dev: OlmDevice, body: dict[str, Any], code: int = 200) -> Any:
        resp = await self.request("POST", f"{KEYS}/upload", body, token=dev.token)
        self.assertEqual(resp.code, code, resp)
        return resp.json

    async def query(self, token: str, device_keys: dict[str, list[str]]) -> Any:
        resp = await self.request("POST", f"{KEYS}/query", {"device_keys": device_keys},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def claim(self, token: str, wanted: dict[str, dict[str, str]]) -> Any:
        resp = await self.request("POST", f"{KEYS}/claim", {"one_time_keys": wanted},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json


class UploadTest(KeysTestCase):
    async def test_upload_and_counts(self) -> None:
        alice = await self.device("alice")
        body = await self.upload(alice, {"device_keys": alice.device_keys(),
                                         "one_time_keys": alice.one_time_keys(5),
                                         "fallback_keys": alice.fallback_key()})
        self.assertEqual(body, {"one_time_key_counts": {"signed_curve25519": 5}})
        # Identical re-upload of device keys is fine, counts grow with new keys.
        body = await self.upload(alice, {"device_keys": alice.device_keys(),
                                         "one_time_keys": alice.one_time_keys(3)})
        self.assertEqual(body["one_time_key_counts"], {"signed_curve25519": 8})
        body = await self.upload(alice, {})
        self.assertEqual(body["one_time_key_counts"], {"signed_curve25519": 8})

    async def test_empty_upload_reports_zero(self) -> None:
        alice = await self.device("alice")
        body = await self.upload(alice, {})
        self.assertEqual(body, {"one_time_key_counts": {"signed_curve25519": 0}})

    async def test_no_token(self) -> None:
        for path in ("upload", "query", "claim"):
            resp = await self.request("POST", f"{KEYS}/{path}", {})
            self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", f"{KEYS}/changes?from=s0_0&to=s0_0")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_forged_device_key_signature(self) -> None:
        alice = await self.device("alice")
        keys = alice.device_keys()
        keys["algorithms"].append("m.evil")  # signature no longer covers the content
        resp = await self.request("POST", f"{KEYS}/upload", {"device_keys": keys}, token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # Signed by another key than the one it claims.
        mallory = OlmDevice(alice.user_id, alice.device_id, alice.token)
        forged = mallory.sign({k: v for k, v in alice.device_keys().items() if k != "signatures"})
        resp = await self.request("POST", f"{KEYS}/upload", {"device_keys": forged},
                                  token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        # Unsigned.
        unsigned = {k: v for k, v in alice.device_keys().items() if k != "signatures"}
        unsigned["signatures"] = {}
        resp = await self.request("POST", f"{KEYS}/upload", {"device_keys": unsigned},
                                  token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        q = await self.query(alice.token, {alice.user_id: []})
        self.assertEqual(q["device_keys"], {alice.user_id: {}})

    async def test_upload_for_other_device_or_user(self) -> None:
        alice = await self.device("alice")
        bob = await self.device("bob")
        other_dev = OlmDevice(alice.user_id, "OTHERDEVICE", alice.token)
        resp = await self.request("POST", f"{KEYS}/upload",
                                  {"device_keys": other_dev.device_keys()}, token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        as_bob = OlmDevice(bob.user_id, bob.device_id, alice.token)
        resp = await self.request("POST", f"{KEYS}/upload",
                                  {"device_keys": as_bob.device_keys()}, token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_device_identity_cannot_change(self) -> None:
        alice = await self.device("alice")
        await self.upload(alice, {"device_keys": alice.device_keys()})
        replacement = OlmDevice(alice.user_id, alice.device_id, alice.token)
        resp = await self.request("POST", f"{KEYS}/upload",
                                  {"device_keys": replacement.device_keys()}, token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        q = await self.query(alice.token, {alice.user_id: []})
        self.assertEqual(q["device_keys"][alice.user_id][alice.device_id]["keys"],
                         alice.device_keys()["keys"])

    async def test_malformed_device_keys(self) -> None:
        alice = await self.device("alice")
        good = alice.device_keys()
        cases: list[Any] = [None, "x", [], {}]
        for field in ("user_id", "device_id", "algorithms", "keys", "signatures"):
            cases.append({k: v for k, v in good.items() if k != field})
        cases += [
            {**good, "algorithms": "m.megolm"}, {**good, "algorithms": [1]},
            {**good, "keys": {}}, {**good, "keys": []}, {**good, "keys": {"nocolon": "x"}},
            {**good, "keys": {f"ed25519:{alice.device_id}": 5}},
            {**good, "keys": {f"ed25519:{alice.device_id}": "!!notbase64"}},
            {**good, "keys": {f"ed25519:{alice.device_id}": "AAAA"}},
            {**good, "keys": {f"curve25519:{alice.device_id}": "AAAA"}},
            {**good, "signatures": []}, {**good, "signatures": {alice.user_id: "x"}},
            {**good, "unsigned": 3}, {**good, "user_id": 5},
        ]
        for case in cases:
            resp = await self.request("POST", f"{KEYS}/upload", {"device_keys": case},
                                      token=alice.token)
            self.assertEqual(resp.code, 400, (case, resp))
            self.assertIn(resp.json["errcode"], ("M_BAD_JSON", "M_INVALID_PARAM", "M_MISSING_PARAM"))

    async def test_one_time_keys_are_verified(self) -> None:
        alice = await self.device("alice")
        # Signed keys before any device keys: nothing to verify them with.
        resp = await self.request("POST", f"{KEYS}/upload",
                                  {"one_time_keys": alice.one_time_keys(1)}, token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        await self.upload(alice, {"device_keys": alice.device_keys()})
        otks = alice.one_time_keys(2)
        name = sorted(otks)[0]
        forged = copy.deepcopy(otks)
        forged[name]["key"] = OlmDevice("@x:y", "X", "").account.curve25519_key.to_base64()
        resp = await self.request("POST", f"{KEYS}/upload", {"one_time_keys": forged},
                                  token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        bad_cases: list[Any] = [
            [], {"signed_curve25519": otks[name]}, {"a:b:c": otks[name]},
            {name: "bare-string-for-signed-alg"}, {name: {"key": 5, "signatures": {}}},
            {name: {"key": "abc"}}, {name: 7}, {":AAA": otks[name]},
            {name: {**otks[name], "fallback": "yes"}},
        ]
        for case in bad_cases:
            resp = await self.request("POST", f"{KEYS}/upload", {"one_time_keys": case},
                                      token=alice.token)
            self.assertEqual(resp.code, 400, (case, resp))
        body = await self.upload(alice, {"one_time_keys": otks})
        self.assertEqual(body["one_time_key_counts"], {"signed_curve25519": 2})

    async def test_one_time_key_id_reuse(self) -> None:
        alice = await self.device("alice")
        await self.upload(alice, {"device_keys": alice.device_keys()})
        otks = alice.one_time_keys(1)
        await self.upload(alice, {"one_time_keys": otks})
        await self.upload(alice, {"one_time_keys": otks})  # the same key again: accepted
        (name,) = otks
        other = alice.one_time_keys(1)
        (other_name,) = other
        resp = await self.request("POST", f"{KEYS}/upload",
                                  {"one_time_keys": {name: other[other_name]}},
                                  token=alice.token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        body = await self.upload(alice, {})
        self.assertEqual(body["one_time_key_counts"], {"signed_curve25519": 1})

    async def test_fallback_keys(self) -> None:
        alice = await self.device("alice")
        await self.upload(alice, {"device_keys": alice.device_keys()})
        ((name, value),) = alice.fallback_key().items()
        two = {name: value, "signed_curve25519:ZZZ": value}
        resp = await self.request("POST", f"{KEYS}/upload", {"fallback_keys": two},
                                  token=alice.token)
        self.assertEqual(resp.code, 400, resp)
        await self.upload(alice, {"fallback_keys": alice.fallback_key()})
        sync = await self.sync(alice.token)
        self.assertEqual(sync["device_unused_fallback_key_types"], ["signed_curve25519"])
        self.assertEqual(sync["device_one_time_keys_count"], {"signed_curve25519": 0})


class QueryTest(KeysTestCase):
    async def test_query(self) -> None:
        alice = await self.device("alice")
        bob = await self.device("bob")
        await self.request("PUT", f"/_matrix/client/v3/devices/{alice.device_id}",
                           {"display_name": "Alice's phone"}, token=alice.token)
        await self.upload(alice, {"device_keys": alice.device_keys()})
        q = await self.query(bob.token, {alice.user_id: [], bob.user_id: [],
                                         "@nobody:test.local": []})
        info = q["device_keys"][alice.user_id][alice.device_id]
        self.assertEqual(info["keys"], alice.device_keys()["keys"])
        self.assertEqual(info["signatures"], alice.device_keys()["signatures"])
        self.assertEqual(info["unsigned"], {"device_display_name": "Alice's phone"})
        self.assertEqual(q["device_keys"][bob.user_id], {})
        self.assertEqual(q["device_keys"]["@nobody:test.local"], {})
        # A client's own "unsigned" data is not passed on to others.
        await self.upload(bob, {"device_keys": {**bob.device_keys(), "unsigned": {"x": 1}}})
        q2 = await self.query(alice.token, {bob.user_id: []})
        self.assertNotIn("x", q2["device_keys"][bob.user_id][bob.device_id]["unsigned"])
        self.assertEqual(q["failures"], {})
        for section in ("master_keys", "self_signing_keys", "user_signing_keys"):
            self.assertEqual(q[section], {})
        # Specific devices: unknown ones are simply absent.
        q = await self.query(bob.token, {alice.user_id: [alice.device_id, "NOPE"]})
        self.assertEqual(list(q["device_keys"][alice.user_id]), [alice.device_id])
        q = await self.query(bob.token, {alice.user_id: ["NOPE"]})
        self.assertEqual(q["device_keys"][alice.user_id], {})

    async def test_remote_users_fail(self) -> None:
        alice = await self.device("alice")
        q = await self.query(alice.token, {"@bob:remote.example": []})
        self.assertEqual(q["device_keys"], {})
        self.assertEqual(q["failures"]["remote.example"]["status"], 503)

    async def test_bad_query(self) -> None:
        alice = await self.device("alice")
        for body in ({}, {"device_keys": []}, {"device_keys": {"notauser": []}},
                     {"device_keys": {"@a:test.local": "x"}}, {"device_keys": {"@a:test.local": [5]}},
                     {"device_keys": {"@nocolon": []}}, {"device_keys": {}, "timeout": "x"}):
            resp = await self.request("POST", f"{KEYS}/query", body, token=alice.token)
            self.assertEqual(resp.code, 400, (body, resp))

    async def test_query_provider_hook(self) -> None:
        alice = await self.device("alice")
        seen: list[Any] = []

        async def provider(requester: str, users: dict[str, list[str]], response: dict) -> None:
            seen.append((requester, users))
            response["master_keys"]["@x:test.local"] = {"usage": ["master"]}

        handler = self._e2e_handler()
        handler.query_providers.append(provider)
        q = await self.query(alice.token, {alice.user_id: [], "@r:remote.example": []})
        self.assertEqual(seen, [(alice.user_id, {alice.user_id: []})])
        self.assertEqual(q["master_keys"], {"@x:test.local": {"usage": ["master"]}})

    def _e2e_handler(self) -> Any:
        route, _, _ = self.hs.router.match("POST", f"{KEYS}/query")
        assert route is not None
        return route.handler.__self__._keys  # type: ignore[attr-defined]


class ClaimTest(KeysTestCase):
    async def test_claim_then_fallback(self) -> None:
        alice = await self.device("alice")
        bob = await self.device("bob")
        otks = alice.one_time_keys(2)
        fallback = alice.fallback_key()
        await self.upload(alice, {"device_keys": alice.device_keys(), "one_time_keys": otks,
                                  "fallback_keys": fallback})
        want = {alice.user_id: {alice.device_id: "signed_curve25519"}}
        got: list[str] = []
        for _ in range(2):
            c = await self.claim(bob.token, want)
            ((name, key),) = c["one_time_keys"][alice.user_id][alice.device_id].items()
            self.assertEqual(key, otks[name])
            got.append(name)
        self.assertEqual(sorted(got), sorted(otks))
        sync = await self.sync(alice.token)
        self.assertEqual(sync["device_one_time_keys_count"], {"signed_curve25519": 0})
        self.assertEqual(sync["device_unused_fallback_key_types"], ["signed_curve25519"])
        # Out of one-time keys: the fallback key, as often as asked, now marked used.
        for _ in range(2):
            c = await self.claim(bob.token, want)
            self.assertEqual(c["one_time_keys"][alice.user_id][alice.device_id], fallback)
        sync = await self.sync(alice.token)
        self.assertEqual(sync["device_unused_fallback_key_types"], [])
        # A new fallback key is unused again; re-uploading the used one is not.
        await self.upload(alice, {"fallback_keys": fallback})
        self.assertEqual((await self.sync(alice.token))["device_unused_fallback_key_types"], [])
        await self.upload(alice, {"fallback_keys": alice.fallback_key()})
        self.assertEqual((await self.sync(alice.token))["device_unused_fallback_key_types"],
                         ["signed_curve25519"])

    async def test_unknown_and_remote(self) -> None:
        alice = await self.device("alice")
        c = await self.claim(alice.token, {
            alice.user_id: {"NODEVICE": "signed_curve25519", alice.device_id: "signed_curve25519"},
            "@ghost:test.local": {"X": "signed_curve25519"},
            "@far:remote.example": {"X": "signed_curve25519"}})
        self.assertEqual(c["one_time_keys"], {})
        self.assertEqual(list(c["failures"]), ["remote.example"])

    async def test_bad_claim(self) -> None:
        alice = await self.device("alice")
        for body in ({}, {"one_time_keys": []}, {"one_time_keys": {"@a:test.local": []}},
                     {"one_time_keys": {"@a:test.local": {"D": 5}}},
                     {"one_time_keys": {"nope": {"D": "signed_curve25519"}}},
                     {"one_time_keys": {"@nocolon": {"D": "signed_curve25519"}}}):
            resp = await self.request("POST", f"{KEYS}/claim", body, token=alice.token)
            self.assertEqual(resp.code, 400, (body, resp))

    async def test_concurrent_claims_get_distinct_keys(self) -> None:
        alice = await self.device("alice")
        claimers = [await self.device(f"claimer{i}") for i in range(4)]
        otks = alice.one_time_keys(10)
        await self.upload(alice, {"device_keys": alice.device_keys(), "one_time_keys": otks})
        want = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
        resps = await defer.gatherResults([
            defer.ensureDeferred(self.request("POST", f"{KEYS}/claim", want,
                                              token=claimers[i % 4].token))
            for i in range(14)])
        names: list[str] = []
        for resp in resps:
            self.assertEqual(resp.code, 200, resp)
            names.extend(resp.json["one_time_keys"].get(alice.user_id, {}).get(
                alice.device_id, {}))
        self.assertEqual(len(names), 10)
        self.assertEqual(sorted(names), sorted(otks))


class ClaimRaceStoreTest(DatabaseTestCase):
    """Many transactions claiming at once straight on the store (PostgreSQL runs them
    on several connections): every key is handed out exactly once."""

    async def test_concurrent_store_claims(self) -> None:
        store = E2eKeyStore(self.db)
        keys = [("signed_curve25519", f"K{i:03}", {"key": f"k{i}"}) for i in range(30)]
        self.assertEqual(await store.add_one_time_keys("@a:t", "D", 0, keys), [])
        wanted = [("@a:t", "D", "signed_curve25519")]
        results = await defer.gatherResults([
            defer.ensureDeferred(store.claim_keys(wanted * 2)) for _ in range(20)])
        claimed = [k.key_id for batch in results for k in batch]
        self.assertEqual(len(claimed), 30)
        self.assertEqual(sorted(claimed), sorted(k for _, k, _ in keys))
        self.assertEqual(await store.count_one_time_keys("@a:t", "D"), {})
        self.assertEqual(json.dumps(await store.claim_keys(wanted)), "[]")
