"""Device list changes in /sync and /keys/changes: key uploads, device deletion, joins
and leaves, long-poll wake-ups, and the key counts of the syncing device."""

from __future__ import annotations

from urllib.parse import quote

from twisted.internet import defer, reactor, task

from tests.harness import TEST_PASSWORD
from tests.rest.e2e_helpers import KEYS, OlmDevice
from tests.rest.room_helpers import CS, RoomTestCase


class DeviceListTest(RoomTestCase):
    async def device(self, name: str) -> OlmDevice:
        reg = await self.register(name)
        return OlmDevice(reg["user_id"], reg["device_id"], reg["access_token"])

    async def second_device(self, dev: OlmDevice) -> OlmDevice:
        resp = await self.login(dev.user_id.split(":")[0][1:])
        self.assertEqual(resp.code, 200, resp)
        return OlmDevice(dev.user_id, resp.json["device_id"], resp.json["access_token"])

    async def upload_keys(self, dev: OlmDevice) -> None:
        resp = await self.request("POST", f"{KEYS}/upload", {"device_keys": dev.device_keys()},
                                  token=dev.token)
        self.assertEqual(resp.code, 200, resp)

    async def changes(self, dev: OlmDevice, since: str, upto: str) -> dict:
        resp = await self.request(
            "GET", f"{KEYS}/changes?from={quote(since)}&to={quote(upto)}", token=dev.token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def shared_room(self, *devs: OlmDevice) -> str:
        room = await self.create_room(devs[0].token, preset="public_chat")
        for dev in devs[1:]:
            resp = await self.join(dev.token, room)
            self.assertEqual(resp.code, 200, resp)
        return room

    async def test_key_upload_shows_in_sync_and_changes(self) -> None:
        alice, bob, carol = [await self.device(n) for n in ("alice", "bob", "carol")]
        await self.shared_room(alice, bob)
        start = await self.sync(bob.token)
        self.assertNotIn(alice.user_id, start["device_lists"]["changed"])
        await self.upload_keys(alice)
        await self.upload_keys(carol)  # shares no room with bob
        after = await self.sync(bob.token, start["next_batch"])
        self.assertEqual(after["device_lists"], {"changed": [alice.user_id], "left": []})
        changes = await self.changes(bob, start["next_batch"], after["next_batch"])
        self.assertEqual(changes, {"changed": [alice.user_id], "left": []})
        # Nothing new since.
        again = await self.sync(bob.token, after["next_batch"])
        self.assertEqual(again["device_lists"], {"changed": [], "left": []})
        # An identical re-upload is not a change.
        await self.upload_keys(alice)
        again = await self.sync(bob.token, after["next_batch"])
        self.assertEqual(again["device_lists"], {"changed": [], "left": []})

    async def test_own_other_device(self) -> None:
        alice = await self.device("alice")
        start = await self.sync(alice.token)
        phone = await self.second_device(alice)
        await self.upload_keys(phone)
        after = await self.sync(alice.token, start["next_batch"])
        self.assertEqual(after["device_lists"]["changed"], [alice.user_id])

    async def test_long_poll_woken_by_key_upload(self) -> None:
        alice, bob = await self.device("alice"), await self.device("bob")
        await self.shared_room(alice, bob)
        start = await self.sync(bob.token)
        waiting = defer.ensureDeferred(self.sync(bob.token, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        await self.upload_keys(alice)
        result = await waiting
        self.assertEqual(result["device_lists"]["changed"], [alice.user_id])

    async def test_unrelated_upload_does_not_end_long_poll(self) -> None:
        alice, bob = await self.device("alice"), await self.device("bob")
        start = await self.sync(bob.token)
        waiting = defer.ensureDeferred(self.sync(bob.token, start["next_batch"], timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        await self.upload_keys(alice)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(waiting.called)
        self.advance(31)
        result = await waiting
        self.assertEqual(result["device_lists"], {"changed": [], "left": []})

    async def test_join_and_leave(self) -> None:
        alice, bob, carol = [await self.device(n) for n in ("alice", "bob", "carol")]
        room = await self.shared_room(alice, bob)
        bob_start = await self.sync(bob.token)
        carol_start = await self.sync(carol.token)
        resp = await self.join(carol.token, room)
        self.assertEqual(resp.code, 200, resp)
        bob_sync = await self.sync(bob.token, bob_start["next_batch"])
        self.assertEqual(bob_sync["device_lists"], {"changed": [carol.user_id], "left": []})
        carol_sync = await self.sync(carol.token, carol_start["next_batch"])
        self.assertEqual(carol_sync["device_lists"]["changed"], sorted([alice.user_id,
                                                                         bob.user_id]))
        # A profile change is not a membership change.
        await self.put_state(carol.token, room, "m.room.member",
                             {"membership": "join", "displayname": "Caz"}, carol.user_id)
        quiet = await self.sync(bob.token, bob_sync["next_batch"])
        self.assertEqual(quiet["device_lists"], {"changed": [], "left": []})
        # Carol leaves: no room shared any more.
        resp = await self.member(carol.token, room, "leave")
        self.assertEqual(resp.code, 200, resp)
        left = await self.sync(bob.token, quiet["next_batch"])
        self.assertEqual(left["device_lists"], {"changed": [], "left": [carol.user_id]})
        changes = await self.changes(bob, bob_sync["next_batch"], left["next_batch"])
        self.assertEqual(changes["left"], [carol.user_id])
        carol_left = await self.sync(carol.token, carol_sync["next_batch"])
        self.assertEqual(carol_left["device_lists"]["left"], sorted([alice.user_id,
                                                                      bob.user_id]))

    async def test_leave_while_still_sharing_another_room(self) -> None:
        alice, bob = await self.device("alice"), await self.device("bob")
        room1 = await self.shared_room(alice, bob)
        await self.shared_room(alice, bob)
        start = await self.sync(alice.token)
        await self.member(bob.token, room1, "leave")
        after = await self.sync(alice.token, start["next_batch"])
        self.assertEqual(after["device_lists"], {"changed": [], "left": []})

    async def test_device_deletion(self) -> None:
        alice, bob = await self.device("alice"), await self.device("bob")
        await self.shared_room(alice, bob)
        phone = await self.second_device(alice)
        await self.upload_keys(phone)
        start = await self.sync(bob.token)
        path = f"{CS}/devices/{phone.device_id}"
        first = await self.request("DELETE", path, {}, token=alice.token)
        auth = {"type": "m.login.password", "session": first.json["session"],
                "identifier": {"type": "m.id.user", "user": "alice"}, "password": TEST_PASSWORD}
        resp = await self.request("DELETE", path, {"auth": auth}, token=alice.token)
        self.assertEqual(resp.code, 200, resp)
        after = await self.sync(bob.token, start["next_batch"])
        self.assertEqual(after["device_lists"]["changed"], [alice.user_id])
        q = await self.request("POST", f"{KEYS}/query", {"device_keys": {alice.user_id: []}},
                               token=bob.token)
        self.assertEqual(q.json["device_keys"][alice.user_id], {})

    async def test_initial_sync_and_counts(self) -> None:
        alice = await self.device("alice")
        await self.shared_room(alice, await self.device("bob"))
        resp = await self.request("POST", f"{KEYS}/upload", {
            "device_keys": alice.device_keys(), "one_time_keys": alice.one_time_keys(3),
            "fallback_keys": alice.fallback_key()}, token=alice.token)
        self.assertEqual(resp.code, 200, resp)
        initial = await self.sync(alice.token)
        self.assertEqual(initial["device_lists"], {"changed": [], "left": []})
        self.assertEqual(initial["device_one_time_keys_count"], {"signed_curve25519": 3})
        self.assertEqual(initial["device_unused_fallback_key_types"], ["signed_curve25519"])

    async def test_changes_bad_input(self) -> None:
        alice = await self.device("alice")
        token = (await self.sync(alice.token))["next_batch"]
        for query in ("", f"from={quote(token)}", f"to={quote(token)}",
                      f"from=garbage&to={quote(token)}", f"from={quote(token)}&to=s1_x"):
            resp = await self.request("GET", f"{KEYS}/changes?{query}", token=alice.token)
            self.assertEqual(resp.code, 400, (query, resp))
        self.assertEqual(await self.changes(alice, token, token), {"changed": [], "left": []})
