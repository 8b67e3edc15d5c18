"""End to end, for operators of workers (issue 18): real ``parley run`` processes on
loopback sharing the test PostgreSQL and Redis.

- A revoked session is refused on a worker within the revocation bound
  (``auth.session_cache_ttl``, 1 s by default with workers), even when the Redis message
  announcing it is lost (the session revoked straight in the database), and at once
  when it is not (a logout through the main process).
- Two event persisters; one is killed with SIGKILL in the middle of a burst of
  concurrent sends to its rooms and restarted. Every send that got 200 is in
  ``/messages`` exactly once; retrying any send with its transaction id gives the same
  event id (so the ones cut off by the crash are retried into exactly one event); and a
  client worker's ``/sync`` chain never goes backwards and delivers every event exactly
  once, each inside the (since, next_batch] range of the response carrying it (a reader
  serving past a gap would skip the event written later below its position).

The deployment helpers (``MainProcess``, ``WorkerProcess``) run any set of workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import yaml
from twisted.internet import threads
from twisted.trial import unittest

from homeserver.replication.multi_writer import writer_for_room
from tests.e2e.server_process import (
    _NO_PROXY,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ServerProcess,
    ServerStartError,
    _child_env,
    free_port,
)
from tests.harness import pg_settings, test_engine
from tests.rest.test_replication import REDIS, redis_reachable

#: The deployment's replication secret (a test value; production reads it from the env).
SECRET = "e2e-replication-secret-" + secrets.token_hex(8)
#: Rate limits out of the way: the tests send in bursts from one user and one IP.
NO_LIMITS = {name: {"per_second": 10_000, "burst": 100_000}
             for name in ("message", "state", "join", "registration", "api", "login")}


class MainProcess(ServerProcess):
    """The main process; ``workers`` is the config's section, ``main_rep_port`` its
    ``replication`` listener (0: none, writes are not forwarded to it)."""

    def __init__(self, workers: dict[str, Any], main_rep_port: int = 0,
                 extra: dict[str, Any] | None = None) -> None:
        self.main_rep_port = main_rep_port
        main: dict[str, Any] = {"role": "main"}
        if main_rep_port:
            main["replication"] = {"host": "127.0.0.1", "port": main_rep_port,
                                   "secret": SECRET}
        super().__init__(config_overrides={
            "redis": {"host": REDIS[0], "port": REDIS[1],
                      "key_prefix": f"e2e{secrets.token_hex(6)}:"},
            "rate_limits": NO_LIMITS,
            "workers": {"main": main, **workers},
            **(extra or {}),
        })

    def _patch_config(self) -> None:
        assert self.tmp_dir is not None and self.config_path is not None
        os.makedirs(os.path.join(self.tmp_dir, "data"), mode=0o700, exist_ok=True)
        super()._patch_config()
        if not self.main_rep_port:
            return
        with open(self.config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
        config["listeners"].append({"port": self.main_rep_port,
                                    "bind_addresses": ["127.0.0.1"],
                                    "resources": ["replication"]})
        with open(self.config_path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=False)

    def config(self) -> dict[str, Any]:
        assert self.config_path is not None
        with open(self.config_path, encoding="utf-8") as f:
            return yaml.safe_load(f)


class WorkerProcess:
    """``parley run -c <main's config> --worker NAME``, serving the client API on
    ``port``; ``kill()`` is a crash (SIGKILL), ``start()`` again a restart."""

    def __init__(self, main: MainProcess, name: str, port: int) -> None:
        self.main = main
        self.name = name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_path = ""

    def start(self) -> None:
        assert self.main.tmp_dir is not None and self.main.config_path is not None
        self.log_path = os.path.join(self.main.tmp_dir, f"{self.name}.log")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "-c", self.main.config_path,
             "--worker", self.name],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.main.tmp_dir, env=_child_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(f"worker {self.name} exited: {self.log_tail()}")
            try:
                with _NO_PROXY.open(self.base_url + "/_matrix/client/versions", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerStartError(f"worker {self.name} did not serve in time: {self.log_tail()}")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.write(b"\n--- killed (SIGKILL) ---\n")
            self._log.close()
            self._log = None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, max_bytes: int = 4000) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return f"(no {self.name} log)"
        with open(self.log_path, "rb") as f:
            return f.read()[-max_bytes:].decode("utf-8", "replace")


def client_worker(port: int) -> dict[str, Any]:
    """A ``client`` worker's section entry."""
    return {"role": "client", "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"]}]}


