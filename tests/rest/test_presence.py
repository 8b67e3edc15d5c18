"""GET/PUT /presence/{userId}/status, /sync?set_presence= and m.presence in /sync."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.app import build_homeserver
from homeserver.config import ConfigError, parse_config
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.unit.test_config import minimal

ALICE = "@alice:test.local"
BOB = "@bob:test.local"


def presence_of(sync: dict, user: str) -> list[dict]:
    return [e["content"] for e in sync["presence"]["events"]
            if e["type"] == "m.presence" and e["sender"] == user]


class PresenceTestCase(RoomTestCase):
    async def put(self, token: str, body: Any, user: str = ALICE) -> Any:
        return await self.request("PUT", f"{CS}/presence/{q(user)}/status", body, token=token)

    async def get(self, token: str, user: str) -> Any:
        return await self.request("GET", f"{CS}/presence/{q(user)}/status", token=token)

    async def sync_as(self, token: str, since: str | None = None, set_presence: str = "offline",
                      timeout: int = 0) -> dict:
        """A sync that (by default) does not itself mark the user online."""
        params = [f"timeout={timeout}", f"set_presence={set_presence}"]
        if since:
            params.append(f"since={q(since)}")
        resp = await self.request("GET", f"{CS}/sync?{'&'.join(params)}", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def eventually(self, token: str, user: str, state: str) -> dict:
        """GET until ``user`` reads as ``state`` (background timeout checks write async)."""
        for _ in range(50):
            resp = await self.get(token, user)
            if resp.json.get("presence") == state:
                return resp.json
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"{user} never became {state}: {resp.json}")

    async def sharing(self) -> tuple[str, str, str]:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        resp = await self.join(bob, room)
        self.assertEqual(resp.code, 200, resp)
        return alice, bob, room


class PresenceTest(PresenceTestCase):
    async def test_put_and_get_own(self) -> None:
        alice = await self.user("alice")
        resp = await self.get(alice, ALICE)
        self.assertEqual((resp.code, resp.json["presence"]), (200, "offline"))
        resp = await self.put(alice, {"presence": "online", "status_msg": "Making cupcakes"})
        self.assertEqual((resp.code, resp.json), (200, {}))
        resp = await self.get(alice, ALICE)
        self.assertEqual(resp.json["presence"], "online")
        self.assertEqual(resp.json["status_msg"], "Making cupcakes")
        self.assertIs(resp.json["currently_active"], True)
        self.assertEqual(resp.json["last_active_ago"], 0)
        self.advance(10)
        resp = await self.get(alice, ALICE)
        self.assertEqual(resp.json["last_active_ago"], 10000)
        # A PUT without status_msg clears it.
        await self.put(alice, {"presence": "unavailable"})
        resp = await self.get(alice, ALICE)
        self.assertEqual(resp.json["presence"], "unavailable")
        self.assertNotIn("status_msg", resp.json)
        self.assertNotIn("currently_active", resp.json)

    async def test_get_other_users(self) -> None:
        alice, bob, _room = await self.sharing()
        carol = await self.user("carol")
        await self.put(alice, {"presence": "online", "status_msg": "hi"})
        resp = await self.get(bob, ALICE)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((resp.json["presence"], resp.json["status_msg"]), ("online", "hi"))
        resp = await self.get(carol, ALICE)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.get(alice, "@nobody:test.local")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.get(alice, "@someone:elsewhere.example")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        for bad in ("alice", "@alice", "@:test.local"):
            resp = await self.get(alice, bad)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", f"{CS}/presence/{q(ALICE)}/status")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")

    async def test_put_bad_input(self) -> None:
        alice, bob, _room = await self.sharing()
        resp = await self.put(bob, {"presence": "online"}, user=ALICE)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        bodies = [
            ({}, "M_MISSING_PARAM"),
            ({"status_msg": "x"}, "M_MISSING_PARAM"),
            ({"presence": "busy"}, "M_INVALID_PARAM"),
            ({"presence": 1}, "M_INVALID_PARAM"),
            ({"presence": "online", "status_msg": 5}, "M_BAD_JSON"),
            ({"presence": "online", "status_msg": None}, "M_BAD_JSON"),
            ({"presence": "online", "status_msg": "x" * 5000}, "M_INVALID_PARAM"),
            ({"presence": "online", "extra": True}, "M_BAD_JSON"),
        ]
        for body, errcode in bodies:
            resp = await self.put(alice, body)
            self.assertMatrixError(resp, 400, errcode)
        resp = await self.request("PUT", f"{CS}/presence/{q(ALICE)}/status", raw_body=b"{x",
                                  token=alice)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")
        resp = await self.put(alice, {"presence": "online"}, user="not-a-user")
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("PUT", f"{CS}/presence/{q(ALICE)}/status", {"presence": "online"})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        # Nothing was set by the failed requests.
        self.assertEqual((await self.get(bob, ALICE)).json["presence"], "offline")

    async def test_presence_in_sync(self) -> None:
        alice, bob, _room = await self.sharing()
        carol = await self.user("carol")
        await self.put(alice, {"presence": "online", "status_msg": "here"})
        await self.put(carol, {"presence": "online"}, user="@carol:test.local")
        initial = await self.sync_as(bob)
        [content] = presence_of(initial, ALICE)
        self.assertEqual((content["presence"], content["status_msg"]), ("online", "here"))
        self.assertIs(content["currently_active"], True)
        self.assertEqual(presence_of(initial, "@carol:test.local"), [])  # no shared room
        self.assertEqual(presence_of(initial, BOB), [])  # offline: not in an initial sync
        await self.put(alice, {"presence": "unavailable", "status_msg": "away"})
        inc = await self.sync_as(bob, initial["next_batch"])
        self.assertEqual([(c["presence"], c["status_msg"]) for c in presence_of(inc, ALICE)],
                         [("unavailable", "away")])
        # Nothing new: no presence.
        again = await self.sync_as(bob, inc["next_batch"])
        self.assertEqual(again["presence"]["events"], [])
        # Your own presence comes down your own sync.
        self.assertEqual(presence_of(await self.sync_as(alice), ALICE)[0]["presence"], "unavailable")

    async def test_presence_filter_applies(self) -> None:
        alice, bob, _room = await self.sharing()
        await self.put(alice, {"presence": "online"})
        resp = await self.request(
            "GET", f"{CS}/sync?filter={q(json.dumps({'presence': {'not_types': ['m.presence']}}))}",
            token=bob)
        self.assertEqual(resp.json["presence"]["events"], [])
        resp = await self.request(
            "GET", f"{CS}/sync?filter={q(json.dumps({'presence': {'senders': [BOB]}}))}",
            token=bob)
        self.assertEqual(presence_of(resp.json, ALICE), [])

    async def test_long_poll_woken_by_presence(self) -> None:
        alice, bob, _room = await self.sharing()
        start = await self.sync_as(bob)
        waiting = defer.ensureDeferred(self.sync_as(bob, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.put(alice, {"presence": "online", "status_msg": "wake"})
        result = await waiting
        self.assertEqual(presence_of(result, ALICE)[0]["status_msg"], "wake")

    async def test_sync_sets_presence_and_times_out(self) -> None:
        alice, bob, _room = await self.sharing()
        start = await self.sync_as(bob)
        await self.sync_as(alice, set_presence="offline")
        self.assertEqual((await self.get(bob, ALICE)).json["presence"], "offline")
        first = await self.sync(alice)  # set_presence defaults to online
        self.assertEqual((await self.get(bob, ALICE)).json["presence"], "online")
        self.assertEqual(presence_of(first, ALICE)[0]["presence"], "online")
        inc = await self.sync_as(bob, start["next_batch"])
        self.assertEqual(presence_of(inc, ALICE)[0]["presence"], "online")
        resp = await self.request("GET", f"{CS}/sync?timeout=0&set_presence=unavailable",
                                  token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.get(bob, ALICE)).json["presence"], "unavailable")
        # No more syncs: offline 30 s after the last one ended.
        self.advance(25)
        self.assertEqual((await self.get(bob, ALICE)).json["presence"], "unavailable")
        self.advance(10)
        await self.eventually(bob, ALICE, "offline")
        # ... and the change is broadcast by the periodic check.
        for _ in range(50):
            changes = presence_of(await self.sync_as(bob, inc["next_batch"]), ALICE)
            if changes and changes[-1]["presence"] == "offline":
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(changes[-1]["presence"], "offline")

    async def test_long_sync_keeps_online_and_idle_becomes_unavailable(self) -> None:
        alice, bob, _room = await self.sharing()
        first = await self.sync(alice)
        waiting = defer.ensureDeferred(self.sync(alice, first["next_batch"], timeout=300000))
        await task.deferLater(reactor, 0.1, lambda: None)
        self.advance(200)  # mid-sync: still online
        self.assertEqual((await self.get(bob, ALICE)).json["presence"], "online")
        self.advance(110)  # 310 s without activity while syncing: idle
        await waiting
        body = await self.eventually(bob, ALICE, "unavailable")
        self.assertGreaterEqual(body["last_active_ago"], 300000)

    async def test_activity_updates_last_active(self) -> None:
        alice, bob, room = await self.sharing()
        await self.put(alice, {"presence": "online"})
        self.advance(20)
        self.assertEqual((await self.get(bob, ALICE)).json["last_active_ago"], 20000)
        await self.send_ok(alice, room, "hello")
        self.assertLess((await self.get(bob, ALICE)).json["last_active_ago"], 1000)
        self.advance(20)
        resp = await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(ALICE)}",
                                  {"typing": True}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertLess((await self.get(bob, ALICE)).json["last_active_ago"], 1000)


class PresenceConfigTest(unittest.TestCase):
    def test_presence_config(self) -> None:
        self.assertTrue(parse_config(minimal()).presence_enabled)
        self.assertFalse(parse_config(minimal(presence={"enabled": False})).presence_enabled)
        with self.assertRaisesRegex(ConfigError, "unknown key 'presence.enabeld'"):
            parse_config(minimal(presence={"enabeld": False}))
        with self.assertRaisesRegex(ConfigError, "'presence.enabled': expected boolean"):
            parse_config(minimal(presence={"enabled": "no"}))


class PresenceDisabledTest(PresenceTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"presence": {"enabled": False}}

    async def test_disabled(self) -> None:
        alice, bob, _room = await self.sharing()
        carol = await self.user("carol")
        resp = await self.put(alice, {"presence": "online", "status_msg": "hidden"})
        self.assertEqual(resp.code, 200, resp)
        for token in (alice, bob, carol):
            resp = await self.get(token, ALICE)
            self.assertEqual((resp.code, resp.json), (200, {"presence": "offline"}))
        resp = await self.put(bob, {"presence": "online"}, user=ALICE)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.put(alice, {"presence": "busy"})
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        result = await self.sync(bob)
        self.assertEqual(result["presence"], {"events": []})
        self.assertEqual((await self.sync(alice))["presence"], {"events": []})


class RestartTest(PresenceTestCase):
    async def _restart(self) -> None:
        await self.hs.stop()
        self.hs = await build_homeserver(self.config, clock=self.clock)
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"

    async def test_state_and_streams_survive_a_restart(self) -> None:
        alice, bob, room = await self.sharing()
        event_id = await self.send_ok(alice, room, "x")
        await self.put(alice, {"presence": "online", "status_msg": "before"})
        await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(event_id)}", {},
                           token=bob)
        await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(BOB)}", {"typing": True},
                           token=bob)
        before = await self.sync_as(alice)
        self.advance(1)  # typing positions follow the clock across restarts
        await self._restart()
        resp = await self.get(bob, ALICE)
        self.assertEqual((resp.json["presence"], resp.json["status_msg"]), ("online", "before"))
        # Positions continue: changes after the restart reach a token from before it.
        later = await self.send_ok(alice, room, "y")
        await self.request("POST", f"{CS}/rooms/{q(room)}/receipt/m.read/{q(later)}", {},
                           token=bob)
        await self.request("PUT", f"{CS}/rooms/{q(room)}/typing/{q(ALICE)}", {"typing": True},
                           token=alice)
        await self.put(bob, {"presence": "unavailable"}, user=BOB)
        inc = await self.sync_as(alice, before["next_batch"])
        ephemeral = inc["rooms"]["join"][room]["ephemeral"]["events"]
        kinds = {e["type"]: e["content"] for e in ephemeral}
        self.assertEqual(list(kinds["m.receipt"]), [later])
        self.assertEqual(kinds["m.typing"], {"user_ids": [ALICE]})
        self.assertEqual(presence_of(inc, BOB)[0]["presence"], "unavailable")
        # The restored state times out like any other.
        self.advance(35)
        await self.eventually(bob, ALICE, "offline")
