"""State groups (issue 18, compact state storage): a room's state kept as snapshots and
delta chains whose length grows with the state, read back exactly as written.

Writes groups with the store's own writer and compares every group's state, read one at
a time and in bulk, with a plain model of the room's state after each change."""

from __future__ import annotations

import random

from storage.database import Txn
from storage.stores import events as events_store
from storage.stores.events import EventStore, StateMap
from tests.harness import DatabaseTestCase

ROOM = "!compact:hs"


class StateGroupStorageTest(DatabaseTestCase):
    async def write_history(self, changes: int, seed: int = 7, drops: float = 0.02
                            ) -> tuple[list[int], list[StateMap]]:
        """A room whose state grows by a new key on most changes and otherwise replaces
        one, or drops one (``drops`` of the changes; a drop forces a snapshot, as a state
        reset would): the groups and the model after each."""
        rng = random.Random(seed)
        state: StateMap = {("m.room.create", ""): "$create"}
        base: tuple[int, StateMap] | None = None
        groups: list[int] = []
        models: list[StateMap] = []
        for i in range(changes):
            state = dict(state)
            roll = rng.random()
            if roll < 0.75 or len(state) < 3:
                state[("m.room.member", f"@u{i}:hs")] = f"$join{i}"
            elif roll < 1 - drops:
                key = rng.choice(sorted(state))
                state[key] = f"$replace{i}"
            else:
                del state[rng.choice(sorted(k for k in state if k[0] != "m.room.create"))]
            snapshot = dict(state)

            def write(txn: Txn, b: tuple[int, StateMap] | None = base,
                      s: StateMap = snapshot, n: int = i) -> int:
                return events_store._write_group(txn, ROOM, f"$ev{n}", b, s)

            group = await self.db.run("write_group", write)
            groups.append(group)
            models.append(snapshot)
            base = (group, snapshot)
        return groups, models

    async def entry_rows(self) -> int:
        rows = await self.db.query(
            "count", "SELECT COUNT(*) FROM state_group_entries e JOIN state_groups g"
            " ON g.id = e.state_group WHERE g.room_id = ?", ROOM)
        return int(rows[0][0])

    async def test_every_group_reads_back_its_state(self) -> None:
        groups, models = await self.write_history(700)
        store = EventStore(self.db)
        bulk = await store.get_state_for_groups(groups)
        for group, model in zip(groups, models, strict=True):
            self.assertEqual(bulk[group], model, f"bulk read of group {group}")
        for group, model in list(zip(groups, models, strict=True))[::37]:
            self.assertEqual(await store.get_state_for_group(group), model, f"group {group}")

    async def test_chains_grow_with_the_state(self) -> None:
        """Rows stay near-linear in the changes (state events replace keys, never drop
        them): copying the state every 50 changes, as before, stores several times as many."""
        changes = 1200
        groups, models = await self.write_history(changes, seed=11, drops=0.0)
        rows = await self.entry_rows()
        every_fifty = sum(len(m) for i, m in enumerate(models) if i % 50 == 0) + changes
        self.assertLess(rows, every_fifty / 2, (rows, every_fifty))
        depths = await self.db.query(
            "depths", "SELECT MAX(delta_depth) FROM state_groups WHERE room_id = ?", ROOM)
        longest = int(depths[0][0])
        self.assertGreater(longest, events_store.SNAPSHOT_INTERVAL)
        self.assertLessEqual(longest, events_store._chain_limit(max(len(m) for m in models)))

    def test_chain_limit(self) -> None:
        limit = events_store._chain_limit
        self.assertEqual(limit(0), events_store.SNAPSHOT_INTERVAL)
        self.assertEqual(limit(200), events_store.SNAPSHOT_INTERVAL)
        self.assertEqual(limit(2000), 500)
        self.assertEqual(limit(10**6), events_store.MAX_CHAIN)
