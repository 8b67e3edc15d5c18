"""The federation sender: local events and EDUs reach a fake remote server (a Twisted
HTTP server that verifies X-Matrix with our key) in transactions; backoff on the test
clock; the queue survives a "restart" (a new homeserver over the same database) with
the in-flight transaction resent under the same id and nothing acknowledged resent;
batching limits and catch-up; blocked servers get nothing; the destinations admin API.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task
from twisted.web import resource, server

import tests.harness as harness
from federation.sender import FederationSender
from federation.sender.backoff import MIN_RETRY_INTERVAL_MS, BackoffPolicy
from federation.sender.queue import MAX_EDUS, MAX_PDUS
from federation.x_matrix import parse_x_matrix, verify_request
from homeserver.app import build_homeserver
from storage.stores.federation_queue import EduRow
from tests.harness import HomeserverTestCase, make_config
from tests.rest.test_federation_keys import StaticDiscovery, federation_section, for_tests

REMOTE = "remote.test"
SEND_PREFIX = b"/_matrix/federation/v1/send/"
DEST_PATH = "/_synapse/admin/v1/federation/destinations"


class FakeRemote(resource.Resource):
    """``remote.test``: records each transaction PUT to it (after checking its X-Matrix
    signature with the sender's key) and answers ``status``."""

    isLeaf = True

    def __init__(self, verify_key: Any) -> None:
        super().__init__()
        self.verify_key = verify_key
        self.txns: list[tuple[str, dict[str, Any]]] = []
        self.status = 200
        self.error_body = b'{"errcode":"M_UNKNOWN","error":"down"}'
        self.bad_signatures = 0

    def render_PUT(self, request: Any) -> bytes:  # noqa: N802 (twisted.web API)
        path = request.path
        if path.startswith(b"/_matrix/federation/v2/invite/"):
            # An invite of one of its users is sent here first (federation/remote_join.py):
            # it accepts, answering the event (without a signature of its own).
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"event": json.loads(request.content.read())["event"]}).encode()
        if not path.startswith(SEND_PREFIX):
            request.setResponseCode(404)
            return b'{"errcode":"M_UNRECOGNIZED","error":"no"}'
        raw = request.content.read()
        body = json.loads(raw)
        header = request.requestHeaders.getRawHeaders(b"authorization")[0].decode()
        try:
            verify_request(parse_x_matrix(header), self.verify_key, REMOTE, "PUT",
                           request.uri.decode(), body)
        except Exception:  # noqa: BLE001
            self.bad_signatures += 1
            request.setResponseCode(401)
            return b'{"errcode":"M_UNAUTHORIZED","error":"bad"}'
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        if self.status != 200:
            return self.error_body
        self.txns.append((path[len(SEND_PREFIX):].decode(), body))
        return b'{"pdus":{}}'

    def pdu_ids(self) -> list[str]:
        from homeserver.events.hashing import compute_event_id
        return [compute_event_id(p, "10") for _, b in self.txns for p in b["pdus"]]

    def edus(self, edu_type: str) -> list[dict[str, Any]]:
        return [e["content"] for _, b in self.txns for e in b["edus"]
                if e["edu_type"] == edu_type]


