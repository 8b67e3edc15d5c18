"""The migration runner on the engine under test."""

from __future__ import annotations

from storage.migrations import (
    SchemaTooNewError,
    check_schema,
    current_version,
    latest_version,
    migrate,
    split_statements,
)
from tests.harness import DatabaseTestCase


class MigrationTest(DatabaseTestCase):
    migrate_on_setup = False

    async def test_fresh_database_is_migrated_once(self) -> None:
        applied = await migrate(self.db, 1)
        self.assertEqual(applied[-1], latest_version(self.db.engine.name))
        self.assertEqual(await current_version(self.db), latest_version(self.db.engine.name))
        self.assertEqual(await migrate(self.db, 2), [])
        await check_schema(self.db)

    async def test_newer_database_refuses(self) -> None:
        await migrate(self.db, 1)
        await self.db.execute("bump", "INSERT INTO schema_version (version, name, applied_ts)"
                              " VALUES (?, ?, ?)", 9999, "future", 3)
        with self.assertRaisesRegex(SchemaTooNewError, "9999"):
            await migrate(self.db, 4)
        with self.assertRaisesRegex(SchemaTooNewError, "Upgrade Parley"):
            await check_schema(self.db)

    async def test_stream_ids_increase(self) -> None:
        await migrate(self.db, 1)
        ids = [await self.db.run("s", lambda txn: txn.next_stream_id("account_data"))
               for _ in range(5)]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 5)


class SplitTest(DatabaseTestCase):
    migrate_on_setup = False

    def test_split_statements(self) -> None:
        sql = "-- comment\nCREATE TABLE a (x INT);\n\nCREATE TABLE b (\n  y TEXT\n);\n"
        self.assertEqual(split_statements(sql),
                         ["CREATE TABLE a (x INT)", "CREATE TABLE b (\n  y TEXT\n)"])


class GapTest(DatabaseTestCase):
    migrate_on_setup = False

    async def test_version_added_below_applied_ones_is_applied(self) -> None:
        import storage.migrations as m

        real = m.load_migrations(self.db.engine.name)
        top = real[-1].version
        late = m.Migration(top + 2, "late", ["CREATE TABLE gap_late (x INTEGER)"])
        between = m.Migration(top + 1, "between", ["CREATE TABLE gap_between (x INTEGER)"])
        self.patch(m, "load_migrations", lambda _engine: [*real, late])
        await migrate(self.db, 1)
        self.patch(m, "load_migrations", lambda _engine: [*real, between, late])
        self.assertEqual(await migrate(self.db, 2), [top + 1])
        await self.db.query("check", "SELECT x FROM gap_between")
        self.assertEqual(await migrate(self.db, 3), [])


class ConcurrentMigrationTest(DatabaseTestCase):
    """Two processes starting at once must not both apply a migration."""

    migrate_on_setup = False

    async def test_two_pools_migrate_concurrently(self) -> None:
        from twisted.internet import defer

        from homeserver.app import open_database

        other = open_database(self.config)
        self.addCleanup(other.close)
        results = await defer.gatherResults([
            defer.ensureDeferred(migrate(self.db, 1)), defer.ensureDeferred(migrate(other, 1))])
        applied = sorted(v for r in results for v in r)
        self.assertEqual(applied, sorted({v for r in results for v in r}))
        rows = await self.db.query("count", "SELECT version, COUNT(*) FROM schema_version"
                                   " GROUP BY version")
        self.assertTrue(all(count == 1 for _, count in rows), rows)


class FailedMigrationTest(DatabaseTestCase):
    migrate_on_setup = False

    async def test_failed_migration_leaves_nothing_behind(self) -> None:
        import storage.migrations as m

        real = m.load_migrations(self.db.engine.name)
        bad = m.Migration(real[-1].version + 1, "bad",
                          ["CREATE TABLE half_done (x INTEGER)", "SELECT * FROM no_such_table"])
        self.patch(m, "load_migrations", lambda _engine: [*real, bad])
        db_error = self.db.engine.module.Error
        with self.assertRaises(db_error):
            await migrate(self.db, 1)
        self.assertEqual(await current_version(self.db), real[-1].version)
        with self.assertRaises(db_error):
            await self.db.query("check", "SELECT x FROM half_done")
