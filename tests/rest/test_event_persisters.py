"""Multi-writer stream positions (issue 18, event persisters): two writers taking
positions from the database's one events sequence, interleaving; a slow writer's gap
holds every reader back; an idle writer never holds the others back. The writers'
"published" positions are delivered by a direct call here (Redis in production).
Both engines: the positions come from the events store's real allocator."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from homeserver.http.errors import MatrixError
from homeserver.replication.multi_writer import MultiWriterPositions, writer_for_room
from storage.stores.events import EventStore
from tests.harness import DatabaseTestCase, HomeserverTestCase

V3 = "/_matrix/client/v3"

WRITERS = ("p1", "p2")


class Deployment:
    """Two writers and a reader of one stream; :meth:`publish` plays Redis."""

    def __init__(self, allocate: Any) -> None:
        self.p1 = MultiWriterPositions(allocate, WRITERS, "p1")
        self.p2 = MultiWriterPositions(allocate, WRITERS, "p2")
        self.reader = MultiWriterPositions(allocate, WRITERS, None)
        self.published = 0

    def everyone(self) -> list[MultiWriterPositions]:
        return [self.p1, self.p2, self.reader]

    def publish(self, writer: MultiWriterPositions) -> None:
        """``writer``'s position reaches every other process; an idle writer whose
        claim rose republishes (as replication does)."""
        self.published += 1
        position = writer.own_position()
        for other in self.everyone():
            if other is not writer and other.advance_writer(writer.instance or "", position):
                self.publish(other)


class MultiWriterTest(DatabaseTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        self.events = EventStore(self.db)
        self.d = Deployment(self.events.allocate_stream_ordering)

    async def _write(self, writer: MultiWriterPositions) -> int:
        async with writer.write() as position:
            pass
        self.d.publish(writer)
        return position

    async def test_two_writers_interleaving(self) -> None:
        d = self.d
        seen: list[int] = []
        last = 0
        for i in range(10):
            position = await self._write(d.p1 if i % 2 == 0 else d.p2)
            seen.append(position)
            # Everything persisted is readable everywhere, once published.
            for process in d.everyone():
                self.assertEqual(process.current(), position)
            self.assertGreater(position, last)
            last = position
        self.assertEqual(len(set(seen)), 10)  # one shared sequence: no position twice

    async def test_slow_writer_gap_holds_readers_back(self) -> None:
        d = self.d
        base = await self._write(d.p1)
        slow = d.p1.write()
        gap = await slow.__aenter__()  # p1 holds a position in flight
        d.publish(d.p1)
        later = await self._write(d.p2)  # p2 persists a higher one meanwhile
        self.assertGreater(later, gap)
        woken: list[int] = []
        d.reader.notify_when_readable(later, lambda: woken.append(later))
        # Nobody reads past the gap: not the reader, not either writer.
        for process in d.everyone():
            self.assertEqual(process.current(), gap - 1)
            self.assertGreaterEqual(process.current(), base)
        self.assertEqual(woken, [])
        await slow.__aexit__(None, None, None)
        d.publish(d.p1)
        for process in d.everyone():
            self.assertEqual(process.current(), later)
        self.assertEqual(woken, [later])

    async def test_idle_writer_does_not_hold_others_back(self) -> None:
        d = self.d
        for _ in range(3):
            last = await self._write(d.p1)
        # p2 wrote nothing, yet its claim followed p1's (it republished).
        self.assertEqual(d.p2.own_position(), last)
        self.assertEqual(d.reader.writer_positions(), {"p1": last, "p2": last})
        self.assertEqual(d.reader.current(), last)

    async def test_allocation_under_way_is_not_idle(self) -> None:
        """While a writer waits for the sequence, its claim does not rise: the position
        on its way may be below what others publish meanwhile."""
        d = self.d
        await self._write(d.p1)
        release: defer.Deferred[None] = defer.Deferred()
        allocated: defer.Deferred[None] = defer.Deferred()
        real = d.p2._allocate  # noqa: SLF001

        async def slow_allocate() -> int:
            position = await real()
            allocated.callback(None)
            await release
            return position

        d.p2._allocate = slow_allocate  # noqa: SLF001
        writing = defer.ensureDeferred(self._write(d.p2))
        await allocated  # p2's position is drawn before p1's (no race on the pool)
        claim = d.p2.own_position()
        later = await self._write(d.p1)  # allocated after p2's, persisted first
        self.assertEqual(d.p2.own_position(), claim)
        self.assertLess(d.reader.current(), later)
        release.callback(None)
        p2_position = await writing
        self.assertLess(p2_position, later)
        self.assertEqual(d.reader.current(), later)

    async def test_batch_of_one_writer_holds_readers_back(self) -> None:
        """A group commit's positions come from the shared sequence in one round trip
        and stay in flight together: nobody reads past the batch until it ends."""
        d = Deployment(self.events.allocate_stream_ordering)
        d.p1 = MultiWriterPositions(self.events.allocate_stream_ordering, WRITERS, "p1",
                                    self.events.allocate_stream_orderings)
        base = await self._write_in(d, d.p2)
        written: list[int] = []
        d.p1.on_written = lambda: written.append(1)
        batch = d.p1.write_many(3)
        positions = await batch.__aenter__()
        self.assertEqual(positions, sorted(positions))
        self.assertEqual(len(set(positions)), 3)
        self.assertGreater(positions[0], base)
        d.publish(d.p1)
        later = await self._write_in(d, d.p2)
        self.assertGreater(later, positions[-1])
        for process in d.everyone():
            self.assertEqual(process.current(), positions[0] - 1)
        await batch.__aexit__(None, None, None)
        self.assertEqual(written, [1])
        d.publish(d.p1)
        for process in d.everyone():
            self.assertEqual(process.current(), later)
        with self.assertRaises(ValueError):
            async with d.reader.write_many(1):
                pass

    async def test_store_allocates_ascending_unique_positions(self) -> None:
        one = await self.events.allocate_stream_ordering()
        many = await self.events.allocate_stream_orderings(5)
        self.assertEqual(many, sorted(many))
        self.assertEqual(len(set(many)), 5)
        self.assertGreater(many[0], one)
        self.assertGreater(await self.events.allocate_stream_ordering(), many[-1])
        self.assertEqual(await self.events.allocate_stream_orderings(0), [])

    async def _write_in(self, d: Deployment, writer: MultiWriterPositions) -> int:
        async with writer.write() as position:
            pass
        d.publish(writer)
        return position

    async def test_reader_floor_and_roles(self) -> None:
        d = self.d
        d.reader.start_at(41)
        self.assertEqual(d.reader.current(), 41)
        d.reader.advance_writer("p1", 50)
        self.assertEqual(d.reader.current(), 41)  # p2 has not said more
        self.assertFalse(d.reader.advance_writer("p1", 45))  # never backwards
        self.assertFalse(d.reader.advance_writer("stranger", 99))  # not a writer
        self.assertEqual(d.reader.writer_positions(), {"p1": 50, "p2": 41})
        with self.assertRaises(ValueError):
            d.reader.own_position()
        with self.assertRaises(ValueError):
            MultiWriterPositions(self.events.allocate_stream_ordering, [], None)


class ShardingTest(unittest.TestCase):
    def test_writer_for_room_is_stable_and_spread(self) -> None:
        rooms = [f"!room{i}:test.local" for i in range(400)]
        owners = [writer_for_room(r, WRITERS) for r in rooms]
        self.assertEqual(owners, [writer_for_room(r, list(WRITERS)) for r in rooms])
        self.assertEqual(writer_for_room("!a:test.local", WRITERS),
                         writer_for_room("!a:test.local", WRITERS))
        share = owners.count("p1") / len(owners)
        self.assertTrue(0.4 < share < 0.6, share)
        self.assertEqual({writer_for_room(r, ["only"]) for r in rooms}, {"only"})
        # Pinned values: a change of the hash would move every room to another writer.
        self.assertEqual(writer_for_room("!abc:example.org", ["p1", "p2", "p3"]),
                         "p3")
        with self.assertRaises(ValueError):
            writer_for_room("!a:test.local", [])


# ---- config and the wired deployment (main + two event persisters + a client reader)

def _persister_overrides(prefix: str, ports: dict[str, int]) -> dict[str, Any]:
    from tests.rest.test_replication import REDIS
    from tests.rest.test_write_forwarding import SECRET

    def rep(name: str) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": ports[name]}

    def listeners(name: str) -> list[dict[str, Any]]:
        return [{"port": 0, "bind_addresses": ["127.0.0.1"]},
                {"port": ports[name], "bind_addresses": ["127.0.0.1"],
                 "resources": ["replication"]}]

    return {
        # Five processes connect in one reactor: on a loaded CI machine the default
        # 0.5 s for a Redis reply was once missed at connection (SELECT), failing setUp.
        "redis": {"host": REDIS[0], "port": REDIS[1], "key_prefix": prefix, "timeout": "5s"},
        "listeners": listeners("main"),
        "stream_writers": {"events": list(WRITERS)},
        "workers": {
            "main": {"role": "main", "replication": {**rep("main"), "secret": SECRET}},
            "p1": {"role": "event_persister", "listeners": listeners("p1"),
                   "replication": rep("p1")},
            "p2": {"role": "event_persister", "listeners": listeners("p2"),
                   "replication": rep("p2")},
            "reader": {"role": "client", "listeners": [{"port": 0}]},
        },
    }


class StreamWritersConfigTest(unittest.TestCase):
    def _config(self, **overrides: Any) -> Any:
        from tests.harness import make_config

        base = _persister_overrides("x:", {"main": 9001, "p1": 9002, "p2": 9003})
        base.pop("listeners")
        base.update(overrides)
        return make_config("/tmp/unused", engine="postgres", **base)[0]

    def test_writers_configured(self) -> None:
        from homeserver.config.workers import select_worker

        wc = self._config().workers
        self.assertEqual(wc.event_writers, WRITERS)
        p1 = select_worker(self._config(), "p1").workers
        self.assertEqual((p1.instance, p1.role), ("p1", "event_persister"))
        # Without the key, the event_persister workers are the writers (sorted).
        self.assertEqual(self._config(stream_writers={}).workers.event_writers, WRITERS)

    def test_main_alone_is_single_writer(self) -> None:
        from tests.harness import make_config

        config = make_config("/tmp/unused", engine="postgres", redis={},
                             workers={"main": {"role": "main"}},
                             stream_writers={"events": ["main"]})[0]
        self.assertEqual(config.workers.event_writers, ())

    def test_bad_sections_refused(self) -> None:
        from homeserver.config.loader import ConfigError

        workers = _persister_overrides("x:", {"main": 1, "p1": 2, "p2": 3})["workers"]
        no_rep = {**workers, "p2": {"role": "event_persister"}}
        no_secret = {**workers, "main": {"role": "main"}}
        for overrides, message in [
            ({"stream_writers": {"events": ["p1", "nobody"]}}, "no worker named"),
            ({"stream_writers": {"events": ["p1", "reader"]}}, "has role 'client'"),
            ({"stream_writers": {"events": ["p1"]}}, "p2 are not listed"),
            ({"stream_writers": {"events": []}}, "invalid config"),
            ({"workers": no_rep}, "needs its replication endpoint"),
            ({"workers": no_secret}, "deployment's secret"),
        ]:
            with self.assertRaisesRegex(ConfigError, message):
                self._config(**overrides)


class PersisterDeploymentCase(HomeserverTestCase):
    """main (self.hs), event persisters p1 and p2, a client worker (reader); one
    PostgreSQL schema and the machine's Redis. No tests of its own."""

    timeout = 90

    def config_overrides(self) -> dict[str, Any]:
        import secrets

        from tests.harness import free_port

        self.ports = {name: free_port() for name in ("main", "p1", "p2")}
        return _persister_overrides(f"t{secrets.token_hex(6)}:", self.ports)

    async def setUp(self) -> None:  # type: ignore[override]
        from twisted.internet import reactor

        from homeserver.app import build_homeserver
        from homeserver.config.workers import select_worker
        from tests.harness import test_engine
        from tests.rest.test_replication import redis_reachable, wait_until

        if (self.engine or test_engine()) != "postgres":
            raise unittest.SkipTest("workers need PostgreSQL (run with PARLEY_TEST_DB=postgres)")
        why = redis_reachable()
        if why is not None:
            raise unittest.SkipTest(why)
        await super().setUp()
        self.others: dict[str, Any] = {}
        self.urls = {"main": self.base_url}
        # Registered first: a server built before a failure later in setUp still stops.
        self.addCleanup(lambda: defer.ensureDeferred(self._stop_all()))
        for name in ("p1", "p2", "reader"):
            hs = await build_homeserver(select_worker(self.config, name), clock=self.clock)
            self.others[name] = hs
            port = hs.listen(reactor)[0]
            self.urls[name] = f"http://127.0.0.1:{port.getHost().port}"
        everyone = [self.hs, *self.others.values()]
        ok = await wait_until(lambda: all(h.replication.link.is_connected for h in everyone))
        self.assertTrue(ok, "replication did not subscribe")

    async def _stop_all(self) -> None:
        for hs in self.others.values():
            await hs.stop()
        await self.hs.stop()

    async def tearDown(self) -> None:  # type: ignore[override]
        await self._stop_all()
        await super().tearDown()

    async def on(self, name: str, method: str, path: str, body: Any = None,
                 token: str | None = None) -> Any:
        main = self.base_url
        self.base_url = self.urls[name]
        try:
            d = defer.ensureDeferred(self.request(method, path, body, token))
        finally:
            self.base_url = main
        return await d

    async def _rooms_per_writer(self, token: str, body: dict[str, Any] | None = None
                                ) -> dict[str, str]:
        """A room written by each persister (createRoom through main goes to either)."""
        out: dict[str, str] = {}
        for _ in range(30):
            created = await self.request("POST", f"{V3}/createRoom", body or {}, token)
            self.assertEqual(created.code, 200, created)
            room_id = created.json["room_id"]
            out.setdefault(writer_for_room(room_id, WRITERS), room_id)
            if len(out) == len(WRITERS):
                return out
        self.fail("createRoom never reached both writers")


