"""``parley port-db``: a SQLite homeserver with real traffic is ported into a fresh
PostgreSQL schema, and a server started on it serves the same users, events, keys and
media, with stream positions past every ported one. Also: a non-empty target refused
(and emptied with ``--force``), ``--resume`` after an interruption, a source at another
schema version, stream positions verified (a mismatch fails the port).

Needs PostgreSQL (the target): skipped unless PARLEY_TEST_DB=postgres.
"""

from __future__ import annotations

import io
import sqlite3
from typing import Any
from unittest import mock

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.app import build_homeserver
from homeserver.cli import build_parser
from homeserver.cli_port_db import run_port_db
from storage import port as port_module
from storage.migrations import load_migrations
from storage.port import STREAM_COLUMNS, _converter, _copy_order, _next_value
from tests.harness import drop_pg_schema, make_config, pg_settings, require_postgres, test_engine
from tests.rest.e2e_helpers import KEYS, OlmDevice
from tests.rest.room_helpers import CS, RoomTestCase, q

MEDIA = "/_matrix/media/v3/upload"
AUTHED_MEDIA = "/_matrix/client/v1/media"
BLOB = b"\x89PNG\r\n\x1a\n not really an image, but bytes all the same \x00\xff"


class PortDbTest(RoomTestCase):
    """self.hs starts on SQLite; :meth:`start_pg` replaces it with a server on the port."""

    engine = "sqlite"
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        if test_engine() != "postgres":
            raise unittest.SkipTest("port-db needs PostgreSQL as its target "
                                    "(run with PARLEY_TEST_DB=postgres)")
        require_postgres()
        await super().setUp()
        self.sqlite_path = self.config.database.path
        self.pg_config, schema = make_config(self.data_dir, "postgres")
        assert schema is not None
        self.target_schema = schema
        # Trial runs cleanups (last in, first out) before tearDown: the server (whichever
        # self.hs is by then) settles and stops before the schema is dropped.
        self.addCleanup(drop_pg_schema, schema)
        self.addCleanup(lambda: defer.ensureDeferred(self._settle_and_stop()))

    async def _settle_and_stop(self) -> None:
        # Work a request left in flight (a login's alert and its server notice, the
        # event subscribers after it) finishes before the server stops.
        await self.settle()
        await self.hs.stop()

    async def settle(self) -> None:
        if self.hs.detection is not None:
            await self.hs.detection.alerts.drain()
        await task.deferLater(reactor, 0.3, lambda: None)

    # -- helpers ---------------------------------------------------------------------

    async def port(self, *, resume: bool = False, batch: int | None = None,
                   sqlite: str | None = None, force: bool = False) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await run_port_db(sqlite or self.sqlite_path, self.pg_config, resume=resume,
                                 force=force, batch=batch, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    def pg(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A query on the target schema, outside the server."""
        s = pg_settings()
        conn = psycopg2.connect(host=s["host"], port=s["port"], user=s["user"],
                                dbname=s["database"], password=s.get("password"))
        try:
            with conn.cursor() as cur:
                cur.execute(f'SET search_path TO "{self.target_schema}"')
                cur.execute(sql, args)
                rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows
        finally:
            conn.close()

    async def fill(self) -> dict[str, Any]:
        """Users, a room with messages (one encrypted-looking), media, account data and
        a device with keys; returns what to compare after the port."""
        alice = await self.register("alice")
        bob = await self.register("bob")
        room = await self.create_room(alice["access_token"], name="ported", preset="public_chat")
        self.assertEqual((await self.join(bob["access_token"], room)).code, 200)
        for i in range(7):
            await self.send_ok(alice["access_token"], room, f"message {i}")
        enc = await self.send(bob["access_token"], room, event_type="m.room.encrypted",
                              content={"algorithm": "m.megolm.v1.aes-sha2",
                                       "ciphertext": "AwgAEnB" * 20, "sender_key": "abc",
                                       "session_id": "sess", "device_id": bob["device_id"]})
        self.assertEqual(enc.code, 200, enc)
        up = await self.request("POST", MEDIA, raw_body=BLOB, token=alice["access_token"],
                                headers={"Content-Type": "application/octet-stream"})
        self.assertEqual(up.code, 200, up)
        acct = await self.request(
            "PUT", f"{CS}/user/{q(alice['user_id'])}/account_data/org.example.ported",
            {"kept": [1, 2, 3]}, token=alice["access_token"])
        self.assertEqual(acct.code, 200, acct)
        device = OlmDevice(alice["user_id"], alice["device_id"], alice["access_token"])
        keys = await self.request("POST", f"{KEYS}/upload",
                                  {"device_keys": device.device_keys(),
                                   "one_time_keys": device.one_time_keys(3)},
                                  token=alice["access_token"])
        self.assertEqual(keys.code, 200, keys)
        messages = await self.messages(alice["access_token"], room)
        return {"alice": alice, "bob": bob, "room": room, "messages": messages,
                "media": up.json["content_uri"], "device": device,
                "encrypted": enc.json["event_id"]}

    async def messages(self, token: str, room: str) -> list[str]:
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/messages?dir=b&limit=100",
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        return [e["event_id"] for e in resp.json["chunk"]]

    async def start_pg(self) -> None:
        await self.hs.stop()  # the SQLite server (idempotent: tearDown stops the new one)
        self.hs = await build_homeserver(self.pg_config, clock=self.clock)
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"

    # -- the tests ---------------------------------------------------------------------

    async def test_port_then_serve(self) -> None:
        before = await self.fill()
        await self.hs.stop()
        code, out, err = await self.port()
        self.assertEqual(code, 0, err)
        self.assertIn("verified", out)
        self.assertNotIn("MISMATCH", out)
        self.assertIn("events", out)
        # The progress table is gone once verified.
        self.assertEqual(self.pg("SELECT to_regclass('port_db_progress') IS NULL"), [(True,)])
        ported_max = self.pg("SELECT MAX(stream_ordering) FROM events")[0][0]
        self.assertGreater(ported_max, 0)

        await self.start_pg()
        alice = before["alice"]
        # The same password logs in; the old session's token still works too.
        login = await self.login("alice")
        self.assertEqual(login.code, 200, login)
        token = login.json["access_token"]
        await self.settle()  # the login's "new sign-in" notice, sent in the background
        self.assertEqual(await self.messages(alice["access_token"], before["room"]),
                         before["messages"])
        self.assertEqual(await self.messages(token, before["room"]), before["messages"])
        self.assertIn(before["encrypted"], before["messages"])
        synced = await self.sync(token)
        timeline = synced["rooms"]["join"][before["room"]]["timeline"]["events"]
        self.assertIn(before["encrypted"], [e["event_id"] for e in timeline])
        # A new message lands after every ported one (the sequences were advanced).
        new_id = await self.send_ok(token, before["room"], "after the port")
        row = await self.hs.db.query_one("t", "SELECT stream_ordering FROM events "
                                         "WHERE event_id = ?", new_id)
        assert row is not None
        self.assertGreater(row[0], ported_max)
        since = synced["next_batch"]
        later = await self.sync(token, since=since, timeout=5000)
        self.assertEqual([e["event_id"] for e in
                          later["rooms"]["join"][before["room"]]["timeline"]["events"]],
                         [new_id])
        # Device keys, account data and media came along.
        query = await self.request("POST", f"{KEYS}/query",
                                   {"device_keys": {alice["user_id"]: []}}, token=token)
        self.assertEqual(query.code, 200, query)
        got = query.json["device_keys"][alice["user_id"]][alice["device_id"]]
        self.assertEqual(got["keys"], before["device"].device_keys()["keys"])
        claim = await self.request("POST", f"{KEYS}/claim", {"one_time_keys": {
            alice["user_id"]: {alice["device_id"]: "signed_curve25519"}}}, token=token)
        self.assertEqual(claim.code, 200, claim)
        self.assertTrue(claim.json["one_time_keys"][alice["user_id"]][alice["device_id"]])
        acct = await self.request(
            "GET", f"{CS}/user/{q(alice['user_id'])}/account_data/org.example.ported",
            token=token)
        self.assertEqual(acct.json, {"kept": [1, 2, 3]})
        media_id = before["media"].rsplit("/", 1)[1]
        dl = await self.request("GET", f"{AUTHED_MEDIA}/download/test.local/{media_id}",
                                token=token)
        self.assertEqual(dl.code, 200, dl)
        self.assertEqual(dl.raw, BLOB)
        # New account data gets a later stream position too (its own sequence).
        put = await self.request(
            "PUT", f"{CS}/user/{q(alice['user_id'])}/account_data/org.example.new", {"n": 1},
            token=token)
        self.assertEqual(put.code, 200, put)
        inc = await self.sync(token, since=since)
        self.assertIn("org.example.new",
                      [e["type"] for e in inc.get("account_data", {}).get("events", [])])

    async def test_refuses_non_empty_target(self) -> None:
        await self.register("alice")
        await self.hs.stop()
        code, _, err = await self.port()
        self.assertEqual(code, 0, err)
        code, _, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("not empty", err)
        self.assertIn("--force", err)
        code, _, err = await self.port(resume=True)  # not an interrupted port either
        self.assertEqual(code, 1)
        self.assertIn("not empty", err)
        code, _, err = await self.port(resume=True, force=True)
        self.assertEqual(code, 1)
        self.assertIn("pass one of them", err)

    async def test_refuses_a_database_still_open(self) -> None:
        """The server still running on the file (an operator forgot step 1): refused,
        nothing written to PostgreSQL; once it stops, the same command ports."""
        await self.register("alice")
        code, _, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("stop Parley", err)
        self.assertEqual(self.pg("SELECT COUNT(*) FROM information_schema.tables "
                                 "WHERE table_schema = current_schema()"), [(0,)])
        await self.hs.stop()
        code, _, err = await self.port()
        self.assertEqual(code, 0, err)

    async def test_force_empties_target_then_ports(self) -> None:
        before = await self.fill()
        await self.hs.stop()
        code, _, err = await self.port()
        self.assertEqual(code, 0, err)
        # The target drifts from the source: a stray row, a sequence far ahead, a row
        # the source does not have (all must be gone after --force).
        self.pg("INSERT INTO account_data (user_id, room_id, data_type, content, stream_id) "
                "VALUES ('@stray:test.local', '', 'org.example.stray', '{}', 999)")
        self.pg("SELECT setval('events_stream_seq', 5000, TRUE)")
        code, _, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("--force", err)
        # A lock held on the target (a server still running on it): --force gives up
        # after its lock timeout, deleting nothing.
        s = pg_settings()
        holder = psycopg2.connect(host=s["host"], port=s["port"], user=s["user"],
                                  dbname=s["database"], password=s.get("password"))
        try:
            with holder.cursor() as cur:
                cur.execute(f'SET search_path TO "{self.target_schema}"')
                cur.execute("LOCK TABLE events IN ACCESS SHARE MODE")
            with mock.patch.object(port_module, "FORCE_LOCK_TIMEOUT_MS", 200):
                code, _, err = await self.port(force=True)
        finally:
            holder.rollback()
            holder.close()
        self.assertEqual(code, 1)
        self.assertIn("nothing was deleted", err)
        self.assertEqual(self.pg("SELECT COUNT(*) FROM account_data "
                                 "WHERE user_id = '@stray:test.local'"), [(1,)])
        with self.assertLogs("storage.port", "WARNING") as logs:
            code, out, err = await self.port(force=True)
        self.assertEqual(code, 0, err)
        self.assertIn("EMPTYING", "\n".join(logs.output))
        self.assertIn("--force: emptied", err)
        self.assertIn("verified", out)
        self.assertNotIn("MISMATCH", out)
        self.assertEqual(self.pg("SELECT COUNT(*) FROM account_data "
                                 "WHERE user_id = '@stray:test.local'"), [(0,)])
        with sqlite3.connect(self.sqlite_path) as conn:
            pos = conn.execute("SELECT pos FROM stream_positions "
                               "WHERE stream = 'events'").fetchone()[0]
        conn.close()
        self.assertEqual(self.pg("SELECT last_value, is_called FROM events_stream_seq"),
                         [(pos, True)])
        # --force over an interrupted port: discarded, a fresh port runs.
        real = port_module._write_batch  # noqa: SLF001

        def failing(txn: Any, plan: Any, rows: Any, *args: Any) -> None:
            real(txn, plan, rows, *args)
            if plan.name == "events":
                raise RuntimeError("simulated crash")

        with mock.patch.object(port_module, "_write_batch", failing):
            with self.assertRaisesRegex(RuntimeError, "simulated crash"):
                await self.port(force=True, batch=2)
        self.assertEqual(self.pg("SELECT done FROM port_db_progress "
                                 "WHERE table_name = 'events'"), [(False,)])
        code, _, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("interrupted port", err)
        self.assertIn("--force", err)
        code, out, err = await self.port(force=True)
        self.assertEqual(code, 0, err)
        self.assertNotIn("MISMATCH", out)
        await self.start_pg()
        login = await self.login("alice")
        self.assertEqual(login.code, 200, login)
        self.assertEqual(await self.messages(login.json["access_token"], before["room"]),
                         before["messages"])

    async def test_stream_positions_verified(self) -> None:
        before = await self.fill()
        alice, bob = before["alice"], before["bob"]
        sent = await self.request(
            "PUT", f"{CS}/sendToDevice/org.example.ping/txn1",
            {"messages": {bob["user_id"]: {bob["device_id"]: {"n": 1}}}},
            token=alice["access_token"])
        self.assertEqual(sent.code, 200, sent)
        receipt = await self.request(
            "POST", f"{CS}/rooms/{q(before['room'])}/receipt/m.read/"
            f"{q(before['messages'][0])}", {}, token=bob["access_token"])
        self.assertEqual(receipt.code, 200, receipt)
        await self.settle()
        await self.hs.stop()
        with sqlite3.connect(self.sqlite_path) as conn:
            positions = dict(conn.execute("SELECT stream, pos FROM stream_positions"))
        conn.close()
        for stream in ("events", "account_data", "device_lists", "to_device", "receipts"):
            self.assertGreater(positions[stream], 0, stream)
        code, out, err = await self.port()
        self.assertEqual(code, 0, err)
        self.assertIn("max copied", out)
        for stream, pos in positions.items():
            (last, called), = self.pg(f"SELECT last_value, is_called FROM {stream}_stream_seq")
            self.assertEqual(_next_value(last, called), pos + 1, stream)
            lines = out.splitlines()
            table = lines[next(i for i, x in enumerate(lines) if "max copied" in x):]
            line = next(x for x in table if x.split()[:1] == [stream])
            self.assertEqual((line.split()[1], line.split()[-1]), (str(pos), str(pos + 1)))

    async def test_stream_position_mismatch_fails(self) -> None:
        await self.fill()
        await self.hs.stop()
        real = port_module._set_sequence  # noqa: SLF001

        def short(txn: Any, seq: str, value: int) -> None:  # a sequence left behind
            if seq != "account_data_stream_seq":
                real(txn, seq, value)

        with mock.patch.object(port_module, "_set_sequence", short):
            code, out, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("MISMATCH", out)
        self.assertIn("stream account_data: PostgreSQL's next position", err)
        self.assertIn("FAILED verification", err)

    async def test_sqlite_position_behind_its_rows(self) -> None:
        """A SQLite stream record behind its own rows: PostgreSQL continues after the
        rows (never reusing a position), with a warning."""
        await self.fill()
        await self.hs.stop()
        with sqlite3.connect(self.sqlite_path) as conn:
            top = conn.execute("SELECT MAX(stream_ordering) FROM events").fetchone()[0]
            conn.execute("UPDATE stream_positions SET pos = 1 WHERE stream = 'events'")
        conn.close()
        with self.assertLogs("storage.port", "WARNING") as logs:
            code, out, err = await self.port()
        self.assertEqual(code, 0, err)
        self.assertIn("stream events: SQLite recorded position 1", "\n".join(logs.output))
        self.assertEqual(self.pg("SELECT last_value FROM events_stream_seq"), [(top,)])

    async def test_resume_after_interruption(self) -> None:
        before = await self.fill()
        await self.hs.stop()
        real = port_module._write_batch  # noqa: SLF001

        def failing(txn: Any, plan: Any, rows: Any, *args: Any) -> None:
            real(txn, plan, rows, *args)
            if plan.name == "events" and args[1] >= 4:  # the second batch of events
                raise RuntimeError("simulated crash")

        with mock.patch.object(port_module, "_write_batch", failing):
            with self.assertRaisesRegex(RuntimeError, "simulated crash"):
                await self.port(batch=2)
        # The failed batch rolled back: events stopped after its first batch.
        self.assertEqual(self.pg("SELECT rows_copied, done FROM port_db_progress "
                                 "WHERE table_name = 'events'"), [(2, False)])
        self.assertEqual(self.pg("SELECT COUNT(*) FROM events"), [(2,)])
        code, _, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("--resume", err)
        code, out, err = await self.port(resume=True, batch=3)
        self.assertEqual(code, 0, err)
        self.assertNotIn("MISMATCH", out)
        await self.start_pg()
        login = await self.login("alice")
        self.assertEqual(login.code, 200, login)
        self.assertEqual(await self.messages(login.json["access_token"], before["room"]),
                         before["messages"])

    async def test_source_checks(self) -> None:
        await self.register("alice")
        await self.hs.stop()
        with sqlite3.connect(self.sqlite_path) as conn:  # a table PostgreSQL lacks
            conn.execute("CREATE TABLE leftover_experiment (x INTEGER)")
        conn.close()
        code, _, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("only in SQLite: leftover_experiment", err)
        with sqlite3.connect(self.sqlite_path) as conn:
            conn.execute("DROP TABLE leftover_experiment")
        conn.close()
        self.pg(f"DROP SCHEMA IF EXISTS \"{self.target_schema}\" CASCADE")
        with sqlite3.connect(self.sqlite_path) as conn:
            conn.execute("DELETE FROM schema_version WHERE version = "
                         "(SELECT MAX(version) FROM schema_version)")
        conn.close()
        code, _, err = await self.port()
        self.assertEqual(code, 1)
        self.assertIn("parley migrate", err)
        # Nothing was written to the target.
        self.assertEqual(self.pg("SELECT COUNT(*) FROM information_schema.tables "
                                 "WHERE table_schema = current_schema()"), [(0,)])
        other = f"{self.data_dir}/other.db"
        with sqlite3.connect(other) as conn:
            conn.execute("CREATE TABLE t (x INTEGER)")
        conn.close()
        code, _, err = await self.port(sqlite=other)
        self.assertEqual(code, 1)
        self.assertIn("not a Parley database", err)
        code, _, err = await self.port(sqlite=f"{self.data_dir}/missing.db")
        self.assertEqual(code, 1)
        self.assertIn("no SQLite database", err)
        out, err_io = io.StringIO(), io.StringIO()
        code = await run_port_db(self.sqlite_path, self.config, out=out, err=err_io)
        self.assertEqual(code, 1)
        self.assertIn("must be PostgreSQL", err_io.getvalue())


class PortUnitTest(unittest.TestCase):
    """The pure parts: copy order, conversions, the command line (no database)."""

    def test_copy_order_parents_first(self) -> None:
        order = _copy_order(["a_child", "b", "users", "z"],
                            [("a_child", "users"), ("z", "a_child"), ("b", "b")])
        self.assertLess(order.index("users"), order.index("a_child"))
        self.assertLess(order.index("a_child"), order.index("z"))
        self.assertEqual(sorted(order), ["a_child", "b", "users", "z"])

    def test_conversions(self) -> None:
        self.assertIs(_converter("boolean")(1), True)
        self.assertIs(_converter("boolean")(0), False)
        self.assertIsNone(_converter("boolean")(None))
        self.assertEqual(_converter("bytea")("x"), b"x")
        self.assertEqual(_converter("bigint")(3.0), 3)
        text = _converter("text")
        self.assertEqual(text(b"caf\xc3\xa9"), "café")
        self.assertEqual(text("a\x00b"), "ab")
        self.assertEqual(text.stripped, 1)  # type: ignore[attr-defined]

    def test_every_stream_has_its_columns(self) -> None:
        """A stream added by a migration must say where its positions are stored, or
        the port could not check PostgreSQL continues after them."""
        streams, columns = set(), {}
        for mig in load_migrations("sqlite"):
            for stmt in mig.statements:
                if "INSERT INTO stream_positions" in stmt:
                    streams.add(stmt.split("VALUES ('")[1].split("'")[0])
        conn = sqlite3.connect(":memory:")
        for mig in load_migrations("sqlite"):
            for stmt in mig.statements:
                conn.execute(stmt)
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            columns[table] = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        conn.close()
        self.assertEqual(streams, set(STREAM_COLUMNS))
        for stream, places in STREAM_COLUMNS.items():
            for table, column, _ in places:
                self.assertIn(column, columns.get(table, set()), f"{stream}: {table}.{column}")
        self.assertEqual((_next_value(5, True), _next_value(1, False)), (6, 1))

    def test_parser(self) -> None:
        args = build_parser().parse_args(["port-db", "--sqlite", "x.db", "-c", "pg.yaml",
                                          "--resume", "--batch", "100"])
        self.assertEqual((args.sqlite, args.config, args.resume, args.batch),
                         ("x.db", "pg.yaml", True, 100))
        args = build_parser().parse_args(["port-db", "--from", "old.yaml", "--to", "new.yaml",
                                          "--force"])
        self.assertEqual((args.old_config, args.config, args.force, args.resume),
                         ("old.yaml", "new.yaml", True, False))
        with mock.patch("sys.stderr", io.StringIO()):
            for bad in (["port-db", "-c", "x"], ["port-db", "--sqlite", "a", "-c", "x",
                                                  "--batch", "0"],
                        ["port-db", "--sqlite", "a", "-c", "x", "--force", "--resume"]):
                with self.assertRaises(SystemExit):
                    build_parser().parse_args(bad)