class SenderTestCase(HomeserverTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": federation_section()}

    async def setUp(self) -> None:  # type: ignore[override]
        real_make = make_config
        harness.make_config = lambda *a, **kw: _with_flag(real_make(*a, **kw))
        try:
            await super().setUp()
        finally:
            harness.make_config = real_make
        self.config = for_tests(self.config)
        assert self.hs.federation is not None
        self.fake = FakeRemote(self.hs.federation.local_keys.verify_key)
        site = server.Site(self.fake)
        self.fake_port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self.fake_port.stopListening)
        self.discovery = StaticDiscovery()
        self.discovery.ports[REMOTE] = self.fake_port.getHost().port
        self.wire(self.hs)
        self.alice = await self.register("alice")
        self.token = self.alice["access_token"]

    def wire(self, hs: Any) -> None:
        hs.federation.client.discovery = self.discovery
        hs.federation.sender.sender.policy = BackoffPolicy(uniform=lambda a, b: 1.0)

    @property
    def sender(self) -> FederationSender:
        assert self.hs.federation is not None
        return self.hs.federation.sender.sender  # type: ignore[no-any-return]

    async def settle(self, condition: Any = None, seconds: float = 10.0) -> None:
        """Let background sends run (real time) until ``condition()`` holds or, without
        one, until no destination queue is busy."""
        for _ in range(int(seconds / 0.02)):
            busy = any(q.busy for q in self.sender.queues.values()) \
                or bool(self.sender._background)  # noqa: SLF001
            if (condition() if condition is not None else not busy) and not busy:
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("background federation sends did not settle")

    async def room_with_remote_member(self, remote_user: str = f"@bob:{REMOTE}") -> str:
        """A room of alice's where ``remote_user`` is joined (as federation ingest
        would record it: a row of the current membership)."""
        resp = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.token)
        self.assertEqual(resp.code, 200, resp)
        room_id = resp.json["room_id"]
        await add_remote_member(self.hs, room_id, remote_user)
        self.sender._room_servers.pop(room_id, None)  # noqa: SLF001 (bypassed the fan-out)
        return str(room_id)

    async def send_text(self, room_id: str, body: str) -> str:
        resp = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{body}",
            {"msgtype": "m.text", "body": body}, token=self.token)
        self.assertEqual(resp.code, 200, resp)
        return str(resp.json["event_id"])

    async def restart(self) -> None:
        """A new homeserver over the same database (the old one stopped first)."""
        await self.hs.stop()
        import federation.client as client_module

        # The new sender resumes while the server is built: it must find remote.test.
        real = client_module.ServerDiscovery
        client_module.ServerDiscovery = lambda *a, **kw: self.discovery  # type: ignore[assignment,misc]
        try:
            self.hs = await build_homeserver(self.config, clock=self.clock)
        finally:
            client_module.ServerDiscovery = real  # type: ignore[misc]
        self.wire(self.hs)


def _with_flag(result: tuple[Any, Any]) -> tuple[Any, Any]:
    config, schema = result
    return for_tests(config), schema


async def add_remote_member(hs: Any, room_id: str, user_id: str) -> None:
    def _do(txn: Any) -> None:
        txn.execute("INSERT INTO local_current_membership (user_id, room_id, membership,"
                    " event_id, stream_ordering) VALUES (?, ?, 'join', ?, 0)",
                    (user_id, room_id, f"$fake-join-{user_id}"))
    await hs.db.run("test_add_remote_member", _do)


class PduSendTest(SenderTestCase):
    async def test_local_event_sent_to_remote_member_server(self) -> None:
        room_id = await self.room_with_remote_member()
        event_id = await self.send_text(room_id, "hello")
        await self.settle(lambda: event_id in self.fake.pdu_ids())
        self.assertEqual(self.fake.bad_signatures, 0)
        txn_id, body = self.fake.txns[-1]
        self.assertEqual(body["origin"], "test.local")
        self.assertIsInstance(body["origin_server_ts"], int)
        pdu = body["pdus"][-1]
        self.assertEqual(pdu["content"]["body"], "hello")
        self.assertNotIn("unsigned", pdu)
        self.assertIn("test.local", pdu["signatures"])
        state = await self.hs.stores.federation_queue.get_destination(REMOTE)
        assert state is not None
        self.assertEqual(state.retry_interval, 0)
        self.assertIsNotNone(state.last_successful_stream_ordering)

    async def test_rooms_without_remote_members_send_nothing(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.token)
        await self.send_text(resp.json["room_id"], "local only")
        await self.settle()
        self.assertEqual(self.fake.txns, [])
        self.assertEqual(await self.hs.stores.federation_queue.pending_destinations(), [])

    async def test_room_servers_read_again_after_their_ttl(self) -> None:
        """A server that joined without its member event reaching this process's
        fan-out (another process wrote it and forwarding gave up) gets the room's
        events once the cached server list has expired."""
        from federation.sender import ROOM_CACHE_TTL_S

        resp = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.token)
        self.assertEqual(resp.code, 200, resp)
        room_id = resp.json["room_id"]
        first = await self.send_text(room_id, "before")  # caches: nobody remote
        await self.settle()
        await add_remote_member(self.hs, room_id, f"@bob:{REMOTE}")  # no fan-out
        unseen = await self.send_text(room_id, "still-cached")
        await self.settle()
        self.assertNotIn(unseen, self.fake.pdu_ids())
        self.advance(ROOM_CACHE_TTL_S + 1)
        seen = await self.send_text(room_id, "expired")
        await self.settle(lambda: seen in self.fake.pdu_ids())
        self.assertNotIn(first, self.fake.pdu_ids())

    async def test_invite_goes_to_the_invitee_server(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.token)
        room_id = resp.json["room_id"]
        inv = await self.request("POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/invite",
                                 {"user_id": f"@carol:{REMOTE}"}, token=self.token)
        self.assertEqual(inv.code, 200, inv)
        await self.settle(lambda: bool(self.fake.txns))
        invites = [p for _, b in self.fake.txns for p in b["pdus"]
                   if p["type"] == "m.room.member"]
        self.assertEqual([(p["state_key"], p["content"]["membership"]) for p in invites],
                         [(f"@carol:{REMOTE}", "invite")])

    async def test_blocked_server_gets_nothing(self) -> None:
        room_id = await self.room_with_remote_member()
        await self.hs.stores.blocked_servers.block(REMOTE, "@alice:test.local",
                                                   self.clock.time_msec(), None)
        await self.send_text(room_id, "not for them")
        await self.settle()
        self.assertEqual(self.fake.txns, [])
        self.assertEqual(await self.hs.stores.federation_queue.pending_destinations(), [])


