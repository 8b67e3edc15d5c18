"""Events as a DAG (issue 16): events of another server (signed by a fake remote
server's key) go through the federation ingest into the one persister, and clients
see the result over HTTP: accepted, rejected (wrong auth events, forged power),
soft-failed (valid where it was sent, banned now), outliers, backfilled history, a
forked room resolved at the merge, a local send citing both branches, and history
visibility from the state at each event where stream order is not graph order."""

from __future__ import annotations

from typing import Any

from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.handlers.event_persister import MissingEventsError, PersistKind
from tests.rest.federation_helpers import (
    FakeRemote,
    NowhereDiscovery,
    auth_events_for,
    current_state,
    latest_events,
    persister_of,
)
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_federation_keys import FederationTestCase

ALICE = "@alice:test.local"
CAROL = "@carol:test.local"


class DagTestCase(RoomTestCase):
    room_version = "10"

    def config_overrides(self) -> dict[str, Any]:
        return {"federation": {"enabled": True}}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.remote = FakeRemote()
        await self.remote.trust_on(self.hs)
        assert self.hs.federation is not None
        # Nothing reaches the fake remote (what the sender sends it fails at once).
        self.hs.federation.client.discovery = NowhereDiscovery()  # type: ignore[assignment]
        self.ingest = self.hs.federation.ingest
        self.persister = persister_of(self.hs)
        self.alice = await self.user("alice")
        self.room = await self.create_room(self.alice, preset="public_chat",
                                           room_version=self.room_version)
        self.bob = self.remote.user("bob")

    # -- building and receiving remote events

    async def remote_event(self, event_type: str, content: dict[str, Any],
                           state_key: str | None = None, sender: str | None = None,
                           prev: list[Event] | None = None,
                           auth_state: dict[Any, Event] | None = None,
                           auth: list[Event] | None = None, ts: int | None = None) -> Event:
        """A remote event on the room's current extremities (or ``prev``), citing the
        auth events ``auth_state`` (default: the current state) selects."""
        sender = sender or self.bob
        version = get_room_version(self.room_version)
        assert version is not None
        prev = prev if prev is not None else await latest_events(self.hs, self.room)
        probe_pdu: dict[str, Any] = {"room_id": self.room, "type": event_type,
                                     "sender": sender, "content": content}
        if state_key is not None:
            probe_pdu["state_key"] = state_key
        if auth is None:
            auth = await auth_events_for(self.hs, self.room, Event("$p", probe_pdu, version),
                                         auth_state)
        return self.remote.event(self.room, self.room_version, sender, event_type, content,
                                 prev, auth, state_key,
                                 ts=ts if ts is not None else self.clock.time_msec())

    async def receive(self, event: Event) -> str | None:
        assert self.ingest is not None
        return await self.ingest.receive_pdu(self.remote.name, self.remote.pdu(event))

    async def bob_joins(self) -> Event:
        join = await self.remote_event("m.room.member", {"membership": "join"}, self.bob)
        self.assertIsNone(await self.receive(join))
        return join

    # -- reading

    async def messages(self, token: str) -> list[dict[str, Any]]:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(self.room)}/messages?dir=b&limit=100", token=token)
        self.assertEqual(resp.code, 200, resp)
        return list(resp.json["chunk"])

    async def message_ids(self, token: str) -> list[str]:
        return [e["event_id"] for e in await self.messages(token)]

    async def row(self, event_id: str) -> tuple[Any, ...]:
        found = await self.hs.db.query_one(
            "t", "SELECT outlier, rejected_reason, soft_failed, stream_ordering FROM events"
            " WHERE event_id = ?", event_id)
        assert found is not None, event_id
        return (bool(found[0]), found[1], bool(found[2]), int(found[3]))

    async def extremities(self) -> set[str]:
        return set(await self.hs.stores.events.get_forward_extremities(self.room))

    async def state_content(self, event_type: str, state_key: str = "") -> Any:
        resp = await self.request(
            "GET", f"{CS}/rooms/{q(self.room)}/state/{event_type}/{q(state_key)}",
            token=self.alice)
        return resp.json if resp.code == 200 else resp.code

    async def set_power(self, users: dict[str, int]) -> None:
        pl = (await current_state(self.hs, self.room))[("m.room.power_levels", "")].content
        resp = await self.put_state(self.alice, self.room, "m.room.power_levels",
                                    {**pl, "users": {**pl.get("users", {}), **users}})
        self.assertEqual(resp.code, 200, resp)


