"""Event persisters federating (issue 18): this server (``test.local``) is a main process
with federation on plus two event persisters (p1, p2; PostgreSQL and Redis, in this
reactor), and ``remote.test`` a second, single-process server.

- A remote user joins rooms written by each persister (make_join/send_join reach main,
  which hands the join to the room's writer); messages flow both ways and reach /sync
  on both servers; every event of the room is persisted by its writer, once.
- A local user joins a room of remote.test whose id hashes to each persister (the
  client's request is routed to the writer, which has main run make_join/send_join and
  gets the room's state and the join back); messages both ways.
- A local user invites a remote user into a persister's room (main sends /v2/invite);
  remote.test invites a local user (held out of band by the room's writer), who
  rejects it (make_leave/send_leave through main).
- A PDU of /send the writer's auth checks refuse is answered as refused to its sender;
  with the writer unreachable the transaction is answered 503 (retried by the sender).
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from homeserver.http.errors import Codes, MatrixError
from homeserver.replication.multi_writer import writer_for_room
from tests.rest.federation_helpers import FakeRemote, current_state, persister_of
from tests.rest.test_event_persisters import WRITERS, _persister_overrides
from tests.rest.test_federation_keys import federation_section
from tests.rest.test_federation_membership import MembershipTestCase
from tests.rest.test_federation_queries import CS, q

REMOTE = "remote.test"


class PersistersFederationCase(MembershipTestCase):
    """test.local = main + p1 + p2 (self.others), federating with remote.test."""

    partial_state_joins = False
    timeout = 120

    def config_overrides(self) -> dict[str, Any]:
        from tests.harness import free_port

        self.rep_ports = {name: free_port() for name in ("main", "p1", "p2")}
        return {**_persister_overrides(f"t{secrets.token_hex(6)}:", self.rep_ports),
                "federation": federation_section(partial_state_joins=False)}

    async def setUp(self) -> None:  # type: ignore[override]
        from twisted.internet import reactor

        from homeserver.app import build_homeserver
        from homeserver.config.workers import select_worker
        from tests.harness import test_engine
        from tests.rest.test_replication import redis_reachable, wait_until

        if (self.engine or test_engine()) != "postgres":
            raise unittest.SkipTest("workers need PostgreSQL (run with PARLEY_TEST_DB=postgres)")
        why = redis_reachable()
        if why is not None:
            raise unittest.SkipTest(why)
        await super().setUp()
        self.others: dict[str, Any] = {}
        self.written: dict[str, list[str]] = {}
        self.addCleanup(lambda: defer.ensureDeferred(self._stop_others()))
        for name in WRITERS:
            hs = await build_homeserver(select_worker(self.config, name), clock=self.clock)
            self.others[name] = hs
            hs.listen(reactor)
            self.written[name] = []
            hs.fanout.subscribe("test", lambda rec, name=name: self.written[name].append(
                rec.event.event_id))
        everyone = [self.hs, *self.others.values()]
        ok = await wait_until(lambda: all(h.replication.link.is_connected for h in everyone))
        self.assertTrue(ok, "replication did not subscribe")

    async def _stop_others(self) -> None:
        others, self.others = self.others, {}
        for hs in others.values():
            await hs.stop()

    async def tearDown(self) -> None:  # type: ignore[override]
        await self._stop_others()
        await super().tearDown()

    async def local_rooms(self, user: Any, **body: Any) -> dict[str, str]:
        """A room of this server written by each persister."""
        out: dict[str, str] = {}
        for _ in range(30):
            room = await self.ok(self.hs, "POST", f"{CS}/createRoom", body, user.token)
            out.setdefault(writer_for_room(room["room_id"], WRITERS), room["room_id"])
            if len(out) == len(WRITERS):
                return out
        self.fail("createRoom never reached both writers")

    async def remote_rooms(self, owner: Any, **body: Any) -> dict[str, str]:
        """A room of remote.test whose id this server's persisters would each write."""
        out: dict[str, str] = {}
        for _ in range(30):
            room_id = await self.remote_room(owner, **body)
            out.setdefault(writer_for_room(room_id, WRITERS), room_id)
            if len(out) == len(WRITERS):
                return out
        self.fail("no remote room for each writer")