class BackoffTest(SenderTestCase):
    async def test_exponential_backoff_on_the_clock_then_success(self) -> None:
        room_id = await self.room_with_remote_member()
        self.fake.status = 500
        first = await self.send_text(room_id, "one")
        await self.settle()
        fq = self.hs.stores.federation_queue
        state = await fq.get_destination(REMOTE)
        assert state is not None
        self.assertEqual(state.retry_interval, MIN_RETRY_INTERVAL_MS)
        failed_at = state.failure_ts
        pending = await fq.in_flight(REMOTE)
        assert pending is not None
        # Queued meanwhile: waits for the backoff, nothing is attempted before.
        second = await self.send_text(room_id, "two")
        await self.settle()
        self.assertEqual(self.sender.queues[REMOTE].status.failures, 1)
        self.advance(MIN_RETRY_INTERVAL_MS / 1000 - 1)
        await self.settle()
        self.assertEqual(self.sender.queues[REMOTE].status.failures, 1)
        self.advance(2)
        await self.settle()
        self.assertEqual(self.sender.queues[REMOTE].status.failures, 2)
        state = await fq.get_destination(REMOTE)
        assert state is not None
        self.assertEqual(state.retry_interval, 2 * MIN_RETRY_INTERVAL_MS)
        self.assertEqual(state.failure_ts, failed_at)  # when it started failing
        # The destination is back: the same transaction (same id), then the rest.
        self.fake.status = 200
        self.advance(2 * MIN_RETRY_INTERVAL_MS / 1000)
        await self.settle(lambda: second in self.fake.pdu_ids())
        self.assertEqual(self.fake.txns[0][0], pending.txn_id)
        self.assertEqual(self.fake.pdu_ids(), [first, second])
        state = await fq.get_destination(REMOTE)
        assert state is not None
        self.assertEqual((state.retry_interval, state.retry_last_ts, state.failure_ts),
                         (0, 0, None))

    async def test_backoff_is_capped(self) -> None:
        policy = BackoffPolicy(uniform=lambda a, b: 1.4)
        interval = 0
        for _ in range(40):
            interval = policy.next_interval(interval)
        self.assertEqual(interval, policy.max_interval_ms)

    async def test_refused_transaction_is_dropped_without_backoff(self) -> None:
        room_id = await self.room_with_remote_member()
        self.fake.status = 400
        await self.send_text(room_id, "refused")
        await self.settle()
        fq = self.hs.stores.federation_queue
        self.assertIsNone(await fq.in_flight(REMOTE))
        state = await fq.get_destination(REMOTE)
        assert state is not None
        self.assertEqual(state.retry_interval, 0)
        self.fake.status = 200
        later = await self.send_text(room_id, "accepted")
        await self.settle(lambda: later in self.fake.pdu_ids())
        self.assertEqual(self.fake.pdu_ids(), [later])

    async def test_rate_limited_retries_when_told_without_backoff(self) -> None:
        """A 429 with retry_after_ms (our own per-origin limit's answer) is a pause, not
        "down": the same transaction goes again after that delay."""
        room_id = await self.room_with_remote_member()
        self.fake.status = 429
        self.fake.error_body = (b'{"errcode":"M_LIMIT_EXCEEDED","error":"slow down",'
                                b'"retry_after_ms":2000}')
        sent = await self.send_text(room_id, "throttled")
        await self.settle()
        fq = self.hs.stores.federation_queue
        pending = await fq.in_flight(REMOTE)
        assert pending is not None
        state = await fq.get_destination(REMOTE)
        self.assertEqual(state.retry_interval if state else 0, 0)
        self.fake.status = 200
        self.advance(1)
        await self.settle()
        self.assertEqual(self.fake.pdu_ids(), [])
        self.advance(1.5)
        await self.settle(lambda: sent in self.fake.pdu_ids())
        self.assertEqual(self.fake.txns[0][0], pending.txn_id)

    async def test_rate_limited_without_a_delay_backs_off(self) -> None:
        room_id = await self.room_with_remote_member()
        self.fake.status = 429
        self.fake.error_body = b'{"errcode":"M_LIMIT_EXCEEDED","error":"slow down"}'
        await self.send_text(room_id, "throttled")
        await self.settle()
        state = await self.hs.stores.federation_queue.get_destination(REMOTE)
        assert state is not None
        self.assertEqual(state.retry_interval, MIN_RETRY_INTERVAL_MS)

    async def test_inbound_transaction_from_destination_wakes_it(self) -> None:
        """Synapse's rule: hearing from a server clears its backoff (here: /send)."""
        room_id = await self.room_with_remote_member()
        self.fake.status = 500
        queued = await self.send_text(room_id, "queued")
        await self.settle()
        self.fake.status = 200
        await self.sender.heard_from(REMOTE)
        await self.settle(lambda: queued in self.fake.pdu_ids())


