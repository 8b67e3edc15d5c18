"""Workers (issue 18, first slice): two homeservers in one test process sharing one
PostgreSQL schema and the real Redis of the machine, the main process (A) and a
``client`` worker (B). A message sent on A wakes a /sync long-poll held on B; a logout
on A refuses the token on B at once; B catches up from PostgreSQL after losing Redis;
B refuses writes with a clear error. Config and routing rules are tested on both
engines; replication itself needs PostgreSQL (workers refuse SQLite)."""

from __future__ import annotations

import secrets
import socket
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from homeserver.app import Homeserver, build_homeserver
from homeserver.config.loader import ConfigError
from homeserver.config.workers import select_worker
from homeserver.notifier import Notifier
from homeserver.replication import CATCH_UP_INTERVAL_S
from homeserver.replication.notifier import ReplicatingNotifier
from homeserver.replication.routing import served_by_client_worker
from tests.harness import HomeserverTestCase, Response, make_config, test_engine

REDIS = ("127.0.0.1", 6379)
V3 = "/_matrix/client/v3"


def redis_reachable() -> str | None:
    """None when Redis answers PING, else why not."""
    try:
        with socket.create_connection(REDIS, timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                return "Redis did not answer PING"
    except OSError as e:
        return f"Redis not reachable at {REDIS[0]}:{REDIS[1]} ({e})"
    return None


def workers_overrides(prefix: str) -> dict[str, Any]:
    return {
        "redis": {"host": REDIS[0], "port": REDIS[1], "key_prefix": prefix},
        "workers": {"main": {"role": "main"},
                    "reader": {"role": "client", "listeners": [{"port": 0}]}},
    }


class MainAndReaderMixin:
    """For a HomeserverTestCase: A = the main process (``self.hs``) and B = a client
    worker named "reader" (``self.b``), sharing the test's PostgreSQL schema and Redis.
    Call :meth:`start_reader` after ``super().setUp()``."""

    async def start_reader(self) -> None:
        self.b: Homeserver = await build_homeserver(
            select_worker(self.config, "reader"), clock=self.clock)  # type: ignore[attr-defined]
        port = self.b.listen(reactor)[0]
        self.b_url = f"http://127.0.0.1:{port.getHost().port}"
        self.a_url = self.base_url  # type: ignore[attr-defined]
        # Cleanups run before tearDown: both servers stop before the schema is released.
        self.addCleanup(lambda: defer.ensureDeferred(self._stop_both()))  # type: ignore[attr-defined]
        ok = await wait_until(lambda: self.hs.replication.link.is_connected  # type: ignore[attr-defined]
                              and self.b.replication.link.is_connected)
        self.assertTrue(ok, "replication did not subscribe")  # type: ignore[attr-defined]

    async def _stop_both(self) -> None:
        await self.b.stop()
        await self.hs.stop()  # type: ignore[attr-defined]

    async def tearDown(self) -> None:
        await self._stop_both()
        await super().tearDown()  # type: ignore[misc]


def require_workers(engine: str | None) -> None:
    """Skip (with the reason) unless PostgreSQL is the engine and Redis answers."""
    if (engine or test_engine()) != "postgres":
        raise unittest.SkipTest("workers need PostgreSQL (run with PARLEY_TEST_DB=postgres)")
    why = redis_reachable()
    if why is not None:
        raise unittest.SkipTest(why)


async def wait_until(check: Any, timeout: float = 5.0) -> bool:
    """Poll ``check()`` (real time) until true or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await deferLater(reactor, 0.01)
    return bool(check())


class WorkersConfigTest(unittest.TestCase):
    """The config section and the route rules (no database needed: both engines)."""

    def test_no_workers_is_one_process(self) -> None:
        config, _ = make_config("/tmp/unused", engine="sqlite")
        self.assertFalse(config.workers.enabled)
        self.assertTrue(config.workers.is_main)
        self.assertIs(select_worker(config, None), config)

    def test_workers_need_redis_and_postgres(self) -> None:
        workers = {"reader": {"role": "client"}}
        with self.assertRaisesRegex(ConfigError, "needs database.engine 'postgres'"):
            make_config("/tmp/unused", engine="sqlite", workers=workers, redis={})
        with self.assertRaisesRegex(ConfigError, "needs a 'redis' section"):
            make_config("/tmp/unused", engine="postgres", workers=workers)

    def test_bad_sections_refused(self) -> None:
        for workers, message in [
            ({"reader": {"role": "sender"}}, "invalid config"),
            ({"Bad Name": {"role": "client"}}, "invalid config"),
            ({"a": {"role": "main"}, "b": {"role": "main"}}, "only one worker"),
            ({"r": {"role": "client", "listeners": [{"port": 1, "resources": ["federation"]}]}},
             "no federation"),
        ]:
            with self.assertRaisesRegex(ConfigError, message):
                make_config("/tmp/unused", engine="postgres", workers=workers, redis={})

    def test_select_worker(self) -> None:
        config, _ = make_config("/tmp/unused", engine="postgres", redis={},
                                workers={"reader": {"role": "client",
                                                    "listeners": [{"port": 8090}]}})
        self.assertTrue(config.workers.enabled)
        self.assertEqual((config.workers.instance, config.workers.role), ("main", "main"))
        worker = select_worker(config, "reader")
        self.assertEqual((worker.workers.instance, worker.workers.role), ("reader", "client"))
        self.assertFalse(worker.workers.is_main)
        self.assertEqual([li.port for li in worker.listeners], [8090])
        self.assertEqual(worker.listeners[0].resources, ["client"])
        with self.assertRaisesRegex(ConfigError, "no such worker.*reader"):
            select_worker(config, "writer")
        with self.assertRaisesRegex(ConfigError, "invalid worker name"):
            select_worker(config, "../x")

    def test_cli_unknown_worker(self) -> None:
        """``parley run --worker NAME`` refuses a name the config does not have, before
        listening or touching the database."""
        import contextlib
        import io
        import os
        import shutil
        import tempfile

        import yaml

        from homeserver.cli import main
        from tests.harness import _test_key

        tmp = tempfile.mkdtemp(prefix="parley-workers-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "parley.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump({
                "server_name": "test.local", "data_dir": tmp,
                "database": {"engine": "postgres", "host": "127.0.0.1"},
                "auth": {"signing_keys": [{"kid": "k1", "algorithm": "EdDSA",
                                           "key": _test_key()}]},
                "redis": {}, "workers": {"reader": {"role": "client"}}}, f)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["run", "-c", path, "--worker", "writer"])
        self.assertEqual(code, 1)
        self.assertIn("--worker writer: no such worker in 'workers' (reader)", err.getvalue())

    def test_route_rules(self) -> None:
        reads = [("GET", "/_matrix/client/v3/sync"),
                 ("GET", "/_matrix/client/v3/rooms/{roomId}/messages"),
                 ("GET", "/_matrix/client/v3/profile/{userId}"),
                 ("POST", "/_matrix/client/v3/keys/query"),
                 ("POST", "/_matrix/client/r0/search"),
                 ("GET", "/health"), ("GET", "/.well-known/matrix/client")]
        writes = [("PUT", "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"),
                  ("POST", "/_matrix/client/v3/login"),
                  ("POST", "/_matrix/client/v3/logout"),
                  ("POST", "/_matrix/client/v3/keys/claim"),
                  ("POST", "/_matrix/client/v3/user/{userId}/filter"),
                  ("GET", "/_matrix/client/v1/media/download/{serverName}/{mediaId}"),
                  ("GET", "/_synapse/admin/v2/users/{userId}"),
                  ("GET", "/_matrix/federation/v1/version"),
                  ("GET", "/_matrix/media/v3/config")]
        for method, template in reads:
            self.assertTrue(served_by_client_worker(method, template), template)
        for method, template in writes:
            self.assertFalse(served_by_client_worker(method, template), template)


class SingleProcessTest(HomeserverTestCase):
    """Without workers nothing replicates and the notifier is the in-process one."""

    async def test_no_replication(self) -> None:
        self.assertIsNone(self.hs.replication)
        self.assertIs(type(self.hs.notifier), Notifier)
        send = await self.request("GET", f"{V3}/rooms/!x:test.local/messages")
        self.assertEqual(send.code, 401)  # routes are all there (no refusal)


class ReplicationTest(MainAndReaderMixin, HomeserverTestCase):
    """A = the main process (self.hs), B = the client worker (self.b)."""

    timeout = 60

    def config_overrides(self) -> dict[str, Any]:
        # Presence off: a worker's sync would otherwise mark the user online on main a
        # moment later, which wakes the long-polls these tests count (presence from a
        # worker's syncs: tests/rest/test_worker_presence.py).
        return {**workers_overrides(f"t{secrets.token_hex(6)}:"),
                "presence": {"enabled": False}}

    async def setUp(self) -> None:  # type: ignore[override]
        require_workers(self.engine)
        await super().setUp()
        await self.start_reader()  # both subscribed before anything happens

    async def on_b(self, method: str, path: str, body: Any = None,
                   token: str | None = None) -> Response:
        # request() reads base_url before its first await: switch it only for that long.
        self.base_url = self.b_url
        try:
            d = defer.ensureDeferred(self.request(method, path, body, token))
        finally:
            self.base_url = self.a_url
        return await d

    async def _room(self) -> tuple[str, str]:
        token = (await self.register("alice"))["access_token"]
        created = await self.request("POST", f"{V3}/createRoom", {}, token)
        self.assertEqual(created.code, 200, created)
        return token, created.json["room_id"]

    async def _send(self, token: str, room_id: str, text: str) -> str:
        resp = await self.request("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/"
                                  f"t{secrets.token_hex(4)}",
                                  {"msgtype": "m.text", "body": text}, token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["event_id"]

    def _timeline_ids(self, sync: Response, room_id: str) -> list[str]:
        room = sync.json["rooms"]["join"].get(room_id, {})
        return [e["event_id"] for e in room.get("timeline", {}).get("events", [])]

    async def test_roles_built(self) -> None:
        self.assertIsInstance(self.hs.notifier, ReplicatingNotifier)
        self.assertTrue(self.hs.replication.is_writer)
        self.assertFalse(self.b.replication.is_writer)
        self.assertIsNone(self.b.federation)
        self.assertIsNone(self.b.pushers)
        sample = self.b.metrics_registry.get_sample_value
        self.assertEqual(sample("parley_replication_connected"), 1.0)
        self.assertGreaterEqual(sample("parley_replication_catch_ups"), 1.0)
        self.assertEqual(sample("parley_replication_publish_failures"), 0.0)

    async def test_malformed_messages_are_ignored(self) -> None:
        before = self.b.replication.streams.snapshot()
        link = self.b.replication.link
        for raw in ("not json", "[1]", '{"k": "wake"}',
                    '{"k": "wake", "i": "main", "p": {"events": "x", "receipts": -1,'
                    ' "presence": 1e9, "to_device": true, "device_lists": 99999999999999999999},'
                    ' "u": 5, "r": [1, 2]}',
                    '{"k": "wake", "i": "reader", "p": {"events": 999999}}',  # not the writer
                    '{"k": "revoke", "i": "main", "s": "abc"}',
                    '{"k": "typing", "i": "main", "r": 5, "p": "x"}',
                    '{"k": "push_rules", "i": "main", "c": [[1], "x", [1, 2]]}',
                    "x" * (2 << 20)):
            link.received(raw)
        self.assertEqual(self.b.replication.streams.snapshot(), before)

    async def test_message_on_main_wakes_sync_on_worker(self) -> None:
        token, room_id = await self._room()
        first = await self.on_b("GET", f"{V3}/sync", token=token)
        self.assertEqual(first.code, 200, first)
        self.assertIn(room_id, first.json["rooms"]["join"])  # the room is visible on B
        since = first.json["next_batch"]
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={since}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        event_id = await self._send(token, room_id, "hello from main")
        started = time.monotonic()
        woken = await poll
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(woken.code, 200, woken)
        self.assertIn(event_id, self._timeline_ids(woken, room_id))
        # B never serves a position past A's.
        b_token = self.b.replication.streams.snapshot()
        a_token = self.hs.replication.streams.snapshot()
        self.assertLessEqual(b_token["events"], a_token["events"])
        # Nothing is repeated: the next sync from there has no timeline for the room.
        again = await self.on_b("GET", f"{V3}/sync?timeout=0&since={woken.json['next_batch']}",
                                token=token)
        self.assertNotIn(event_id, self._timeline_ids(again, room_id))

    async def test_account_data_on_main_reaches_worker(self) -> None:
        token, _room_id = await self._room()
        first = await self.on_b("GET", f"{V3}/sync", token=token)
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={first.json['next_batch']}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        put = await self.request("PUT", f"{V3}/user/@alice:test.local/account_data/org.x",
                                 {"v": 1}, token)
        self.assertEqual(put.code, 200, put)
        woken = await poll
        types = [e["type"] for e in woken.json.get("account_data", {}).get("events", [])]
        self.assertIn("org.x", types)

    async def test_typing_on_main_reaches_worker(self) -> None:
        token, room_id = await self._room()
        first = await self.on_b("GET", f"{V3}/sync", token=token)
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={first.json['next_batch']}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        put = await self.request("PUT", f"{V3}/rooms/{room_id}/typing/@alice:test.local",
                                 {"typing": True, "timeout": 10000}, token)
        self.assertEqual(put.code, 200, put)
        woken = await poll
        ephemeral = woken.json["rooms"]["join"][room_id]["ephemeral"]["events"]
        self.assertIn({"type": "m.typing", "content": {"user_ids": ["@alice:test.local"]}},
                      ephemeral)
        # The flag expires on main; the worker's next sync says nobody is typing.
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={woken.json['next_batch']}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        self.advance(11)
        woken = await poll
        ephemeral = woken.json["rooms"]["join"][room_id]["ephemeral"]["events"]
        self.assertIn({"type": "m.typing", "content": {"user_ids": []}}, ephemeral)

    async def test_logout_on_main_refuses_token_on_worker(self) -> None:
        token = (await self.register("bob"))["access_token"]
        who = await self.on_b("GET", f"{V3}/account/whoami", token=token)
        self.assertEqual(who.code, 200, who)  # B now caches the session as active
        out = await self.request("POST", f"{V3}/logout", {}, token)
        self.assertEqual(out.code, 200, out)
        started = time.monotonic()
        refused = False
        while time.monotonic() - started < 1.0:  # the bound: at once, well under 1 s
            who = await self.on_b("GET", f"{V3}/account/whoami", token=token)
            if who.code == 401:
                refused = True
                break
            await deferLater(reactor, 0.01)
        self.assertTrue(refused, "the logged-out token still works on the worker")
        self.assertMatrixError(who, 401, "M_UNKNOWN_TOKEN")

    async def test_worker_catches_up_after_redis_disconnect(self) -> None:
        token, room_id = await self._room()
        first = await self.on_b("GET", f"{V3}/sync", token=token)
        since = first.json["next_batch"]
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={since}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        # Only the reconnect may catch B up here: stop its periodic catch-up.
        self.b.replication._loop.stop()  # noqa: SLF001
        link = self.b.replication.link
        link.pause()
        self.assertTrue(await wait_until(lambda: not link.is_connected))
        sent = [await self._send(token, room_id, f"while away {i}") for i in range(3)]
        # A has recorded its positions; B has not moved (it missed the wake-ups).
        await self.hs.replication.flush_positions()
        await deferLater(reactor, 0.2)
        self.assertFalse(poll.called)
        self.assertLess(self.b.replication.streams.snapshot()["events"],
                        self.hs.replication.streams.snapshot()["events"])
        catch_ups = self.b.replication.catch_ups
        link.resume()
        woken = await poll
        self.assertGreater(self.b.replication.catch_ups, catch_ups)
        self.assertTrue(link.is_connected)
        self.assertEqual(woken.code, 200, woken)
        # Every event sent meanwhile, none skipped, in order.
        self.assertEqual(self._timeline_ids(woken, room_id), sent)
        # And after the catch-up live wake-ups flow again.
        since = woken.json["next_batch"]
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={since}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        event_id = await self._send(token, room_id, "back")
        self.assertEqual(self._timeline_ids(await poll, room_id), [event_id])

    async def test_worker_catches_up_when_main_cannot_publish(self) -> None:
        """Main's wake-ups lost (its Redis publishing down): B still answers within the
        periodic catch-up (CATCH_UP_INTERVAL_S), from the positions main recorded."""
        token, room_id = await self._room()
        first = await self.on_b("GET", f"{V3}/sync", token=token)
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={first.json['next_batch']}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        link, self.hs.replication.link = self.hs.replication.link, None  # publishes nothing
        try:
            event_id = await self._send(token, room_id, "unpublished")
            started = time.monotonic()
            woken = await poll
        finally:
            self.hs.replication.link = link
        self.assertLess(time.monotonic() - started, CATCH_UP_INTERVAL_S + 2)
        self.assertEqual(self._timeline_ids(woken, room_id), [event_id])

    async def test_worker_refuses_writes_and_serves_reads(self) -> None:
        token, room_id = await self._room()
        send = await self.on_b("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t1",
                               {"msgtype": "m.text", "body": "x"}, token)
        self.assertMatrixError(send, 404, "M_UNRECOGNIZED")
        self.assertIn("main process", send.json["error"])
        login = await self.on_b("POST", f"{V3}/login", {"type": "m.login.password"})
        self.assertMatrixError(login, 404, "M_UNRECOGNIZED")
        for path in (f"{V3}/rooms/{room_id}/state", f"{V3}/rooms/{room_id}/messages?dir=b",
                     f"{V3}/profile/@alice:test.local", f"{V3}/joined_rooms"):
            resp = await self.on_b("GET", path, token=token)
            self.assertEqual(resp.code, 200, (path, resp))
        keys = await self.on_b("POST", f"{V3}/keys/query",
                               {"device_keys": {"@alice:test.local": []}}, token)
        self.assertEqual(keys.code, 200, keys)
        versions = await self.on_b("GET", "/_matrix/client/versions")
        self.assertEqual(versions.code, 200)

    async def test_state_change_on_main_seen_by_worker(self) -> None:
        """The worker's cached room state is dropped when the room moves on A."""
        token, room_id = await self._room()
        name = await self.on_b("GET", f"{V3}/rooms/{room_id}/state/m.room.name/", token=token)
        self.assertEqual(name.code, 404)
        first = await self.on_b("GET", f"{V3}/sync", token=token)
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{V3}/sync?timeout=30000&since={first.json['next_batch']}", token=token))
        self.assertTrue(await wait_until(lambda: self.b.notifier.waiting_count() == 1))
        put = await self.request("PUT", f"{V3}/rooms/{room_id}/state/m.room.name/",
                                 {"name": "Renamed"}, token)
        self.assertEqual(put.code, 200, put)
        await poll
        name = await self.on_b("GET", f"{V3}/rooms/{room_id}/state/m.room.name/", token=token)
        self.assertEqual(name.code, 200, name)
        self.assertEqual(name.json, {"name": "Renamed"})