def event_persister(port: int, rep_port: int) -> dict[str, Any]:
    """An ``event_persister``'s entry: the client API on ``port``, forwarded writes on
    ``rep_port``."""
    return {"role": "event_persister",
            "replication": {"host": "127.0.0.1", "port": rep_port},
            "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"]},
                          {"port": rep_port, "bind_addresses": ["127.0.0.1"],
                           "resources": ["replication"]}]}


def ports(n: int) -> list[int]:
    """``n`` distinct free ports."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out:
            out.append(p)
    return out


# ---- the tests

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse battery staple"
REQUEST_TIMEOUT_S = 20.0
REVOCATION_BOUND_S = 1.0  # auth.session_cache_ttl's default with workers
REQUEST_SLACK_S = 0.5  # one whoami round trip on a loaded 2-core machine, at most
SENDS = 120  # the burst of concurrent sends
CONCURRENCY = 16
KILL_AFTER = 30  # sends answered 200 before the persister is killed
WRITERS = ["p1", "p2"]
TIMELINE_FILTER = json.dumps({"room": {"timeline": {"limit": 1000}}})


def requires_deployment() -> None:
    if test_engine() != "postgres":
        raise unittest.SkipTest("workers need PostgreSQL (run with PARLEY_TEST_DB=postgres)")
    why = redis_reachable()
    if why is not None:
        raise unittest.SkipTest(why)


def pg_connect(server: ServerProcess) -> Any:
    """A psycopg2 connection to ``server``'s PostgreSQL schema (blocking; the caller
    closes it)."""
    import psycopg2

    s = pg_settings()
    return psycopg2.connect(host=s["host"], port=s["port"], user=s["user"],
                            dbname=s["database"], password=s.get("password"),
                            options=f"-c search_path={server.pg_schema}", connect_timeout=5)


def db_query(main: ServerProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """``sql`` in the PostgreSQL schema of a deployment (or of any server process run
    on PostgreSQL): a blocking call, run it off the reactor and off the scenario's loop."""
    conn = pg_connect(main)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


class Http:
    """JSON over aiohttp, never through a proxy; answers (status, body)."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S), trust_env=False)

    async def __call__(self, base: str, method: str, path: str, body: Any = None,
                       token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, base + path, json=body,
                                        headers=headers) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, data

    async def register(self, base: str, user: str) -> dict[str, Any]:
        status, body = await self(base, "POST", f"{V3}/register",
                                  {"username": user, "password": PASSWORD,
                                   "auth": {"type": "m.login.dummy"}})
        assert status == 200, (status, body)
        return body

    async def close(self) -> None:
        await self.session.close()


def run_scenario(test: unittest.TestCase, procs: list[Any],
                 scenario: Callable[[Http], Awaitable[None]], timeout_s: float) -> Any:
    """``scenario`` in a fresh asyncio loop on a thread; on failure every log's tail."""
    async def bounded() -> None:
        http = Http()
        try:
            await asyncio.wait_for(scenario(http), timeout_s)
        finally:
            await http.close()

    def failed(f: Any) -> None:
        logs = "\n".join(f"--- {getattr(p, 'name', 'main')} log ---\n{p.log_tail()}"
                         for p in procs)
        raise test.failureException(f"{f.getErrorMessage()}\n{logs}")

    return threads.deferToThread(asyncio.run, bounded()).addErrback(failed)


class RevocationBoundTest(unittest.TestCase):
    """A worker refuses a revoked session within ``auth.session_cache_ttl``."""

    timeout = 180

    def _deploy(self) -> tuple[MainProcess, WorkerProcess]:
        requires_deployment()
        (reader_port,) = ports(1)
        main = MainProcess({"reader": client_worker(reader_port)})
        self.addCleanup(main.stop)
        main.start()
        self.assertNotIn("session_cache_ttl", main.config().get("auth", {}))
        reader = WorkerProcess(main, "reader", reader_port)
        self.addCleanup(reader.stop)
        reader.start()
        return main, reader

    async def test_revocation_reaches_worker_within_bound(self) -> None:
        main, reader = self._deploy()

        async def refused_within(http: Http, token: str, limit: float) -> float:
            started = time.monotonic()
            while time.monotonic() - started < limit + 2:
                status, body = await http(reader.base_url, "GET", f"{V3}/account/whoami",
                                          token=token)
                if status == 401:
                    self.assertEqual(body["errcode"], "M_UNKNOWN_TOKEN")
                    return time.monotonic() - started
                self.assertEqual(status, 200, body)
                await asyncio.sleep(0.02)
            self.fail("the revoked token still works on the worker")

        async def scenario(http: Http) -> None:
            # The message lost: revoked in the database only, as main would, no Redis.
            alice = await http.register(main.base_url, "alice")
            for _ in range(3):  # the worker caches the session as active
                status, _ = await http(reader.base_url, "GET", f"{V3}/account/whoami",
                                       token=alice["access_token"])
                self.assertEqual(status, 200)
            await asyncio.to_thread(
                db_query, main, "UPDATE sessions SET revoked_ts = %s, revoked_reason = %s"
                " WHERE user_id = %s", int(time.time() * 1000), "test", alice["user_id"])
            took = await refused_within(http, alice["access_token"], REVOCATION_BOUND_S)
            self.assertLessEqual(took, REVOCATION_BOUND_S + REQUEST_SLACK_S)

            # The message delivered: a logout through main is refused on the worker at once.
            bob = await http.register(main.base_url, "bob")
            status, _ = await http(reader.base_url, "GET", f"{V3}/account/whoami",
                                   token=bob["access_token"])
            self.assertEqual(status, 200)
            status, _ = await http(main.base_url, "POST", f"{V3}/logout", {},
                                   token=bob["access_token"])
            self.assertEqual(status, 200)
            took = await refused_within(http, bob["access_token"], REVOCATION_BOUND_S)
            self.assertLess(took, REVOCATION_BOUND_S)

        await run_scenario(self, [main, reader], scenario, 90)


