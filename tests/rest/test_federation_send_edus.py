"""Inbound ``PUT /_matrix/federation/v1/send/{txnId}``: X-Matrix required, the spec's
PDU/EDU limits, idempotency per (origin, txn id), PDUs handed to the ingest, and each
EDU (typing, receipts, presence, device list and signing key updates, to-device)
applied for the origin's own users only — a server forging another server's user is
ignored. The second server is a real in-process Parley (tests/rest/test_federation_keys.py).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from federation.send_servlet import NOT_ACCEPTED
from tests.harness import Response
from tests.rest.test_federation_keys import FederationTestCase

REMOTE = "remote.test"
BOB = f"@bob:{REMOTE}"
EVE = "@eve:third.test"


def send_path(txn_id: str) -> str:
    return f"/_matrix/federation/v1/send/{quote(txn_id)}"


def edu(edu_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return {"edu_type": edu_type, "content": content}


class FakeIngest:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def receive_pdu(self, origin: str, pdu: dict[str, Any]) -> str | None:
        self.calls.append((origin, pdu))
        return None if pdu.get("content", {}).get("ok") else "rejected: test"


class InboundTestCase(FederationTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        alice = await self.register("alice")
        self.token = alice["access_token"]
        self.device = alice["device_id"]
        resp = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.token)
        self.assertEqual(resp.code, 200, resp)
        self.room_id = resp.json["room_id"]
        # bob of remote.test is joined, as federation ingest would record it.
        await self.add_member(BOB)

    async def add_member(self, user_id: str) -> None:
        def _do(txn: Any) -> None:
            txn.execute("INSERT INTO local_current_membership (user_id, room_id, membership,"
                        " event_id, stream_ordering) VALUES (?, ?, 'join', ?, 0)",
                        (user_id, self.room_id, f"$fake-join-{user_id}"))
        await self.hs.db.run("test_add_member", _do)

    async def send_txn(self, txn_id: str, pdus: list[Any] | None = None,
                       edus: list[Any] | None = None) -> Response:
        body: dict[str, Any] = {"origin": REMOTE, "origin_server_ts": self.clock.time_msec(),
                                "pdus": pdus or []}
        if edus is not None:
            body["edus"] = edus
        return await self.remote_signed("PUT", send_path(txn_id), body)

    @property
    def servlet(self) -> Any:
        assert self.hs.federation is not None
        return self.hs.federation.sender.send_servlet

    @property
    def ignored(self) -> int:
        assert self.hs.federation is not None
        return int(self.hs.federation.sender.inbound_edus.ignored)


def fake_pdu(room_id: str, body: str, ok: bool = False) -> dict[str, Any]:
    # Content is redacted out of the reference hash: the timestamp keeps ids apart.
    return {"room_id": room_id, "type": "m.room.message", "sender": BOB,
            "origin_server_ts": 1000 + sum(map(ord, body)) * 7 + len(body), "depth": 5,
            "prev_events": [], "auth_events": [],
            "content": {"body": body, **({"ok": True} if ok else {})},
            "hashes": {"sha256": "x"}, "signatures": {}}


class TransactionTest(InboundTestCase):
    async def test_requires_x_matrix(self) -> None:
        resp = await self.request("PUT", send_path("t1"), {"pdus": []})
        self.assertMatrixError(resp, 401, "M_UNAUTHORIZED")

    async def test_pdus_without_ingest_are_not_accepted(self) -> None:
        self.servlet.ingest = None
        resp = await self.send_txn("t0", [fake_pdu(self.room_id, "hi")])
        self.assertEqual(resp.code, 200, resp)
        ((event_id, result),) = resp.json["pdus"].items()
        self.assertTrue(event_id.startswith("$"))
        self.assertEqual(result, {"error": NOT_ACCEPTED})

    async def test_idempotent_per_origin_and_txn_id(self) -> None:
        ingest = FakeIngest()
        self.servlet.ingest = ingest
        pdus = [fake_pdu(self.room_id, "a", ok=True), fake_pdu(self.room_id, "b")]
        first = await self.send_txn("t1", pdus)
        self.assertEqual(first.code, 200, first)
        results = list(first.json["pdus"].values())
        self.assertEqual(results, [{}, {"error": "rejected: test"}])
        self.assertEqual([o for o, _ in ingest.calls], [REMOTE, REMOTE])
        again = await self.send_txn("t1", pdus)
        self.assertEqual(again.json, first.json)
        self.assertEqual(len(ingest.calls), 2)  # not processed again
        other = await self.send_txn("t2", pdus)
        self.assertEqual(other.code, 200, other)
        self.assertEqual(len(ingest.calls), 4)

    async def test_limits(self) -> None:
        self.servlet.ingest = FakeIngest()
        too_many = [fake_pdu(self.room_id, str(i)) for i in range(51)]
        resp = await self.send_txn("big1", too_many)
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.send_txn("big2", [], [edu("m.x", {}) for _ in range(101)])
        self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.send_txn("ok", too_many[:50], [edu("m.x", {}) for _ in range(100)])
        self.assertEqual(resp.code, 200, resp)
        resp = await self.send_txn("x" * 300)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.remote_signed("PUT", send_path("nopdus"), {"edus": []})
        self.assertEqual(resp.code, 400, resp)

    async def test_blocked_origin_refused(self) -> None:
        await self.hs.stores.blocked_servers.block(REMOTE, "@admin:test.local",
                                                   self.clock.time_msec(), None)
        resp = await self.send_txn("t1")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class TypingReceiptPresenceTest(InboundTestCase):
    async def test_typing_for_own_user_only(self) -> None:
        typing = self.hs_typing()
        resp = await self.send_txn("t1", edus=[
            edu("m.typing", {"room_id": self.room_id, "user_id": BOB, "typing": True})])
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(typing.typing_users(self.room_id), [BOB])
        # remote.test speaking for third.test's eve (joined here too): ignored.
        await self.add_member(EVE)
        await self.send_txn("t2", edus=[
            edu("m.typing", {"room_id": self.room_id, "user_id": EVE, "typing": True})])
        self.assertEqual(typing.typing_users(self.room_id), [BOB])
        self.assertEqual(self.ignored, 1)
        await self.send_txn("t3", edus=[
            edu("m.typing", {"room_id": self.room_id, "user_id": BOB, "typing": False})])
        self.assertEqual(typing.typing_users(self.room_id), [])

    def hs_typing(self) -> Any:
        assert self.hs.federation is not None
        return self.hs.federation.sender.inbound_edus._typing  # noqa: SLF001

    async def test_server_acl_denying_the_origin(self) -> None:
        resp = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{quote(self.room_id)}/state/m.room.server_acl",
            {"allow": ["*"], "deny": [REMOTE]}, token=self.token)
        self.assertEqual(resp.code, 200, resp)
        await self.send_txn("t1", edus=[
            edu("m.typing", {"room_id": self.room_id, "user_id": BOB, "typing": True})])
        self.assertEqual(self.hs_typing().typing_users(self.room_id), [])
        self.assertEqual(self.ignored, 1)

    async def test_typing_in_a_room_the_user_is_not_in_is_ignored(self) -> None:
        await self.send_txn("t1", edus=[
            edu("m.typing", {"room_id": "!other:test.local", "user_id": BOB, "typing": True})])
        self.assertEqual(self.hs_typing().typing_users("!other:test.local"), [])

    async def test_receipt_reaches_local_sync(self) -> None:
        sent = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{quote(self.room_id)}/send/m.room.message/1",
            {"msgtype": "m.text", "body": "hi"}, token=self.token)
        event_id = sent.json["event_id"]
        receipt = {self.room_id: {"m.read": {
            BOB: {"event_ids": [event_id], "data": {"ts": 1234}},
            EVE: {"event_ids": [event_id], "data": {"ts": 1}}}}}
        resp = await self.send_txn("r1", edus=[edu("m.receipt", receipt)])
        self.assertEqual(resp.code, 200, resp)
        sync = await self.request("GET", "/_matrix/client/v3/sync", token=self.token)
        ephemeral = sync.json["rooms"]["join"][self.room_id]["ephemeral"]["events"]
        content = next(e["content"] for e in ephemeral if e["type"] == "m.receipt")
        self.assertEqual(content[event_id]["m.read"], {BOB: {"ts": 1234}})
        self.assertEqual(self.ignored, 1)  # eve's, forged

    async def test_presence(self) -> None:
        resp = await self.send_txn("p1", edus=[edu("m.presence", {"push": [
            {"user_id": BOB, "presence": "online", "last_active_ago": 5000,
             "currently_active": True, "status_msg": "hello"},
            {"user_id": EVE, "presence": "online", "last_active_ago": 1}]})])
        self.assertEqual(resp.code, 200, resp)
        status = await self.request("GET", f"/_matrix/client/v3/presence/{quote(BOB)}/status",
                                    token=self.token)
        self.assertEqual(status.code, 200, status)
        self.assertEqual(status.json["presence"], "online")
        self.assertEqual(status.json["status_msg"], "hello")
        self.assertGreaterEqual(status.json["last_active_ago"], 5000)
        stored = await self.hs.stores.presence.get_many([EVE])
        self.assertNotIn(EVE, stored)


class DeviceAndToDeviceTest(InboundTestCase):
    async def sync_token(self) -> str:
        resp = await self.request("GET", "/_matrix/client/v3/sync", token=self.token)
        return str(resp.json["next_batch"])

    async def device_lists_after(self, since: str) -> dict[str, Any]:
        resp = await self.request("GET", f"/_matrix/client/v3/sync?since={quote(since)}",
                                  token=self.token)
        self.assertEqual(resp.code, 200, resp)
        return dict(resp.json.get("device_lists", {}))

    async def test_device_list_update_marks_remote_user_changed(self) -> None:
        since = await self.sync_token()
        resp = await self.send_txn("d1", edus=[edu("m.device_list_update", {
            "user_id": BOB, "device_id": "BOBDEV", "stream_id": 5, "prev_id": [],
            "deleted": False})])
        self.assertEqual(resp.code, 200, resp)
        self.assertIn(BOB, (await self.device_lists_after(since)).get("changed", []))

    async def test_forged_device_list_update_ignored(self) -> None:
        await self.add_member(EVE)
        since = await self.sync_token()
        await self.send_txn("d1", edus=[edu("m.device_list_update", {
            "user_id": EVE, "device_id": "EVEDEV", "stream_id": 5, "prev_id": []})])
        self.assertNotIn(EVE, (await self.device_lists_after(since)).get("changed", []))
        self.assertEqual(self.ignored, 1)

    async def test_signing_key_update(self) -> None:
        since = await self.sync_token()
        master = {"user_id": BOB, "usage": ["master"], "keys": {"ed25519:abc": "abc"}}
        await self.send_txn("s1", edus=[edu("m.signing_key_update",
                                            {"user_id": BOB, "master_key": master})])
        self.assertIn(BOB, (await self.device_lists_after(since)).get("changed", []))

    async def test_to_device_delivered_once_and_forgery_ignored(self) -> None:
        message = {"sender": BOB, "type": "m.room_key_request", "message_id": "m1",
                   "messages": {"@alice:test.local": {self.device: {"k": "v"}},
                                "@zed:elsewhere.test": {"D": {"k": "no"}}}}
        forged = {**message, "sender": EVE, "message_id": "m2"}
        resp = await self.send_txn("td1", edus=[edu("m.direct_to_device", message),
                                                edu("m.direct_to_device", forged)])
        self.assertEqual(resp.code, 200, resp)
        # The same message id in another transaction: delivered once only.
        await self.send_txn("td2", edus=[edu("m.direct_to_device", message)])
        sync = await self.request("GET", "/_matrix/client/v3/sync", token=self.token)
        events = sync.json.get("to_device", {}).get("events", [])
        self.assertEqual(events, [{"sender": BOB, "type": "m.room_key_request",
                                   "content": {"k": "v"}}])
        self.assertEqual(self.ignored, 1)
