"""Range visibility from the state at each event (issue 16): with events of other
servers, stream order is not graph order (a concurrent branch received late, history
backfilled at negative positions), so ``VisibilityHandler.visible_ranges`` (search
counts, thread summaries) and ``can_see_room_state`` (/state, /members of non-members)
judge by the room's state groups, as ``filter_events`` does, never by the latest
change in stream order."""

from __future__ import annotations

from typing import Any

from homeserver.handlers.event_persister import PersistKind
from homeserver.handlers.visibility import VisibilityHandler
from tests.rest.federation_helpers import current_state, latest_events
from tests.rest.room_helpers import CS, q
from tests.rest.test_event_dag import DagTestCase

CAROL = "@carol:test.local"
SEARCH = f"{CS}/search"


def _inside(ranges: list[tuple[int, int | None]], position: int) -> bool:
    return any(a < position and (u is None or position <= u) for a, u in ranges)


class RangeVisibilityTest(DagTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"federation": {"enabled": True}, "search": {"enabled": True}}

    @property
    def visibility(self) -> VisibilityHandler:
        return VisibilityHandler(self.hs.stores.state_history, self.hs.stores.room_members)

    async def position(self, event_id: str) -> int:
        return (await self.row(event_id))[3]

    async def search(self, token: str, term: str) -> tuple[int, list[str]]:
        resp = await self.request("POST", SEARCH, {"search_categories": {"room_events": {
            "search_term": term, "order_by": "recent"}}}, token=token)
        self.assertEqual(resp.code, 200, resp)
        found = resp.json["search_categories"]["room_events"]
        return found["count"], [r["result"]["event_id"] for r in found["results"]]

    async def test_concurrent_branch_before_join(self) -> None:
        """history "joined": carol joins on the local branch while bob speaks on a
        concurrent one, received after her join. Its position is inside her join's
        stream range, but the state before it has her not joined: not in her ranges,
        not counted by search; what follows the merge is."""
        resp = await self.put_state(self.alice, self.room, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200, resp)
        await self.bob_joins()
        fork_point = await latest_events(self.hs, self.room)
        carol = await self.user("carol")
        self.assertEqual((await self.join(carol, self.room)).code, 200)
        join_row = await self.hs.stores.room_members.get_membership(CAROL, self.room)
        assert join_row is not None
        concurrent = await self.remote_event("m.room.message",
                                             {"msgtype": "m.text", "body": "zebra hidden"},
                                             prev=fork_point)
        self.assertIsNone(await self.receive(concurrent))
        self.assertGreater(await self.position(concurrent.event_id), join_row.stream_ordering)
        later = await self.remote_event("m.room.message",
                                        {"msgtype": "m.text", "body": "zebra seen"})
        self.assertIsNone(await self.receive(later))

        ranges = await self.visibility.visible_ranges(CAROL, self.room)
        self.assertFalse(_inside(ranges, await self.position(concurrent.event_id)))
        self.assertTrue(_inside(ranges, await self.position(later.event_id)))
        # (Her own join is read under the state before it, where she is not joined:
        # the user's own membership events are left aside by the ranges.)
        self.assertFalse(_inside(ranges, join_row.stream_ordering))
        self.assertEqual(await self.search(carol, "zebra"), (1, [later.event_id]))
        alice_ranges = await self.visibility.visible_ranges("@alice:test.local", self.room)
        self.assertTrue(_inside(alice_ranges, await self.position(concurrent.event_id)))
        self.assertEqual((await self.search(self.alice, "zebra"))[0], 2)

    async def test_backfilled_history_while_joined(self) -> None:
        """"shared", carol left since: bob's message backfilled later (a negative
        position, before everything by stream order) was sent while she was joined,
        by the graph: in her ranges, as filter_events has it."""
        await self.bob_joins()
        carol = await self.user("carol")
        self.assertEqual((await self.join(carol, self.room)).code, 200)
        carol_join = (await current_state(self.hs, self.room))[("m.room.member", CAROL)]
        missed = await self.remote_event("m.room.message", {"body": "while carol was in"},
                                         prev=[carol_join])
        self.advance(1)
        self.assertEqual((await self.member(carol, self.room, "leave")).code, 200)
        outcome = await self.persister.persist_remote(self.room, [missed],
                                                      PersistKind.BACKFILLED)
        self.assertEqual(outcome[0].status, "backfilled")
        position = await self.position(missed.event_id)
        self.assertLess(position, 0)
        ranges = await self.visibility.visible_ranges(CAROL, self.room)
        self.assertTrue(_inside(ranges, position))
        self.assertEqual(len(await self.visibility.filter_events(
            CAROL, [await self.hs.stores.events.get_event(missed.event_id)])), 1)  # type: ignore[list-item]
        # Before her join (the room's creation) she sees nothing; after her leave nothing.
        create = (await current_state(self.hs, self.room))[("m.room.create", "")]
        self.assertFalse(_inside(ranges, await self.position(create.event_id)))
        after_leave = await self.send_ok(self.alice, self.room, "after carol left")
        self.assertFalse(_inside(await self.visibility.visible_ranges(CAROL, self.room),
                                 await self.position(after_leave)))

    async def test_world_readable_on_a_losing_branch(self) -> None:
        """Bob (power 100) makes the room world-readable on a concurrent branch, with
        an older timestamp than alice's "joined" on hers: state resolution keeps
        alice's. The latest change by stream order is bob's; the room's state is not
        world-readable, so a stranger may not read its state."""
        await self.bob_joins()
        await self.set_power({self.bob: 100})
        fork_point = await latest_events(self.hs, self.room)
        fork_state = await current_state(self.hs, self.room)
        t0 = self.clock.time_msec()
        self.advance(60)
        resp = await self.put_state(self.alice, self.room, "m.room.history_visibility",
                                    {"history_visibility": "joined"})
        self.assertEqual(resp.code, 200, resp)
        readable = await self.remote_event("m.room.history_visibility",
                                           {"history_visibility": "world_readable"}, "",
                                           prev=fork_point, auth_state=fork_state, ts=t0)
        self.assertIsNone(await self.receive(readable))
        self.assertEqual(await self.state_content("m.room.history_visibility"),
                         {"history_visibility": "joined"})
        self.assertGreater(await self.position(readable.event_id),
                           await self.position(resp.json["event_id"]))
        dave = await self.user("dave")
        self.assertEqual(await self.visibility.can_see_room_state("@dave:test.local",
                                                                  self.room), (False, None))
        resp = await self.request("GET", f"{CS}/rooms/{q(self.room)}/state", token=dave)
        self.assertEqual(resp.code, 403, resp)
        # And world-readable in the room's state: anyone may.
        resp = await self.put_state(self.alice, self.room, "m.room.history_visibility",
                                    {"history_visibility": "world_readable"})
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("GET", f"{CS}/rooms/{q(self.room)}/state", token=dave)
        self.assertEqual(resp.code, 200, resp)


class RangeVisibilityV12Test(RangeVisibilityTest):
    room_version = "12"