class RemoteUserJoinsTest(PersistersFederationCase):
    async def test_remote_user_joins_persister_rooms_messages_both_ways(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        rooms = await self.local_rooms(alice, preset="public_chat")
        for writer, room_id in rooms.items():
            await self.ok(self.remote, "POST", f"{CS}/join/{q(room_id)}?via=test.local", {},
                          bob.token)
            await self.members_until(self.hs, alice, room_id, {bob.user_id: "join"})
            await self.send_text(self.hs, alice, room_id, f"hi bob {writer}")
            await self.sync_until(self.remote, bob,
                                  lambda b, r=room_id, w=writer: f"hi bob {w}"
                                  in self.bodies(b, r))
            from_bob = await self.send_text(self.remote, bob, room_id, f"hi alice {writer}")
            await self.sync_until(self.hs, alice,
                                  lambda b, r=room_id, w=writer: f"hi alice {w}"
                                  in self.bodies(b, r))
            # bob's join and message were persisted by the room's writer, once.
            other = next(w for w in WRITERS if w != writer)
            self.assertEqual(self.written[writer].count(from_bob), 1)
            self.assertNotIn(from_bob, self.written[other])
        # Each room's timeline on both servers: same events, none twice.
        for room_id in rooms.values():
            here = await self.ok(self.hs, "GET", f"{CS}/rooms/{q(room_id)}/messages?dir=b"
                                 "&limit=100", token=alice.token)
            there = await self.ok(self.remote, "GET", f"{CS}/rooms/{q(room_id)}/messages?"
                                  "dir=b&limit=100", token=bob.token)
            ids_here = [e["event_id"] for e in here["chunk"]]
            ids_there = [e["event_id"] for e in there["chunk"]]
            self.assertEqual(len(ids_here), len(set(ids_here)))
            joined_at = ids_there.index(next(e["event_id"] for e in there["chunk"]
                                             if e["type"] == "m.room.member"
                                             and e["state_key"] == bob.user_id))
            self.assertEqual(ids_there[:joined_at + 1], ids_here[:joined_at + 1])

    async def test_send_answers_the_writers_decision(self) -> None:
        """PDUs of a /send transaction for persisters' rooms: one the writer's auth
        rules refuse (its sender is not in the room) is answered with that refusal."""
        alice = await self.account(self.hs, "alice")
        rooms = await self.local_rooms(alice, preset="public_chat")
        assert self.remote.federation is not None
        forger = FakeRemote(REMOTE, signing_key=self.remote.federation.local_keys.signing_key)
        persister = persister_of(self.hs)
        pdus = []
        for room_id in rooms.values():
            state = await current_state(self.hs, room_id)
            snap = await persister.snapshot(room_id)
            prev = await self.hs.stores.events.get_events(snap.extremities)
            version = (await persister.room_version(room_id)).identifier
            event = forger.event(room_id, version, forger.user("mallory"), "m.room.message",
                                 {"msgtype": "m.text", "body": "not a member"},
                                 prev=list(prev.values()),
                                 auth=[state[("m.room.create", "")],
                                       state[("m.room.power_levels", "")]])
            pdus.append((room_id, event))
        body = {"origin": REMOTE, "origin_server_ts": self.clock.time_msec(),
                "pdus": [forger.pdu(e) for _r, e in pdus]}
        # The writer unreachable: the transaction is answered 503 and not remembered.
        real = persister.remote_persist

        async def unreachable(*_args: Any) -> Any:
            raise MatrixError(502, "The process writing this room could not be reached",
                              Codes.UNKNOWN)

        persister.remote_persist = unreachable
        try:
            resp = await self.remote_signed("PUT", "/_matrix/federation/v1/send/tw1", body)
        finally:
            persister.remote_persist = real
        self.assertMatrixError(resp, 503, "M_UNKNOWN")
        # Sent again (same transaction id): processed now, each PDU the writer's answer.
        resp = await self.remote_signed("PUT", "/_matrix/federation/v1/send/tw1", body)
        self.assertEqual(resp.code, 200, resp)
        for room_id, event in pdus:
            result = resp.json["pdus"][event.event_id]
            self.assertIn("rejected", result.get("error", ""), result)
            writer = writer_for_room(room_id, WRITERS)
            stored = await self.others[writer].stores.events.get_event(event.event_id)
            self.assertIsNotNone(stored)  # stored by the writer, as rejected
            assert stored is not None
            self.assertIsNotNone(stored.internal.rejected_reason)


    async def test_writer_briefly_unreachable_is_waited_for(self) -> None:
        """A writer that cannot be reached for a moment (restarting) is tried again:
        the /send is answered 200 with the writer's decisions, not 503 (the other
        server would back off); one that stays unreachable past the budget is a 503."""
        from twisted.internet import reactor, task

        from homeserver.replication import remote_persist
        from homeserver.replication.remote_create import ProcessUnreachable

        alice = await self.account(self.hs, "alice")
        rooms = await self.local_rooms(alice, preset="public_chat")
        assert self.remote.federation is not None
        forger = FakeRemote(REMOTE, signing_key=self.remote.federation.local_keys.signing_key)
        persister = persister_of(self.hs)
        client = persister.remote_persist.__self__._client  # RemoteWrites' InternalClient
        real_post = client.post
        failures = {"left": 2, "calls": 0}

        async def flaky(*args: Any) -> Any:
            failures["calls"] += 1
            if failures["left"] > 0:
                failures["left"] -= 1
                raise ProcessUnreachable()
            return await real_post(*args)

        async def transaction(txn_id: str) -> tuple[Any, Any]:
            room_id = rooms["p1"]
            state = await current_state(self.hs, room_id)
            snap = await persister.snapshot(room_id)
            prev = await self.hs.stores.events.get_events(snap.extremities)
            version = (await persister.room_version(room_id)).identifier
            event = forger.event(room_id, version, forger.user("mallory"), "m.room.message",
                                 {"msgtype": "m.text", "body": txn_id},
                                 prev=list(prev.values()),
                                 auth=[state[("m.room.create", "")],
                                       state[("m.room.power_levels", "")]])
            body = {"origin": REMOTE, "origin_server_ts": self.clock.time_msec(),
                    "pdus": [forger.pdu(event)]}
            # The retry's pauses are on the server's (test) clock: move it along.
            sending = defer.ensureDeferred(self.remote_signed(
                "PUT", f"/_matrix/federation/v1/send/{txn_id}", body))
            while not sending.called:
                self.advance(0.25)
                await task.deferLater(reactor, 0.02, lambda: None)
            return await sending, event

        client.post = flaky
        try:
            resp, event = await transaction("flaky1")
            self.assertEqual(resp.code, 200, resp)
            self.assertEqual(failures["calls"], 3)  # two refused, then through
            self.assertIn("rejected", resp.json["pdus"][event.event_id].get("error", ""))
            failures["left"] = 10**6  # down for good: 503 once the budget is spent
            budget = remote_persist.UNREACHABLE_RETRY_S
            remote_persist.UNREACHABLE_RETRY_S = 0.6
            try:
                resp, _event = await transaction("flaky2")
            finally:
                remote_persist.UNREACHABLE_RETRY_S = budget
            self.assertMatrixError(resp, 503, "M_UNKNOWN")
            self.assertGreater(failures["calls"], 4)
        finally:
            client.post = real_post

    async def test_writer_replays_what_it_did_not_queue(self) -> None:
        """A persister's local event whose queueing never ran (a crash between the
        persist and the fan-out) is queued when the writer's sender starts again, from
        its own checkpoint, and reaches the remote server."""
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        room_id = (await self.local_rooms(alice, preset="public_chat"))["p1"]
        await self.ok(self.remote, "POST", f"{CS}/join/{q(room_id)}?via=test.local", {},
                      bob.token)
        await self.members_until(self.hs, alice, room_id, {bob.user_id: "join"})
        fanout = self.others["p1"].fanout
        entry = next(e for e in fanout._subscribers  # noqa: SLF001
                     if e[0] == "federation_queue")
        sender = entry[1].__self__
        fanout._subscribers.remove(entry)  # noqa: SLF001 (the "crash": never queued)
        lost = await self.send_text(self.hs, alice, room_id, "while down")
        rows = await self.hs.db.query("q", "SELECT destination FROM federation_pdu_queue"
                                      " WHERE room_id = ?", room_id)
        self.assertEqual(rows, [])  # nothing queued it
        self.assertIn(lost, self.written["p1"])
        await sender._replay()  # noqa: SLF001 (what start() runs first)
        await self.sync_until(self.remote, bob,
                              lambda b: "while down" in self.bodies(b, room_id))


class LocalUserJoinsRemoteTest(PersistersFederationCase):
    async def test_local_user_joins_remote_rooms_of_each_writer(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        rooms = await self.remote_rooms(bob, preset="public_chat")
        for writer, room_id in rooms.items():
            got = await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                                alice.token)
            self.assertEqual(got["room_id"], room_id)
            await self.sync_until(self.hs, alice, lambda b, r=room_id: r in b["rooms"]["join"])
            await self.members_until(self.remote, bob, room_id, {alice.user_id: "join"})
            # The join was persisted by the room's writer (not by main).
            state = await self.ok(self.hs, "GET", f"{CS}/rooms/{q(room_id)}/state/"
                                  f"m.room.member/{q(alice.user_id)}", token=alice.token)
            self.assertEqual(state["membership"], "join")
            await self.send_text(self.remote, bob, room_id, f"hello alice {writer}")
            await self.sync_until(self.hs, alice, lambda b, r=room_id, w=writer:
                                  f"hello alice {w}" in self.bodies(b, r))
            mine = await self.send_text(self.hs, alice, room_id, f"hello bob {writer}")
            self.assertIn(mine, self.written[writer])
            await self.sync_until(self.remote, bob, lambda b, r=room_id, w=writer:
                                  f"hello bob {w}" in self.bodies(b, r))

    async def test_invites_both_ways(self) -> None:
        alice = await self.account(self.hs, "alice")
        bob = await self.account(self.remote, "bob")
        # alice invites bob into each persister's room: main sends /v2/invite.
        rooms = await self.local_rooms(alice)
        for room_id in rooms.values():
            await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                          {"user_id": bob.user_id}, alice.token)
            await self.sync_until(self.remote, bob,
                                  lambda b, r=room_id: r in b["rooms"].get("invite", {}))
            await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/join", {}, bob.token)
            await self.members_until(self.hs, alice, room_id, {bob.user_id: "join"})
        # bob invites alice into remote rooms of each writer; she rejects them.
        theirs = await self.remote_rooms(bob)
        for room_id in theirs.values():
            await self.ok(self.remote, "POST", f"{CS}/rooms/{q(room_id)}/invite",
                          {"user_id": alice.user_id}, bob.token)
            await self.sync_until(self.hs, alice,
                                  lambda b, r=room_id: r in b["rooms"].get("invite", {}))
            await self.ok(self.hs, "POST", f"{CS}/rooms/{q(room_id)}/leave", {}, alice.token)
            await self.members_until(self.remote, bob, room_id, {alice.user_id: "leave"})
            await self.sync_until(self.hs, alice,
                                  lambda b, r=room_id: r not in b["rooms"].get("invite", {}))