class SyncChain:
    """A client worker's ``/sync`` chain, run until stopped: each response's since and
    next_batch events positions and the timeline event ids it carried, per room."""

    def __init__(self, http: Http, base: str, token: str) -> None:
        self.http, self.base, self.token = http, base, token
        self.responses: list[tuple[int, int, list[str], bool]] = []
        self.errors: list[tuple[int, Any]] = []
        self.stopping = False

    @staticmethod
    def position(token: str) -> int:
        return int(token[1:].split("_")[0])

    async def run(self, since: str) -> None:
        filt = urllib.parse.quote(TIMELINE_FILTER)
        while not self.stopping:
            try:
                status, body = await self.http(
                    self.base, "GET", f"{V3}/sync?timeout=1000&since={since}&filter={filt}",
                    token=self.token)
            except (TimeoutError, aiohttp.ClientError) as e:
                self.errors.append((0, repr(e)))
                await asyncio.sleep(0.2)
                continue
            if status != 200:
                self.errors.append((status, body))
                await asyncio.sleep(0.2)
                continue
            ids: list[str] = []
            limited = False
            for room in body.get("rooms", {}).get("join", {}).values():
                timeline = room.get("timeline", {})
                limited = limited or bool(timeline.get("limited"))
                ids += [e["event_id"] for e in timeline.get("events", [])]
            self.responses.append((self.position(since), self.position(body["next_batch"]),
                                   ids, limited))
            since = body["next_batch"]

    def delivered(self) -> Counter[str]:
        return Counter(i for r in self.responses for i in r[2])


