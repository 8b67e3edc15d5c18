"""The e2ee_only policy plugin: plaintext refused per ``e2ee.policy``, ciphertext shape
checks, new rooms encrypted under ``everywhere``."""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.trial import unittest

from homeserver.config.loader import ConfigError
from homeserver.http.errors import MatrixError
from plugins.e2ee_only import MEGOLM, OLM, check_encrypted_content
from tests.harness import make_config
from tests.rest.room_helpers import CS, RoomTestCase, q

ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}


def b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode().rstrip("=")


def megolm(**extra: Any) -> dict[str, Any]:
    return {"algorithm": MEGOLM, "ciphertext": b64(200), "session_id": b64(32),
            "sender_key": b64(32), "device_id": "DEV", **extra}


def olm() -> dict[str, Any]:
    return {"algorithm": OLM, "sender_key": b64(32),
            "ciphertext": {b64(32): {"type": 0, "body": b64(300)}}}


GARBAGE: list[dict[str, Any]] = [
    {"body": "hello"},
    {"algorithm": "m.plaintext", "ciphertext": "hello"},
    {"algorithm": MEGOLM, "ciphertext": b64(200)},  # no session_id
    {"algorithm": MEGOLM, "ciphertext": "hello there", "session_id": "s"},
    {"algorithm": MEGOLM, "ciphertext": b64(10), "session_id": "s"},  # too short
    megolm(body="the secret, in plaintext"),
    megolm(sender_key=5),
    {"algorithm": OLM, "ciphertext": {"k": {"type": "0", "body": b64(40)}}, "sender_key": "k"},
    {"algorithm": OLM, "ciphertext": "x", "sender_key": "k"},
    {"algorithm": OLM, "ciphertext": {"k": {"type": 0, "body": b64(40)}}},  # no sender_key
]


class PolicyOffTest(RoomTestCase):
    async def test_default_accepts_plaintext(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, initial_state=[ENCRYPTION])
        self.assertEqual((await self.send(alice, room)).code, 200)
        resp = await self.send(alice, room, event_type="m.room.encrypted", content={"x": 1})
        self.assertEqual(resp.code, 200, resp)
        state = await self.request("GET", f"{CS}/rooms/{q(await self.create_room(alice))}/state",
                                   token=alice)
        self.assertNotIn("m.room.encryption", [e["type"] for e in state.json])


class EncryptedRoomsTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"e2ee": {"policy": "encrypted_rooms"}}

    async def test_plaintext_refused_in_encrypted_rooms_only(self) -> None:
        alice = await self.user("alice")
        plain_room = await self.create_room(alice)
        self.assertEqual((await self.send(alice, plain_room)).code, 200)
        room = await self.create_room(alice, initial_state=[ENCRYPTION])
        target = (await self.send(alice, room, event_type="m.room.encrypted",
                                  content=megolm())).json["event_id"]
        for event_type, content in (("m.room.message", {"msgtype": "m.text", "body": "hi"}),
                                    ("m.sticker", {"body": "s", "url": "mxc://a/b"}),
                                    ("m.reaction", {"m.relates_to": {
                                        "rel_type": "m.annotation", "event_id": target,
                                        "key": "secret"}}),
                                    ("m.call.invite", {"call_id": "c"}),
                                    ("com.example.custom", {"text": "x"})):
            resp = await self.send(alice, room, event_type=event_type, content=content)
            self.assertMatrixError(resp, 400, "M_FORBIDDEN")
            self.assertEqual(resp.json["org.parley.policy"], "e2ee_only")
            self.assertIn("encrypt", resp.json["error"])
        # Encryption enabled later counts too.
        later = await self.create_room(alice)
        resp = await self.put_state(alice, later, "m.room.encryption", {"algorithm": MEGOLM})
        self.assertEqual(resp.code, 200, resp)
        self.assertMatrixError(await self.send(alice, later), 400, "M_FORBIDDEN")

    async def test_refused_plaintext_is_not_stored(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, initial_state=[ENCRYPTION])
        await self.send(alice, room, "top secret")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=50",
                                  token=alice)
        self.assertNotIn("top secret", resp.raw.decode())

    async def test_ciphertext_and_state_accepted(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, initial_state=[ENCRYPTION])
        root = ""
        for content in (megolm(), olm(),
                        megolm(**{"m.relates_to": {"rel_type": "m.thread", "event_id": "$"}})):
            if "m.relates_to" in content:
                content["m.relates_to"]["event_id"] = root
            resp = await self.send(alice, room, event_type="m.room.encrypted", content=content)
            self.assertEqual(resp.code, 200, resp)
            root = root or resp.json["event_id"]
        self.assertEqual((await self.put_state(alice, room, "m.room.topic", {"topic": "t"})).code,
                         200)
        resp = await self.put_state(alice, room, "m.room.message", {"body": "sneaky"}, "k")
        self.assertMatrixError(resp, 400, "M_FORBIDDEN")
        event_id = (await self.send(alice, room, event_type="m.room.encrypted",
                                    content=megolm())).json["event_id"]
        redact = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(event_id)}/r1",
                                    {"reason": "oops"}, token=alice)
        self.assertEqual(redact.code, 200, redact)

    async def test_garbage_ciphertext_refused(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, initial_state=[ENCRYPTION])
        for content in GARBAGE:
            resp = await self.send(alice, room, event_type="m.room.encrypted", content=content)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_non_member_gets_membership_error_first(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat", initial_state=[ENCRYPTION])
        self.assertMatrixError(await self.send(bob, room), 403, "M_FORBIDDEN")

    async def test_new_rooms_are_not_encrypted_by_default(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        state = await self.request("GET", f"{CS}/rooms/{q(room)}/state", token=alice)
        self.assertNotIn("m.room.encryption", [e["type"] for e in state.json])

    async def test_send_requires_token(self) -> None:
        resp = await self.request("PUT", f"{CS}/rooms/{q('!r:test.local')}/send/m.room.message/t",
                                  {"body": "x"})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")


class EverywhereTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"e2ee": {"policy": "everywhere"}}

    async def test_new_rooms_encrypted_and_plaintext_refused(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.encryption/",
                                  token=alice)
        self.assertEqual(resp.json, {"algorithm": MEGOLM})
        resp = await self.send(alice, room)
        self.assertMatrixError(resp, 400, "M_FORBIDDEN")
        self.assertIn("anywhere", resp.json["error"])
        ok = await self.send(alice, room, event_type="m.room.encrypted", content=megolm())
        self.assertEqual(ok.code, 200, ok)

    async def test_requested_encryption_settings_are_kept(self) -> None:
        alice = await self.user("alice")
        custom = {**ENCRYPTION, "content": {"algorithm": MEGOLM, "rotation_period_ms": 1000}}
        room = await self.create_room(alice, initial_state=[custom])
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.encryption/",
                                  token=alice)
        self.assertEqual(resp.json["rotation_period_ms"], 1000)


class ShapeAndConfigTest(unittest.TestCase):
    def test_shapes(self) -> None:
        check_encrypted_content(megolm())
        check_encrypted_content(olm())
        for content in GARBAGE:
            with self.assertRaises(MatrixError):
                check_encrypted_content(content)

    def test_config(self) -> None:
        for raw, expected in ((None, "off"), (False, "off"), ("off", "off"),
                              ("encrypted_rooms", "encrypted_rooms"),
                              ("everywhere", "everywhere")):
            overrides = {} if raw is None else {"e2ee": {"policy": raw}}
            config, _ = make_config("/tmp", "sqlite", **overrides)
            self.assertEqual(config.e2ee_policy, expected)
        for bad in ({"policy": "sometimes"}, {"mode": "off"}, {"policy": True}):
            with self.assertRaises(ConfigError):
                make_config("/tmp", "sqlite", e2ee=bad)
