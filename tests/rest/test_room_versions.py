"""Room versions 1 to 12 over HTTP (issue 12): create, send, receive, join, invite,
redact and upgrade in every version; the stored PDUs have each version's event format
(v1/v2 ids carried in the PDU with hashed references; v3 standard and v4+ URL-safe
hash ids); string power levels in v1-v9 only; knock from v7, restricted from v8.
SyTest: 32room-versions, 10apidoc/30room-create, 30rooms/60version_upgrade."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import reactor, task

from homeserver.events.hashing import compute_event_id, encode_base64, reference_hash
from homeserver.events.model import Event
from homeserver.events.room_versions import EventFormat, get_room_version
from homeserver.events.signing import (
    check_content_hash,
    get_verify_key,
    read_signing_key_file,
    verify_event_signature,
)
from tests.rest.room_helpers import CS, RoomTestCase, q

ALL = [str(n) for n in range(1, 13)]
SERVER = "test.local"
ALICE = f"@alice:{SERVER}"
BOB = f"@bob:{SERVER}"

_V1_ID = re.compile(r"\$[A-Za-z0-9_-]{24}:" + re.escape(SERVER))
_V3_ID = re.compile(r"\$[A-Za-z0-9+/]{43}")
_V4_ID = re.compile(r"\$[A-Za-z0-9_-]{43}")
_PDU_ONLY = ("prev_events", "auth_events", "hashes", "signatures", "depth", "origin")


class RoomVersionsTest(RoomTestCase):
    async def stored(self, event_id: str) -> Event:
        event = await self.hs.stores.events.get_event(event_id)
        assert event is not None, event_id
        return event

    async def timeline(self, token: str, room: str, since: str | None = None) -> tuple[list[Any], str]:
        body = await self.sync(token, since)
        joined = body["rooms"]["join"].get(room, {})
        return joined.get("timeline", {}).get("events", []), body["next_batch"]

    def check_pdu(self, event: Event, cited: dict[str, Event]) -> None:
        """The PDU is in its version's format, hashed and signed as the spec says."""
        version = event.room_version
        pdu = event.pdu
        self.assertTrue(check_content_hash(pdu), event.event_id)
        key = read_signing_key_file(self.config.signing_key_path)
        verify_event_signature(pdu, SERVER, get_verify_key(key), version)
        self.assertEqual(compute_event_id(pdu, version), event.event_id)
        pattern = {EventFormat.V1: _V1_ID, EventFormat.V3: _V3_ID, EventFormat.V4: _V4_ID}
        self.assertRegex(event.event_id, pattern[version.event_format])
        if version.event_format == EventFormat.V1:
            self.assertEqual(pdu["event_id"], event.event_id)
        else:
            self.assertNotIn("event_id", pdu)
        for key_name in ("prev_events", "auth_events"):
            for ref in pdu[key_name]:
                ref_id = ref[0] if isinstance(ref, list) else ref
                self.assertIn(ref_id, cited)
                # v1/v2: [id, {"sha256": reference hash}]; v3+: the bare id.
                if version.event_format == EventFormat.V1:
                    digest = encode_base64(reference_hash(cited[ref_id].pdu, version))
                    self.assertEqual(ref, [ref_id, {"sha256": digest}])
                else:
                    self.assertEqual(ref, ref_id)

    async def test_create_send_receive_every_version(self) -> None:
        """SyTest "User can create and send/receive messages in a room with version N"
        and "POST /createRoom creates a room with the given version"."""
        alice = await self.user("alice")
        for version in ALL:
            room = await self.create_room(alice, room_version=version)
            events, since = await self.timeline(alice, room)
            self.assertEqual(events[0]["type"], "m.room.create")
            self.assertEqual(events[0]["content"]["room_version"], version)
            resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.create/",
                                      token=alice)
            self.assertEqual(resp.json["room_version"], version)
            if int(version) <= 10:
                self.assertEqual(resp.json["creator"], ALICE)
                self.assertTrue(room.endswith(":" + SERVER))
            event_id = await self.send_ok(alice, room, f"hello v{version}")
            new, _ = await self.timeline(alice, room, since)
            self.assertEqual([e["event_id"] for e in new], [event_id])
            served = new[0]
            self.assertEqual(served["content"]["body"], f"hello v{version}")
            for key in _PDU_ONLY:  # client format never shows PDU fields
                self.assertNotIn(key, served)
            got = await self.get_event(alice, room, event_id)
            self.assertEqual(got.code, 200, got)
            for key in _PDU_ONLY:
                self.assertNotIn(key, got.json)
            # Every event of the room, as stored: the version's format.
            all_ids = [e["event_id"] for e in events] + [event_id]
            stored = {i: await self.stored(i) for i in all_ids}
            for event in stored.values():
                self.assertEqual(event.room_version, get_room_version(version))
                self.check_pdu(event, stored)

    async def test_join_and_invite_every_version(self) -> None:
        """SyTest "local user can join room with version N" and "User can invite local
        user to room with version N"."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        for version in ALL:
            alias_name = f"v{version}"
            room = await self.create_room(alice, room_version=version, preset="public_chat",
                                          room_alias_name=alias_name)
            resp = await self.join(bob, f"#{alias_name}:{SERVER}")
            self.assertEqual(resp.code, 200, resp)
            _, since = await self.timeline(bob, room)
            event_id = await self.send_ok(alice, room, "hello")
            new, _ = await self.timeline(bob, room, since)
            self.assertEqual([e["event_id"] for e in new], [event_id])

            private = await self.create_room(alice, room_version=version, preset="private_chat")
            self.assertEqual((await self.join(bob, private)).code, 403)
            resp = await self.member(alice, private, "invite", user_id=BOB)
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual((await self.join(bob, private)).code, 200)
            _, since = await self.timeline(bob, private)
            event_id = await self.send_ok(alice, private, "hello")
            new, _ = await self.timeline(bob, private, since)
            self.assertEqual([e["event_id"] for e in new], [event_id])

    async def test_redaction_every_version(self) -> None:
        alice = await self.user("alice")
        for version in ALL:
            room = await self.create_room(alice, room_version=version)
            target = await self.send_ok(alice, room, "secret")
            resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/redact/{q(target)}/r{version}",
                                      {"reason": "oops"}, token=alice)
            self.assertEqual(resp.code, 200, resp)
            redaction_id = resp.json["event_id"]
            got = await self.get_event(alice, room, target)
            self.assertEqual(got.json["content"], {})
            self.assertEqual(got.json["unsigned"]["redacted_because"]["event_id"], redaction_id)
            self.assertEqual(got.json["unsigned"]["redacted_because"]["redacts"], target)
            redaction = await self.stored(redaction_id)
            self.assertEqual(redaction.redacts, target)
            in_content = redaction.pdu["content"].get("redacts")
            self.assertEqual(in_content, target if int(version) >= 11 else None)

    async def test_upgrade_from_and_to_old_versions(self) -> None:
        """Upgrades 1 -> 2 -> ... -> 12 -> 1 (SyTest 60version_upgrade), string power
        levels of an old room becoming integers in v10+."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, room_version="1", preset="public_chat")
        await self.join(bob, room)
        resp = await self.put_state(alice, room, "m.room.power_levels", {
            "users": {ALICE: "100", BOB: " 40 "}, "state_default": "50", "ban": "+50",
            "events": {"m.room.name": "60"}})
        self.assertEqual(resp.code, 200, resp)
        for version in ALL[1:] + ["1"]:
            resp = await self.request("POST", f"{CS}/rooms/{q(room)}/upgrade",
                                      {"new_version": version}, token=alice)
            self.assertEqual(resp.code, 200, (version, resp))
            new_room = resp.json["replacement_room"]
            create = await self.request("GET", f"{CS}/rooms/{q(new_room)}/state/m.room.create/",
                                        token=alice)
            self.assertEqual(create.json["room_version"], version)
            self.assertEqual(create.json["predecessor"]["room_id"], room)
            tomb = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.tombstone/",
                                      token=alice)
            self.assertEqual(tomb.json["replacement_room"], new_room)
            power = (await self.request(
                "GET", f"{CS}/rooms/{q(new_room)}/state/m.room.power_levels/", token=alice)).json
            if version == "2":
                self.assertEqual(power["users"][BOB], 40)
                self.assertEqual(power["ban"], 50)
                self.assertEqual(power["events"]["m.room.name"], 60)
            await self.send_ok(alice, new_room, f"in v{version}")
            room = new_room

    async def test_bogus_upgrade_fails_gracefully(self) -> None:
        """SyTest "/upgrade of a bogus room fails gracefully"."""
        alice = await self.user("alice")
        for bogus in ("!fail:unknown", "!bogus:" + SERVER):
            resp = await self.request("POST", f"{CS}/rooms/{q(bogus)}/upgrade",
                                      {"new_version": "6"}, token=alice)
            self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        room = await self.create_room(alice, room_version="3")
        for bad in ("13", "0", "1.0", "my_bad_version"):
            resp = await self.request("POST", f"{CS}/rooms/{q(room)}/upgrade",
                                      {"new_version": bad}, token=alice)
            self.assertMatrixError(resp, 400, "M_UNSUPPORTED_ROOM_VERSION")

    async def test_string_power_levels_v1_to_v9_only(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        for version in ALL:
            room = await self.create_room(alice, room_version=version, preset="public_chat")
            await self.join(bob, room)
            stringy = {"users": {ALICE: "100", BOB: "050"}, "state_default": " 50 ",
                       "events_default": "0", "events": {"m.room.topic": "+50"}}
            resp = await self.put_state(alice, room, "m.room.power_levels", stringy)
            if int(version) >= 10:
                self.assertMatrixError(resp, 400, "M_BAD_JSON")
                continue
            self.assertEqual(resp.code, 200, (version, resp))
            # Bob's level "050" is 50: enough for the topic ("+50"), not for the power levels.
            resp = await self.put_state(bob, room, "m.room.topic", {"topic": "hi"})
            self.assertEqual(resp.code, 200, (version, resp))
            resp = await self.put_state(bob, room, "m.room.power_levels",
                                        {**stringy, "users": {ALICE: "100", BOB: "100"}})
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            # Values that are no integer at all are refused in every version.
            for bad in ({"ban": "fifty"}, {"users": {BOB: "5.0"}}, {"events": {"m.x": True}}):
                resp = await self.put_state(alice, room, "m.room.power_levels", {**stringy, **bad})
                self.assertMatrixError(resp, 400, "M_BAD_JSON")

    async def test_knock_refused_before_v7(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        for version in ALL:
            room = await self.create_room(alice, room_version=version)
            resp = await self.put_state(alice, room, "m.room.join_rules", {"join_rule": "knock"})
            if int(version) < 7:
                self.assertMatrixError(resp, 400, "M_BAD_JSON")
                # Even in a public room, a knock is no membership these versions know.
                await self.put_state(alice, room, "m.room.join_rules", {"join_rule": "public"})
                resp = await self.request("POST", f"{CS}/knock/{q(room)}", {}, token=bob)
                self.assertEqual(resp.code, 403, (version, resp))
                continue
            self.assertEqual(resp.code, 200, (version, resp))
            resp = await self.request("POST", f"{CS}/knock/{q(room)}", {}, token=bob)
            self.assertEqual(resp.code, 200, (version, resp))

    async def test_restricted_refused_before_v8(self) -> None:
        alice = await self.user("alice")
        bob = await self.user("bob")
        for version in ALL:
            space = await self.create_room(alice, room_version=version, preset="public_chat")
            await self.join(bob, space)
            room = await self.create_room(alice, room_version=version)
            rule = {"join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}]}
            resp = await self.put_state(alice, room, "m.room.join_rules", rule)
            if int(version) < 8:
                self.assertMatrixError(resp, 400, "M_BAD_JSON")
                self.assertEqual((await self.join(bob, room)).code, 403)
                continue
            self.assertEqual(resp.code, 200, (version, resp))
            self.assertEqual((await self.join(bob, room)).code, 200, version)
            resp = await self.put_state(alice, room, "m.room.join_rules",
                                        {"join_rule": "knock_restricted", "allow": rule["allow"]})
            self.assertEqual(resp.code, 200 if int(version) >= 10 else 400, version)

    async def test_aliases_event_old_versions(self) -> None:
        """v1-v5 auth rule 4 lets a server key m.room.aliases by its own name; our users
        still need to be joined with the state level."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        for version in ("1", "5", "6"):
            room = await self.create_room(alice, room_version=version, preset="public_chat")
            content = {"aliases": [f"#a:{SERVER}"]}
            resp = await self.put_state(bob, room, "m.room.aliases", content, SERVER)
            self.assertEqual(resp.code, 403, (version, resp))
            await self.join(bob, room)
            resp = await self.put_state(bob, room, "m.room.aliases", content, SERVER)
            self.assertEqual(resp.code, 403, (version, resp))
            resp = await self.put_state(alice, room, "m.room.aliases", content, "other.example")
            self.assertEqual(resp.code, 403 if version != "6" else 200, (version, resp))
            resp = await self.put_state(alice, room, "m.room.aliases", content, SERVER)
            self.assertEqual(resp.code, 200, (version, resp))

    async def test_capabilities_list_every_version(self) -> None:
        alice = await self.user("alice")
        resp = await self.request("GET", f"{CS}/capabilities", token=alice)
        versions = resp.json["capabilities"]["m.room_versions"]
        self.assertEqual(versions["available"], {v: "stable" for v in ALL})
        self.assertEqual(versions["default"], "10")

    async def test_v1_event_ids_are_unique(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, room_version="1")
        ids = {await self.send_ok(alice, room, "same") for _ in range(20)}
        self.assertEqual(len(ids), 20)
        for event_id in ids:
            self.assertRegex(event_id, _V1_ID)

    async def test_invalid_json_numbers_refused_in_every_version(self) -> None:
        """SyTest 80torture/20json (which uses v6); Parley refuses the same in v1-v5,
        where the spec would tolerate them in events from other servers."""
        alice = await self.user("alice")
        for version in ("1", "5", "6", "10"):
            room = await self.create_room(alice, room_version=version)
            url = f"{CS}/rooms/{q(room)}/send/sytest.dummy"
            for body in (2**53, -(2**53), 1.1):
                resp = await self.request("POST", url, {"msgtype": "sytest.dummy", "body": body},
                                          token=alice)
                self.assertMatrixError(resp, 400, "M_BAD_JSON")
            for special in (b"Infinity", b"-Infinity", b"NaN"):
                resp = await self.request(
                    "POST", url, token=alice,
                    raw_body=b'{"msgtype": "sytest.dummy", "body": ' + special + b"}",
                    headers={"Content-Type": "application/json"})
                self.assertEqual(resp.code, 400, (version, special, resp))
            resp = await self.request("POST", url, {"msgtype": "sytest.dummy", "body": 2**53 - 1},
                                      token=alice)
            self.assertEqual(resp.code, 200, resp)

    async def test_push_rules_copied_to_upgraded_room(self) -> None:
        """SyTest "local user has push rules copied to upgraded room" (from a v1 room)."""
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, room_version="1", preset="public_chat")
        await self.join(bob, room)
        resp = await self.request("PUT", f"{CS}/pushrules/global/room/{q(room)}",
                                  {"actions": ["notify"]}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        cond = [{"kind": "event_match", "key": "room_id", "pattern": room}]
        resp = await self.request("PUT", f"{CS}/pushrules/global/override/quiet",
                                  {"actions": [], "conditions": cond}, token=bob)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/upgrade",
                                  {"new_version": "10"}, token=alice)
        new_room = resp.json["replacement_room"]
        rules = (await self.request("GET", f"{CS}/pushrules/", token=bob)).json["global"]
        self.assertNotIn(new_room, [r["rule_id"] for r in rules["room"]])  # not joined yet
        self.assertEqual((await self.join(bob, new_room)).code, 200)
        for _ in range(50):  # copied in the background, right after the join
            rules = (await self.request("GET", f"{CS}/pushrules/", token=bob)).json["global"]
            if any(r["rule_id"] == new_room for r in rules["room"]):
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        copied = [r for r in rules["room"] if r["rule_id"] == new_room]
        self.assertEqual([r["actions"] for r in copied], [["notify"]])
        overrides = [r for r in rules["override"] if r["rule_id"] == "quiet-" + new_room]
        self.assertEqual(overrides[0]["conditions"][0]["pattern"], new_room)
        self.assertIn(room, [r["rule_id"] for r in rules["room"]])  # the old one stays
