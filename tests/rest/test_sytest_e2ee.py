"""SyTest's 41end-to-end-keys tests (issue 12), reproduced at HTTP level.

SyTest uploads dummy, unsigned device keys; Parley verifies device-key signatures, so
these tests upload real signed keys (vodozemac / PyNaCl) where SyTest uses dummies, and
check that SyTest's own dummy upload is still refused (that refusal is by design).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from nacl.signing import SigningKey
from twisted.internet import defer, reactor, task

from tests.harness import TEST_PASSWORD, Response
from tests.rest.e2e_helpers import KEYS, OlmDevice
from tests.rest.room_helpers import CS, RoomTestCase
from tests.rest.test_cross_signing import cs_key, pub, sign

VERSION = f"{CS}/room_keys/version"
ROOM_KEYS = f"{CS}/room_keys/keys"
DEVICE_SIGNING = f"{KEYS}/device_signing/upload"
SIGNATURES = f"{KEYS}/signatures/upload"
# SyTest's backup algorithm and opaque auth_data / session_data (strings).
SYTEST_ALG = "m.megolm_backup.v1"


async def _pause(seconds: float = 0.05) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


class SytestE2eeCase(RoomTestCase):
    async def device(self, name: str) -> OlmDevice:
        reg = await self.register(name)
        return OlmDevice(reg["user_id"], reg["device_id"], reg["access_token"])

    async def login_again(self, dev: OlmDevice) -> OlmDevice:
        resp = await self.login(dev.user_id.split(":")[0][1:])
        self.assertEqual(resp.code, 200, resp)
        return OlmDevice(dev.user_id, resp.json["device_id"], resp.json["access_token"])

    async def upload_keys(self, dev: OlmDevice, **extra: Any) -> dict[str, Any]:
        resp = await self.request("POST", f"{KEYS}/upload",
                                  {"device_keys": dev.device_keys(), **extra}, token=dev.token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def shared_room(self, *devs: OlmDevice) -> str:
        room = await self.create_room(devs[0].token, preset="public_chat")
        for dev in devs[1:]:
            resp = await self.join(dev.token, room)
            self.assertEqual(resp.code, 200, resp)
        return room

    async def query(self, dev: OlmDevice, user_id: str) -> dict[str, Any]:
        resp = await self.request("POST", f"{KEYS}/query", {"device_keys": {user_id: []}},
                                  token=dev.token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def changes(self, dev: OlmDevice, since: str, upto: str) -> dict[str, Any]:
        resp = await self.request(
            "GET", f"{KEYS}/changes?from={quote(since)}&to={quote(upto)}", token=dev.token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def woken_sync(self, dev: OlmDevice, since: str,
                         action: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        """A long-polling /sync from ``since``, then ``action``: the sync must be woken
        by it (SyTest's await_sync; the TIMEOUTs of issue 12 were missing wake-ups)."""
        waiting = defer.ensureDeferred(self.sync(dev.token, since, timeout=30000))
        await _pause(0.1)
        self.assertFalse(waiting.called, "the long-poll returned before the change")
        await action()
        for _ in range(100):
            if waiting.called:
                break
            await _pause(0.02)
        if not waiting.called:
            self.advance(31)
            await waiting
            self.fail("the long-polling /sync was not woken by the change")
        return await waiting


class UploadKeyTest(SytestE2eeCase):
    """tests/41end-to-end-keys/01-upload-key.pl"""

    async def test_can_upload_device_keys(self) -> None:
        alice = await self.device("alice")
        # SyTest's dummy, unsigned keys are refused: by design (signatures verified).
        resp = await self.request("POST", f"{KEYS}/upload", {
            "device_keys": {"user_id": alice.user_id, "device_id": alice.device_id},
            "one_time_keys": {"my_algorithm:my_id_1": "my+base64+key"}}, token=alice.token)
        self.assertEqual(resp.code, 400, resp)
        # With real, signed keys the upload works and the one-time keys are counted.
        body = await self.upload_keys(alice, one_time_keys={
            "my_algorithm:my_id_1": "my+base64+key", **alice.one_time_keys(2)})
        self.assertEqual(body["one_time_key_counts"]["my_algorithm"], 1)
        self.assertEqual(body["one_time_key_counts"]["signed_curve25519"], 2)
        # "Can query device keys using POST": no device_display_name by default.
        got = (await self.query(alice, alice.user_id))["device_keys"][alice.user_id]
        self.assertIn(alice.device_id, got)
        self.assertNotIn("device_display_name", got[alice.device_id]["unsigned"])
        # "Can query specific device keys using POST"
        resp = await self.request("POST", f"{KEYS}/query",
                                  {"device_keys": {alice.user_id: [alice.device_id]}},
                                  token=alice.token)
        self.assertEqual(list(resp.json["device_keys"][alice.user_id]), [alice.device_id])

    async def test_rejects_invalid_device_keys(self) -> None:
        bob = await self.device("bob")
        # algorithms, keys and signatures are required: M_BAD_JSON, as Synapse.
        resp = await self.request("POST", f"{KEYS}/upload", {
            "device_keys": {"user_id": bob.user_id, "device_id": bob.device_id},
            "one_time_keys": bob.one_time_keys(1)}, token=bob.token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        for missing in ("algorithms", "keys", "signatures", "user_id", "device_id"):
            keys = {k: v for k, v in bob.device_keys().items() if k != missing}
            resp = await self.request("POST", f"{KEYS}/upload", {"device_keys": keys},
                                      token=bob.token)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        # Nothing was stored.
        got = await self.query(bob, bob.user_id)
        self.assertEqual(got["device_keys"], {bob.user_id: {}})

    async def test_rejects_keys_of_another_user(self) -> None:
        alice, bob = await self.device("alice"), await self.device("bob")
        resp = await self.request("POST", f"{KEYS}/upload", {"device_keys": alice.device_keys()},
                                  token=bob.token)
        self.assertEqual(resp.code // 100, 4, resp)

    async def test_query_user_without_keys(self) -> None:
        alice = await self.device("alice")
        got = await self.query(alice, alice.user_id)
        self.assertEqual(got["device_keys"], {alice.user_id: {}})


class DeviceListsTest(SytestE2eeCase):
    """tests/41end-to-end-keys/06-device-lists.pl"""

    async def two_users_sharing_a_room(self) -> tuple[OlmDevice, OlmDevice, str]:
        user1, user2 = await self.device("user1"), await self.device("user2")
        room = await self.shared_room(user1, user2)
        return user1, user2, room

    async def test_local_device_key_changes_appear_in_sync(self) -> None:
        user1, user2, _ = await self.two_users_sharing_a_room()
        start = await self.sync(user1.token)
        body = await self.woken_sync(user1, start["next_batch"],
                                     lambda: self.upload_keys(user2))
        self.assertIn(user2.user_id, body["device_lists"]["changed"])

    async def test_local_new_device_changes_appear_in_sync(self) -> None:
        user1, user2, _ = await self.two_users_sharing_a_room()
        start = await self.sync(user1.token)
        body = await self.woken_sync(user1, start["next_batch"],
                                     lambda: self.login_again(user2))
        self.assertEqual(body["device_lists"]["changed"], [user2.user_id])
        # Logging in again on an existing device creates nothing new: no change.
        resp = await self.login("user2", device_id=user2.device_id)
        self.assertEqual(resp.code, 200, resp)
        quiet = await self.sync(user1.token, body["next_batch"])
        self.assertEqual(quiet["device_lists"], {"changed": [], "left": []})

    async def test_local_delete_device_changes_appear_in_sync(self) -> None:
        user1, user2, _ = await self.two_users_sharing_a_room()
        start = await self.sync(user1.token)
        path = f"{CS}/devices/{user2.device_id}"

        async def delete() -> None:
            auth = {"type": "m.login.password", "password": TEST_PASSWORD,
                    "identifier": {"type": "m.id.user", "user": user2.user_id}}
            first = await self.request("DELETE", path, {}, token=user2.token)
            resp = await self.request("DELETE", path, {
                "auth": {**auth, "session": first.json["session"]}}, token=user2.token)
            self.assertEqual(resp.code, 200, resp)

        body = await self.woken_sync(user1, start["next_batch"], delete)
        self.assertIn(user2.user_id, body["device_lists"]["changed"])

    async def test_local_update_device_changes_appear_in_sync(self) -> None:
        user1, user2, _ = await self.two_users_sharing_a_room()
        await self.upload_keys(user2)
        start = await self.sync(user1.token)

        async def rename() -> None:
            resp = await self.request("PUT", f"{CS}/devices/{user2.device_id}",
                                      {"display_name": "wibble"}, token=user2.token)
            self.assertEqual(resp.code, 200, resp)

        body = await self.woken_sync(user1, start["next_batch"], rename)
        self.assertEqual(body["device_lists"]["changed"], [user2.user_id])
        # "Can query remote device keys using POST after notification" (locally): the
        # new name is what /keys/query shows.
        got = await self.query(user1, user2.user_id)
        self.assertEqual(got["device_keys"][user2.user_id][user2.device_id]["unsigned"],
                         {"device_display_name": "wibble"})
        # A user sharing no room with user2 is not told.
        carol = await self.device("carol")
        carol_start = await self.sync(carol.token)
        resp = await self.request("PUT", f"{CS}/devices/{user2.device_id}",
                                  {"display_name": "wobble"}, token=user2.token)
        self.assertEqual(resp.code, 200, resp)
        carol_after = await self.sync(carol.token, carol_start["next_batch"])
        self.assertEqual(carol_after["device_lists"]["changed"], [])

    async def test_local_device_key_changes_appear_in_keys_changes(self) -> None:
        user1, user2, _ = await self.two_users_sharing_a_room()
        start = await self.sync(user1.token)
        await self.upload_keys(user2)
        after = await self.sync(user1.token, start["next_batch"])
        got = await self.changes(user1, start["next_batch"], after["next_batch"])
        self.assertIn(user2.user_id, got["changed"])

    async def test_new_users_appear_in_keys_changes(self) -> None:
        user1, user2 = await self.device("user1"), await self.device("user2")
        room = await self.create_room(user1.token, preset="public_chat")
        start = await self.sync(user1.token)
        resp = await self.join(user2.token, room)
        self.assertEqual(resp.code, 200, resp)
        after = await self.sync(user1.token, start["next_batch"])
        got = await self.changes(user1, start["next_batch"], after["next_batch"])
        self.assertIn(user2.user_id, got["changed"])

    async def test_left_notifs_when_other_user_leaves(self) -> None:
        creator, other, room = await self.two_users_sharing_a_room()
        await self.upload_keys(other)
        start = await self.sync(creator.token)
        body = await self.woken_sync(creator, start["next_batch"],
                                     lambda: self.member(other.token, room, "leave"))
        self.assertIn(other.user_id, body["device_lists"]["left"])
        got = await self.changes(creator, start["next_batch"], body["next_batch"])
        self.assertIn(other.user_id, got["left"])

    async def test_users_receive_updates_for_their_own_devices(self) -> None:
        user1 = await self.device("user1")
        start = await self.sync(user1.token)
        body = await self.woken_sync(user1, start["next_batch"],
                                     lambda: self.login_again(user1))
        self.assertEqual(body["device_lists"]["changed"], [user1.user_id])


class BackupTest(SytestE2eeCase):
    """tests/41end-to-end-keys/07-backup.pl: SyTest's algorithm and string auth_data."""

    async def create_backup(self, token: str, auth_data: Any = "anopaquestring") -> str:
        resp = await self.request("POST", VERSION, {"algorithm": SYTEST_ALG,
                                                    "auth_data": auth_data}, token=token)
        self.assertEqual(resp.code, 200, resp)
        return str(resp.json["version"])

    async def backup_key(self, token: str, version: str, index: int, data: str,
                         room: str = "!abcd", session: str = "1234") -> Response:
        return await self.request(
            "PUT", f"{ROOM_KEYS}/{quote(room)}/{session}?version={version}",
            {"first_message_index": index, "forwarded_count": 0, "is_verified": False,
             "session_data": data}, token=token)

    async def get_key(self, token: str, version: str, room: str | None = None,
                      session: str | None = None) -> Response:
        path = ROOM_KEYS + "".join(f"/{quote(p)}" for p in (room, session) if p is not None)
        return await self.request("GET", f"{path}?version={quote(version)}", token=token)

    async def test_can_create_backup_version(self) -> None:
        token = (await self.device("alice")).token
        version = await self.create_backup(token)
        resp = await self.request("GET", VERSION, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["algorithm"], SYTEST_ALG)
        self.assertEqual(resp.json["auth_data"], "anopaquestring")
        self.assertEqual(resp.json["version"], version)

    async def test_can_update_backup_version(self) -> None:
        token = (await self.device("alice")).token
        version = await self.create_backup(token)
        resp = await self.request("PUT", f"{VERSION}/{version}", {
            "algorithm": SYTEST_ALG, "auth_data": "adifferentopaquestring",
            "version": version}, token=token)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{VERSION}/{version}", token=token)
        self.assertEqual((resp.json["algorithm"], resp.json["auth_data"], resp.json["version"]),
                         (SYTEST_ALG, "adifferentopaquestring", version))
        # The algorithm of a version cannot change.
        resp = await self.request("PUT", f"{VERSION}/{version}", {
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": {"public_key": "k"}}, token=token)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def test_responds_correctly_when_backup_is_empty(self) -> None:
        token = (await self.device("alice")).token
        version = await self.create_backup(token)
        resp = await self.get_key(token, version, "!notaroom", "notassession")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.get_key(token, version, "!notaroom")
        self.assertEqual(resp.json, {"sessions": {}})
        resp = await self.get_key(token, version)
        self.assertEqual(resp.json, {"rooms": {}})
        resp = await self.get_key(token, "bogusversion")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_backup_keys_better_and_worse(self) -> None:
        token = (await self.device("alice")).token
        version = await self.create_backup(token)
        resp = await self.backup_key(token, version, 3, "anopaquestring")
        self.assertEqual(resp.code, 200, resp)
        resp = await self.get_key(token, version, "!abcd", "1234")
        self.assertEqual(resp.json, {"first_message_index": 3, "forwarded_count": 0,
                                     "is_verified": False, "session_data": "anopaquestring"})
        # "Can update keys with better versions"
        resp = await self.backup_key(token, version, 1, "anotheropaquestring")
        self.assertEqual(resp.code, 200, resp)
        # "Will not update keys with worse versions"
        resp = await self.backup_key(token, version, 2, "worse")
        self.assertEqual(resp.code, 200, resp)
        resp = await self.get_key(token, version, "!abcd", "1234")
        self.assertEqual((resp.json["first_message_index"], resp.json["session_data"]),
                         (1, "anotheropaquestring"))

    async def test_old_version_delete_and_recreate(self) -> None:
        token = (await self.device("alice")).token
        first = await self.create_backup(token)
        second = await self.create_backup(token)
        # "Will not back up to an old backup version"
        resp = await self.backup_key(token, first, 3, "x")
        self.assertEqual(resp.code // 100, 4, resp)
        # "Can delete backup": the previous version becomes current again.
        resp = await self.request("DELETE", f"{VERSION}/{second}", token=token)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", VERSION, token=token)
        self.assertEqual(resp.json["version"], first)
        resp = await self.request("GET", f"{VERSION}/{second}", token=token)
        self.assertEqual(resp.code, 404, resp)
        # "Deleted & recreated backups are empty"
        resp = await self.backup_key(token, first, 3, "areallyopaquestring")
        self.assertEqual(resp.code, 200, resp)
        await self.request("DELETE", f"{VERSION}/{first}", token=token)
        third = await self.create_backup(token)
        resp = await self.get_key(token, third)
        self.assertEqual(resp.json, {"rooms": {}})

    async def test_can_create_more_than_ten_versions(self) -> None:
        token = (await self.device("alice")).token
        versions = [await self.create_backup(token) for _ in range(11)]
        self.assertEqual(len(set(versions)), 11)
        resp = await self.request("GET", VERSION, token=token)
        self.assertEqual(resp.json["version"], versions[-1])

    async def test_spec_algorithm_stays_strict(self) -> None:
        """Only the spec's algorithm has a known shape, and it is still enforced."""
        token = (await self.device("alice")).token
        spec_alg = "m.megolm_backup.v1.curve25519-aes-sha2"
        resp = await self.request("POST", VERSION, {"algorithm": spec_alg,
                                                    "auth_data": "anopaquestring"}, token=token)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", VERSION, {"algorithm": spec_alg,
                                                    "auth_data": {"public_key": "k"}},
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.backup_key(token, resp.json["version"], 1, "a string")
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.request("POST", VERSION, {"algorithm": SYTEST_ALG,
                                                    "auth_data": "x" * 20000}, token=token)
        self.assertMatrixError(resp, 400, "M_TOO_LARGE")


class CrossSigningSytestTest(SytestE2eeCase):
    """tests/41end-to-end-keys/08-cross-signing.pl"""

    async def test_can_upload_self_signing_keys(self) -> None:
        alice = await self.device("alice")
        master = SigningKey.generate()
        key = cs_key(alice.user_id, "master", master)  # unsigned, as SyTest's
        resp = await self.request("POST", DEVICE_SIGNING, {"master_key": key},
                                  token=alice.token)
        self.assertEqual(resp.code, 200, resp)
        got = await self.query(alice, alice.user_id)
        # Exactly what was uploaded: no (empty) "signatures" added.
        self.assertEqual(got["master_keys"][alice.user_id], key)

    async def test_fails_to_replace_keys_without_auth(self) -> None:
        alice = await self.device("alice")
        for _ in range(2):
            key = cs_key(alice.user_id, "master", SigningKey.generate())
            resp = await self.request("POST", DEVICE_SIGNING, {"master_key": key},
                                      token=alice.token)
        self.assertEqual(resp.code, 401, resp)

    async def test_fails_to_upload_self_signing_key_without_master(self) -> None:
        alice = await self.device("alice")
        ssk = cs_key(alice.user_id, "self_signing", SigningKey.generate())
        resp = await self.request("POST", DEVICE_SIGNING, {"self_signing_key": ssk},
                                  token=alice.token)
        self.assertEqual(resp.code, 400, resp)

    async def test_changing_master_key_notifies_local_users(self) -> None:
        user1, user2 = await self.device("user1"), await self.device("user2")
        await self.shared_room(user1, user2)
        s1, s2 = await self.sync(user1.token), await self.sync(user2.token)
        master, ssk = SigningKey.generate(), SigningKey.generate()
        body = {"master_key": cs_key(user1.user_id, "master", master),
                "self_signing_key": cs_key(user1.user_id, "self_signing", ssk, master)}
        resp = await self.request("POST", DEVICE_SIGNING, body, token=user1.token)
        self.assertEqual(resp.code, 200, resp)
        s1 = await self.sync(user1.token, s1["next_batch"])
        s2 = await self.sync(user2.token, s2["next_batch"])
        self.assertIn(user1.user_id, s1["device_lists"]["changed"])
        self.assertIn(user1.user_id, s2["device_lists"]["changed"])
        # Signed device keys (SyTest's dummy signature would be refused by design).
        await self.upload_keys(user1)
        s1 = await self.sync(user1.token, s1["next_batch"])
        s2 = await self.sync(user2.token, s2["next_batch"])
        self.assertIn(user1.user_id, s1["device_lists"]["changed"])
        self.assertIn(user1.user_id, s2["device_lists"]["changed"])
        # The self-signing key signs the device: both are told.
        device = {k: v for k, v in user1.device_keys().items() if k != "signatures"}
        ssk_id = f"ed25519:{pub(ssk)}"
        sign(device, user1.user_id, ssk_id, ssk)
        resp = await self.request("POST", SIGNATURES,
                                  {user1.user_id: {user1.device_id: device}},
                                  token=user1.token)
        self.assertEqual(resp.json, {"failures": {}})
        s1 = await self.sync(user1.token, s1["next_batch"])
        s2 = await self.sync(user2.token, s2["next_batch"])
        self.assertIn(user1.user_id, s1["device_lists"]["changed"])
        self.assertIn(user1.user_id, s2["device_lists"]["changed"])
        for viewer in (user1, user2):
            got = await self.query(viewer, user1.user_id)
            sigs = got["device_keys"][user1.user_id][user1.device_id]["signatures"]
            self.assertEqual(set(sigs[user1.user_id]),
                             {f"ed25519:{user1.device_id}", ssk_id})
            self.assertEqual(sigs[user1.user_id][ssk_id], device["signatures"][
                user1.user_id][ssk_id])

    async def test_changing_user_signing_key_notifies_only_the_owner(self) -> None:
        user1, user2 = await self.device("user1"), await self.device("user2")
        await self.shared_room(user1, user2)
        master, ssk, usk = (SigningKey.generate() for _ in range(3))
        resp = await self.request("POST", DEVICE_SIGNING, {
            "master_key": cs_key(user1.user_id, "master", master),
            "self_signing_key": cs_key(user1.user_id, "self_signing", ssk, master)},
            token=user1.token)
        self.assertEqual(resp.code, 200, resp)
        s1, s2 = await self.sync(user1.token), await self.sync(user2.token)
        # A new user-signing key (with the legacy "user" UIA field SyTest sends).
        resp = await self.request("POST", DEVICE_SIGNING, {
            "auth": {"type": "m.login.password", "user": user1.user_id,
                     "password": TEST_PASSWORD},
            "user_signing_key": cs_key(user1.user_id, "user_signing", usk, master)},
            token=user1.token)
        self.assertEqual(resp.code, 200, resp)
        s1 = await self.sync(user1.token, s1["next_batch"])
        self.assertEqual(s1["device_lists"]["changed"], [user1.user_id])
        # user2 uploads a master key: user1 (sharing a room) and user2 are told, and
        # user2 is not told about user1's user-signing key.
        master2 = SigningKey.generate()
        master2_key = cs_key(user2.user_id, "master", master2)
        resp = await self.request("POST", DEVICE_SIGNING, {"master_key": master2_key},
                                  token=user2.token)
        self.assertEqual(resp.code, 200, resp)
        s2 = await self.sync(user2.token, s2["next_batch"])
        self.assertEqual(s2["device_lists"]["changed"], [user2.user_id])
        s1 = await self.sync(user1.token, s1["next_batch"])
        self.assertEqual(s1["device_lists"]["changed"], [user2.user_id])
        # user1 signs user2's master key: only user1 is told, and only user1 sees it.
        usk_id = f"ed25519:{pub(usk)}"
        signed = sign(dict(master2_key), user1.user_id, usk_id, usk)

        async def sign_it() -> None:
            r = await self.request("POST", SIGNATURES,
                                   {user2.user_id: {pub(master2): signed}}, token=user1.token)
            self.assertEqual(r.json, {"failures": {}})

        s1 = await self.woken_sync(user1, s1["next_batch"], sign_it)
        self.assertEqual(s1["device_lists"]["changed"], [user2.user_id])
        quiet = await self.sync(user2.token, s2["next_batch"])
        self.assertEqual(quiet["device_lists"], {"changed": [], "left": []})
        got = await self.query(user1, user2.user_id)
        self.assertEqual(got["master_keys"][user2.user_id]["signatures"][user1.user_id],
                         {usk_id: signed["signatures"][user1.user_id][usk_id]})
        got = await self.query(user2, user2.user_id)
        self.assertNotIn("signatures", got["master_keys"][user2.user_id])
        # /keys/changes agrees with /sync for both.
        self.assertIn(user2.user_id, (await self.changes(
            user1, s2["next_batch"], s1["next_batch"]))["changed"])
