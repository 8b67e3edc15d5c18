"""Homeserver.stop (what SIGTERM runs), in process: in-flight requests finish within
``shutdown.grace_period_s``, a request past it does not hold the process, held
long-polls answer at once, and the database pool is closed last."""

from __future__ import annotations

import time
from typing import Any

import yaml
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.auth.access_tokens import generate_signing_key_pem
from homeserver.cli import generate_config_text
from homeserver.config import ConfigError, parse_config
from homeserver.http.server import ApiRequest
from tests.rest.room_helpers import CS, RoomTestCase

GRACE_S = 1.0


class ShutdownDrainTest(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"shutdown": {"grace_period_s": GRACE_S}}

    def _route(self, path: str, wait: defer.Deferred[None]) -> list[str]:
        """A test route that answers once ``wait`` fires, recording that it started."""
        started: list[str] = []

        async def handler(req: ApiRequest) -> tuple[int, Any]:
            started.append(path)
            await wait
            return 200, {"done": True}

        self.hs.router.add("GET", path, handler, auth="none")
        return started

    async def _started(self, started: list[str]) -> None:
        for _ in range(250):
            if started:
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("request never reached its handler")

    async def test_slow_request_finishes_before_exit(self) -> None:
        release: defer.Deferred[None] = defer.Deferred()
        started = self._route("/_matrix/client/v3/test_slow", release)
        pending = defer.ensureDeferred(self.request("GET", "/_matrix/client/v3/test_slow"))
        await self._started(started)
        stopping = defer.ensureDeferred(self.hs.stop())
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(stopping.called, "stop did not wait for the request in flight")
        release.callback(None)
        resp = await pending
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"done": True})
        await stopping

    async def test_grace_period_bounds_the_wait(self) -> None:
        never: defer.Deferred[None] = defer.Deferred()
        started = self._route("/_matrix/client/v3/test_hang", never)
        pending = defer.ensureDeferred(self.request("GET", "/_matrix/client/v3/test_hang"))
        pending.addErrback(lambda _f: None)  # cut off when the test's server goes
        await self._started(started)
        begun = time.monotonic()
        await self.hs.stop()
        took = time.monotonic() - begun
        self.assertGreaterEqual(took, GRACE_S * 0.9)
        self.assertLess(took, GRACE_S + 2)
        never.callback(None)

    async def test_held_sync_answers_at_once(self) -> None:
        token = await self.user("alice")
        await self.create_room(token)
        first = await self.request("GET", f"{CS}/sync?timeout=0", token=token)
        since = first.json["next_batch"]
        held = defer.ensureDeferred(self.request(
            "GET", f"{CS}/sync?timeout=600000&since={since}", token=token))
        for _ in range(250):
            if self.hs.notifier.waiting_count():
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.hs.notifier.waiting_count(), 1)
        begun = time.monotonic()
        await self.hs.stop()
        self.assertLess(time.monotonic() - begun, GRACE_S * 0.9)
        resp = await held
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["rooms"]["join"], {})
        self.assertNotEqual(resp.json["next_batch"], "")

    async def test_legacy_events_answers_at_once(self) -> None:
        token = await self.user("alice")
        first = await self.request("GET", f"{CS}/events?timeout=0", token=token)
        self.assertEqual(first.code, 200, first)
        held = defer.ensureDeferred(self.request(
            "GET", f"{CS}/events?timeout=600000&from={first.json['end']}", token=token))
        for _ in range(250):
            if self.hs.notifier.waiting_count():
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(self.hs.notifier.waiting_count(), 1)
        await self.hs.stop()
        resp = await held
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["chunk"], [])


class ShutdownConfigTest(unittest.TestCase):
    """``shutdown.grace_period_s``: default, validation, and generate-config."""

    def _raw(self, **extra: Any) -> dict[str, Any]:
        return {"server_name": "example.org",
                "auth": {"signing_keys": [{"kid": "a", "algorithm": "EdDSA",
                                           "key": generate_signing_key_pem()}]}, **extra}

    def test_default_and_value(self) -> None:
        self.assertEqual(parse_config(self._raw()).shutdown_grace_period_s, 10.0)
        c = parse_config(self._raw(shutdown={"grace_period_s": 2.5}))
        self.assertEqual(c.shutdown_grace_period_s, 2.5)

    def test_bad_values_are_named(self) -> None:
        for bad in ({"grace_period_s": -1}, {"grace_period_s": "10s"}, {"grace": 1}):
            with self.assertRaises(ConfigError) as cm:
                parse_config(self._raw(shutdown=bad))
            self.assertIn("shutdown", str(cm.exception))

    def test_generated_config_has_it(self) -> None:
        raw = yaml.safe_load(generate_config_text("example.org", "data", 8008, dev=False))
        self.assertEqual(raw["shutdown"], {"grace_period_s": 10})
        self.assertEqual(parse_config(raw).shutdown_grace_period_s, 10.0)
