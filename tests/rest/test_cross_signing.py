"""POST /keys/device_signing/upload, /keys/signatures/upload and what /keys/query shows,
with real Ed25519 keys."""

from __future__ import annotations

import copy
from typing import Any

from nacl.signing import SigningKey

from homeserver.events.canonical_json import encode_canonical_json
from homeserver.events.hashing import encode_base64
from tests.harness import TEST_PASSWORD, Response
from tests.rest.room_helpers import CS, RoomTestCase

UPLOAD = f"{CS}/keys/device_signing/upload"
SIGS = f"{CS}/keys/signatures/upload"


def pub(sk: SigningKey) -> str:
    return encode_base64(bytes(sk.verify_key))


def sign(obj: dict[str, Any], user_id: str, key_id: str, sk: SigningKey) -> dict[str, Any]:
    msg = encode_canonical_json({k: v for k, v in obj.items()
                                 if k not in ("signatures", "unsigned")})
    obj.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = encode_base64(
        sk.sign(msg).signature)
    return obj


def cs_key(user_id: str, usage: str, sk: SigningKey, master: SigningKey | None = None
           ) -> dict[str, Any]:
    key: dict[str, Any] = {"user_id": user_id, "usage": [usage],
                           "keys": {f"ed25519:{pub(sk)}": pub(sk)}}
    if master is not None:
        sign(key, user_id, f"ed25519:{pub(master)}", master)
    return key


