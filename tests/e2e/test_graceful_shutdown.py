"""End to end: SIGTERM to a real ``parley run`` drains gracefully.

A /sync long-poll held open when the signal arrives is answered at once with its
normal (empty) 200, a WebSocket gets the "going away" close, /metrics (on its own
listener) showed the waiter before, and the process exits 0 well within
``shutdown.grace_period_s``. The server is started through the shipped entry points
(``tests.e2e.server_process``), on the engine of ``PARLEY_TEST_DB``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from homeserver.rest.client.websocket import CLOSE_SHUTDOWN, WS_PATH
from tests.e2e.server_process import ServerProcess, free_port
from tests.rest.test_websocket import Client, _ClientFactory

GRACE_S = 8
#: A held long-poll must be answered this soon after SIGTERM.
PROMPT_S = 3.0
PASSWORD = "correct-horse-battery-staple"


class _Server(ServerProcess):
    """The dev config plus a metrics listener and the shutdown grace period."""

    metrics_port = 0

    def _patch_config(self) -> None:
        self.metrics_port = free_port()
        self.config_overrides = {
            **self.config_overrides,
            "listeners": [
                {"port": self.port, "bind_addresses": ["127.0.0.1"],
                 "resources": ["client", "federation"]},
                {"port": self.metrics_port, "bind_addresses": ["127.0.0.1"],
                 "resources": ["metrics"]},
            ],
            "shutdown": {"grace_period_s": GRACE_S},
        }
        super()._patch_config()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None
        return self._proc


class GracefulShutdownTest(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.server = _Server()
        self.addCleanup(self.server.stop)
        self.server.start()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    async def _call(self, method: str, path: str, body: Any = None,
                    token: str | None = None, timeout: float = 30) -> tuple[int, Any]:
        headers = {"Content-Type": ["application/json"]}
        if token:
            headers["Authorization"] = [f"Bearer {token}"]
        data = json.dumps(body).encode() if body is not None else None
        resp = await treq.request(method, self.server.base_url + path, data=data,
                                  headers=headers, pool=self.pool, timeout=timeout)
        raw = await resp.content()
        return resp.code, json.loads(raw) if raw else None

    async def _register(self, name: str) -> str:
        body: dict[str, Any] = {"username": name, "password": PASSWORD}
        code, first = await self._call("POST", "/_matrix/client/v3/register", body)
        self.assertEqual(code, 401, first)
        body["auth"] = {"type": "m.login.dummy", "session": first["session"]}
        code, done = await self._call("POST", "/_matrix/client/v3/register", body)
        self.assertEqual(code, 200, done)
        return str(done["access_token"])

    async def _metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        resp = await treq.get(url, pool=self.pool, timeout=10)
        text = await resp.text("utf-8")
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and not s.labels:
                    return float(s.value)
        return 0.0

    async def _websocket(self, token: str) -> Client:
        url = self.server.base_url.replace("http://", "ws://") + WS_PATH
        factory = _ClientFactory(url, {"Authorization": f"Bearer {token}"})
        connector = reactor.connectTCP("127.0.0.1", self.server.port, factory, timeout=10)
        self.addCleanup(connector.disconnect)
        client = Client(factory)
        opened = factory.opened
        opened.addTimeout(10, reactor)
        await opened
        client.send({"type": "subscribe"})
        await client.next_sync()
        return client

    async def test_sigterm_answers_held_sync_and_exits_zero(self) -> None:
        token = await self._register("alice")
        code, first = await self._call("GET", "/_matrix/client/v3/sync?timeout=0", token=token)
        self.assertEqual(code, 200, first)
        since = first["next_batch"]
        ws = await self._websocket(token)

        held = defer.ensureDeferred(self._call(
            "GET", f"/_matrix/client/v3/sync?timeout=60000&since={since}", token=token,
            timeout=60))
        # The WebSocket's stream waits too: two waiters once the /sync is parked.
        for _ in range(200):
            if await self._metric("parley_sync_waiters") >= 2:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertGreaterEqual(await self._metric("parley_sync_waiters"), 2,
                                self.server.log_tail())
        self.assertEqual(await self._metric("parley_http_requests_in_flight"), 1)
        self.assertFalse(held.called)

        sent = time.monotonic()
        self.server.proc.send_signal(signal.SIGTERM)
        try:
            code, body = await held
        except Exception as e:  # noqa: BLE001 (report with the server's log)
            await task.deferLater(reactor, 0.5, lambda: None)
            self.fail(f"held /sync got no answer: {e!r}; server log:\n{self.server.log_tail()}")
        answered = time.monotonic() - sent
        self.assertEqual(code, 200, body)
        self.assertLess(answered, PROMPT_S, "held /sync not answered promptly")
        # Its normal answer: a next_batch to resume from, nothing new in the rooms.
        self.assertIsInstance(body.get("next_batch"), str)
        self.assertEqual(body.get("rooms", {}).get("join", {}), {})

        close_code, _ = await ws.closed(timeout=GRACE_S)
        self.assertEqual(close_code, CLOSE_SHUTDOWN)

        exit_code = await self._wait_exit(GRACE_S + 2)
        self.assertEqual(exit_code, 0, self.server.log_tail())
        self.assertLess(time.monotonic() - sent, GRACE_S, "exit took the whole grace period")

    async def _wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.server.proc.poll()
            if code is not None:
                return code
            await task.deferLater(reactor, 0.05, lambda: None)
        return self.server.proc.poll()