class PersistenceTest(SenderTestCase):
    async def test_restart_resends_in_flight_with_same_id_and_loses_nothing(self) -> None:
        room_id = await self.room_with_remote_member()
        self.fake.status = 500
        sent = [await self.send_text(room_id, f"m{i}") for i in range(3)]
        await self.settle()
        pending = await self.hs.stores.federation_queue.in_flight(REMOTE)
        assert pending is not None
        await self.restart()
        # Still backing off after the restart (the timings are stored).
        await self.settle()
        self.assertEqual(self.fake.txns, [])
        self.fake.status = 200
        self.advance(MIN_RETRY_INTERVAL_MS / 1000 + 1)
        await self.settle(lambda: len(self.fake.pdu_ids()) >= 3)
        self.assertEqual(self.fake.txns[0][0], pending.txn_id)
        self.assertEqual(self.fake.txns[0][1], pending.body)
        self.assertEqual(self.fake.pdu_ids(), sent)  # each once, in order
        # Acknowledged: another restart sends nothing again.
        before = len(self.fake.txns)
        await self.restart()
        await self.settle()
        self.assertEqual(len(self.fake.txns), before)
        self.assertEqual(await self.hs.stores.federation_queue.pending_destinations(), [])

    async def test_events_queued_while_stopped_are_sent_after_start(self) -> None:
        room_id = await self.room_with_remote_member()
        self.fake.status = 503
        first = await self.send_text(room_id, "before")
        await self.settle()
        await self.restart()
        self.fake.status = 200
        await self.hs.stores.federation_queue.reset_retry(REMOTE)
        await self.settle(lambda: first in self.fake.pdu_ids())
        self.assertEqual(self.fake.pdu_ids(), [first])


    async def test_event_whose_fan_out_never_ran_is_queued_at_start(self) -> None:
        """A crash after an event was stored but before the sender saw it: the next
        start finds it after the checkpoint and queues it; earlier ones are not resent."""
        room_id = await self.room_with_remote_member()
        sent = await self.send_text(room_id, "seen")
        await self.settle(lambda: sent in self.fake.pdu_ids())

        async def crashed(event: Any, position: int) -> None:
            return None
        self.sender._queue_event = crashed  # type: ignore[method-assign]  # noqa: SLF001
        lost = await self.send_text(room_id, "never fanned out")
        self.assertEqual(await self.hs.stores.federation_queue.pending_destinations(), [])
        await self.restart()
        await self.settle(lambda: lost in self.fake.pdu_ids())
        self.assertEqual(self.fake.pdu_ids(), [sent, lost])

    async def test_checkpoint_advances_on_the_clock(self) -> None:
        fq = self.hs.stores.federation_queue
        start = await fq.get_stream_position()
        assert start is not None
        room_id = await self.room_with_remote_member()
        await self.send_text(room_id, "x")
        self.advance(5)
        self.advance(5)
        await self.settle()
        later = await fq.get_stream_position()
        assert later is not None
        self.assertGreater(later, start)

    async def test_checkpoint_stays_below_a_room_whose_fan_out_stalled(self) -> None:
        """One room's fan-out stalls (its PDU not queued yet) while another room's
        events go on: the checkpoint never passes the stalled event, so a crash then
        would have the next start queue it (a checkpoint past it lost it for good)."""
        room_a = await self.room_with_remote_member()
        resp = await self.request("POST", "/_matrix/client/v3/createRoom", {},
                                  token=self.token)
        room_b = str(resp.json["room_id"])  # local users only
        stall: defer.Deferred[None] = defer.Deferred()
        self.addCleanup(lambda: None if stall.called else stall.callback(None))
        real = self.sender._queue_event  # noqa: SLF001

        async def stalled(event: Any, position: int) -> None:
            if event.room_id == room_a:
                await stall
            await real(event, position)
        self.sender._queue_event = stalled  # type: ignore[method-assign]  # noqa: SLF001
        sending = defer.ensureDeferred(self.send_text(room_a, "stalled"))
        position = None
        for _ in range(500):
            row = await self.hs.db.query_one(
                "test_stalled", "SELECT stream_ordering FROM events WHERE room_id = ?"
                " AND type = 'm.room.message'", room_a)
            if row is not None:
                position = int(row[0])
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert position is not None
        for i in range(3):  # room B's events go past it; the clock ticks meanwhile
            await self.send_text(room_b, f"b{i}")
            self.advance(5)
            await self.settle()
        checkpoint = await self.hs.stores.federation_queue.get_stream_position()
        assert checkpoint is not None
        self.assertLess(checkpoint, position)
        stall.callback(None)
        event_id = await sending
        await self.settle(lambda: event_id in self.fake.pdu_ids())
        for _ in range(3):
            self.advance(5)
            await self.settle()
        later = await self.hs.stores.federation_queue.get_stream_position()
        assert later is not None
        self.assertGreater(later, position)


