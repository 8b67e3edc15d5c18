"""End to end: a main process and a ``client`` worker, two ``parley run`` processes
sharing PostgreSQL and Redis (issue 18, first slice).

alice registers and creates a room through the main process; a matrix-nio client with
her token syncs on the worker; a message alice sends through main wakes the worker's
long-polling /sync well before its timeout; a send through the worker is refused with
404 M_UNRECOGNIZED (writes are routed to main); and once alice logs out through main
the token is refused by the worker too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LogoutResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    WhoamiError,
)
from twisted.trial import unittest

from tests.e2e.nio_runner import run_nio_scenario
from tests.e2e.server_process import (
    _NO_PROXY,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ServerProcess,
    ServerStartError,
    _child_env,
    free_port,
)
from tests.e2e.test_nio_accounts import PASSWORD, http_status
from tests.harness import test_engine
from tests.rest.test_replication import REDIS, redis_reachable

REQUEST_TIMEOUT_S = 20.0
LONGPOLL_MS = 15_000
WAKE_LIMIT_S = 5.0
SCENARIO_TIMEOUT_S = 90.0


class MainProcess(ServerProcess):
    """The main process, with a ``workers`` section naming one client worker."""

    def __init__(self, worker_port: int) -> None:
        super().__init__(config_overrides={
            "redis": {"host": REDIS[0], "port": REDIS[1],
                      "key_prefix": f"e2e{secrets.token_hex(6)}:"},
            "workers": {"main": {"role": "main"},
                        "reader": {"role": "client", "listeners": [
                            {"port": worker_port, "bind_addresses": ["127.0.0.1"]}]}},
        })

    def _patch_config(self) -> None:
        assert self.tmp_dir is not None  # the signing key goes there (see test_nio_rooms)
        os.makedirs(os.path.join(self.tmp_dir, "data"), mode=0o700, exist_ok=True)
        super()._patch_config()


class WorkerProcess:
    """``parley run -c <main's config> --worker reader``."""

    def __init__(self, main: MainProcess, port: int) -> None:
        self.main = main
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.log_path = ""

    def start(self) -> None:
        assert self.main.tmp_dir is not None and self.main.config_path is not None
        self.log_path = os.path.join(self.main.tmp_dir, "worker.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "homeserver", "run", "-c", self.main.config_path,
             "--worker", "reader"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.main.tmp_dir, env=_child_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(f"worker exited: {self.log_tail()}")
            try:
                with _NO_PROXY.open(self.base_url + "/_matrix/client/versions", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise ServerStartError(f"worker did not serve in time: {self.log_tail()}")

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
            return "(no worker log)"
        with open(self.log_path, "rb") as f:
            return f.read()[-max_bytes:].decode("utf-8", "replace")


class Session:
    """nio clients on main and on the worker; all closed at the end."""

    def __init__(self, main_url: str, worker_url: str) -> None:
        self.main_url = main_url
        self.worker_url = worker_url
        self._clients: list[AsyncClient] = []

    def client(self, url: str, user: str = "") -> AsyncClient:
        config = AsyncClientConfig(request_timeout=REQUEST_TIMEOUT_S, max_timeouts=0,
                                   max_limit_exceeded=0, encryption_enabled=False)
        c = AsyncClient(url, user, config=config)
        self._clients.append(c)
        return c

    async def close(self) -> None:
        for c in self._clients:
            await c.close()


class WorkersTest(unittest.TestCase):
    timeout = 180

    async def test_sync_on_worker_sees_message_sent_through_main(self) -> None:
        if test_engine() != "postgres":
            raise unittest.SkipTest("workers need PostgreSQL (run with PARLEY_TEST_DB=postgres)")
        why = redis_reachable()
        if why is not None:
            raise unittest.SkipTest(why)
        worker_port = free_port()
        main = MainProcess(worker_port)
        self.addCleanup(main.stop)
        main.start()
        worker = WorkerProcess(main, worker_port)
        self.addCleanup(worker.stop)
        try:
            worker.start()
        except ServerStartError as e:
            raise self.failureException(f"{e}\n--- main log ---\n{main.log_tail()}") from e

        async def scenario(s: Session) -> None:
            alice = s.client(s.main_url, "alice")
            reg = await alice.register("alice", PASSWORD)
            self.assertIsInstance(reg, RegisterResponse, reg)
            created = await alice.room_create(name="workers")
            self.assertIsInstance(created, RoomCreateResponse, created)
            room_id = created.room_id

            reader = s.client(s.worker_url, alice.user_id)
            reader.restore_login(alice.user_id, alice.device_id, alice.access_token)
            # set_presence=offline: a sync marking alice online is reported to main,
            # whose presence update would (rightly) wake the long-poll below first.
            first = await reader.sync(timeout=0, set_presence="offline")
            self.assertIsInstance(first, SyncResponse, first)
            self.assertIn(room_id, first.rooms.join)

            poll = asyncio.ensure_future(reader.sync(timeout=LONGPOLL_MS, since=first.next_batch,
                                                     set_presence="offline"))
            await asyncio.sleep(0.5)  # the long-poll is held on the worker
            self.assertFalse(poll.done())
            started = time.monotonic()
            sent = await alice.room_send(room_id, "m.room.message",
                                         {"msgtype": "m.text", "body": "via main"})
            self.assertIsInstance(sent, RoomSendResponse, sent)
            woken = await poll
            self.assertLess(time.monotonic() - started, WAKE_LIMIT_S)
            self.assertIsInstance(woken, SyncResponse, woken)
            events = woken.rooms.join[room_id].timeline.events
            self.assertEqual([(e.event_id, e.body) for e in events
                              if isinstance(e, RoomMessageText)],
                             [(sent.event_id, "via main")])

            refused = await reader.room_send(room_id, "m.room.message",
                                             {"msgtype": "m.text", "body": "via worker"})
            self.assertEqual(http_status(refused), 404)
            self.assertEqual(getattr(refused, "status_code", None), "M_UNRECOGNIZED")

            out = await alice.logout()
            self.assertIsInstance(out, LogoutResponse, out)
            who = await reader.whoami()
            self.assertIsInstance(who, WhoamiError, who)
            self.assertEqual(http_status(who), 401)

        try:
            await run_nio_scenario(self, main, lambda _url: Session(main.base_url,
                                                                     worker.base_url),
                                   scenario, SCENARIO_TIMEOUT_S)
        except self.failureException as e:
            raise self.failureException(f"{e}\n--- worker log ---\n{worker.log_tail()}") from e
        # Neither process logged a failure on the way.
        for name, log in (("worker", worker.log_tail(1 << 20)), ("main", main.log_tail(1 << 20))):
            self.assertNotIn("Traceback", log, f"{name} log:\n{log[-4000:]}")