class PersisterKillTest(unittest.TestCase):
    """An event persister killed with SIGKILL mid-burst and restarted loses, duplicates
    and lets readers skip nothing."""

    timeout = 300

    async def test_kill_9_event_persister_mid_batch(self) -> None:
        requires_deployment()
        main_rep, p1_port, p1_rep, p2_port, p2_rep, reader_port = ports(6)
        main = MainProcess({"p1": event_persister(p1_port, p1_rep),
                            "p2": event_persister(p2_port, p2_rep),
                            "reader": client_worker(reader_port)},
                           main_rep_port=main_rep,
                           extra={"stream_writers": {"events": WRITERS}})
        self.addCleanup(main.stop)
        main.start()
        p1 = WorkerProcess(main, "p1", p1_port)
        p2 = WorkerProcess(main, "p2", p2_port)
        reader = WorkerProcess(main, "reader", reader_port)
        for w in (p1, p2, reader):
            self.addCleanup(w.stop)
            w.start()
        procs = [main, p1, p2, reader]

        async def scenario(http: Http) -> None:
            alice = await http.register(main.base_url, "alice")
            token = alice["access_token"]
            rooms: dict[str, list[str]] = {w: [] for w in WRITERS}
            for i in range(20):  # createRoom goes to any writer: until each has two
                if all(len(r) >= 2 for r in rooms.values()):
                    break
                status, body = await http(main.base_url, "POST", f"{V3}/createRoom",
                                          {"name": f"r{i}"}, token=token)
                self.assertEqual(status, 200, body)
                rooms[writer_for_room(body["room_id"], WRITERS)].append(body["room_id"])
            self.assertTrue(all(len(r) >= 2 for r in rooms.values()), rooms)
            targets = [r for pair in zip(rooms["p1"], rooms["p2"], strict=False)
                       for r in pair]

            status, first = await http(
                reader.base_url, "GET",
                f"{V3}/sync?timeout=0&filter={urllib.parse.quote(TIMELINE_FILTER)}",
                token=token)
            self.assertEqual(status, 200, first)
            chain = SyncChain(http, reader.base_url, token)
            syncing = asyncio.ensure_future(chain.run(first["next_batch"]))

            def send_path(i: int) -> str:
                return (f"{V3}/rooms/{targets[i % len(targets)]}/send/m.room.message/"
                        f"burst{i}")

            async def send(i: int) -> tuple[int, Any]:
                base = (main.base_url, reader.base_url, p2.base_url)[i % 3]
                try:
                    return await http(base, "PUT", send_path(i),
                                      {"msgtype": "m.text", "body": f"m{i}"}, token=token)
                except (TimeoutError, aiohttp.ClientError) as e:
                    return 0, repr(e)

            results: dict[int, tuple[int, Any]] = {}
            ok = asyncio.Event()
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> None:
                async with gate:
                    results[i] = await send(i)
                if results[i][0] == 200 and sum(r[0] == 200 for r in results.values()) \
                        >= KILL_AFTER:
                    ok.set()

            burst = asyncio.ensure_future(asyncio.gather(*(one(i) for i in range(SENDS))))
            await ok.wait()
            await asyncio.to_thread(p1.kill)  # mid-burst: sends to its rooms in flight
            await burst
            failed = sorted(i for i, r in results.items() if r[0] != 200)
            p1_rooms = set(rooms["p1"])
            # Only p1's rooms could fail; some of them did (the kill was mid-burst).
            self.assertTrue(all(targets[i % len(targets)] in p1_rooms for i in failed),
                            {i: results[i] for i in failed})
            self.assertTrue(failed, "the kill came after every send to p1's rooms")
            await asyncio.to_thread(p1.start)

            # Retries with the same transaction id: one event per send, whatever the crash cut.
            event_ids: dict[int, str] = {}
            for i in range(SENDS):
                deadline = time.monotonic() + 60
                while True:
                    status, body = await send(i)
                    if status == 200 or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                self.assertEqual(status, 200, (i, body))
                event_ids[i] = body["event_id"]
                if results[i][0] == 200:
                    self.assertEqual(body["event_id"], results[i][1]["event_id"], i)
            expected = set(event_ids.values())
            self.assertEqual(len(expected), SENDS)

            # /messages on the reader: every send exactly once, once it has caught up.
            async def messages() -> Counter[str]:
                seen: Counter[str] = Counter()
                for room_id in targets:
                    status, body = await http(
                        reader.base_url, "GET",
                        f"{V3}/rooms/{room_id}/messages?dir=b&limit=1000", token=token)
                    self.assertEqual(status, 200, body)
                    seen.update(e["event_id"] for e in body["chunk"]
                                if e["type"] == "m.room.message")
                return seen

            deadline = time.monotonic() + 30
            while set(seen := await messages()) != expected and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            self.assertEqual(set(seen), expected)
            self.assertEqual(max(seen.values()), 1, "an event listed twice")
            rows = await asyncio.to_thread(
                db_query, main, "SELECT txn_id, COUNT(*) FROM events WHERE txn_id LIKE %s"
                " GROUP BY txn_id", "burst%")
            self.assertEqual(len(rows), SENDS)
            self.assertEqual({n for _, n in rows}, {1}, "a send persisted twice")

            # The reader's /sync chain: every event once, in the right range, never back.
            deadline = time.monotonic() + 30
            while not expected <= set(chain.delivered()) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            chain.stopping = True
            await syncing
            orderings = dict(await asyncio.to_thread(
                db_query, main, "SELECT event_id, stream_ordering FROM events"
                " WHERE txn_id LIKE %s", "burst%"))
            delivered = chain.delivered()
            self.assertEqual(set(delivered) & expected, expected, "an event never synced")
            self.assertEqual(max(delivered[e] for e in expected), 1, "an event synced twice")
            last = SyncChain.position(first["next_batch"])
            for since, upto, ids, limited in chain.responses:
                self.assertEqual(since, last, "the chain was not followed")
                self.assertGreaterEqual(upto, since, "a sync position went backwards")
                self.assertFalse(limited, "a gap in the timeline")
                for event_id in ids:
                    if event_id in orderings:
                        self.assertTrue(since < orderings[event_id] <= upto,
                                        (event_id, orderings[event_id], since, upto))
                last = upto

        await run_scenario(self, procs, scenario, 240)
        for p in procs:  # no failure logged on the way (p1's crash is no Traceback)
            self.assertNotIn("Traceback", p.log_tail(1 << 20),
                             f"{getattr(p, 'name', 'main')}:\n{p.log_tail()}")