class BatchingTest(SenderTestCase):
    async def test_at_most_50_pdus_and_100_edus_per_transaction(self) -> None:
        room_id = await self.room_with_remote_member()
        self.fake.status = 500
        events = [await self.send_text(room_id, f"b{i}") for i in range(MAX_PDUS + 12)]
        await self.settle()
        fq = self.hs.stores.federation_queue
        await fq.enqueue_edus([EduRow(REMOTE, "org.example.test", None, {"i": i})
                               for i in range(MAX_EDUS + 30)])
        self.fake.status = 200
        await fq.reset_retry(REMOTE)
        await self.settle(lambda: len(self.fake.edus("org.example.test")) == MAX_EDUS + 30)
        for _, body in self.fake.txns:
            self.assertLessEqual(len(body["pdus"]), MAX_PDUS)
            self.assertLessEqual(len(body["edus"]), MAX_EDUS)
        self.assertEqual(self.fake.pdu_ids(), events)
        self.assertEqual([e["i"] for e in self.fake.edus("org.example.test")],
                         list(range(MAX_EDUS + 30)))
        self.assertGreaterEqual(len(self.fake.txns), 3)

    async def test_catch_up_keeps_latest_event_per_room(self) -> None:
        fq = self.hs.stores.federation_queue
        for i in range(1, 12):
            await fq.enqueue_pdu([REMOTE], i, "!a:test.local" if i % 2 else "!b:test.local",
                                 f"$e{i}")
        pdus, _ = await fq.peek(REMOTE, MAX_PDUS, MAX_EDUS, catch_up_over=10)
        self.assertEqual([(p.room_id, p.event_id) for p in pdus],
                         [("!b:test.local", "$e10"), ("!a:test.local", "$e11")])
        rooms, total = await fq.destination_rooms(REMOTE, 0, 10, False)
        self.assertEqual((rooms, total), ([("!a:test.local", 11), ("!b:test.local", 10)], 2))

    async def test_coalesced_edus_replace_older_ones(self) -> None:
        fq = self.hs.stores.federation_queue
        await fq.enqueue_edus([EduRow(REMOTE, "m.presence", "presence|@a:test.local",
                                      {"v": 1}),
                               EduRow(REMOTE, "m.presence", "presence|@b:test.local",
                                      {"v": 2})])
        await fq.enqueue_edus([EduRow(REMOTE, "m.presence", "presence|@a:test.local",
                                      {"v": 3})])
        _, edus = await fq.peek(REMOTE, MAX_PDUS, MAX_EDUS, 500)
        self.assertEqual([e.content["v"] for e in edus], [2, 3])


