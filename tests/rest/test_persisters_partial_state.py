"""Faster (partial-state) joins with event persisters (issue 18): test.local is main plus
two event persisters (PostgreSQL and Redis, in this reactor), remote.test a single
process holding the rooms.

A local user joins a room of remote.test that each persister writes: main runs the
join with ``omit_members``, the room's writer marks it (its own persister checks
events on partial state), the room is usable at once (send, a lazy-loading /sync),
/joined_members served by main waits for the resync, which the writer runs in its room
queue with the state fetched through main; the members are complete after, and main
never resumes a resync of a room it does not write.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from homeserver.handlers.partial_state import PartialStateHandler
from homeserver.http.errors import MatrixError
from homeserver.replication.remote_partial_state import partial_state_handler
from storage.stores.partial_state import PartialStateStore
from tests.rest.test_federation_keys import federation_section
from tests.rest.test_federation_queries import CS, q
from tests.rest.test_partial_state_join import LAZY
from tests.rest.test_persisters_federation import REMOTE, PersistersFederationCase


class PersistersPartialStateTest(PersistersFederationCase):
    partial_state_joins = True

    def config_overrides(self) -> dict[str, Any]:
        out = super().config_overrides()
        out["federation"] = federation_section(partial_state_joins=True)
        return out

    def writer_handler(self, name: str) -> PartialStateHandler:
        handler = self.others[name].writer_partial_state
        self.assertIsNotNone(handler, f"{name} has no partial-state handler")
        return handler  # type: ignore[no-any-return]

    def gate(self, handler: PartialStateHandler) -> defer.Deferred[None]:
        """Hold the writer's state fetch (through main) until the Deferred fires."""
        gate: defer.Deferred[None] = defer.Deferred()
        real = handler.fetch_state
        assert real is not None
        fetched: list[str] = []

        async def gated(server: str, room_id: str, event_id: str) -> Any:
            await gate
            fetched.append(room_id)
            return await real(server, room_id, event_id)
        handler.fetch_state = gated
        self.fetched = fetched
        return gate

    async def marked(self) -> set[str]:
        rows = await self.hs.db.query("t", "SELECT room_id FROM partial_state_rooms")
        return {str(r[0]) for r in rows}

    async def member_keys(self, room_id: str) -> set[str]:
        from tests.rest.federation_helpers import current_state

        state = await current_state(self.hs, room_id)
        return {sk for (t, sk) in state if t == "m.room.member"}

    async def test_join_partial_on_the_writer_resynced_there(self) -> None:
        bob = await self.account(self.remote, "bob")
        carol = await self.account(self.remote, "carol")
        alice = await self.account(self.hs, "alice")
        rooms = await self.remote_rooms(bob, preset="public_chat", name="Big")
        main_handler = self.hs.federation.membership.partial_state  # type: ignore[union-attr]
        for writer, room_id in rooms.items():
            await self.ok(self.remote, "POST", f"{CS}/join/{q(room_id)}", {}, carol.token)
            await self.send_text(self.remote, bob, room_id, f"before alice {writer}")
            handler = self.writer_handler(writer)
            gate = self.gate(handler)
            await self.ok(self.hs, "POST", f"{CS}/join/{q(room_id)}?via={REMOTE}", {},
                          alice.token)
            # Marked by the room's writer (its persister's set), not by main.
            self.assertTrue(handler.is_partial(room_id))
            self.assertFalse(main_handler.is_partial(room_id))
            self.assertEqual(await self.marked(), {room_id})
            self.assertEqual(await self.member_keys(room_id), {alice.user_id})
            # Usable at once: a lazy-loading sync has it, alice's message reaches bob,
            # bob's is accepted though his member event is not held yet.
            await self.sync_until(self.hs, alice, lambda b, r=room_id: r in b["rooms"]["join"],
                                  query=LAZY)
            mine = await self.send_text(self.hs, alice, room_id, f"hi from alice {writer}")
            self.assertIn(mine, self.written[writer])
            await self.sync_until(self.remote, bob, lambda b, r=room_id, w=writer:
                                  f"hi from alice {w}" in self.bodies(b, r))
            await self.send_text(self.remote, bob, room_id, f"hi from bob {writer}")
            await self.sync_until(self.hs, alice, lambda b, r=room_id, w=writer:
                                  f"hi from bob {w}" in self.bodies(b, r), query=LAZY)
            # /joined_members (served by main) waits for the writer's resync.
            pending = defer.ensureDeferred(self.ok(
                self.hs, "GET", f"{CS}/rooms/{q(room_id)}/joined_members", token=alice.token))
            await task.deferLater(reactor, 0.2, lambda: None)
            self.assertFalse(pending.called)
            gate.callback(None)
            for _ in range(200):
                if not handler.is_partial(room_id):
                    break
                await task.deferLater(reactor, 0.05, lambda: None)
            self.assertFalse(handler.is_partial(room_id), "the writer never resynced")
            self.assertEqual(self.fetched, [room_id])  # fetched once, through main
            self.advance(1)  # main's look at the table (it polls: the wake-up is the writer's)
            joined = await pending
            self.assertEqual(set(joined["joined"]), {alice.user_id, bob.user_id, carol.user_id})
            self.assertEqual(await self.marked(), set())
            self.assertEqual(await self.member_keys(room_id),
                             {alice.user_id, bob.user_id, carol.user_id})
            # A full-state sync now has the room's members.
            await self.sync_until(self.hs, alice, lambda b, r=room_id: {
                e["state_key"] for e in b["rooms"]["join"].get(r, {}).get("state", {}).get(
                    "events", []) + self.timeline(b, r) if e["type"] == "m.room.member"} >= {
                bob.user_id, carol.user_id})

    async def test_main_leaves_a_writers_resync_to_the_writer(self) -> None:
        # A mark left for a room p1 writes (as a crash mid-join leaves it): main does
        # not resume it (only the room's writer may write its state), p1 does.
        bob = await self.account(self.remote, "bob")
        room_id = (await self.remote_rooms(bob, preset="public_chat"))["p1"]
        store = PartialStateStore(self.hs.db)
        await store.mark(room_id, "$nojoin", REMOTE, [REMOTE], self.clock.time_msec())
        main_handler = self.hs.federation.membership.partial_state  # type: ignore[union-attr]
        await main_handler.start()
        self.assertFalse(main_handler.is_partial(room_id))
        self.assertEqual(await self.marked(), {room_id})
        # p1's start resumes it: the join is missing, so the mark is dropped.
        await self.writer_handler("p1").start()
        for _ in range(100):
            if not await self.marked():
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await self.marked(), set())
        # main's "resync" for a room whose mark the writer dropped (it restarted before
        # the join landed) marks it again and resyncs; here the join is still missing,
        # so the resync drops the mark once more.
        serve = partial_state_handler(self.writer_handler("p1"), self.others["p1"].config.workers)
        handler = self.writer_handler("p1")
        seen: list[str] = []
        real_resync = handler.resync_soon

        def spy(room: Any) -> None:
            seen.append(room.join_event_id)
            real_resync(room)
        handler.resync_soon = spy  # type: ignore[method-assign]
        await serve({"op": "resync", "room_id": room_id, "join_event_id": "$nojoin",
                     "resident": REMOTE, "servers": [REMOTE]})
        self.assertEqual(seen, ["$nojoin"])
        for _ in range(100):
            if not await self.marked():
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(await self.marked(), set())

    async def test_bad_partial_state_calls_refused(self) -> None:
        bob = await self.account(self.remote, "bob")
        rooms = await self.remote_rooms(bob, preset="public_chat", name="Big")
        handler = self.writer_handler("p1")
        serve = partial_state_handler(handler, self.others["p1"].config.workers)
        bad = [{"op": "nuke", "room_id": rooms["p1"]},
               {"op": "mark", "room_id": rooms["p2"], "join_event_id": "$x",
                "resident": REMOTE, "servers": []},  # p2's room, asked of p1
               {"op": "mark", "room_id": rooms["p1"], "join_event_id": "$x",
                "resident": REMOTE, "servers": ["a" * 300]},
               {"op": "mark", "room_id": rooms["p1"], "join_event_id": "x",
                "resident": REMOTE, "servers": []},
               {"op": "resync", "room_id": rooms["p1"]}]  # no join named
        for body in bad:
            with self.assertRaises(MatrixError) as caught:
                await serve(body)
            self.assertEqual(caught.exception.code, 400, body)
        self.assertEqual(await self.marked(), set())
