"""Migration 0041 (events as a DAG) on a database that already holds a linear room: the
state group before each event is filled in from the room's stream order, and the
negative (backfill) stream orderings start below every live one."""

from __future__ import annotations

from unittest import mock

from storage import migrations
from storage.migrations import migrate
from tests.harness import DatabaseTestCase

ROOM = "!r:test.local"


class EventDagMigrationTest(DatabaseTestCase):
    migrate_on_setup = False

    async def test_state_group_before_backfilled(self) -> None:
        real = migrations.load_migrations
        with mock.patch.object(migrations, "load_migrations",
                               lambda engine: [m for m in real(engine) if m.version < 41]):
            await migrate(self.db, 1)
        await self.db.execute("room", "INSERT INTO rooms (room_id, room_version, creator,"
                              " is_public, created_ts) VALUES (?, ?, ?, ?, ?)",
                              ROOM, "10", "@a:test.local", False, 0)
        # create (group 1), a message (still 1), a state event (group 2), a message (2).
        rows = [("$create", 1, 1, "m.room.create", ""), ("$m1", 2, 2, "m.room.message", None),
                ("$name", 3, 3, "m.room.name", ""), ("$m2", 4, 4, "m.room.message", None)]
        groups = {"$create": 1, "$m1": 1, "$name": 2, "$m2": 2}
        for eid, pos, depth, etype, sk in rows:
            await self.db.execute(
                "ev", "INSERT INTO events (event_id, room_id, stream_ordering, depth, type,"
                " state_key, sender, origin_server_ts, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                eid, ROOM, pos, depth, etype, sk, "@a:test.local", 0, "{}")
            await self.db.execute("esg", "INSERT INTO event_state_groups (event_id, state_group)"
                                  " VALUES (?, ?)", eid, groups[eid])
        applied = await migrate(self.db, 2)
        self.assertIn(41, applied)
        found = dict(await self.db.query(
            "q", "SELECT event_id, state_group_before FROM event_state_groups"))
        self.assertEqual(found, {"$create": None, "$m1": 1, "$name": 1, "$m2": 2})
        soft = await self.db.query("q", "SELECT soft_failed FROM events WHERE event_id = ?",
                                   "$m2")
        self.assertFalse(soft[0][0])
        first = await self.db.run("s", lambda txn: txn.next_stream_id("events_backfill"))
        self.assertEqual(first, 1)  # stored negated: -1, below every live position