class EduSendTest(SenderTestCase):
    async def test_typing(self) -> None:
        room_id = await self.room_with_remote_member()
        resp = await self.request(
            "PUT", f"/_matrix/client/v3/rooms/{quote(room_id)}/typing/@alice:test.local",
            {"typing": True, "timeout": 10000}, token=self.token)
        self.assertEqual(resp.code, 200, resp)
        await self.settle(lambda: bool(self.fake.edus("m.typing")))
        self.assertEqual(self.fake.edus("m.typing"), [
            {"room_id": room_id, "user_id": "@alice:test.local", "typing": True}])

    async def test_public_receipt_not_private(self) -> None:
        room_id = await self.room_with_remote_member()
        event_id = await self.send_text(room_id, "read me")
        for rtype in ("m.read.private", "m.read"):
            resp = await self.request(
                "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/receipt/{rtype}/"
                f"{quote(event_id)}", {}, token=self.token)
            self.assertEqual(resp.code, 200, resp)
        await self.settle(lambda: bool(self.fake.edus("m.receipt")))
        receipts = self.fake.edus("m.receipt")
        self.assertEqual(len(receipts), 1)
        entry = receipts[0][room_id]["m.read"]["@alice:test.local"]
        self.assertEqual(entry["event_ids"], [event_id])
        self.assertIsInstance(entry["data"]["ts"], int)

    async def test_presence(self) -> None:
        await self.room_with_remote_member()
        resp = await self.request(
            "PUT", "/_matrix/client/v3/presence/@alice:test.local/status",
            {"presence": "online", "status_msg": "here"}, token=self.token)
        self.assertEqual(resp.code, 200, resp)
        await self.settle(lambda: bool(self.fake.edus("m.presence")))
        push = self.fake.edus("m.presence")[-1]["push"]
        self.assertEqual(push[0]["user_id"], "@alice:test.local")
        self.assertEqual(push[0]["presence"], "online")
        self.assertEqual(push[0]["status_msg"], "here")

    async def test_to_device_for_remote_user(self) -> None:
        resp = await self.request(
            "PUT", "/_matrix/client/v3/sendToDevice/m.test/txn1",
            {"messages": {f"@bob:{REMOTE}": {"BOBDEV": {"hello": "bob"}},
                          "@alice:test.local": {"*": {"hello": "me"}}}}, token=self.token)
        self.assertEqual(resp.code, 200, resp)
        await self.settle(lambda: bool(self.fake.edus("m.direct_to_device")))
        (edu,) = self.fake.edus("m.direct_to_device")
        self.assertEqual(edu["sender"], "@alice:test.local")
        self.assertEqual(edu["type"], "m.test")
        self.assertEqual(edu["messages"], {f"@bob:{REMOTE}": {"BOBDEV": {"hello": "bob"}}})
        self.assertIsInstance(edu["message_id"], str)
        # The same client transaction again: not sent twice.
        again = await self.request(
            "PUT", "/_matrix/client/v3/sendToDevice/m.test/txn1",
            {"messages": {f"@bob:{REMOTE}": {"BOBDEV": {"hello": "bob"}}}}, token=self.token)
        self.assertEqual(again.code, 200, again)
        await self.settle()
        self.assertEqual(len(self.fake.edus("m.direct_to_device")), 1)

    async def test_device_list_update_with_prev_id(self) -> None:
        await self.room_with_remote_member()
        for _ in range(2):
            resp = await self.login("alice")
            self.assertEqual(resp.code, 200, resp)
        await self.settle(lambda: len(self.fake.edus("m.device_list_update")) >= 2)
        first, second = self.fake.edus("m.device_list_update")[-2:]
        self.assertEqual(first["user_id"], "@alice:test.local")
        self.assertEqual(second["prev_id"], [first["stream_id"]])
        self.assertGreater(second["stream_id"], first["stream_id"])
        self.assertNotIn("deleted", second)


    async def test_signing_key_update(self) -> None:
        from tests.rest.test_cross_signing import UPLOAD, Identity

        await self.room_with_remote_member()
        identity = Identity("@alice:test.local")
        resp = await self.request("POST", UPLOAD, identity.body(), token=self.token)
        self.assertEqual(resp.code, 200, resp)
        await self.settle(lambda: bool(self.fake.edus("m.signing_key_update")))
        (update,) = self.fake.edus("m.signing_key_update")
        self.assertEqual(update["user_id"], "@alice:test.local")
        self.assertEqual(update["master_key"]["keys"], identity.master_key()["keys"])
        self.assertEqual(update["self_signing_key"]["usage"], ["self_signing"])
        self.assertNotIn("user_signing_key", update)  # never leaves this server
        # Not also as a "device" named after a public key.
        cross = set(identity.master_key()["keys"].values())
        self.assertFalse([u for u in self.fake.edus("m.device_list_update")
                          if u["device_id"] in cross])