class RemoteEventsTest(DagTestCase):
    async def test_remote_join_and_message_accepted(self) -> None:
        since = (await self.sync(self.alice))["next_batch"]
        join = await self.bob_joins()
        msg = await self.remote_event("m.room.message", {"msgtype": "m.text", "body": "hi"})
        self.assertIsNone(await self.receive(msg))
        self.assertEqual((await self.message_ids(self.alice))[:2], [msg.event_id, join.event_id])
        synced = await self.sync(self.alice, since)
        timeline = synced["rooms"]["join"][self.room]["timeline"]["events"]
        self.assertEqual([e["event_id"] for e in timeline], [join.event_id, msg.event_id])
        members = await self.request("GET", f"{CS}/rooms/{q(self.room)}/joined_members",
                                     token=self.alice)
        self.assertIn(self.bob, members.json["joined"])
        self.assertEqual(await self.extremities(), {msg.event_id})
        outlier, reason, soft, position = await self.row(msg.event_id)
        self.assertEqual((outlier, reason, soft), (False, None, False))
        self.assertGreater(position, 0)
        # A repeat is idempotent.
        self.assertIsNone(await self.receive(msg))

    async def test_rejected_for_wrong_auth_event(self) -> None:
        await self.bob_joins()
        state = await current_state(self.hs, self.room)
        # A message citing alice's membership: not an auth event a message may cite.
        wrong = [state[("m.room.create", "")], state[("m.room.power_levels", "")],
                 state[("m.room.member", self.bob)], state[("m.room.member", ALICE)]]
        msg = await self.remote_event("m.room.message", {"body": "sneaky"}, auth=wrong)
        before = await self.extremities()
        error = await self.receive(msg)
        self.assertIsNotNone(error)
        self.assertIn("unexpected auth event", error or "")
        outlier, reason, soft, position = await self.row(msg.event_id)
        self.assertTrue(outlier)
        self.assertIn("auth events", reason)
        self.assertLess(position, 0)
        self.assertNotIn(msg.event_id, await self.message_ids(self.alice))
        resp = await self.get_event(self.alice, self.room, msg.event_id)
        self.assertEqual(resp.code, 404, resp)
        self.assertEqual(await self.extremities(), before)

    async def test_rejected_for_forged_power(self) -> None:
        await self.bob_joins()
        pl = (await current_state(self.hs, self.room))[("m.room.power_levels", "")].content
        forged = await self.remote_event("m.room.power_levels",
                                         {**pl, "users": {**pl["users"], self.bob: 100}}, "")
        error = await self.receive(forged)
        self.assertIn("rejected", error or "")
        name = await self.remote_event("m.room.name", {"name": "bob's room"}, "")
        self.assertIn("insufficient power", await self.receive(name) or "")
        self.assertEqual(await self.state_content("m.room.name"), 404)
        levels = await self.state_content("m.room.power_levels")
        self.assertNotIn(self.bob, levels["users"])
        # A later event citing the rejected one as an auth event is rejected too.
        state = dict(await current_state(self.hs, self.room))
        state[("m.room.power_levels", "")] = forged
        topic = await self.remote_event("m.room.topic", {"topic": "t"}, "", auth_state=state)
        self.assertIn("rejected", await self.receive(topic) or "")

    async def test_soft_failed_when_banned_since(self) -> None:
        await self.bob_joins()
        # Valid where bob sent it (he was joined)...
        msg = await self.remote_event("m.room.message", {"body": "after my ban"})
        resp = await self.member(self.alice, self.room, "ban", user_id=self.bob)
        self.assertEqual(resp.code, 200, resp)
        since = (await self.sync(self.alice))["next_batch"]
        extremities = await self.extremities()
        # ...but not by the current state: soft-failed, which is no error to the sender.
        self.assertIsNone(await self.receive(msg))
        outlier, reason, soft, _ = await self.row(msg.event_id)
        self.assertEqual((outlier, reason, soft), (True, None, True))
        self.assertNotIn(msg.event_id, await self.message_ids(self.alice))
        synced = await self.sync(self.alice, since)
        self.assertNotIn(self.room, synced.get("rooms", {}).get("join", {}))
        self.assertEqual(await self.extremities(), extremities)
        # It has its place in the graph: its state is stored.
        groups = await self.hs.stores.events.get_state_groups([msg.event_id])
        self.assertIn(msg.event_id, groups)

    async def test_outlier(self) -> None:
        join = await self.bob_joins()
        msg = await self.remote_event("m.room.message", {"body": "out of the graph"})
        outcome = await self.persister.persist_remote(self.room, [msg], PersistKind.OUTLIER)
        self.assertEqual(outcome[0].status, "outlier")
        outlier, reason, soft, position = await self.row(msg.event_id)
        self.assertEqual((outlier, reason, soft), (True, None, False))
        self.assertLess(position, 0)
        self.assertEqual(await self.hs.stores.events.get_state_groups([msg.event_id]), {})
        self.assertNotIn(msg.event_id, await self.message_ids(self.alice))
        self.assertEqual(await self.extremities(), {join.event_id})
        # An outlier failing its auth events is stored rejected.
        bad = await self.remote_event("m.room.name", {"name": "x"}, "")
        outcome = await self.persister.persist_remote(self.room, [bad], PersistKind.OUTLIER)
        self.assertEqual(outcome[0].status, "rejected")

    async def notified(self) -> list[str]:
        resp = await self.request("GET", f"{CS}/notifications", token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        return [n["event"]["event_id"] for n in resp.json["notifications"]]

    async def test_backfilled(self) -> None:
        await self.bob_joins()
        live = await self.remote_event("m.room.message", {"msgtype": "m.text", "body": "now"})
        self.assertIsNone(await self.receive(live))
        self.assertEqual(await self.notified(), [live.event_id])  # remote events push
        join = (await current_state(self.hs, self.room))[("m.room.member", self.bob)]
        since = (await self.sync(self.alice))["next_batch"]
        older = await self.remote_event("m.room.message", {"body": "from the past 1"},
                                        prev=[join])
        oldest = await self.remote_event("m.room.message", {"body": "from the past 0"},
                                         prev=[join])
        newer = await self.remote_event("m.room.message", {"body": "from the past 2"},
                                        prev=[older])
        outcomes = await self.persister.persist_remote(self.room, [newer, older, oldest],
                                                       PersistKind.BACKFILLED)
        self.assertEqual([o.status for o in outcomes], ["backfilled"] * 3)
        positions = {e: (await self.row(e))[3] for e in
                     (newer.event_id, older.event_id, oldest.event_id)}
        self.assertTrue(all(p < 0 for p in positions.values()))
        # Graph order first: what another event cites comes before it.
        self.assertLess(positions[older.event_id], positions[newer.event_id])
        self.assertEqual(await self.extremities(), {live.event_id})
        synced = await self.sync(self.alice, since)
        self.assertNotIn(self.room, synced.get("rooms", {}).get("join", {}))
        self.assertEqual(await self.notified(), [live.event_id])  # history is not news
        # Backfilled history sorts before everything already held (read backwards from
        # the live edge: after the create event).
        rows = await self.hs.stores.events.paginate_room_events(
            self.room, 10**12, "b", 100)
        ids = [e.event_id for e in rows]
        create_id = (await current_state(self.hs, self.room))[("m.room.create", "")].event_id
        self.assertEqual(ids[-3:], [newer.event_id, older.event_id, oldest.event_id]
                         if positions[oldest.event_id] < positions[older.event_id]
                         else [newer.event_id, oldest.event_id, older.event_id])
        self.assertLess(ids.index(create_id), ids.index(newer.event_id))

    async def test_missing_prev_events_and_given_state(self) -> None:
        join = await self.bob_joins()
        ghost = await self.remote_event("m.room.message", {"body": "ghost"}, prev=[join])
        child = await self.remote_event("m.room.message", {"body": "child"}, prev=[ghost])
        error = await self.receive(child)
        self.assertIn("prev event(s) are not known", error or "")
        with self.assertRaises(MissingEventsError):
            await self.persister.persist_remote(self.room, [child], PersistKind.REMOTE)
        # With the state before it given (as /state or send_join give it): accepted.
        state = {k: e.event_id for k, e in (await current_state(self.hs, self.room)).items()}
        outcome = await self.persister.persist_remote(self.room, [child], PersistKind.REMOTE,
                                                      state_before=state)
        self.assertEqual(outcome[0].status, "accepted")
        self.assertIn(child.event_id, await self.message_ids(self.alice))



class RemoteEventsV1Test(RemoteEventsTest):
    """The same in room version 1 (event ids chosen by the origin, v1 state resolution)."""

    room_version = "1"


class RemoteEventsV12Test(RemoteEventsTest):
    """The same in room version 12 (the create event is never an auth event)."""

    room_version = "12"


class RemoteRoomTest(DagTestCase):
    async def test_room_state_handed_over_then_events_on_it(self) -> None:
        """As a join of a remote room goes: the room's state arrives as outliers, then
        an event whose prev events are not held, with the state before it given; the
        room's state is then that state plus the event, and events follow on it."""
        room = "!elsewhere:remote.test"
        await self.hs.stores.rooms.store_room(room, "10", self.bob, False, 0)
        fake, bob, ts = self.remote, self.bob, self.clock.time_msec()
        create = fake.event(room, "10", bob, "m.room.create",
                            {"creator": bob, "room_version": "10"}, [], [], "",
                            ts=ts)
        join = fake.event(room, "10", bob, "m.room.member", {"membership": "join"}, [create],
                          [create], bob, ts=ts)
        pl = fake.event(room, "10", bob, "m.room.power_levels", {"users": {bob: 100}}, [join],
                        [create, join], "", ts=ts)
        rules = fake.event(room, "10", bob, "m.room.join_rules", {"join_rule": "public"}, [pl],
                           [create, join, pl], "", ts=ts)
        unknown = fake.event(room, "10", bob, "m.room.message", {"body": "not here"}, [rules],
                             [create, join, pl], ts=ts)
        msg = fake.event(room, "10", bob, "m.room.message", {"body": "hello"}, [unknown],
                         [create, join, pl], ts=ts)
        outcomes = await self.persister.persist_remote(
            room, [rules, pl, join, create], PersistKind.OUTLIER)
        self.assertEqual([o.status for o in outcomes], ["outlier"] * 4, outcomes)
        state = {e.state_pair: e.event_id for e in (create, join, pl, rules)}
        outcomes = await self.persister.persist_remote(room, [msg], PersistKind.REMOTE,
                                                       state_before=state)
        self.assertEqual(outcomes[0].status, "accepted")
        current = await self.persister.current_state(room)
        self.assertEqual({k: e.event_id for k, e in current.items()}, state)
        self.assertEqual(await self.hs.stores.events.get_forward_extremities(room),
                         [msg.event_id])
        follow = fake.event(room, "10", bob, "m.room.name", {"name": "n"}, [msg],
                            [create, join, pl], "", ts=ts)
        outcomes = await self.persister.persist_remote(room, [follow], PersistKind.REMOTE)
        self.assertEqual(outcomes[0].status, "accepted")
        self.assertEqual((await self.persister.current_state(room))[("m.room.name", "")]
                         .event_id, follow.event_id)


class ForkTest(DagTestCase):
    async def test_fork_resolved_at_merge_and_local_send_cites_both(self) -> None:
        await self.bob_joins()
        await self.set_power({self.bob: 50})
        fork_point = await latest_events(self.hs, self.room)
        t0 = self.clock.time_msec()
        # Branch A (local): alice sets the topic.
        resp = await self.put_state(self.alice, self.room, "m.room.topic", {"topic": "A"})
        topic_a = resp.json["event_id"]
        # Branch B (remote, from the fork point): bob sets it too, later.
        topic_b = await self.remote_event("m.room.topic", {"topic": "B"}, "",
                                          prev=fork_point, ts=t0 + 60_000)
        self.assertIsNone(await self.receive(topic_b))
        self.assertEqual(await self.extremities(), {topic_a, topic_b.event_id})
        # State resolution v2: same mainline position, the later event wins.
        self.assertEqual(await self.state_content("m.room.topic"), {"topic": "B"})
        # A local send cites both branches, one deeper than both.
        msg_id = await self.send_ok(self.alice, self.room, "merged")
        merged = await self.hs.stores.events.get_event(msg_id)
        assert merged is not None
        self.assertEqual(set(merged.prev_event_ids), {topic_a, topic_b.event_id})
        a_event = await self.hs.stores.events.get_event(topic_a)
        assert a_event is not None
        self.assertEqual(merged.depth, max(a_event.depth, topic_b.depth) + 1)
        self.assertEqual(await self.extremities(), {msg_id})
        # The state before the merge is the resolved one, stored as the event's state.
        groups = await self.hs.stores.events.get_state_groups([msg_id])
        state = await self.hs.stores.events.get_state_for_group(groups[msg_id][0])
        self.assertEqual(state[("m.room.topic", "")], topic_b.event_id)
        # And a later local state event builds on it.
        await self.put_state(self.alice, self.room, "m.room.name", {"name": "n"})
        self.assertEqual(await self.state_content("m.room.topic"), {"topic": "B"})

    async def test_event_of_a_branch_where_sender_lost_power(self) -> None:
        await self.bob_joins()
        await self.set_power({self.bob: 50})
        fork_point = await latest_events(self.hs, self.room)
        fork_state = await current_state(self.hs, self.room)
        # Branch A (local): alice takes bob's power away.
        await self.set_power({self.bob: 0})
        # Branch B (remote, from the fork point, where bob still has it): bob sets the topic.
        topic_b = await self.remote_event("m.room.topic", {"topic": "B"}, "",
                                          prev=fork_point, auth_state=fork_state)
        # Valid where it was sent, not against the current state: soft-failed.
        self.assertIsNone(await self.receive(topic_b))
        self.assertTrue((await self.row(topic_b.event_id))[2])
        self.assertEqual(await self.state_content("m.room.topic"), 404)

    async def test_remote_branch_merged_by_remote_event(self) -> None:
        join = await self.bob_joins()
        local_id = await self.send_ok(self.alice, self.room, "local side")
        local = await self.hs.stores.events.get_event(local_id)
        assert local is not None
        side = await self.remote_event("m.room.message", {"body": "remote side"}, prev=[join])
        self.assertIsNone(await self.receive(side))
        self.assertEqual(await self.extremities(), {local_id, side.event_id})
        merge = await self.remote_event("m.room.message", {"body": "merge"},
                                        prev=[local, side])
        self.assertIsNone(await self.receive(merge))
        self.assertEqual(await self.extremities(), {merge.event_id})
        # A cold start reads the same snapshot back.
        persister = self.persister
        persister._snapshots.pop(self.room)  # noqa: SLF001
        snap = await persister.snapshot(self.room)
        self.assertEqual(snap.extremities, [merge.event_id])
        self.assertEqual(snap.depth, merge.depth)


class ForkV12Test(ForkTest):
    """The same with state resolution v2.1 (room version 12)."""

    room_version = "12"


class ForkVisibilityTest(DagTestCase):
    """history_visibility "joined": carol (local) joins on one branch while bob (remote)
    speaks on another. By stream order bob's message comes after carol's join; by the
    graph it does not, so carol must not see it; after the merge she sees what follows."""

    async def test_visibility_from_state_at_event(self) -> None:
        resp = await self.put_state(self.alice, self.room, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200, resp)
        await self.bob_joins()
        fork_point = await latest_events(self.hs, self.room)
        carol = await self.user("carol")
        self.assertEqual((await self.join(carol, self.room)).code, 200)
        concurrent = await self.remote_event("m.room.message", {"body": "concurrent"},
                                             prev=fork_point)
        self.assertIsNone(await self.receive(concurrent))
        join_row = await self.hs.stores.room_members.get_membership(CAROL, self.room)
        assert join_row is not None
        self.assertGreater((await self.row(concurrent.event_id))[3], join_row.stream_ordering)
        after_id = await self.send_ok(self.alice, self.room, "after the merge")
        later = await self.remote_event("m.room.message", {"body": "later"})
        self.assertIsNone(await self.receive(later))

        carol_sees = await self.message_ids(carol)
        self.assertNotIn(concurrent.event_id, carol_sees)
        self.assertIn(after_id, carol_sees)
        self.assertIn(later.event_id, carol_sees)
        self.assertIn(join_row.event_id, carol_sees)
        alice_sees = await self.message_ids(self.alice)
        self.assertIn(concurrent.event_id, alice_sees)
        # /event agrees, and so does the timeline of carol's /sync.
        self.assertEqual((await self.get_event(carol, self.room, concurrent.event_id)).code, 404)
        self.assertEqual((await self.get_event(self.alice, self.room,
                                               concurrent.event_id)).code, 200)
        synced = await self.sync(carol)
        timeline = [e["event_id"] for e in
                    synced["rooms"]["join"][self.room]["timeline"]["events"]]
        self.assertNotIn(concurrent.event_id, timeline)
        self.assertIn(later.event_id, timeline)

    async def test_shared_member_left_on_other_branch(self) -> None:
        """"shared": carol leaves on the local branch. Bob's concurrent message has her
        still joined in the state before it, so she (no longer joined) sees it, though
        it was persisted after her leave; what follows the merge she does not see."""
        carol = await self.user("carol")
        self.assertEqual((await self.join(carol, self.room)).code, 200)
        await self.bob_joins()
        fork_point = await latest_events(self.hs, self.room)
        # Later than her join: state resolution orders the two by timestamp.
        self.advance(1)
        resp = await self.member(carol, self.room, "leave")
        self.assertEqual(resp.code, 200, resp)
        concurrent = await self.remote_event("m.room.message", {"body": "while carol was in"},
                                             prev=fork_point)
        self.assertIsNone(await self.receive(concurrent))
        after = await self.remote_event("m.room.message", {"body": "after carol left"})
        self.assertIsNone(await self.receive(after))
        resp = await self.get_event(carol, self.room, concurrent.event_id)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.get_event(carol, self.room, after.event_id)
        self.assertEqual(resp.code, 404, resp)


class IngestChecksTest(DagTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": {"enabled": True, "blocked_servers": ["blocked.test"]}}

    async def test_bad_hash_stored_redacted(self) -> None:
        await self.bob_joins()
        msg = await self.remote_event("m.room.message", {"msgtype": "m.text", "body": "orig"})
        pdu = self.remote.pdu(msg)
        pdu["content"]["body"] = "altered in transit"
        self.assertIsNone(await self.ingest.receive_pdu(self.remote.name, pdu))
        resp = await self.get_event(self.alice, self.room, msg.event_id)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["content"], {})

    async def test_bad_signature_refused(self) -> None:
        await self.bob_joins()
        msg = await self.remote_event("m.room.message", {"body": "x"})
        pdu = self.remote.pdu(msg)
        pdu["origin_server_ts"] += 1  # signed: the signature no longer matches
        error = await self.ingest.receive_pdu(self.remote.name, pdu)
        self.assertIn("bad signature", error or "")
        forger = FakeRemote("remote.test", "fake")  # same key id, another key
        forged = forger.event(self.room, self.room_version, self.bob, "m.room.message",
                              {"body": "forged"}, await latest_events(self.hs, self.room),
                              [])
        self.assertIn("bad signature",
                      await self.ingest.receive_pdu(self.remote.name, forger.pdu(forged)) or "")
        # A sender of a server that did not sign it.
        other = await self.remote_event("m.room.message", {"body": "x"},
                                        sender="@eve:other.test")
        pdu = self.remote.pdu(other)
        self.assertIn("not signed by other.test",
                      await self.ingest.receive_pdu(self.remote.name, pdu) or "")
        for eid in (msg.event_id, forged.event_id, other.event_id):
            self.assertIsNone(await self.hs.stores.events.get_event(eid))

    async def test_acl_blocked_unknown_room_malformed(self) -> None:
        await self.bob_joins()
        resp = await self.put_state(self.alice, self.room, "m.room.server_acl",
                                    {"allow": ["*"], "deny": ["remote.test"]})
        self.assertEqual(resp.code, 200, resp)
        msg = await self.remote_event("m.room.message", {"body": "x"})
        self.assertIn("denied by the room's ACL", await self.receive(msg) or "")
        self.assertIsNone(await self.hs.stores.events.get_event(msg.event_id))
        # The origin of the transaction is checked too.
        resp = await self.put_state(self.alice, self.room, "m.room.server_acl",
                                    {"allow": ["*"], "deny": ["relay.test"]})
        msg = await self.remote_event("m.room.message", {"body": "y"})
        self.assertIn("relay.test",
                      await self.ingest.receive_pdu("relay.test", self.remote.pdu(msg)) or "")
        self.assertIn("blocked",
                      await self.ingest.receive_pdu("blocked.test", self.remote.pdu(msg)) or "")
        self.assertIsNone(await self.receive(msg))
        # A room this server is not in; a malformed or oversized PDU.
        pdu = {**self.remote.pdu(msg), "room_id": "!nowhere:remote.test"}
        self.assertIn("not in the room", await self.ingest.receive_pdu("remote.test", pdu) or "")
        self.assertIn("'depth'", await self.ingest.receive_pdu(
            "remote.test", {**self.remote.pdu(msg), "depth": "deep"}) or "")
        huge = await self.remote_event("m.room.message", {"body": "x" * 70_000})
        self.assertIn("too large", await self.receive(huge) or "")
        self.assertIn("object", await self.ingest.receive_pdu("remote.test", []) or "")  # type: ignore[arg-type]

    async def test_receive_pdus_outliers_then_event_with_state(self) -> None:
        """As a join hands over state: the auth chain as outliers, then an event whose
        prev events are unknown with the state before it given."""
        join = await self.bob_joins()
        elsewhere = await self.remote_event("m.room.message", {"body": "unknown prev"},
                                            prev=[join])
        state = await current_state(self.hs, self.room)
        child = await self.remote_event("m.room.message", {"body": "after a gap"},
                                        prev=[elsewhere])
        outcomes, dropped = await self.ingest.receive_pdus(
            self.remote.name, self.room, [self.remote.pdu(child), {"bad": 1}],
            PersistKind.REMOTE, state_before={k: e.event_id for k, e in state.items()})
        self.assertEqual(list(dropped), [1])
        self.assertEqual([o.status for o in outcomes], ["accepted"])
        self.assertIn(child.event_id, await self.message_ids(self.alice))


class SendTransactionTest(FederationTestCase, RoomTestCase):
    """End to end: a second homeserver's key signs the PDUs, which arrive in a signed
    ``PUT /send`` transaction; this server fetches the key over HTTP, checks and stores
    them, and its client sees them."""

    async def test_pdus_of_a_transaction_reach_the_room(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice, preset="public_chat", room_version="11")
        assert self.remote.federation is not None
        fake = FakeRemote("remote.test",
                          signing_key=self.remote.federation.local_keys.signing_key)
        bob = fake.user("bob")
        version = get_room_version("11")
        assert version is not None
        probe = Event("$p", {"room_id": room, "type": "m.room.member", "sender": bob,
                             "state_key": bob, "content": {"membership": "join"}}, version)
        join = fake.event(room, "11", bob, "m.room.member", {"membership": "join"},
                          await latest_events(self.hs, room),
                          await auth_events_for(self.hs, room, probe), bob,
                          ts=self.clock.time_msec())
        state = dict(await current_state(self.hs, room))
        state[("m.room.member", bob)] = join
        msg = fake.event(room, "11", bob, "m.room.message", {"msgtype": "m.text", "body": "hi"},
                         [join], [state[("m.room.create", "")],
                                  state[("m.room.power_levels", "")], join],
                         ts=self.clock.time_msec())
        bad = fake.pdu(msg)
        bad["depth"] = 99  # signature broken
        body = {"origin": "remote.test", "origin_server_ts": self.clock.time_msec(),
                "pdus": [fake.pdu(join), fake.pdu(msg), {**bad, "content": {"body": "x"}}]}
        path = "/_matrix/federation/v1/send/txn1"
        resp = await self.remote_signed("PUT", path, body)
        self.assertEqual(resp.code, 200, resp)
        results = resp.json["pdus"]
        self.assertEqual(results[join.event_id], {})
        self.assertEqual(results[msg.event_id], {})
        self.assertEqual(len(results), 3)
        errors = [r for eid, r in results.items() if eid not in (join.event_id, msg.event_id)]
        self.assertIn("signature", errors[0]["error"])
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=5",
                                  token=alice)
        self.assertEqual([e["event_id"] for e in resp.json["chunk"][:2]],
                         [msg.event_id, join.event_id])
