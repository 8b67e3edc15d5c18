"""PUT /sendToDevice and the to_device section of /sync (at-least-once delivery)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from tests.harness import TEST_PASSWORD, Response
from tests.rest.room_helpers import CS, RoomTestCase


class ToDeviceTest(RoomTestCase):
    _n = 0

    async def send_td(self, token: str | None, messages: Any, txn: str | None = None,
                      event_type: str = "m.room_key_request") -> Response:
        self._n += 1
        return await self.request("PUT", f"{CS}/sendToDevice/{event_type}/{txn or f'x{self._n}'}",
                                  {"messages": messages}, token=token)

    async def pending(self, user_id: str) -> int:
        row = await self.hs.db.query_one("count_inbox",
                                         "SELECT COUNT(*) FROM device_inbox WHERE user_id = ?",
                                         user_id)
        assert row is not None
        return int(row[0])

    @staticmethod
    def events(sync: dict) -> list[dict]:
        return sync["to_device"]["events"]

    async def test_send_and_receive(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        start = await self.sync(bob["access_token"])
        self.assertEqual(self.events(start), [])
        resp = await self.send_td(alice, {"@bob:test.local": {bob["device_id"]: {"hi": 1}}})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {})
        got = await self.sync(bob["access_token"], start["next_batch"])
        self.assertEqual(self.events(got), [
            {"sender": "@alice:test.local", "type": "m.room_key_request", "content": {"hi": 1}}])
        # The sender's own sync has nothing.
        self.assertEqual(self.events(await self.sync(alice)), [])

    async def test_long_poll_wakes(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        start = await self.sync(bob["access_token"])
        waiting = defer.ensureDeferred(self.sync(bob["access_token"], start["next_batch"],
                                                 timeout=30000))
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(waiting.called)
        await self.send_td(alice, {"@bob:test.local": {bob["device_id"]: {"k": "v"}}})
        got = await waiting
        self.assertEqual([e["content"] for e in self.events(got)], [{"k": "v"}])

    async def test_wildcard_fans_out_to_all_devices(self) -> None:
        alice = await self.user("alice")
        bob1 = await self.register("bob")
        bob2 = (await self.login("bob")).json
        resp = await self.send_td(alice, {"@bob:test.local": {"*": {"n": 1}}})
        self.assertEqual(resp.code, 200, resp)
        for dev in (bob1, bob2):
            self.assertEqual([e["content"] for e in self.events(
                await self.sync(dev["access_token"]))], [{"n": 1}])

    async def test_explicit_device_overrides_wildcard(self) -> None:
        alice = await self.user("alice")
        bob1 = await self.register("bob")
        bob2 = (await self.login("bob")).json
        await self.send_td(alice, {"@bob:test.local": {"*": {"n": "all"},
                                                       bob2["device_id"]: {"n": "two"}}})
        self.assertEqual([e["content"] for e in self.events(
            await self.sync(bob1["access_token"]))], [{"n": "all"}])
        self.assertEqual([e["content"] for e in self.events(
            await self.sync(bob2["access_token"]))], [{"n": "two"}])

    async def test_txn_idempotency(self) -> None:
        alice = await self.register("alice")
        bob = await self.register("bob")
        msg = {"@bob:test.local": {bob["device_id"]: {"once": True}}}
        for _ in range(2):
            resp = await self.send_td(alice["access_token"], msg, txn="same")
            self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.pending("@bob:test.local"), 1)
        # The same txn id from another device of the sender is a different request.
        other = (await self.login("alice")).json
        await self.send_td(other["access_token"], msg, txn="same")
        self.assertEqual(await self.pending("@bob:test.local"), 2)
        self.assertEqual(len(self.events(await self.sync(bob["access_token"]))), 2)

    async def test_redelivered_until_acknowledged(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        token = bob["access_token"]
        start = await self.sync(token)
        await self.send_td(alice, {"@bob:test.local": {bob["device_id"]: {"k": 1}}})
        first = await self.sync(token, start["next_batch"])
        self.assertEqual(len(self.events(first)), 1)
        # The response was "lost": the client retries with the old token and gets it again.
        again = await self.sync(token, start["next_batch"])
        self.assertEqual([e["content"] for e in self.events(again)], [{"k": 1}])
        self.assertEqual(await self.pending("@bob:test.local"), 1)
        # The next sync from the new token acknowledges: gone, and not delivered again.
        after = await self.sync(token, first["next_batch"])
        self.assertEqual(self.events(after), [])
        self.assertEqual(await self.pending("@bob:test.local"), 0)
        self.assertEqual(self.events(await self.sync(token, start["next_batch"])), [])

    async def test_initial_sync_delivers_and_ack_deletes(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        await self.send_td(alice, {"@bob:test.local": {bob["device_id"]: {"k": 2}}})
        first = await self.sync(bob["access_token"])
        self.assertEqual(len(self.events(first)), 1)
        await self.sync(bob["access_token"], first["next_batch"])
        self.assertEqual(await self.pending("@bob:test.local"), 0)

    async def test_batches_of_100_drain_without_waiting(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        token = bob["access_token"]
        for i in range(130):
            await self.send_td(alice, {"@bob:test.local": {bob["device_id"]: {"i": i}}})
        first = await self.sync(token)
        self.assertEqual([e["content"]["i"] for e in self.events(first)], list(range(100)))
        waiting = defer.ensureDeferred(self.sync(token, first["next_batch"], timeout=30000))
        for _ in range(40):
            if waiting.called:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue(waiting.called, "the leftovers should not wait for the long-poll")
        second = await waiting
        self.assertEqual([e["content"]["i"] for e in self.events(second)], list(range(100, 130)))
        self.assertEqual(await self.pending("@bob:test.local"), 30)
        await self.sync(token, second["next_batch"])
        self.assertEqual(await self.pending("@bob:test.local"), 0)

    async def test_deleting_device_deletes_inbox(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        second = (await self.login("bob")).json
        await self.send_td(alice, {"@bob:test.local": {"*": {"k": 3}}})
        self.assertEqual(await self.pending("@bob:test.local"), 2)
        path = f"{CS}/devices/{second['device_id']}"
        first = await self.request("DELETE", path, {}, token=bob["access_token"])
        ok = await self.request("DELETE", path, {"auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "bob"}, "password": TEST_PASSWORD}},
            token=bob["access_token"])
        self.assertEqual(ok.code, 200, ok)
        self.assertEqual(await self.pending("@bob:test.local"), 1)

    async def test_unknown_and_remote_recipients_are_skipped(self) -> None:
        alice = await self.user("alice")
        await self.register("bob")
        resp = await self.send_td(alice, {"@bob:test.local": {"NOSUCHDEVICE": {"k": 1}},
                                          "@nobody:test.local": {"*": {"k": 1}},
                                          "@carol:remote.example": {"*": {"k": 1}}})
        self.assertEqual(resp.code, 200, resp)
        row = await self.hs.db.query_one("n", "SELECT COUNT(*) FROM device_inbox")
        assert row is not None
        self.assertEqual(row[0], 0)

    async def test_bad_input(self) -> None:
        alice = await self.user("alice")
        bob = await self.register("bob")
        dev = bob["device_id"]
        bad: list[tuple[Any, int, str]] = [
            ([], 400, "M_BAD_JSON"),
            ({"@bob:test.local": []}, 400, "M_BAD_JSON"),
            ({"@bob:test.local": {dev: "text"}}, 400, "M_BAD_JSON"),
            ({"not-a-user": {dev: {}}}, 400, "M_INVALID_PARAM"),
            ({"@bob:test.local": {dev: {"x": "a" * (64 * 1024)}}}, 400, "M_TOO_LARGE"),
        ]
        for messages, code, errcode in bad:
            resp = await self.send_td(alice, messages)
            self.assertMatrixError(resp, code, errcode)
        resp = await self.request("PUT", f"{CS}/sendToDevice/m.test/t1", {}, token=alice)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("PUT", f"{CS}/sendToDevice/m.test/t1", raw_body=b"{nope",
                                  token=alice)
        self.assertMatrixError(resp, 400, "M_NOT_JSON")
        self.assertEqual(await self.pending("@bob:test.local"), 0)

    async def test_requires_token(self) -> None:
        resp = await self.send_td(None, {})
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