class Identity:
    """A user's three cross-signing keys."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.master, self.ssk, self.usk = (SigningKey.generate() for _ in range(3))

    def body(self) -> dict[str, Any]:
        return {"master_key": self.master_key(),
                "self_signing_key": cs_key(self.user_id, "self_signing", self.ssk, self.master),
                "user_signing_key": cs_key(self.user_id, "user_signing", self.usk, self.master)}

    def master_key(self) -> dict[str, Any]:
        return cs_key(self.user_id, "master", self.master)


class CrossSigningTest(RoomTestCase):
    async def setup_user(self, name: str) -> tuple[str, str, SigningKey, Identity]:
        """Register, upload device keys; returns (token, device_id, device key, identity)."""
        reg = await self.register(name)
        uid = f"@{name}:test.local"
        dev = reg["device_id"]
        dk = SigningKey.generate()
        device_keys = sign({"user_id": uid, "device_id": dev,
                            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                            "keys": {f"curve25519:{dev}": pub(SigningKey.generate()),
                                     f"ed25519:{dev}": pub(dk)}}, uid, f"ed25519:{dev}", dk)
        resp = await self.request("POST", f"{CS}/keys/upload", {"device_keys": device_keys},
                                  token=reg["access_token"])
        self.assertEqual(resp.code, 200, resp)
        return reg["access_token"], dev, dk, Identity(uid)

    async def upload(self, token: str | None, body: dict[str, Any]) -> Response:
        return await self.request("POST", UPLOAD, body, token=token)

    async def query(self, token: str, *users: str) -> dict[str, Any]:
        resp = await self.request("POST", f"{CS}/keys/query",
                                  {"device_keys": {u: [] for u in users}}, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def device_keys(self, token: str, user_id: str, device_id: str) -> dict[str, Any]:
        keys = (await self.query(token, user_id))["device_keys"][user_id][device_id]
        keys.pop("unsigned", None)
        return keys

    async def test_first_upload_without_uia_and_query(self) -> None:
        token, _, _, me = await self.setup_user("alice")
        bob, *_ = await self.setup_user("bob")
        resp = await self.upload(token, me.body())
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {})
        mine = await self.query(token, me.user_id)
        self.assertEqual(mine["master_keys"][me.user_id]["keys"], me.master_key()["keys"])
        self.assertEqual(mine["self_signing_keys"][me.user_id], me.body()["self_signing_key"])
        self.assertIn(me.user_id, mine["user_signing_keys"])
        theirs = await self.query(bob, me.user_id)
        self.assertIn(me.user_id, theirs["master_keys"])
        self.assertIn(me.user_id, theirs["self_signing_keys"])
        self.assertEqual(theirs["user_signing_keys"], {})
        # Re-uploading exactly the stored keys needs no UIA either (a retried request).
        again = await self.upload(token, me.body())
        self.assertEqual(again.code, 200, again)

    async def test_replacing_keys_requires_password(self) -> None:
        token, _, _, me = await self.setup_user("alice")
        self.assertEqual((await self.upload(token, me.body())).code, 200)
        new = Identity(me.user_id)
        first = await self.upload(token, new.body())
        self.assertEqual(first.code, 401, first)
        self.assertEqual(first.json["flows"], [{"stages": ["m.login.password"]}])
        wrong = await self.upload(token, {**new.body(), "auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "alice"}, "password": "not-it-at-all"}})
        self.assertMatrixError(wrong, 401, "M_FORBIDDEN")
        ok = await self.upload(token, {**new.body(), "auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "alice"}, "password": TEST_PASSWORD}})
        self.assertEqual(ok.code, 200, ok)
        shown = await self.query(token, me.user_id)
        self.assertEqual(shown["master_keys"][me.user_id]["keys"], new.master_key()["keys"])

    async def test_bad_uploads(self) -> None:
        token, dev, _, me = await self.setup_user("alice")
        other = Identity("@bob:test.local")
        forged = me.body()
        forged["self_signing_key"] = cs_key(me.user_id, "self_signing", me.ssk,
                                            SigningKey.generate())
        forged["self_signing_key"]["signatures"] = {me.user_id: {
            f"ed25519:{pub(me.master)}": next(iter(next(iter(
                forged["self_signing_key"]["signatures"].values())).values()))}}
        unsigned = me.body()
        del unsigned["user_signing_key"]["signatures"]
        two_keys = me.body()
        two_keys["master_key"]["keys"]["ed25519:AAAA"] = "AAAA"
        bad_b64 = me.body()
        bad_b64["master_key"]["keys"] = {"ed25519:!!notbase64": "!!notbase64"}
        wrong_usage = me.body()
        wrong_usage["master_key"]["usage"] = ["self_signing"]
        mismatched_id = me.body()
        mismatched_id["master_key"]["keys"] = {f"ed25519:{pub(me.master)}": pub(me.ssk)}
        cases: list[tuple[dict[str, Any], int, str]] = [
            (forged, 400, "M_INVALID_SIGNATURE"),
            (unsigned, 400, "M_INVALID_SIGNATURE"),
            (other.body(), 400, "M_INVALID_PARAM"),  # keys of another user
            (two_keys, 400, "M_INVALID_PARAM"),
            (bad_b64, 400, "M_INVALID_PARAM"),
            (wrong_usage, 400, "M_INVALID_PARAM"),
            (mismatched_id, 400, "M_INVALID_PARAM"),
            ({"self_signing_key": me.body()["self_signing_key"]}, 400, "M_MISSING_PARAM"),
            ({"master_key": "nope"}, 400, "M_BAD_JSON"),
            ({"master_key": {"user_id": me.user_id, "usage": ["master"],
                             "keys": {f"ed25519:{dev}": dev}}}, 400, "M_INVALID_PARAM"),
        ]
        for body, code, errcode in cases:
            self.assertMatrixError(await self.upload(token, body), code, errcode)
        self.assertEqual((await self.query(token, me.user_id))["master_keys"], {})

    async def test_key_named_like_a_device_is_refused(self) -> None:
        reg = await self.register("alice")
        sk = SigningKey.generate()
        # Log in a device whose id is the master key's public key.
        login = await self.login("alice", device_id=pub(sk))
        self.assertEqual(login.code, 200, login)
        key = cs_key("@alice:test.local", "master", sk)
        self.assertMatrixError(await self.upload(reg["access_token"], {"master_key": key}),
                               403, "M_FORBIDDEN")

    async def test_inline_master_signatures_are_verified(self) -> None:
        token, dev, dk, me = await self.setup_user("alice")
        body = me.body()
        sign(body["master_key"], me.user_id, f"ed25519:{dev}", dk)
        body["master_key"]["signatures"][me.user_id]["ed25519:FAKEDEVICE"] = "AAAA"
        body["master_key"]["signatures"]["@mallory:test.local"] = {"ed25519:X": "AAAA"}
        self.assertEqual((await self.upload(token, body)).code, 200)
        master = (await self.query(token, me.user_id))["master_keys"][me.user_id]
        self.assertEqual(set(master["signatures"]), {me.user_id})
        self.assertEqual(set(master["signatures"][me.user_id]), {f"ed25519:{dev}"})

    async def test_self_signing_a_device(self) -> None:
        token, dev, _, me = await self.setup_user("alice")
        bob, *_ = await self.setup_user("bob")
        await self.upload(token, me.body())
        keys = await self.device_keys(token, me.user_id, dev)
        ssk_id = f"ed25519:{pub(me.ssk)}"
        signed = sign(copy.deepcopy(keys), me.user_id, ssk_id, me.ssk)
        resp = await self.request("POST", SIGS, {me.user_id: {dev: signed}}, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"failures": {}})
        for viewer in (token, bob):
            shown = await self.device_keys(viewer, me.user_id, dev)
            self.assertEqual(shown["signatures"][me.user_id][ssk_id],
                             signed["signatures"][me.user_id][ssk_id])

    async def test_bad_device_signatures_fail(self) -> None:
        token, dev, _, me = await self.setup_user("alice")
        await self.upload(token, me.body())
        keys = await self.device_keys(token, me.user_id, dev)
        ssk_id = f"ed25519:{pub(me.ssk)}"
        forged = sign(copy.deepcopy(keys), me.user_id, ssk_id, SigningKey.generate())
        tampered = copy.deepcopy(keys)
        tampered["algorithms"] = ["m.megolm.v1.aes-sha2"]
        sign(tampered, me.user_id, ssk_id, me.ssk)
        unknown = sign({**copy.deepcopy(keys), "device_id": "NOPE"}, me.user_id, ssk_id, me.ssk)
        resp = await self.request("POST", SIGS, {me.user_id: {
            dev: forged, "NOPE": unknown, "STRING": "x"}}, token=token)
        self.assertEqual(resp.code, 200, resp)
        failures = resp.json["failures"][me.user_id]
        self.assertEqual(failures[dev]["errcode"], "M_INVALID_SIGNATURE")
        self.assertEqual(failures["NOPE"]["errcode"], "M_NOT_FOUND")
        self.assertEqual(failures["STRING"]["errcode"], "M_INVALID_PARAM")
        resp = await self.request("POST", SIGS, {me.user_id: {dev: tampered}}, token=token)
        self.assertEqual(resp.json["failures"][me.user_id][dev]["errcode"], "M_INVALID_SIGNATURE")
        shown = await self.device_keys(token, me.user_id, dev)
        self.assertNotIn(ssk_id, shown["signatures"][me.user_id])

    async def test_device_signing_the_master_key(self) -> None:
        token, dev, dk, me = await self.setup_user("alice")
        await self.upload(token, me.body())
        master = (await self.query(token, me.user_id))["master_keys"][me.user_id]
        good = sign(copy.deepcopy(master), me.user_id, f"ed25519:{dev}", dk)
        resp = await self.request("POST", SIGS, {me.user_id: {pub(me.master): good}}, token=token)
        self.assertEqual(resp.json, {"failures": {}}, resp)
        shown = (await self.query(token, me.user_id))["master_keys"][me.user_id]
        self.assertIn(f"ed25519:{dev}", shown["signatures"][me.user_id])
        forged = sign(copy.deepcopy(master), me.user_id, f"ed25519:{dev}", SigningKey.generate())
        resp = await self.request("POST", SIGS, {me.user_id: {pub(me.master): forged}},
                                  token=token)
        self.assertEqual(resp.json["failures"][me.user_id][pub(me.master)]["errcode"],
                         "M_INVALID_SIGNATURE")

    async def test_user_signing_another_users_master_key(self) -> None:
        alice, _, _, a = await self.setup_user("alice")
        bob, _, _, b = await self.setup_user("bob")
        carol, *_ = await self.setup_user("carol")
        await self.upload(alice, a.body())
        await self.upload(bob, b.body())
        bob_master = (await self.query(alice, b.user_id))["master_keys"][b.user_id]
        usk_id = f"ed25519:{pub(a.usk)}"
        good = sign(copy.deepcopy(bob_master), a.user_id, usk_id, a.usk)
        resp = await self.request("POST", SIGS, {b.user_id: {pub(b.master): good}}, token=alice)
        self.assertEqual(resp.json, {"failures": {}}, resp)
        seen = (await self.query(alice, b.user_id))["master_keys"][b.user_id]
        self.assertEqual(seen["signatures"][a.user_id][usk_id],
                         good["signatures"][a.user_id][usk_id])
        # Only the signer sees it.
        for viewer in (bob, carol):
            other = (await self.query(viewer, b.user_id))["master_keys"][b.user_id]
            self.assertNotIn(a.user_id, other.get("signatures", {}))
        forged = sign(copy.deepcopy(bob_master), a.user_id, usk_id, SigningKey.generate())
        wrong_key = sign(copy.deepcopy(bob_master), a.user_id, usk_id, a.usk)
        resp = await self.request("POST", SIGS, {b.user_id: {
            pub(b.master): forged, "notbobskey": wrong_key}, "@nobody:test.local": {"k": {}}},
            token=alice)
        failures = resp.json["failures"]
        self.assertEqual(failures[b.user_id][pub(b.master)]["errcode"], "M_INVALID_SIGNATURE")
        self.assertEqual(failures[b.user_id]["notbobskey"]["errcode"], "M_NOT_FOUND")
        self.assertEqual(failures["@nobody:test.local"]["k"]["errcode"], "M_NOT_FOUND")

    async def test_signing_without_keys_fails(self) -> None:
        alice, dev, _, a = await self.setup_user("alice")
        bob, _, _, b = await self.setup_user("bob")
        await self.upload(bob, b.body())
        resp = await self.request("POST", SIGS, {
            a.user_id: {dev: {"user_id": a.user_id}},
            b.user_id: {pub(b.master): b.master_key()}}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["failures"][a.user_id][dev]["errcode"], "M_NOT_FOUND")
        self.assertEqual(resp.json["failures"][b.user_id][pub(b.master)]["errcode"],
                         "M_NOT_FOUND")
        bad = await self.request("POST", SIGS, {a.user_id: "x"}, token=alice)
        self.assertEqual(bad.code, 200, bad)
        self.assertIn(a.user_id, bad.json["failures"])
        self.assertMatrixError(await self.request("POST", SIGS, [], token=alice),
                               400, "M_BAD_JSON")

    async def test_upload_is_a_device_list_change(self) -> None:
        alice, _, _, a = await self.setup_user("alice")
        bob, *_ = await self.setup_user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        start = await self.sync(bob)
        self.assertEqual((await self.upload(alice, a.body())).code, 200)
        after = await self.sync(bob, start["next_batch"])
        self.assertIn(a.user_id, after["device_lists"]["changed"])

    async def test_requires_token(self) -> None:
        for path in (UPLOAD, SIGS):
            self.assertMatrixError(await self.request("POST", path, {}), 401, "M_MISSING_TOKEN")
