"""Room tags, pushers, TURN credentials, third-party lookup, notifications, mutual rooms
and content reports."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import tempfile
from typing import Any

from twisted.trial import unittest

from homeserver.config.loader import ConfigError
from homeserver.rest.client import misc
from tests.harness import make_config
from tests.rest.room_helpers import CS, RoomTestCase, q

V1 = "/_matrix/client/v1"
ALICE = "@alice:test.local"
BOB = "@bob:test.local"
GATEWAY = "https://push.example.org/_matrix/push/v1/notify"


class TwoUsers(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.alice = await self.user("alice")
        self.bob = await self.user("bob")


class TagsTest(TwoUsers):
    def path(self, room: str, tag: str | None = None, user: str = ALICE) -> str:
        base = f"{CS}/user/{q(user)}/rooms/{q(room)}/tags"
        return base if tag is None else f"{base}/{q(tag)}"

    async def test_put_get_delete_and_sync(self) -> None:
        room = await self.create_room(self.alice)
        empty = await self.request("GET", self.path(room), token=self.alice)
        self.assertEqual((empty.code, empty.json), (200, {"tags": {}}))
        since = (await self.sync(self.alice))["next_batch"]
        for tag, body in (("m.favourite", {"order": 0.25}), ("u.work", {}), ("u.x", {"order": 1})):
            resp = await self.request("PUT", self.path(room, tag), body, token=self.alice)
            self.assertEqual((resp.code, resp.json), (200, {}))
        got = await self.request("GET", self.path(room), token=self.alice)
        self.assertEqual(got.json, {"tags": {"m.favourite": {"order": 0.25}, "u.work": {},
                                             "u.x": {"order": 1}}})
        # Tags are m.tag room account data, delivered by /sync.
        synced = await self.sync(self.alice, since)
        events = synced["rooms"]["join"][room]["account_data"]["events"]
        tag_events = [e for e in events if e["type"] == "m.tag"]
        self.assertEqual(tag_events[0]["content"]["tags"]["m.favourite"], {"order": 0.25})
        deleted = await self.request("DELETE", self.path(room, "u.work"), token=self.alice)
        self.assertEqual((deleted.code, deleted.json), (200, {}))
        again = await self.request("DELETE", self.path(room, "u.work"), token=self.alice)
        self.assertEqual(again.code, 200)
        got = await self.request("GET", self.path(room), token=self.alice)
        self.assertEqual(set(got.json["tags"]), {"m.favourite", "u.x"})
        # Bob's tags of the same room are his own.
        bob_tags = await self.request("GET", self.path(room, user=BOB), token=self.bob)
        self.assertEqual(bob_tags.json, {"tags": {}})

    async def test_errors(self) -> None:
        room = await self.create_room(self.alice)
        self.assertMatrixError(await self.request("GET", self.path(room)), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("PUT", self.path(room, "u.a"), {}), 401,
                               "M_MISSING_TOKEN")
        # Another user's tags: neither readable nor writable.
        self.assertMatrixError(await self.request("GET", self.path(room), token=self.bob), 403,
                               "M_FORBIDDEN")
        self.assertMatrixError(await self.request("PUT", self.path(room, "u.a"), {},
                                                  token=self.bob), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.request("DELETE", self.path(room, "u.a"),
                                                  token=self.bob), 403, "M_FORBIDDEN")
        for body in ({"order": 2}, {"order": -0.1}):
            self.assertMatrixError(await self.request("PUT", self.path(room, "u.a"), body,
                                                      token=self.alice), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.request("PUT", self.path(room, "u.a"), {"order": "1"},
                                                  token=self.alice), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.request("PUT", self.path(room, "u.a"), raw_body=b"[]",
                                                  token=self.alice), 400, "M_BAD_JSON")
        self.assertMatrixError(await self.request("PUT", self.path("not-a-room", "u.a"), {},
                                                  token=self.alice), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.request("PUT", self.path(room, "u." + "a" * 300), {},
                                                  token=self.alice), 400, "M_INVALID_PARAM")


class PushersTest(TwoUsers):
    def pusher(self, **overrides: Any) -> dict[str, Any]:
        body = {"kind": "http", "app_id": "org.example.app", "pushkey": "key1",
                "app_display_name": "Example", "device_display_name": "Phone",
                "profile_tag": "tag", "lang": "en", "data": {"url": GATEWAY,
                                                             "format": "event_id_only"}}
        body.update(overrides)
        return body

    async def set_pusher(self, token: str | None, body: dict[str, Any]) -> Any:
        return await self.request("POST", f"{CS}/pushers/set", body, token=token)

    async def pushers(self, token: str) -> list[dict[str, Any]]:
        resp = await self.request("GET", f"{CS}/pushers", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["pushers"]

    async def test_logout_removes_the_devices_pushers(self) -> None:
        other = (await self.login("alice")).json["access_token"]
        await self.set_pusher(other, self.pusher(pushkey="phone"))
        await self.set_pusher(self.alice, self.pusher(pushkey="laptop"))
        self.assertEqual(len(await self.pushers(self.alice)), 2)
        await self.request("POST", f"{CS}/logout", token=other)
        self.assertEqual([p["pushkey"] for p in await self.pushers(self.alice)], ["laptop"])

    async def test_set_list_replace_delete(self) -> None:
        self.assertEqual(await self.pushers(self.alice), [])
        resp = await self.set_pusher(self.alice, self.pusher())
        self.assertEqual((resp.code, resp.json), (200, {}))
        self.assertEqual(await self.pushers(self.alice), [{
            "pushkey": "key1", "kind": "http", "app_id": "org.example.app",
            "app_display_name": "Example", "device_display_name": "Phone", "profile_tag": "tag",
            "lang": "en", "data": {"url": GATEWAY, "format": "event_id_only"}}])
        # Same app_id + pushkey: replaced, not added.
        await self.set_pusher(self.alice, self.pusher(lang="de"))
        listed = await self.pushers(self.alice)
        self.assertEqual([p["lang"] for p in listed], ["de"])
        # Bob takes the same pushkey: without append, Alice's is removed.
        await self.set_pusher(self.bob, self.pusher())
        self.assertEqual(await self.pushers(self.alice), [])
        # With append both stay.
        await self.set_pusher(self.alice, self.pusher(append=True))
        self.assertEqual(len(await self.pushers(self.alice)), 1)
        self.assertEqual(len(await self.pushers(self.bob)), 1)
        # kind null deletes (only the caller's).
        gone = await self.set_pusher(self.alice, {"kind": None, "app_id": "org.example.app",
                                                  "pushkey": "key1"})
        self.assertEqual(gone.code, 200)
        self.assertEqual(await self.pushers(self.alice), [])
        self.assertEqual(len(await self.pushers(self.bob)), 1)
        # Deleting a pusher that does not exist is not an error.
        again = await self.set_pusher(self.alice, {"kind": None, "app_id": "x", "pushkey": "y"})
        self.assertEqual((again.code, again.json), (200, {}))

    async def test_validation(self) -> None:
        self.assertMatrixError(await self.set_pusher(None, self.pusher()), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("GET", f"{CS}/pushers"), 401, "M_MISSING_TOKEN")
        body = self.pusher()
        del body["lang"]
        self.assertMatrixError(await self.set_pusher(self.alice, body), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.set_pusher(self.alice, {"kind": "http"}), 400,
                               "M_MISSING_PARAM")
        for data in ({}, {"url": "ftp://push.example.org/_matrix/push/v1/notify"},
                     {"url": "https://push.example.org/other"}, {"url": "https://"},
                     {"url": GATEWAY, "format": 5}, {"url": GATEWAY, "format": "f" * 65}):
            resp = await self.set_pusher(self.alice, self.pusher(data=data))
            self.assertEqual(resp.code, 400, (data, resp))
        for bad in ({"kind": "carrier-pigeon"}, {"pushkey": "k" * 513},
                    {"app_id": "a" * 65}):
            resp = await self.set_pusher(self.alice, self.pusher(**bad))
            self.assertEqual(resp.code, 400, (bad, resp))
        self.assertMatrixError(await self.set_pusher(self.alice, self.pusher(kind=5)), 400,
                               "M_BAD_JSON")
        self.assertMatrixError(await self.set_pusher(self.alice, self.pusher(data="x")), 400,
                               "M_BAD_JSON")
        # Email pushers need a bound email address; Parley stores none.
        email = self.pusher(kind="email", app_id="m.email", pushkey="alice@example.org",
                            data={})
        self.assertMatrixError(await self.set_pusher(self.alice, email), 400, "M_THREEPID_NOT_FOUND")
        self.assertMatrixError(await self.set_pusher(self.alice, {**email, "app_id": "x"}), 400,
                               "M_INVALID_PARAM")
        self.assertEqual(await self.pushers(self.alice), [])


class TurnServerTest(TwoUsers):
    def config_overrides(self) -> dict[str, Any]:
        return {"voip": {"turn_uris": ["turn:turn.example.org:3478?transport=udp",
                                       "turns:turn.example.org:443?transport=tcp"],
                         "turn_shared_secret": "s3cret", "turn_user_lifetime": "1d"}}

    async def test_credentials(self) -> None:
        resp = await self.request("GET", f"{CS}/voip/turnServer", token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["ttl"], 86400)
        self.assertEqual(len(resp.json["uris"]), 2)
        expiry, _, user = resp.json["username"].partition(":")
        self.assertEqual(user, ALICE)
        self.assertAlmostEqual(int(expiry), self.clock.time_msec() // 1000 + 86400, delta=2)
        mac = hmac.new(b"s3cret", resp.json["username"].encode(), hashlib.sha1).digest()
        self.assertEqual(resp.json["password"], base64.b64encode(mac).decode())
        self.assertMatrixError(await self.request("GET", f"{CS}/voip/turnServer"), 401,
                               "M_MISSING_TOKEN")


class VoipConfigTest(unittest.TestCase):
    def test_keys(self) -> None:
        data_dir = tempfile.mkdtemp(prefix="parley-cfg-")
        os.environ["PARLEY_TEST_TURN_SECRET"] = "from-env"
        self.addCleanup(os.environ.pop, "PARLEY_TEST_TURN_SECRET")
        config, _ = make_config(data_dir, "sqlite", voip={
            "turn_uris": ["turn:t.example.org"], "turn_user_lifetime": "2h",
            "turn_shared_secret": {"env": "PARLEY_TEST_TURN_SECRET"}}, search={"enabled": True})
        self.assertEqual((config.voip.turn_shared_secret, config.voip.turn_user_lifetime),
                         ("from-env", 7200.0))
        self.assertTrue(config.search_enabled)
        defaults, _ = make_config(data_dir, "sqlite")
        self.assertEqual((defaults.voip.turn_uris, defaults.search_enabled), ([], False))
        self.assertNotIn("from-env", repr(config))
        for bad in ({"voip": {"turn_urls": []}}, {"voip": {"turn_uris": ["http://x"]}},
                    {"voip": {"turn_user_lifetime": "soon"}}, {"search": {"enabled": "yes"}},
                    {"search": {"on": True}}):
            with self.assertRaises(ConfigError):
                make_config(data_dir, "sqlite", **bad)


class MiscTest(TwoUsers):
    async def test_turn_unconfigured(self) -> None:
        self.assertMatrixError(await self.request("GET", f"{CS}/voip/turnServer", token=self.alice),
                               404, "M_NOT_FOUND")

    async def test_thirdparty(self) -> None:
        resp = await self.request("GET", f"{CS}/thirdparty/protocols", token=self.alice)
        self.assertEqual((resp.code, resp.json), (200, {}))
        for path in ("/thirdparty/protocol/irc", "/thirdparty/location/irc?channel=x",
                     "/thirdparty/user/irc", "/thirdparty/location?alias=%23a:b",
                     "/thirdparty/user?userid=@a:b"):
            self.assertMatrixError(await self.request("GET", CS + path, token=self.alice), 404,
                                   "M_NOT_FOUND")
            self.assertMatrixError(await self.request("GET", CS + path), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("GET", f"{CS}/thirdparty/protocols"), 401,
                               "M_MISSING_TOKEN")

    async def test_notifications(self) -> None:
        await self.create_room(self.alice)
        resp = await self.request("GET", f"{CS}/notifications?limit=5&only=highlight",
                                  token=self.alice)
        self.assertEqual((resp.code, resp.json), (200, {"notifications": []}))
        self.assertMatrixError(await self.request("GET", f"{CS}/notifications?limit=x",
                                                  token=self.alice), 400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.request("GET", f"{CS}/notifications"), 401,
                               "M_MISSING_TOKEN")

    async def test_mutual_rooms(self) -> None:
        shared = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, shared)
        await self.create_room(self.alice)  # Alice only
        left = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, left)
        await self.member(self.bob, left, "leave")
        resp = await self.request("GET", f"{V1}/mutual_rooms?user_id={q(BOB)}", token=self.alice)
        self.assertEqual((resp.code, resp.json), (200, {"joined": [shared], "count": 1}))
        nobody = await self.request("GET", f"{V1}/mutual_rooms?user_id={q('@x:test.local')}",
                                    token=self.alice)
        self.assertEqual(nobody.json, {"joined": [], "count": 0})
        for query in ("", f"?user_id={q(ALICE)}", "?user_id=bob", f"?user_id={q(BOB)}&from=%25"):
            resp = await self.request("GET", f"{V1}/mutual_rooms{query}", token=self.alice)
            self.assertEqual(resp.code, 400, (query, resp))
        self.assertMatrixError(await self.request("GET", f"{V1}/mutual_rooms?user_id={q(BOB)}"),
                               401, "M_MISSING_TOKEN")

    async def test_mutual_rooms_pages(self) -> None:
        self.patch(misc, "MUTUAL_ROOMS_BATCH", 1)
        rooms = []
        for _ in range(2):
            room = await self.create_room(self.alice, preset="public_chat")
            await self.join(self.bob, room)
            rooms.append(room)
        first = await self.request("GET", f"{V1}/mutual_rooms?user_id={q(ALICE)}", token=self.bob)
        self.assertEqual((first.json["joined"], first.json["count"]), ([min(rooms)], 2))
        second = await self.request(
            "GET", f"{V1}/mutual_rooms?user_id={q(ALICE)}&from={q(first.json['next_batch'])}",
            token=self.bob)
        self.assertEqual(second.json, {"joined": [max(rooms)], "count": 2})


class ReportingTest(TwoUsers):
    async def reports(self) -> list[tuple[Any, ...]]:
        return [(r.kind, r.reporter, r.room_id, r.event_id, r.target_user_id, r.reason, r.score)
                for r in reversed(await self.hs.stores.reports.list_reports())]

    async def test_reports_are_stored_without_content(self) -> None:
        room = await self.create_room(self.alice, preset="public_chat")
        await self.join(self.bob, room)
        event = await self.send_ok(self.alice, room, "the offending words")
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/report/{q(event)}",
                                  {"reason": "spam", "score": -100}, token=self.bob)
        self.assertEqual((resp.code, resp.json), (200, {}))
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/report/{q(event)}", {},
                                  token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("POST", f"{CS}/rooms/{q(room)}/report", {"reason": ""},
                                  token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("POST", f"{CS}/users/{q(ALICE)}/report", {"reason": "rude"},
                                  token=self.bob)
        self.assertEqual(resp.code, 200, resp)
        # Unknown and remote users: 200 (existence is not disclosed), nothing stored.
        for user in ("@ghost:test.local", "@someone:elsewhere.org"):
            resp = await self.request("POST", f"{CS}/users/{q(user)}/report", {"reason": "x"},
                                      token=self.bob)
            self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.reports(), [
            ("event", BOB, room, event, None, "spam", -100),
            ("event", BOB, room, event, None, None, None),
            ("room", BOB, room, None, None, "", None),
            ("user", BOB, None, None, ALICE, "rude", None),
        ])
        rows = await self.hs.db.query("dump", "SELECT * FROM content_reports")
        self.assertNotIn("offending", repr(rows))

    async def test_errors(self) -> None:
        room = await self.create_room(self.alice)  # private: Bob is not in it
        event = await self.send_ok(self.alice, room, "hello")
        path = f"{CS}/rooms/{q(room)}/report/{q(event)}"
        self.assertMatrixError(await self.request("POST", path, {}), 401, "M_MISSING_TOKEN")
        self.assertMatrixError(await self.request("POST", path, {}, token=self.bob), 404, "M_NOT_FOUND")
        unknown = f"{CS}/rooms/{q(room)}/report/{q('$nope')}"
        self.assertMatrixError(await self.request("POST", unknown, {}, token=self.alice), 404,
                               "M_NOT_FOUND")
        other = await self.create_room(self.alice)
        self.assertMatrixError(await self.request("POST", f"{CS}/rooms/{q(other)}/report/{q(event)}",
                                                  {}, token=self.alice), 404, "M_NOT_FOUND")
        for body in ({"reason": 5}, {"score": "bad"}, {"score": 10}, {"reason": "x" * 1001}):
            resp = await self.request("POST", path, body, token=self.alice)
            self.assertEqual(resp.code, 400, (body, resp))
        self.assertMatrixError(await self.request("POST", f"{CS}/rooms/{q(room)}/report/x", {},
                                                  token=self.alice), 400, "M_INVALID_PARAM")
        room_path = f"{CS}/rooms/{q('!unknown:test.local')}/report"
        self.assertMatrixError(await self.request("POST", room_path, {"reason": "x"},
                                                  token=self.bob), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.request("POST", f"{CS}/rooms/{q(room)}/report", {},
                                                  token=self.bob), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.request("POST", f"{CS}/users/{q('nope')}/report",
                                                  {"reason": "x"}, token=self.bob), 400,
                               "M_INVALID_PARAM")
        self.assertMatrixError(await self.request("POST", f"{CS}/users/{q(ALICE)}/report", {},
                                                  token=self.bob), 400, "M_MISSING_PARAM")
        self.assertEqual(await self.reports(), [])

