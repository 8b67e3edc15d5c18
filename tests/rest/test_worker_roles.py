"""Worker roles beyond ``client`` (issue 18): ``pusher``, ``federation_sender``, ``media``,
``background`` (and ``appservice``'s config). Config rules and the shard hash need no
database; the processes themselves run as several homeservers in this test process
sharing one PostgreSQL schema and the machine's Redis (as tests/rest/test_replication.py):
a push reaches a fake gateway exactly once, from the pusher worker; two federation sender
shards split the destinations; the background worker runs the erasure purge main queued;
the media worker serves media that the other processes refuse."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

import tests.harness as harness
from homeserver.app import Homeserver, build_homeserver
from homeserver.config.loader import ConfigError
from homeserver.config.workers import select_worker
from homeserver.replication.roles import (
    RemoteDestinationQueue,
    RoleWiring,
    is_media_route,
    shard_index,
)
from tests.harness import HomeserverTestCase, Response, make_config, test_engine
from tests.rest.test_federation_keys import StaticDiscovery, federation_section, for_tests
from tests.rest.test_federation_sender import add_remote_member
from tests.rest.test_push_gateway import NOTIFY, Gateway
from tests.rest.test_replication import REDIS, redis_reachable, wait_until

V3 = "/_matrix/client/v3"
UPLOAD = "/_matrix/media/v3/upload"
AUTHED_MEDIA = "/_matrix/client/v1/media"
SEND_PREFIX = b"/_matrix/federation/v1/send/"


def _workers(**workers: str) -> dict[str, Any]:
    return {"main": {"role": "main"},
            **{name: {"role": role, "listeners": [{"port": 0}]}
               for name, role in workers.items()}}


def _config(workers: dict[str, Any]) -> Any:
    config, _ = make_config("/tmp/unused", engine="postgres", redis={}, workers=workers)
    return config


class RolesConfigTest(unittest.TestCase):
    """The roles in the ``workers`` section (no database: both engines)."""

    def test_roles_accepted_and_selected(self) -> None:
        config = _config(_workers(fs1="federation_sender", fs2="federation_sender",
                                  push1="pusher", as1="appservice", media1="media",
                                  bg="background"))
        self.assertEqual(config.workers.instances_of("federation_sender"), ("fs1", "fs2"))
        # The main process hands each kind of work with a worker to that worker.
        for role in ("federation_sender", "pusher", "appservice", "media", "background"):
            self.assertFalse(config.workers.runs(role), role)
        fs2 = select_worker(config, "fs2")
        self.assertEqual((fs2.workers.instance, fs2.workers.role), ("fs2", "federation_sender"))
        self.assertTrue(fs2.workers.runs("federation_sender"))
        self.assertFalse(fs2.workers.runs("pusher"))
        self.assertFalse(fs2.workers.runs("background"))

    def test_main_runs_roles_without_workers(self) -> None:
        config = _config(_workers(reader="client"))
        for role in ("federation_sender", "pusher", "appservice", "media", "background"):
            self.assertTrue(config.workers.runs(role), role)
        reader = select_worker(config, "reader")
        self.assertFalse(reader.workers.runs("pusher"))
        single, _ = make_config("/tmp/unused", engine="sqlite")
        self.assertTrue(single.workers.runs("background"))

    def test_bad_sections_refused(self) -> None:
        for workers, message in [
            ({"x": {"role": "push"}}, "invalid config"),
            ({"bg1": {"role": "background"}, "bg2": {"role": "background"}},
             "only one worker may have role 'background'"),
            ({"p": {"role": "pusher", "listeners": [{"port": 1, "resources": ["federation"]}]}},
             "a pusher worker serves no federation"),
            ({"f": {"role": "federation_sender",
                    "listeners": [{"port": 1, "resources": ["federation"]}]}},
             "serves no federation"),
        ]:
            with self.assertRaisesRegex(ConfigError, message):
                make_config("/tmp/unused", engine="postgres", workers=workers, redis={})
        # A media worker may serve federation media.
        _config({"m": {"role": "media", "listeners": [{"port": 1,
                                                        "resources": ["client", "federation"]}]}})

    def test_workers_refused_on_sqlite(self) -> None:
        with self.assertRaisesRegex(ConfigError, "needs database.engine 'postgres'"):
            make_config("/tmp/unused", engine="sqlite", redis={},
                        workers={"p": {"role": "pusher"}})


class ShardTest(unittest.TestCase):
    def test_shard_index_is_stable_and_spread(self) -> None:
        # A fixed value: the same in every process and Python run (not hash()).
        self.assertEqual(shard_index("matrix.org", 2), shard_index("matrix.org", 2))
        self.assertEqual([shard_index(f"s{i}.example", 1) for i in range(5)], [0] * 5)
        counts = Counter(shard_index(f"server{i}.example", 3) for i in range(3000))
        self.assertEqual(set(counts), {0, 1, 2})
        self.assertTrue(all(800 < n < 1200 for n in counts.values()), counts)

    def test_owners_are_disjoint_and_complete(self) -> None:
        config = _config(_workers(fs1="federation_sender", fs2="federation_sender"))
        wirings = [RoleWiring(select_worker(config, n), reactor) for n in ("fs1", "fs2")]
        main = RoleWiring(config, reactor)
        for i in range(200):
            destination = f"d{i}.example"
            owners = [w.owns("federation_sender", destination) for w in wirings]
            self.assertEqual(sum(owners), 1, destination)
            self.assertFalse(main.owns("federation_sender", destination))

    def test_media_routes(self) -> None:
        self.assertTrue(is_media_route("/_matrix/media/v3/upload"))
        self.assertTrue(is_media_route("/_matrix/client/v1/media/download/{s}/{m}"))
        self.assertTrue(is_media_route("/_matrix/federation/v1/media/download/{mediaId}"))
        self.assertFalse(is_media_route("/_matrix/client/v3/sync"))


class _WorkersCase(HomeserverTestCase):
    """The main process (self.hs) and the workers of ``roles`` ({name: role})."""

    timeout = 60
    roles: dict[str, str] = {}

    def config_overrides(self) -> dict[str, Any]:
        return {"redis": {"host": REDIS[0], "port": REDIS[1],
                          "key_prefix": f"t{secrets.token_hex(6)}:"},
                "workers": _workers(**self.roles)}

    async def setUp(self) -> None:  # type: ignore[override]
        if (self.engine or test_engine()) != "postgres":
            raise unittest.SkipTest("workers need PostgreSQL (run with PARLEY_TEST_DB=postgres)")
        why = redis_reachable()
        if why is not None:
            raise unittest.SkipTest(why)
        await super().setUp()
        self.workers: dict[str, Homeserver] = {}
        self.urls: dict[str, str] = {"main": self.base_url}
        self.addCleanup(lambda: defer.ensureDeferred(self._stop_all()))
        for name in self.roles:
            await self.start_worker(name)
        ok = await wait_until(lambda: all(
            hs.replication.link.is_connected for hs in [self.hs, *self.workers.values()]))
        self.assertTrue(ok, "replication did not subscribe")

    async def start_worker(self, name: str) -> Homeserver:
        hs = await build_homeserver(select_worker(self.config, name), clock=self.clock)
        self.workers[name] = hs
        port = hs.listen(reactor)[0]
        self.urls[name] = f"http://127.0.0.1:{port.getHost().port}"
        return hs

    async def _stop_all(self) -> None:
        for hs in self.workers.values():
            await hs.stop()
        await self.hs.stop()

    async def tearDown(self) -> None:  # type: ignore[override]
        await self._stop_all()
        await super().tearDown()

    async def on(self, name: str, method: str, path: str, body: Any = None,
                 token: str | None = None, **kw: Any) -> Response:
        main_url = self.base_url
        self.base_url = self.urls[name]  # request() reads it before its first await
        try:
            d = defer.ensureDeferred(self.request(method, path, body, token, **kw))
        finally:
            self.base_url = main_url
        return await d

    async def room_with(self, owner: str, member: str) -> tuple[str, str, str]:
        """A room of ``owner`` that ``member`` joined: (owner token, member token, room)."""
        a = (await self.register(owner))["access_token"]
        b = (await self.register(member))["access_token"]
        created = await self.request("POST", f"{V3}/createRoom",
                                     {"preset": "private_chat",
                                      "invite": [f"@{member}:test.local"]}, a)
        self.assertEqual(created.code, 200, created)
        room_id = created.json["room_id"]
        joined = await self.request("POST", f"{V3}/join/{quote(room_id)}", {}, b)
        self.assertEqual(joined.code, 200, joined)
        return a, b, room_id

    async def send(self, token: str, room_id: str, text: str) -> str:
        resp = await self.request("PUT", f"{V3}/rooms/{quote(room_id)}/send/m.room.message/"
                                  f"t{secrets.token_hex(4)}",
                                  {"msgtype": "m.text", "body": text}, token)
        self.assertEqual(resp.code, 200, resp)
        return str(resp.json["event_id"])


class PusherMediaBackgroundTest(_WorkersCase):
    roles = {"pushw": "pusher", "mediaw": "media", "bgw": "background"}

    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(),
                "push": {"gateway_allowlist": ["127.0.0.1"], "timeout": 5},
                "gdpr": {"erasure_grace_period": "0"}}

    async def test_roles_built(self) -> None:
        self.assertIsNone(self.hs.pushers)  # the pusher worker pushes
        self.assertIsNotNone(self.workers["pushw"].pushers)
        self.assertIsNone(self.workers["mediaw"].pushers)
        self.assertIsNone(self.workers["bgw"].pushers)
        for name in ("pushw", "bgw"):  # no federation built where none is sent or served
            self.assertIsNone(self.workers[name].federation)

    async def test_push_sent_once_from_the_pusher_worker(self) -> None:
        gateway = Gateway()
        port = reactor.listenTCP(0, server.Site(gateway), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}{NOTIFY}"
        alice, bob, room_id = await self.room_with("alice", "bob")
        set_pusher = await self.request("POST", f"{V3}/pushers/set", {
            "kind": "http", "app_id": "sytest", "app_display_name": "a",
            "device_display_name": "d", "pushkey": "k1", "lang": "en",
            "data": {"url": url}}, alice)
        self.assertEqual(set_pusher.code, 200, set_pusher)
        event_id = await self.send(bob, room_id, "hi alice")
        ok = await wait_until(lambda: any(b["notification"].get("event_id") == event_id
                                          for b in gateway.bodies))
        self.assertTrue(ok, f"no push; gateway got {gateway.bodies}")
        await task.deferLater(reactor, 0.5, lambda: None)  # anything else in flight
        pushes = [b for b in gateway.bodies if b["notification"].get("event_id") == event_id]
        self.assertEqual(len(pushes), 1, gateway.bodies)
        sent = self.workers["pushw"].metrics_registry.get_sample_value(
            "parley_push_sent_total", {"outcome": "sent"})
        self.assertEqual(sent, 1.0)
        # The position moved (the database is the queue): a restarted worker resends nothing.
        await self.workers.pop("pushw").stop()
        await self.start_worker("pushw")
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len([b for b in gateway.bodies
                              if b["notification"].get("event_id") == event_id]), 1)

    async def test_media_worker_serves_media(self) -> None:
        token = (await self.register("mia"))["access_token"]
        png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
        refused = await self.request("POST", UPLOAD, raw_body=png,
                                     headers={"Content-Type": "image/png"}, token=token)
        self.assertMatrixError(refused, 404, "M_UNRECOGNIZED")
        self.assertIn("media worker", refused.json["error"])
        up = await self.on("mediaw", "POST", UPLOAD, raw_body=png,
                           headers={"Content-Type": "image/png"}, token=token)
        self.assertEqual(up.code, 200, up)
        server_name, media_id = up.json["content_uri"][len("mxc://"):].split("/")
        path = f"{AUTHED_MEDIA}/download/{server_name}/{media_id}"
        down = await self.on("mediaw", "GET", path, token=token)
        self.assertEqual((down.code, down.raw), (200, png))
        config = await self.on("mediaw", "GET", f"{AUTHED_MEDIA}/config", token=token)
        self.assertEqual(config.code, 200, config)
        for name in ("main", "pushw", "bgw"):
            resp = await self.on(name, "GET", path, token=token)
            self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")
        # The media worker serves nothing else; every process answers /health.
        sync = await self.on("mediaw", "GET", f"{V3}/sync", token=token)
        self.assertMatrixError(sync, 404, "M_UNRECOGNIZED")
        for name in self.urls:
            self.assertEqual((await self.on(name, "GET", "/health")).code, 200, name)

    async def test_background_worker_runs_the_erasure_purge(self) -> None:
        reg = await self.register("erin")
        token = reg["access_token"]
        deactivate = f"{V3}/account/deactivate"
        first = await self.request("POST", deactivate, {"erase": True}, token)
        self.assertEqual(first.code, 401, first)
        done = await self.request("POST", deactivate, {"erase": True, "auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": "erin"},
            "password": harness.TEST_PASSWORD}}, token)
        self.assertEqual(done.code, 200, done)
        bg = self.workers["bgw"]
        assert bg.erasure is not None and self.hs.erasure is not None

        async def status() -> str:
            jobs = await self.hs.erasure.jobs.list_jobs(10, None)  # type: ignore[union-attr]
            return jobs[0].status if jobs else "none"

        for _ in range(500):
            if await status() == "complete":
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(await status(), "complete")
        # Main never ran it: its purge never started a run.
        self.assertIsNone(self.hs.erasure.purge._running)  # noqa: SLF001
        self.assertIsNone(self.hs.erasure.purge._loop)  # noqa: SLF001


class FakeServer(resource.Resource):
    """A remote server: records the transactions PUT to it (no signature check: the
    federation sender's own tests do that)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.txns: list[dict[str, Any]] = []

    def render_PUT(self, request: Any) -> bytes:  # noqa: N802 (twisted.web API)
        request.setHeader(b"content-type", b"application/json")
        if not request.path.startswith(SEND_PREFIX):
            request.setResponseCode(404)
            return b'{"errcode":"M_UNRECOGNIZED","error":"no"}'
        self.txns.append(json.loads(request.content.read()))
        return b'{"pdus":{}}'


def _two_shards() -> tuple[str, str]:
    """Two server names that land on different shards of two."""
    names = [f"remote{i}.test" for i in range(20)]
    first = next(n for n in names if shard_index(n, 2) == 0)
    second = next(n for n in names if shard_index(n, 2) == 1)
    return first, second


class FederationShardsTest(_WorkersCase):
    roles = {"fs1": "federation_sender", "fs2": "federation_sender"}

    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(), "federation": federation_section()}

    async def setUp(self) -> None:  # type: ignore[override]
        real_make = harness.make_config
        harness.make_config = lambda *a, **kw: _plain_http(real_make(*a, **kw))
        try:
            self.discovery = StaticDiscovery()
            self.fakes: dict[str, FakeServer] = {}
            for name in _two_shards():
                fake = self.fakes[name] = FakeServer()
                port = reactor.listenTCP(0, server.Site(fake), interface="127.0.0.1")
                self.addCleanup(port.stopListening)
                self.discovery.ports[name] = port.getHost().port
            await super().setUp()
        finally:
            harness.make_config = real_make
        for hs in [self.hs, *self.workers.values()]:
            assert hs.federation is not None
            hs.federation.client.discovery = self.discovery

    async def start_worker(self, name: str) -> Homeserver:
        import dataclasses

        self.config = dataclasses.replace(self.config, federation=dataclasses.replace(
            self.config.federation, plain_http_for_tests=True))
        return await super().start_worker(name)

    async def test_shards_split_destinations(self) -> None:
        first, second = _two_shards()
        token = (await self.register("alice"))["access_token"]
        created = await self.request("POST", f"{V3}/createRoom", {}, token)
        room_id = created.json["room_id"]
        for name in (first, second):
            await add_remote_member(self.hs, room_id, f"@bob:{name}")
        main_sender = self.hs.federation.sender.sender  # type: ignore[union-attr]
        main_sender._room_servers.pop(room_id, None)  # noqa: SLF001 (bypassed the fan-out)
        await self.send(token, room_id, "to both")

        def pdu_count(name: str) -> int:
            return sum(len(t["pdus"]) for t in self.fakes[name].txns)

        ok = await wait_until(lambda: pdu_count(first) >= 1 and pdu_count(second) >= 1, 10)
        self.assertTrue(ok, {n: f.txns for n, f in self.fakes.items()})
        # Main queued, sent nothing itself; each shard sent to its own destination only.
        self.assertTrue(all(isinstance(q, RemoteDestinationQueue)
                            for q in main_sender.queues.values()))
        fs1 = self.workers["fs1"].federation.sender.sender  # type: ignore[union-attr]
        fs2 = self.workers["fs2"].federation.sender.sender  # type: ignore[union-attr]
        self.assertEqual(set(fs1.queues), {first})
        self.assertEqual(set(fs2.queues), {second})
        # Acknowledged by each (the answer is handled just after the fake recorded it).
        self.assertTrue(await wait_until(lambda: (fs1.queues[first].status.sent,
                                                  fs2.queues[second].status.sent) == (1, 1)))
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual((pdu_count(first), pdu_count(second)), (1, 1))  # once each
        self.assertEqual(await self.hs.stores.federation_queue.pending_destinations(), [])

    async def test_worker_catches_up_from_the_queue(self) -> None:
        """A kick lost (Redis message dropped): the shard's periodic catch-up sends it."""
        first, _ = _two_shards()
        token = (await self.register("alice"))["access_token"]
        created = await self.request("POST", f"{V3}/createRoom", {}, token)
        room_id = created.json["room_id"]
        await add_remote_member(self.hs, room_id, f"@bob:{first}")
        main_sender = self.hs.federation.sender.sender  # type: ignore[union-attr]
        main_sender._room_servers.pop(room_id, None)  # noqa: SLF001
        rep = self.hs.replication
        rep.link, link = None, rep.link  # main publishes nothing
        try:
            await self.send(token, room_id, "quietly")
        finally:
            rep.link = link
        ok = await wait_until(lambda: bool(self.fakes[first].txns), 10)
        self.assertTrue(ok, "the shard did not catch up from the queue")


