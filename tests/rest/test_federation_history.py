"""Room history over federation (issue 16): the history endpoints this server serves
(/event, /state, /state_ids, /event_auth, /get_missing_events, /backfill,
/timestamp_to_event) with their access and history-visibility rules, and what it
fetches from another server: a gap under a received PDU filled by
get_missing_events, a PDU whose prev events nobody has persisted with the state from
/state_ids, and a client paginating back into history fetched with /backfill.

Two in-process servers talk over plain HTTP (test.local, this one, and remote.test);
events of a room shared by both are built with FakeRemote signing with each server's
real key, so every signature check passes over the network."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.handlers.event_persister import PersistKind
from tests.rest.federation_helpers import (
    FakeRemote,
    auth_events_for,
    current_state,
    latest_events,
    persister_of,
)
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_federation_keys import FederationTestCase

FED = "/_matrix/federation/v1"
ALICE = "@alice:test.local"
BOB = "@bob:remote.test"
SHARED = "!history:remote.test"


def fq(value: str) -> str:
    return quote(value, safe="")


class HistoryTestCase(FederationTestCase, RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        assert self.remote.federation is not None and self.hs.federation is not None
        self.fake_r = FakeRemote("remote.test",
                                 signing_key=self.remote.federation.local_keys.signing_key)
        self.fake_l = FakeRemote("test.local",
                                 signing_key=self.hs.federation.local_keys.signing_key)

    # -- a room of this server that remote.test's bob joins --------------------------------

    async def local_room(self, visibility: str = "shared") -> tuple[str, str]:
        """(alice's token, a room of alice's with ``visibility`` that bob joined)."""
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat", room_version="10")
        resp = await self.put_state(alice, room, "m.room.history_visibility",
                                    {"history_visibility": visibility})
        self.assertEqual(resp.code, 200, resp)
        self.room = room
        return alice, room

    async def bob_event(self, room: str, event_type: str, content: dict[str, Any],
                        state_key: str | None = None, prev: list[Event] | None = None,
                        ts: int | None = None) -> Event:
        version = get_room_version("10")
        assert version is not None
        probe: dict[str, Any] = {"room_id": room, "type": event_type, "sender": BOB,
                                 "content": content}
        if state_key is not None:
            probe["state_key"] = state_key
        auth = await auth_events_for(self.hs, room, Event("$p", probe, version))
        prev = prev if prev is not None else await latest_events(self.hs, room)
        return self.fake_r.event(room, "10", BOB, event_type, content, prev, auth, state_key,
                                 ts=ts if ts is not None else self.clock.time_msec())

    async def bob_joins(self, room: str) -> Event:
        join = await self.bob_event(room, "m.room.member", {"membership": "join"}, BOB)
        assert self.hs.federation is not None and self.hs.federation.ingest is not None
        self.assertIsNone(await self.hs.federation.ingest.receive_pdu(
            "remote.test", self.fake_r.pdu(join)))
        return join

    async def event_of(self, event_id: str) -> Event:
        event = await self.hs.stores.events.get_event(event_id)
        assert event is not None, event_id
        return event

    # -- a room both servers hold (created by bob on remote.test) ---------------------------

    async def shared_room(self, messages: int = 3, visibility: str = "shared"
                          ) -> dict[str, Any]:
        """Create, bob's join, power levels, join rules, history visibility, ``messages``
        messages of bob's, and alice's join: all stored on remote.test."""
        f, ts = self.fake_r, self.clock.time_msec()
        create = f.event(SHARED, "10", BOB, "m.room.create",
                         {"creator": BOB, "room_version": "10"}, [], [], "", ts=ts)
        join = f.event(SHARED, "10", BOB, "m.room.member", {"membership": "join"}, [create],
                       [create], BOB, ts=ts)
        pl = f.event(SHARED, "10", BOB, "m.room.power_levels", {"users": {BOB: 100}}, [join],
                     [create, join], "", ts=ts)
        jr = f.event(SHARED, "10", BOB, "m.room.join_rules", {"join_rule": "public"}, [pl],
                     [create, join, pl], "", ts=ts)
        hv = f.event(SHARED, "10", BOB, "m.room.history_visibility",
                     {"history_visibility": visibility}, [jr], [create, join, pl], "", ts=ts)
        msgs: list[Event] = []
        for i in range(messages):
            msgs.append(f.event(SHARED, "10", BOB, "m.room.message",
                                {"msgtype": "m.text", "body": f"old {i}"},
                                [msgs[-1] if msgs else hv], [create, join, pl], ts=ts + i))
        alice_join = self.fake_l.event(SHARED, "10", ALICE, "m.room.member",
                                       {"membership": "join"}, [msgs[-1] if msgs else hv],
                                       [create, jr, pl], ALICE, ts=ts + messages)
        room = {"create": create, "join": join, "pl": pl, "jr": jr, "hv": hv, "msgs": msgs,
                "alice_join": alice_join, "state": [create, join, pl, jr, hv]}
        await self.remote.stores.rooms.store_room(SHARED, "10", BOB, False, ts)
        outcomes = await persister_of(self.remote).persist_remote(
            SHARED, [create, join, pl, jr, hv, *msgs, alice_join], PersistKind.REMOTE)
        self.assertEqual({o.status for o in outcomes}, {"accepted"}, outcomes)
        return room

    async def on_remote(self, room: dict[str, Any], event: Event) -> None:
        outcome = await persister_of(self.remote).persist_remote(SHARED, [event],
                                                                PersistKind.REMOTE)
        self.assertEqual(outcome[0].status, "accepted", outcome)

    def bob_message(self, room: dict[str, Any], body: str, prev: list[Event]) -> Event:
        return self.fake_r.event(SHARED, "10", BOB, "m.room.message",
                                 {"msgtype": "m.text", "body": body}, prev,
                                 [room["create"], room["join"], room["pl"]],
                                 ts=self.clock.time_msec())

    async def messages(self, token: str, room: str, from_token: str | None = None,
                       limit: int = 50) -> dict[str, Any]:
        path = f"{CS}/rooms/{q(room)}/messages?dir=b&limit={limit}"
        if from_token is not None:
            path += f"&from={q(from_token)}"
        resp = await self.request("GET", path, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def receive(self, event: Event) -> str | None:
        assert self.hs.federation is not None and self.hs.federation.ingest is not None
        return await self.hs.federation.ingest.receive_pdu(  # type: ignore[no-any-return]
            "remote.test", self.fake_r.pdu(event))


class ServeTest(HistoryTestCase):
    async def test_event_state_and_auth_chain(self) -> None:
        alice, room = await self.local_room()
        join = await self.bob_joins(room)
        msg_id = await self.send_ok(alice, room, "hello bob")
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(msg_id)}")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["origin"], "test.local")
        msg = await self.event_of(msg_id)
        self.assertEqual(resp.json["pdus"], [{k: v for k, v in msg.pdu.items()
                                              if k != "unsigned"}])
        self.assertEqual(resp.json["pdus"][0]["content"]["body"], "hello bob")
        # The state before the message, and the auth chain of that state.
        state = {e.event_id for e in (await current_state(self.hs, room)).values()}
        resp = await self.remote_signed("GET", f"{FED}/state_ids/{fq(room)}?event_id={fq(msg_id)}")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(set(resp.json["pdu_ids"]), state)
        create = (await current_state(self.hs, room))[("m.room.create", "")].event_id
        self.assertIn(create, resp.json["auth_chain_ids"])
        chain_ids = set(resp.json["auth_chain_ids"])
        resp = await self.remote_signed("GET", f"{FED}/state/{fq(room)}?event_id={fq(msg_id)}")
        self.assertEqual(resp.code, 200, resp)
        version = get_room_version("10")
        assert version is not None
        from homeserver.events.hashing import compute_event_id

        self.assertEqual({compute_event_id(p, version) for p in resp.json["pdus"]}, state)
        self.assertEqual({compute_event_id(p, version) for p in resp.json["auth_chain"]},
                         chain_ids)
        # The state before bob's join does not hold his join.
        resp = await self.remote_signed(
            "GET", f"{FED}/state_ids/{fq(room)}?event_id={fq(join.event_id)}")
        self.assertNotIn(join.event_id, resp.json["pdu_ids"])
        # /event_auth: the join's auth events and theirs.
        resp = await self.remote_signed(
            "GET", f"{FED}/event_auth/{fq(room)}/{fq(join.event_id)}")
        self.assertEqual(resp.code, 200, resp)
        ids = {compute_event_id(p, version) for p in resp.json["auth_chain"]}
        self.assertTrue(set(join.auth_event_ids) <= ids)
        self.assertIn(create, ids)
        # Unknown events; bad input.
        for path in (f"{FED}/event/{fq('$nope')}",
                     f"{FED}/state_ids/{fq(room)}?event_id={fq('$nope')}",
                     f"{FED}/event_auth/{fq(room)}/{fq('$nope')}"):
            self.assertMatrixError(await self.remote_signed("GET", path), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.remote_signed("GET", f"{FED}/state_ids/{fq(room)}"),
                               400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.remote_signed(
            "GET", f"{FED}/event/{fq('no-dollar')}"), 400, "M_INVALID_PARAM")

    async def test_get_missing_events_and_backfill(self) -> None:
        alice, room = await self.local_room()
        join = await self.bob_joins(room)
        sent = [await self.send_ok(alice, room, f"m{i}") for i in range(25)]
        body = {"earliest_events": [join.event_id], "latest_events": [sent[-1]], "limit": 5}
        resp = await self.remote_signed("POST", f"{FED}/get_missing_events/{fq(room)}", body)
        self.assertEqual(resp.code, 200, resp)
        bodies = [p["content"]["body"] for p in resp.json["events"]]
        self.assertEqual(bodies, ["m19", "m20", "m21", "m22", "m23"])  # oldest first
        # The walk stops at earliest_events; the limit is at most 20.
        body = {"earliest_events": [sent[20]], "latest_events": [sent[-1]], "limit": 100}
        resp = await self.remote_signed("POST", f"{FED}/get_missing_events/{fq(room)}", body)
        self.assertEqual([p["content"]["body"] for p in resp.json["events"]],
                         ["m21", "m22", "m23"])
        body = {"earliest_events": [], "latest_events": [sent[-1]], "limit": 100}
        resp = await self.remote_signed("POST", f"{FED}/get_missing_events/{fq(room)}", body)
        self.assertEqual(len(resp.json["events"]), 20)
        # min_depth: nothing shallower.
        depth = (await self.event_of(sent[22])).depth
        body = {"earliest_events": [], "latest_events": [sent[-1]], "min_depth": depth}
        resp = await self.remote_signed("POST", f"{FED}/get_missing_events/{fq(room)}", body)
        self.assertEqual([p["content"]["body"] for p in resp.json["events"]], ["m22", "m23"])
        resp = await self.remote_signed("POST", f"{FED}/get_missing_events/{fq(room)}",
                                        {"latest_events": "x"})
        self.assertEqual(resp.code, 400, resp)
        # Backfill: the given event and those before it, newest first.
        resp = await self.remote_signed(
            "GET", f"{FED}/backfill/{fq(room)}?v={fq(sent[10])}&limit=4")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual([p["content"]["body"] for p in resp.json["pdus"]],
                         ["m10", "m9", "m8", "m7"])
        self.assertEqual(resp.json["origin"], "test.local")
        resp = await self.remote_signed(
            "GET", f"{FED}/backfill/{fq(room)}?v={fq(sent[24])}&limit=1000")
        pdus = resp.json["pdus"]  # all of it, newest first, from m24 to the create event
        self.assertEqual([p["content"]["body"] for p in pdus[:25]],
                         [f"m{i}" for i in range(24, -1, -1)])
        self.assertEqual(pdus[-1]["type"], "m.room.create")
        for bad in (f"?v={fq(sent[1])}", "?limit=3", f"?v={fq(sent[1])}&limit=-1",
                    f"?v={fq(sent[1])}&limit=99999999999999999999"):
            resp = await self.remote_signed("GET", f"{FED}/backfill/{fq(room)}{bad}")
            self.assertEqual(resp.code, 400, (bad, resp))

    async def test_timestamp_to_event(self) -> None:
        alice, room = await self.local_room()
        await self.bob_joins(room)
        self.advance(10)
        t0 = self.clock.time_msec()
        first = await self.send_ok(alice, room, "first")
        self.advance(10)
        second = await self.send_ok(alice, room, "second")
        path = f"{FED}/timestamp_to_event/{fq(room)}"
        resp = await self.remote_signed("GET", f"{path}?ts={t0}&dir=f")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["event_id"], first)
        resp = await self.remote_signed("GET", f"{path}?ts={self.clock.time_msec()}&dir=b")
        self.assertEqual(resp.json["event_id"], second)
        self.assertEqual(resp.json["origin_server_ts"], self.clock.time_msec())
        resp = await self.remote_signed("GET", f"{path}?ts={self.clock.time_msec() + 1}&dir=f")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.remote_signed("GET", f"{path}?ts=1&dir=x"),
                               400, "M_INVALID_PARAM")
        self.assertMatrixError(await self.remote_signed("GET", f"{path}?dir=f"),
                               400, "M_MISSING_PARAM")


class AccessTest(HistoryTestCase):
    def paths(self, room: str, event_id: str) -> list[tuple[str, str, Any]]:
        return [
            ("GET", f"{FED}/event/{fq(event_id)}", None),
            ("GET", f"{FED}/state/{fq(room)}?event_id={fq(event_id)}", None),
            ("GET", f"{FED}/state_ids/{fq(room)}?event_id={fq(event_id)}", None),
            ("GET", f"{FED}/event_auth/{fq(room)}/{fq(event_id)}", None),
            ("POST", f"{FED}/get_missing_events/{fq(room)}",
             {"earliest_events": [], "latest_events": [event_id]}),
            ("GET", f"{FED}/backfill/{fq(room)}?v={fq(event_id)}&limit=5", None),
            ("GET", f"{FED}/timestamp_to_event/{fq(room)}?ts=0&dir=f", None),
        ]

    async def assert_all(self, room: str, event_id: str, code: int) -> None:
        for method, path, body in self.paths(room, event_id):
            resp = await self.remote_signed(method, path, body)
            self.assertEqual(resp.code, code, (path, resp))
            if code == 403:
                self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_server_not_in_room_refused_unless_world_readable(self) -> None:
        alice, room = await self.local_room()
        msg = await self.send_ok(alice, room, "private")
        await self.assert_all(room, msg, 403)
        # An unknown room looks the same as one the server is not in.
        resp = await self.remote_signed(
            "GET", f"{FED}/state_ids/{fq('!unknown:test.local')}?event_id={fq(msg)}")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        # Unsigned requests are refused before anything.
        resp = await self.request("GET", f"{FED}/event/{fq(msg)}")
        self.assertMatrixError(resp, 401, "M_UNAUTHORIZED")
        resp = await self.put_state(alice, room, "m.room.history_visibility",
                                    {"history_visibility": "world_readable"})
        self.assertEqual(resp.code, 200, resp)
        await self.assert_all(room, msg, 200)

    async def test_left_and_acl_denied_servers_refused(self) -> None:
        alice, room = await self.local_room()
        await self.bob_joins(room)
        msg = await self.send_ok(alice, room, "for bob")
        await self.assert_all(room, msg, 200)
        leave = await self.bob_event(room, "m.room.member", {"membership": "leave"}, BOB)
        self.assertIsNone(await self.receive(leave))
        await self.assert_all(room, msg, 403)
        await self.bob_joins(room)
        resp = await self.put_state(alice, room, "m.room.server_acl",
                                    {"allow": ["*"], "deny": ["remote.test"]})
        self.assertEqual(resp.code, 200, resp)
        await self.assert_all(room, msg, 403)

    async def test_history_visibility_for_servers(self) -> None:
        """"joined": what was sent before bob's server had a user in the room reaches
        it redacted (the graph stays walkable, the content does not leak)."""
        alice, room = await self.local_room("joined")
        before = await self.send_ok(alice, room, "before bob")
        await self.bob_joins(room)
        after = await self.send_ok(alice, room, "after bob")
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(before)}")
        self.assertEqual(resp.code, 200, resp)
        pdu = resp.json["pdus"][0]
        self.assertEqual(pdu["content"], {})
        self.assertEqual(pdu["prev_events"], (await self.event_of(before)).prev_event_ids)
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(after)}")
        self.assertEqual(resp.json["pdus"][0]["content"]["body"], "after bob")
        resp = await self.remote_signed(
            "GET", f"{FED}/backfill/{fq(room)}?v={fq(after)}&limit=10")
        by_body = [p["content"].get("body") for p in resp.json["pdus"]
                   if p["type"] == "m.room.message"]
        self.assertEqual(by_body, ["after bob", None])
        # Nor does timestamp_to_event point at what the server may not see.
        resp = await self.remote_signed(
            "GET", f"{FED}/timestamp_to_event/{fq(room)}?ts={self.clock.time_msec()}&dir=b")
        self.assertEqual(resp.json["event_id"], after)
        # An event redacted here is served redacted.
        resp = await self.request(
            "PUT", f"{CS}/rooms/{q(room)}/redact/{q(after)}/r1", {}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(after)}")
        self.assertEqual(resp.json["pdus"][0]["content"], {})

    async def test_rejected_events_never_served(self) -> None:
        alice, room = await self.local_room()
        await self.bob_joins(room)
        forged = await self.bob_event(room, "m.room.name", {"name": "bob's"}, "")
        self.assertIn("rejected", await self.receive(forged) or "")
        resp = await self.remote_signed("GET", f"{FED}/event/{fq(forged.event_id)}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.remote_signed(
            "GET", f"{FED}/state_ids/{fq(room)}?event_id={fq(forged.event_id)}")
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")


class FetchTest(HistoryTestCase):
    async def test_gap_filled_by_get_missing_events(self) -> None:
        alice = await self.user("alice")
        room = await self.shared_room(messages=1)
        await self.hs.stores.rooms.store_room(SHARED, "10", BOB, False, 0)
        await persister_of(self.hs).persist_remote(
            SHARED, [*room["state"], *room["msgs"], room["alice_join"]], PersistKind.REMOTE)
        # remote.test goes on: three messages this server never got...
        gap = []
        prev = room["alice_join"]
        for i in range(3):
            gap.append(self.bob_message(room, f"missed {i}", [prev]))
            prev = gap[-1]
            await self.on_remote(room, prev)
        # ...then one that cites the last of them.
        latest = self.bob_message(room, "latest", [prev])
        await self.on_remote(room, latest)
        self.assertIsNone(await self.receive(latest))
        chunk = (await self.messages(alice, SHARED))["chunk"]
        self.assertEqual([e["content"].get("body") for e in chunk[:5]],
                         ["latest", "missed 2", "missed 1", "missed 0", None])
        self.assertEqual(chunk[4]["event_id"], room["alice_join"].event_id)
        for event in gap:
            row = await self.hs.db.query_one(
                "t", "SELECT outlier, stream_ordering FROM events WHERE event_id = ?",
                event.event_id)
            assert row is not None
            self.assertEqual((bool(row[0]), int(row[1]) > 0), (False, True))
        self.assertEqual(await self.hs.stores.events.get_forward_extremities(SHARED),
                         [latest.event_id])

    async def test_unfindable_prev_events_state_from_state_ids(self) -> None:
        """A PDU cites an event nobody sends (remote.test does not hold it either): the
        PDU is placed with the state before it from remote.test's /state_ids, whose
        events this server lacks (a new topic) are fetched with /event."""
        alice = await self.user("alice")
        room = await self.shared_room(messages=1)
        await self.hs.stores.rooms.store_room(SHARED, "10", BOB, False, 0)
        await persister_of(self.hs).persist_remote(
            SHARED, [*room["state"], *room["msgs"], room["alice_join"]], PersistKind.REMOTE)
        topic = self.fake_r.event(SHARED, "10", BOB, "m.room.topic", {"topic": "new"},
                                  [room["alice_join"]],
                                  [room["create"], room["join"], room["pl"]], "",
                                  ts=self.clock.time_msec())
        await self.on_remote(room, topic)
        ghost = self.bob_message(room, "nobody has me", [topic])
        pdu = self.bob_message(room, "after the ghost", [ghost])
        remote_state = {e.state_pair: e.event_id for e in
                        (await persister_of(self.remote).current_state(SHARED)).values()}
        outcome = await persister_of(self.remote).persist_remote(
            SHARED, [pdu], PersistKind.REMOTE, state_before=remote_state)
        self.assertEqual(outcome[0].status, "accepted")
        self.assertIsNone(await self.receive(pdu))
        self.assertIsNone(await self.hs.stores.events.get_event(ghost.event_id))
        groups = await self.hs.stores.events.get_state_groups([pdu.event_id])
        before = await self.hs.stores.events.get_state_for_group(groups[pdu.event_id][1])
        self.assertEqual(before[("m.room.topic", "")], topic.event_id)
        self.assertEqual(before, remote_state)
        chunk = (await self.messages(alice, SHARED))["chunk"]
        self.assertEqual(chunk[0]["event_id"], pdu.event_id)
        # The fetched topic is held (outside the timeline); the room's state has it.
        self.assertIsNotNone(await self.hs.stores.events.get_event(topic.event_id))
        resp = await self.request("GET", f"{CS}/rooms/{q(SHARED)}/state/m.room.topic/",
                                  token=alice)
        self.assertEqual(resp.json, {"topic": "new"})

    async def test_gap_without_answer_is_an_error(self) -> None:
        room = await self.shared_room(messages=1)
        await self.user("alice")
        await self.hs.stores.rooms.store_room(SHARED, "10", BOB, False, 0)
        await persister_of(self.hs).persist_remote(
            SHARED, [*room["state"], *room["msgs"], room["alice_join"]], PersistKind.REMOTE)
        ghost = self.bob_message(room, "nobody has me", [room["alice_join"]])
        pdu = self.bob_message(room, "orphan", [ghost])  # not held on remote.test either
        error = await self.receive(pdu)
        self.assertIn("prev event(s) are not known", error or "")
        self.assertIsNone(await self.hs.stores.events.get_event(pdu.event_id))

    async def test_client_paginates_into_backfilled_history(self) -> None:
        """As after a join: this server got the room's state (outliers) and alice's
        join with the state before it; /messages goes back past the join into history
        fetched from remote.test with /backfill, at negative positions."""
        alice = await self.user("alice")
        room = await self.shared_room(messages=12)
        await self.hs.stores.rooms.store_room(SHARED, "10", BOB, False, 0)
        persister = persister_of(self.hs)
        outcomes = await persister.persist_remote(SHARED, room["state"], PersistKind.OUTLIER)
        self.assertEqual({o.status for o in outcomes}, {"outlier"})
        state = {e.state_pair: e.event_id for e in room["state"]}
        outcome = await persister.persist_remote(SHARED, [room["alice_join"]],
                                                 PersistKind.REMOTE, state_before=state)
        self.assertEqual(outcome[0].status, "accepted")
        after = self.bob_message(room, "now", [room["alice_join"]])
        await self.on_remote(room, after)
        self.assertIsNone(await self.receive(after))

        page = await self.messages(alice, SHARED, limit=5)
        bodies = [e["content"].get("body") for e in page["chunk"]]
        self.assertEqual(bodies, ["now", None, "old 11", "old 10", "old 9"])
        self.assertIn("end", page)
        rows = await self.hs.db.query(
            "t", "SELECT stream_ordering FROM events WHERE room_id = ? AND type = ?"
            " AND outlier = ?", SHARED, "m.room.message", False)
        positions = sorted(int(r[0]) for r in rows)
        self.assertTrue(any(p < 0 for p in positions))
        self.assertTrue(page["end"].startswith("t-"))
        seen = list(bodies)
        token = page["end"]
        for _ in range(10):
            page = await self.messages(alice, SHARED, from_token=token, limit=5)
            seen += [e["content"].get("body") for e in page["chunk"]]
            if "end" not in page:
                break
            token = page["end"]
        self.assertNotIn("end", page)
        self.assertEqual([b for b in seen if b and b.startswith("old")],
                         [f"old {i}" for i in range(11, -1, -1)])
        # Forwards from the start: the same history, oldest first, then the live part.
        resp = await self.request("GET", f"{CS}/rooms/{q(SHARED)}/messages?dir=f&limit=50",
                                  token=alice)
        forward = [e["content"].get("body") for e in resp.json["chunk"]
                   if e["type"] == "m.room.message"]
        self.assertEqual(forward, [f"old {i}" for i in range(12)] + ["now"])

    async def test_no_backfill_for_a_room_holding_its_start(self) -> None:
        alice, room = await self.local_room()
        await self.bob_joins(room)
        await self.send_ok(alice, room, "x")
        assert self.hs.federation is not None
        fetcher = self.hs.federation.ingest.fetcher  # type: ignore[union-attr]
        self.assertEqual(await fetcher.backfill(room, 10), 0)
        page = await self.messages(alice, room)
        self.assertNotIn("end", page)


class TokenTest(HistoryTestCase):
    async def test_negative_tokens_parse_and_bounds(self) -> None:
        alice, room = await self.local_room()
        for token, code in (("t-5", 200), ("t-0", 200), (f"t-{2**62}", 200),
                            (f"t-{2**62 + 1}", 400), ("t--1", 400), ("s-1_2", 400),
                            ("t-", 400)):
            resp = await self.request(
                "GET", f"{CS}/rooms/{q(room)}/messages?dir=b&from={q(token)}", token=alice)
            self.assertEqual(resp.code, code, (token, resp))
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(room)}/messages?dir=b&from=t-5", token=alice)
        self.assertEqual(resp.json["chunk"], [])
        self.assertNotIn("end", resp.json)


class JoinedAfterHistory(HistoryTestCase):
    async def joined_after_history(self) -> str:
        """alice's token; this server holds the shared room from alice's join on."""
        alice = await self.user("alice")
        room = await self.shared_room(messages=3)
        await self.hs.stores.rooms.store_room(SHARED, "10", BOB, False, 0)
        persister = persister_of(self.hs)
        await persister.persist_remote(SHARED, room["state"], PersistKind.OUTLIER)
        state = {e.state_pair: e.event_id for e in room["state"]}
        await persister.persist_remote(SHARED, [room["alice_join"]], PersistKind.REMOTE,
                                       state_before=state)
        return alice


class BackfillFailureTest(JoinedAfterHistory):
    async def test_unreachable_server_ends_the_page(self) -> None:
        alice = await self.joined_after_history()
        self.discovery.ports["remote.test"] = 1  # nothing listens: every request fails
        page = await self.messages(alice, SHARED)
        self.assertEqual([e["type"] for e in page["chunk"]], ["m.room.member"])
        self.assertNotIn("end", page)


class BlockedBackfillTest(JoinedAfterHistory):
    def config_overrides(self) -> dict[str, Any]:
        from tests.rest.test_federation_keys import federation_section

        return {"federation": federation_section(blocked_servers=["remote.test"])}

    async def test_blocked_server_not_asked(self) -> None:
        alice = await self.joined_after_history()
        asked: list[str] = []
        resolve = self.discovery.resolve

        async def recording(server_name: str) -> Any:
            asked.append(server_name)
            return await resolve(server_name)

        self.discovery.resolve = recording  # type: ignore[method-assign]
        page = await self.messages(alice, SHARED)
        self.assertEqual([e["type"] for e in page["chunk"]], ["m.room.member"])
        self.assertNotIn("end", page)
        self.assertEqual(asked, [])  # remote.test was never contacted


class RemoteTimestampTest(JoinedAfterHistory):
    async def test_client_timestamp_to_event_asks_a_server_in_the_room(self) -> None:
        alice = await self.joined_after_history()
        t0 = (await current_state(self.hs, SHARED))[("m.room.create", "")].origin_server_ts
        path = f"/_matrix/client/v1/rooms/{q(SHARED)}/timestamp_to_event"
        resp = await self.request("GET", f"{path}?ts={t0 + 1}&dir=b", token=alice)
        self.assertEqual(resp.code, 200, resp)
        event = await self.event_of(resp.json["event_id"])
        self.assertEqual(event.content["body"], "old 1")
        self.assertEqual(resp.json["origin_server_ts"], t0 + 1)
        # Now held as history (negative position), visible to alice.
        self.assertLess(event.internal.stream_ordering or 0, 0)
        self.assertFalse(event.internal.outlier)
        resp = await self.get_event(alice, SHARED, event.event_id)
        self.assertEqual(resp.code, 200, resp)
        # Before everything: no server has anything.
        resp = await self.request("GET", f"{path}?ts={t0 - 1}&dir=b", token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # Remote unreachable: the local answer (none) stands.
        self.discovery.ports["remote.test"] = 1
        resp = await self.request("GET", f"{path}?ts={t0}&dir=b", token=alice)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