class EventPersistersTest(PersisterDeploymentCase):

    async def test_sync_on_reader_across_both_writers(self) -> None:
        import secrets

        from tests.rest.test_replication import wait_until

        token = (await self.register("alice"))["access_token"]
        rooms = await self._rooms_per_writer(token)
        self.assertIsInstance(self.hs.replication.events, MultiWriterPositions)
        first = await self.on("reader", "GET", f"{V3}/sync", token=token)
        self.assertEqual(first.code, 200, first)
        since = first.json["next_batch"]
        sent: dict[str, list[str]] = {r: [] for r in rooms.values()}
        seen: dict[str, list[str]] = {r: [] for r in rooms.values()}
        for i in range(8):
            room_id = rooms["p1" if i % 2 == 0 else "p2"]
            # Sent through every kind of process: all reach the room's writer.
            via = ("main", "reader", "p1", "p2")[i % 4]
            resp = await self.on(via, "PUT", f"{V3}/rooms/{room_id}/send/m.room.message/"
                                 f"t{secrets.token_hex(4)}", {"msgtype": "m.text",
                                                              "body": f"m{i}"}, token)
            self.assertEqual(resp.code, 200, resp)
            sent[room_id].append(resp.json["event_id"])
            if i % 3 == 2:  # incremental syncs on the reader along the way
                poll = await self.on("reader", "GET", f"{V3}/sync?timeout=5000&since={since}",
                                     token=token)
                self.assertEqual(poll.code, 200, poll)
                since = self._collect(poll, seen)
        done = await wait_until(lambda: self.others["reader"].replication.events.current()
                                >= max(self.hs.replication.events.writer_positions().values()))
        self.assertTrue(done)
        for _ in range(5):
            if all(len(seen[r]) == len(sent[r]) for r in sent):
                break
            poll = await self.on("reader", "GET", f"{V3}/sync?timeout=2000&since={since}",
                                 token=token)
            since = self._collect(poll, seen)
        self.assertEqual(seen, sent)  # in order, nothing repeated or skipped

    @staticmethod
    def _collect(sync: Any, seen: dict[str, list[str]]) -> str:
        for room_id, room in sync.json.get("rooms", {}).get("join", {}).items():
            if room_id in seen:
                seen[room_id] += [e["event_id"] for e in room.get("timeline", {})
                                  .get("events", []) if e["type"] == "m.room.message"]
        return str(sync.json["next_batch"])

    async def test_send_through_main_lands_via_owner(self) -> None:
        import secrets

        token = (await self.register("bob"))["access_token"]
        rooms = await self._rooms_per_writer(token)
        written: dict[str, list[str]] = {"p1": [], "p2": []}
        for name in written:
            self.others[name].fanout.subscribe(
                "test", lambda rec, name=name: written[name].append(rec.event.event_id))
        resp = await self.request("PUT", f"{V3}/rooms/{rooms['p1']}/send/m.room.message/"
                                  f"t{secrets.token_hex(4)}", {"msgtype": "m.text",
                                                               "body": "hi"}, token)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(written, {"p1": [resp.json["event_id"]], "p2": []})
        # main writes no room of a persister (the queue lock is per process).
        with self.assertRaises(MatrixError) as caught:
            async with self.hs.replication.persister.room_queue(rooms["p1"]):
                pass
        self.assertEqual(caught.exception.code, 503)