class AdminDestinationsTest(SenderTestCase):
    async def admin(self) -> str:
        await self.hs.stores.users.set_admin("@alice:test.local", True)
        return self.token

    async def test_list_get_rooms_and_reset(self) -> None:
        token = await self.admin()
        room_id = await self.room_with_remote_member()
        self.fake.status = 500
        event_id = await self.send_text(room_id, "x")
        await self.settle()
        resp = await self.request("GET", DEST_PATH, token=token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["total"], 1)
        (entry,) = resp.json["destinations"]
        self.assertEqual(entry["destination"], REMOTE)
        self.assertEqual(entry["retry_interval"], MIN_RETRY_INTERVAL_MS)
        self.assertIsInstance(entry["failure_ts"], int)
        one = await self.request("GET", f"{DEST_PATH}/{REMOTE}", token=token)
        self.assertEqual(one.json, entry)
        rooms = await self.request("GET", f"{DEST_PATH}/{REMOTE}/rooms", token=token)
        self.assertEqual(rooms.code, 200, rooms)
        self.assertEqual([r["room_id"] for r in rooms.json["rooms"]], [room_id])
        # Retry now: the queued event goes at once, without waiting for the backoff.
        self.fake.status = 200
        reset = await self.request("POST", f"{DEST_PATH}/{REMOTE}/reset_connection", {},
                                   token=token)
        self.assertEqual(reset.code, 200, reset)
        await self.settle(lambda: event_id in self.fake.pdu_ids())
        again = await self.request("POST", f"{DEST_PATH}/{REMOTE}/reset_connection", {},
                                   token=token)
        self.assertMatrixError(again, 400, "M_INVALID_PARAM")
        audit = await self.hs.stores.security_events.list_events(event_type="admin_action")
        self.assertTrue(any(e.details.get("action") == "reset_federation_connection"
                            for e in audit))

    async def test_filters_order_paging_and_errors(self) -> None:
        token = await self.admin()
        fq = self.hs.stores.federation_queue
        for i, name in enumerate(["a.example", "b.example", "c.other"]):
            await fq.set_retry(name, None, 0, (3 - i) * 1000)
        resp = await self.request("GET", f"{DEST_PATH}?destination=example&limit=1",
                                  token=token)
        self.assertEqual(resp.json["total"], 2)
        self.assertEqual([d["destination"] for d in resp.json["destinations"]], ["a.example"])
        self.assertEqual(resp.json["next_token"], "1")
        resp = await self.request("GET", f"{DEST_PATH}?order_by=retry_interval&dir=f",
                                  token=token)
        self.assertEqual([d["destination"] for d in resp.json["destinations"]],
                         ["c.other", "b.example", "a.example"])
        for query in ("order_by=nope", "dir=x", "limit=0", "from=-1"):
            bad = await self.request("GET", f"{DEST_PATH}?{query}", token=token)
            self.assertMatrixError(bad, 400, "M_INVALID_PARAM")
        missing = await self.request("GET", f"{DEST_PATH}/nowhere.example", token=token)
        self.assertMatrixError(missing, 404, "M_NOT_FOUND")
        missing = await self.request("POST", f"{DEST_PATH}/nowhere.example/reset_connection",
                                     {}, token=token)
        self.assertMatrixError(missing, 404, "M_NOT_FOUND")
        rooms = await self.request("GET", f"{DEST_PATH}/nowhere.example/rooms", token=token)
        self.assertMatrixError(rooms, 404, "M_NOT_FOUND")

    async def test_not_an_admin(self) -> None:
        resp = await self.request("GET", DEST_PATH, token=self.token)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