class InternalPersistCallTest(PersistersFederationCase):
    async def test_bad_requests_refused_by_the_writer(self) -> None:
        from homeserver.replication.remote_persist import PERSIST_REMOTE

        alice = await self.account(self.hs, "alice")
        rooms = await self.local_rooms(alice)
        client = self.hs.internal_calls.client
        endpoint = self.config.workers.endpoint("p1")
        forger = FakeRemote("fake.test")
        state = await current_state(self.hs, rooms["p1"])
        event = forger.event(rooms["p1"], "10", forger.user("m"), "m.room.message",
                             {"body": "x"}, prev=[], auth=[state[("m.room.create", "")]])
        good = {"room_id": rooms["p1"], "kind": "remote", "state_before": None,
                "events": [[event.event_id, event.pdu]]}
        for body, why in [
            ({**good, "kind": "local"}, "kind"),  # local events are never handed over
            ({**good, "events": [["$other", event.pdu]]}, "does not match"),
            ({**good, "events": [[event.event_id, {"type": 1}]]}, "Invalid event"),
            ({**good, "state_before": [["m.room.create"]]}, "state"),
        ]:
            with self.assertRaises(MatrixError) as caught:
                await client.post(endpoint, PERSIST_REMOTE, body)
            self.assertEqual(caught.exception.code, 400, body)
            self.assertIn(why, caught.exception.msg)
        # p2 does not write p1's room: refused there, nothing stored.
        with self.assertRaises(MatrixError) as caught:
            await client.post(self.config.workers.endpoint("p2"), PERSIST_REMOTE, good)
        self.assertEqual(caught.exception.code, 503)
        self.assertIsNone(await self.hs.stores.events.get_event(event.event_id))


