"""Outliers promoted into the room's graph (issue 16): an event held only as an outlier
(from a join's state and auth chain, or fetched as another event's auth event) that
later arrives as a proper event (a /send transaction, get_missing_events, backfill)
takes its place in the graph (stream position, state groups, membership row, current
state) instead of being dropped as a duplicate; and membership rows come from the
room's state wherever state is written (the state a join hands over)."""

from __future__ import annotations

from typing import Any

from homeserver.events.model import Event
from homeserver.events.room_versions import get_room_version
from homeserver.handlers.event_persister import PersistKind
from storage.stores.events import TIMELINE, PersistRequest
from tests.rest.federation_helpers import FakeRemote, auth_events_for, latest_events
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_event_dag import DagTestCase
from tests.rest.test_federation_keys import FederationTestCase


class PromotionTest(DagTestCase):
    async def membership_row(self, event_id: str) -> tuple[Any, ...] | None:
        return await self.hs.db.query_one(
            "t", "SELECT user_id, membership, stream_ordering FROM room_memberships"
            " WHERE event_id = ?", event_id)

    async def joined(self) -> set[str]:
        resp = await self.request("GET", f"{CS}/rooms/{q(self.room)}/joined_members",
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        return set(resp.json["joined"])

    async def test_outlier_member_promoted_by_remote(self) -> None:
        join = await self.remote_event("m.room.member", {"membership": "join"}, self.bob)
        outcome = await self.persister.persist_remote(self.room, [join], PersistKind.OUTLIER)
        self.assertEqual(outcome[0].status, "outlier")
        self.assertIsNone(await self.membership_row(join.event_id))
        self.assertNotIn(self.bob, await self.joined())
        since = (await self.sync(self.alice))["next_batch"]

        # The same event in a transaction: promoted, not "known".
        self.assertIsNone(await self.receive(join))
        outlier, reason, soft, position = await self.row(join.event_id)
        self.assertEqual((outlier, reason, soft), (False, None, False))
        self.assertGreater(position, 0)
        self.assertIn(join.event_id, await self.hs.stores.events.get_state_groups(
            [join.event_id]))
        self.assertEqual(await self.membership_row(join.event_id),
                         (self.bob, "join", position))
        self.assertIn(self.bob, await self.joined())
        self.assertEqual(await self.extremities(), {join.event_id})
        synced = await self.sync(self.alice, since)
        timeline = synced["rooms"]["join"][self.room]["timeline"]["events"]
        self.assertIn(join.event_id, [e["event_id"] for e in timeline])
        # Now held in the graph: a repeat is a known duplicate; events follow on it.
        again = await self.persister.persist_remote(self.room, [join], PersistKind.REMOTE)
        self.assertEqual(again[0].status, "known")
        msg = await self.remote_event("m.room.message", {"msgtype": "m.text", "body": "hi"})
        self.assertIsNone(await self.receive(msg))
        self.assertEqual((await self.message_ids(self.alice))[:2],
                         [msg.event_id, join.event_id])

    async def test_outlier_promoted_by_backfill(self) -> None:
        join = await self.bob_joins()
        old = await self.remote_event("m.room.message", {"body": "history"}, prev=[join])
        await self.persister.persist_remote(self.room, [old], PersistKind.OUTLIER)
        self.assertNotIn(old.event_id, await self.message_ids(self.alice))
        outcome = await self.persister.persist_remote(self.room, [old], PersistKind.BACKFILLED)
        self.assertEqual(outcome[0].status, "backfilled")
        outlier, reason, _soft, position = await self.row(old.event_id)
        self.assertEqual((outlier, reason), (False, None))
        self.assertLess(position, 0)
        self.assertIn(old.event_id, await self.message_ids(self.alice))
        self.assertEqual(await self.extremities(), {join.event_id})

    async def test_rejected_or_soft_failed_are_not_promoted(self) -> None:
        await self.bob_joins()
        bad = await self.remote_event("m.room.name", {"name": "x"}, "")
        outcome = await self.persister.persist_remote(self.room, [bad], PersistKind.OUTLIER)
        self.assertEqual(outcome[0].status, "rejected")
        outcome = await self.persister.persist_remote(self.room, [bad], PersistKind.REMOTE)
        self.assertEqual(outcome[0].status, "known")
        self.assertTrue((await self.row(bad.event_id))[0])
        # Soft-failed: it has its state already, it stays as it is.
        msg = await self.remote_event("m.room.message", {"body": "after my ban"})
        resp = await self.member(self.alice, self.room, "ban", user_id=self.bob)
        self.assertEqual(resp.code, 200, resp)
        self.assertIsNone(await self.receive(msg))
        self.assertTrue((await self.row(msg.event_id))[2])
        outcome = await self.persister.persist_remote(self.room, [msg], PersistKind.BACKFILLED)
        self.assertEqual(outcome[0].status, "known")

    async def test_store_promotes_only_outliers(self) -> None:
        """At the store: a promotion of an event that already has its place fails
        (nothing is written), so a row is never moved twice."""
        join = await self.bob_joins()
        events = self.hs.stores.events
        group = await events.get_state_group_for_event(join.event_id)
        assert group is not None
        state = await events.get_state_for_group(group)
        with self.assertRaises(ValueError):
            await events.persist_event(PersistRequest(
                event=join, stream_ordering=10**9, group_before=group, state_before=state,
                mode=TIMELINE, promote=True))
        self.assertNotEqual((await self.row(join.event_id))[3], 10**9)

    async def test_memberships_from_given_state(self) -> None:
        """A remote room's state handed over as outliers (as send_join does), then an
        event on it with that state given: the members of that state get their rows
        and current memberships, with no help from the join code."""
        room = "!elsewhere:remote.test"
        await self.hs.stores.rooms.store_room(room, "10", self.bob, False, 0)
        fake, bob, ts = self.remote, self.bob, self.clock.time_msec()
        dave = fake.user("dave")
        create = fake.event(room, "10", bob, "m.room.create",
                            {"creator": bob, "room_version": "10"}, [], [], "", ts=ts)
        join = fake.event(room, "10", bob, "m.room.member", {"membership": "join"}, [create],
                          [create], bob, ts=ts)
        pl = fake.event(room, "10", bob, "m.room.power_levels", {"users": {bob: 100}}, [join],
                        [create, join], "", ts=ts)
        rules = fake.event(room, "10", bob, "m.room.join_rules", {"join_rule": "public"}, [pl],
                           [create, join, pl], "", ts=ts)
        dave_join = fake.event(room, "10", dave, "m.room.member", {"membership": "join"},
                               [rules], [create, rules, pl], dave, ts=ts)
        unknown = fake.event(room, "10", bob, "m.room.message", {"body": "not here"},
                             [dave_join], [create, join, pl], ts=ts)
        msg = fake.event(room, "10", bob, "m.room.message", {"body": "hello"}, [unknown],
                         [create, join, pl], ts=ts)
        state_events = [create, join, pl, rules, dave_join]
        outcomes = await self.persister.persist_remote(room, state_events,
                                                       PersistKind.OUTLIER)
        self.assertEqual({o.status for o in outcomes}, {"outlier"})
        state = {e.state_pair: e.event_id for e in state_events}
        outcomes = await self.persister.persist_remote(room, [msg], PersistKind.REMOTE,
                                                       state_before=state)
        self.assertEqual(outcomes[0].status, "accepted")
        members = await self.hs.stores.room_members.members_of_room(room)
        self.assertEqual({m.user_id: m.event_id for m in members},
                         {bob: join.event_id, dave: dave_join.event_id})
        self.assertEqual(await self.hs.stores.room_members.membership_history(dave, room),
                         [("join", (await self.row(dave_join.event_id))[3])])


class PromotionV12Test(PromotionTest):
    room_version = "12"


class SendPathTest(FederationTestCase, RoomTestCase):
    """Through a signed ``PUT /send`` transaction of a second server: its user's join,
    held here as an outlier (fetched earlier as an auth event), arrives with a message
    resting on it; both are in the timeline and the user is a member."""

    async def test_outlier_join_then_transaction(self) -> None:
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
        state = {k: e for k, e in (await self._state(room)).items()}
        join = fake.event(room, "11", bob, "m.room.member", {"membership": "join"},
                          await latest_events(self.hs, room),
                          await auth_events_for(self.hs, room, probe), bob,
                          ts=self.clock.time_msec())
        from tests.rest.federation_helpers import persister_of

        outcome = await persister_of(self.hs).persist_remote(room, [join], PersistKind.OUTLIER)
        self.assertEqual(outcome[0].status, "outlier")
        msg = fake.event(room, "11", bob, "m.room.message", {"msgtype": "m.text", "body": "hi"},
                         [join], [state[("m.room.create", "")],
                                  state[("m.room.power_levels", "")], join],
                         ts=self.clock.time_msec())
        body = {"origin": "remote.test", "origin_server_ts": self.clock.time_msec(),
                "pdus": [fake.pdu(join), fake.pdu(msg)]}
        resp = await self.remote_signed("PUT", "/_matrix/federation/v1/send/txn-o1", body)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["pdus"], {join.event_id: {}, msg.event_id: {}})
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=5",
                                  token=alice)
        self.assertEqual([e["event_id"] for e in resp.json["chunk"][:2]],
                         [msg.event_id, join.event_id])
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/joined_members", token=alice)
        self.assertIn(bob, resp.json["joined"])

    async def _state(self, room: str) -> dict[Any, Event]:
        from tests.rest.federation_helpers import current_state

        return await current_state(self.hs, room)