def _plain_http(result: tuple[Any, Any]) -> tuple[Any, Any]:
    config, schema = result
    return for_tests(config), schema


class AppserviceWorkerTest(_WorkersCase):
    roles = {"asw": "appservice"}

    def config_overrides(self) -> dict[str, Any]:
        import os

        import yaml

        from tests.rest.fake_appservice import FakeAppservice
        from tests.rest.test_appservice import registration

        self.fake = FakeAppservice()
        url = self.fake.start()
        self.addCleanup(self.fake.stop)
        path = os.path.join(self.data_dir, "appserv-0.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(registration(url), f)
        return {**super().config_overrides(), "app_service_config_files": [path]}

    async def test_transactions_sent_by_the_worker(self) -> None:
        from homeserver.replication.roles import RemoteServiceQueue
        from tests.rest.test_appservice import AS_TOKEN

        main_queues = self._scheduler(self.hs).queues
        self.assertTrue(all(isinstance(q, RemoteServiceQueue) for q in main_queues.values()))
        self.assertEqual(list(self._scheduler(self.workers["asw"]).queues), ["AS-0"])
        ghost = await self.request("POST", f"{V3}/register", {
            "type": "m.login.application_service", "username": "astest-ghost"},
            token=AS_TOKEN)
        self.assertEqual(ghost.code, 200, ghost)
        token = ghost.json["access_token"]
        created = await self.request("POST", f"{V3}/createRoom", {}, token)
        event_id = await self.send(token, created.json["room_id"], "bridged")
        await self.fake.wait_for_event(lambda e: e.get("event_id") == event_id)
        await task.deferLater(reactor, 0.3, lambda: None)
        carrying = [t for t in self.fake.transactions
                    if any(e.get("event_id") == event_id for e in t.body.get("events", []))]
        self.assertEqual(len(carrying), 1)

    @staticmethod
    def _scheduler(hs: Homeserver) -> Any:
        return hs.roles.appservices.scheduler