class ChunksTest(unittest.TestCase):
    """A large batch handed to a writer is split in graph order (each part cites only
    events of earlier parts or stored ones)."""

    def test_split_in_graph_order(self) -> None:
        from homeserver.replication import remote_persist

        fake = FakeRemote("fake.test")
        room = "!r:fake.test"
        create = fake.event(room, "10", fake.user("a"), "m.room.create",
                            {"creator": fake.user("a"), "room_version": "10"}, prev=[],
                            auth=[], state_key="")
        chain = [create]
        for i in range(9):
            chain.append(fake.event(room, "10", fake.user("a"), "m.room.message",
                                    {"body": str(i)}, prev=[chain[-1]], auth=[create]))
        self.patch(remote_persist, "CHUNK_EVENTS", 3)
        chunks = remote_persist._chunks(list(reversed(chain)))  # noqa: SLF001
        self.assertEqual([e.event_id for c in chunks for e in c], [e.event_id for e in chain])
        self.assertEqual([len(c) for c in chunks], [3, 3, 3, 1])
        self.patch(remote_persist, "CHUNK_BYTES", 1)  # every event its own part
        self.assertEqual(len(remote_persist._chunks(chain)), len(chain))  # noqa: SLF001
        self.assertEqual(remote_persist._chunks([]), [])  # noqa: SLF001


class ConfigTest(unittest.TestCase):
    def test_federation_with_event_persisters_is_accepted(self) -> None:
        from tests.harness import make_config

        base = _persister_overrides("x:", {"main": 9001, "p1": 9002, "p2": 9003})
        base.pop("listeners")
        config = make_config("/tmp/unused", engine="postgres", **base,
                             federation={"enabled": True})[0]
        self.assertTrue(config.federation.enabled)
        self.assertEqual(config.workers.event_writers, WRITERS)
