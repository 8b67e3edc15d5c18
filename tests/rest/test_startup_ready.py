"""Start-up shows progress: the listeners open before the database is migrated, and
while a (deliberately held) migration runs ``/health`` is 200, ``/ready`` 503
``migrating`` with the progress, every other path 503 with ``Retry-After``; once the
server is built the same ports serve it. ``migrate`` logs each migration with its
position and the time left, and a long one statement by statement."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

import storage.migrations as migrations
from homeserver.app import Homeserver, build_homeserver, listen_early, open_database
from homeserver.metrics.ready import StartupStatus
from storage.migrations import MigrationProgress, load_migrations, migrate
from tests.harness import Response, drop_pg_schema, make_config, require_postgres, test_engine

HELD_VERSION = 5  # the migration the test holds until it has looked at /ready


class _Setup(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        if test_engine() == "postgres":
            require_postgres()
        self.data_dir = tempfile.mkdtemp(prefix="parley-startup-")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    def config(self, **overrides: Any) -> Any:
        config, schema = make_config(self.data_dir, **overrides)
        if schema:
            self.addCleanup(drop_pg_schema, schema)
        return config

    async def get(self, port: int, path: str) -> Response:
        resp = await treq.get(f"http://127.0.0.1:{port}{path}", pool=self.pool)
        return Response(resp.code, await resp.content(), resp.headers)


class StartupReadyTest(_Setup):
    async def test_listening_and_503_while_migrating_then_serving(self) -> None:
        config = self.config(listeners=[
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["client"]},
            {"port": 0, "bind_addresses": ["127.0.0.1"], "resources": ["metrics"]},
        ])
        db = open_database(config)
        release, held = threading.Event(), threading.Event()
        self.addCleanup(release.set)
        real_run = db.run

        def run(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
            if name == f"migrate_{HELD_VERSION}":
                def slow(txn: Any, *a: Any, **kw: Any) -> Any:
                    held.set()
                    release.wait(30)  # a long migration, on the database thread
                    return fn(txn, *a, **kw)
                return real_run(name, slow, *args, **kwargs)
            return real_run(name, fn, *args, **kwargs)

        db.run = run  # type: ignore[method-assign]
        status = StartupStatus()
        early = listen_early(config, reactor, status)
        client_port, metrics_port = (p.getHost().port for p in early.ports)
        building = defer.ensureDeferred(build_homeserver(config, db=db, startup=status))
        hs_box: list[Homeserver] = []

        async def cleanup() -> None:
            release.set()
            if not building.called:
                await building
            if hs_box:
                await hs_box[0].stop()
            else:
                await early.stop()
        self.addCleanup(lambda: defer.ensureDeferred(cleanup()))

        while not held.is_set():
            await task.deferLater(reactor, 0.02, lambda: None)
        ready = await self.get(client_port, "/ready")
        self.assertEqual(ready.code, 503, ready)
        pending = len(load_migrations(db.engine.name))
        self.assertEqual(ready.json["errcode"], "M_UNKNOWN")
        self.assertEqual(ready.json["status"], "migrating")
        current = [m for m in load_migrations(db.engine.name) if m.version == HELD_VERSION][0]
        self.assertEqual(ready.json["migrations"]["current"], f"{HELD_VERSION:04d}_{current.name}")
        self.assertEqual(ready.json["migrations"]["total"], pending)
        done = ready.json["migrations"]["done"]
        self.assertEqual(done, [m.version for m in load_migrations(db.engine.name)]
                         .index(HELD_VERSION))
        self.assertIn(f"migration {done + 1} of {pending}", ready.json["error"])
        self.assertIn("eta_s", ready.json["migrations"])
        health = await self.get(client_port, "/health")
        self.assertEqual((health.code, health.raw), (200, b"OK"))
        versions = await self.get(client_port, "/_matrix/client/versions")
        self.assertEqual(versions.code, 503, versions)
        self.assertEqual(versions.header("Retry-After"), "5")
        self.assertEqual(versions.json["errcode"], "M_UNKNOWN")
        # Listener isolation holds while starting: the metrics port has no client API.
        self.assertEqual((await self.get(metrics_port, "/_matrix/client/versions")).code, 404)
        self.assertEqual((await self.get(metrics_port, "/ready")).code, 503)

        release.set()
        hs = await building
        hs_box.append(hs)
        hs.serve_on(early)
        self.assertEqual(hs.ports, early.ports)
        ready = await self.get(client_port, "/ready")
        self.assertEqual(ready.code, 200, ready)
        self.assertEqual(ready.json["status"], "ready")
        versions = await self.get(client_port, "/_matrix/client/versions")
        self.assertEqual(versions.code, 200, versions)
        self.assertIn("versions", versions.json)
        self.assertEqual((await self.get(metrics_port, "/metrics")).code, 200)
        self.assertEqual((await self.get(client_port, "/metrics")).code, 404)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class MigrationProgressTest(_Setup):
    async def test_migrate_reports_and_logs_progress(self) -> None:
        db = open_database(self.config())
        self.addCleanup(db.close)
        capture = _Capture()
        logger = logging.getLogger("storage.migrations")
        old_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(capture)
        self.addCleanup(logger.removeHandler, capture)
        self.addCleanup(logger.setLevel, old_level)
        # Every statement counts as "long", and every migration as slow.
        self.patch(migrations, "STATEMENT_LOG_INTERVAL_S", 0.0)
        self.patch(migrations, "LONG_MIGRATION_S", 0.0)
        seen: list[MigrationProgress] = []
        applied = await migrate(db, int(time.time() * 1000), seen.append)
        total = len(load_migrations(db.engine.name))
        self.assertEqual(len(applied), total)
        self.assertEqual([(p.done, p.total) for p in seen],
                         [(i, total) for i in range(total + 1)])
        self.assertEqual(seen[0].current, f"{applied[0]:04d}_accounts")
        self.assertIsNone(seen[0].eta_s)
        self.assertIsNone(seen[-1].current)
        self.assertIsNotNone(seen[1].eta_s)
        text = "\n".join(capture.lines)
        self.assertIn(f"{total} migration(s) to apply", text)
        self.assertIn(f"migration 0001_accounts (1/{total})", text)
        self.assertIn(f"(2/{total})", text)
        self.assertIn("s left", text)
        self.assertRegex(text, r"migration 0001_accounts: 1/\d+ statements after")
        self.assertIn(f"database schema at version {applied[-1]}", text)
        # Nothing pending: nothing logged, nothing reported.
        capture.lines.clear()
        seen.clear()
        self.assertEqual(await migrate(db, int(time.time() * 1000), seen.append), [])
        self.assertEqual((capture.lines, seen), ([], []))
