"""Presence from syncs held on a client worker (issue 18): the main process (A, the one
presence writer) and a client worker (B) sharing PostgreSQL and the machine's Redis, as
in tests/rest/test_replication.py. A /sync on B with set_presence=online makes the user
online as others see it through A; when B's syncs end, or B stops reporting, the user
times out on A; set_presence=offline reports nothing; presence disabled reports nothing.
The worker's reporter (batching, rate bound, heartbeat) is unit-tested without a database."""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from homeserver.clock import Clock
from homeserver.handlers.presence import SYNC_ONLINE_TIMEOUT_MS
from homeserver.replication import presence as rp
from tests.harness import Response
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_replication import (
    MainAndReaderMixin,
    require_workers,
    wait_until,
    workers_overrides,
)

ALICE = "@alice:test.local"


class SyncReporterTest(unittest.TestCase):
    """The worker's side alone: what it sends, when (no database: both engines)."""

    def setUp(self) -> None:
        self.time = task.Clock()
        self.time.advance(1_000_000)
        self.sent: list[dict[str, Any]] = []
        self.reporter = rp.SyncReporter(Clock(self.time), self.time, self.sent.append)

    def entries(self) -> list[list[Any]]:
        return [e for msg in self.sent for e in msg.get("s", [])]

    def test_new_sync_sent_at_once_then_rate_bounded(self) -> None:
        self.reporter.user_syncing(ALICE, "D1", "online", 30_000)
        self.reporter.user_syncing(ALICE, "D1", "online", 30_000)  # same turn: one message
        self.time.advance(0)
        self.assertEqual(self.sent, [{"k": rp.KIND, "s": [[ALICE, "D1", "online", 30_000, 0]]}])
        # Another device and a state change within HEARTBEAT_S: held for the heartbeat.
        self.time.advance(1)
        self.reporter.user_syncing(ALICE, "D2", "online", 30_000)
        self.reporter.user_syncing(ALICE, "D1", "unavailable", 30_000)
        self.time.advance(0)
        self.assertEqual(len(self.sent), 1)
        # Repeated syncs of a known device in the same state never send by themselves.
        self.reporter.user_syncing("@bob:test.local", None, "online", 0)
        self.time.advance(0)
        self.assertEqual(len(self.sent), 2)  # bob is new: at once

    def test_heartbeat_reports_syncs_in_progress_and_forgets_ended_ones(self) -> None:
        self.reporter.start()  # a heartbeat at once (nothing yet) then every HEARTBEAT_S
        self.assertEqual(self.sent, [{"k": rp.KIND, "s": [], "hb": True}])
        self.reporter.user_syncing(ALICE, "D1", "online", 8_000)
        self.time.advance(0)
        self.time.advance(rp.HEARTBEAT_S)
        beat = self.sent[-1]
        self.assertTrue(beat["hb"])
        self.assertEqual(beat["s"], [[ALICE, "D1", "online", 3_000, 5_000]])
        self.time.advance(rp.HEARTBEAT_S)  # the sync ended: no longer reported
        self.assertEqual(self.sent[-1], {"k": rp.KIND, "s": [], "hb": True})
        self.assertEqual(self.reporter.tracked(), 0)
        self.reporter.stop()
        self.assertEqual(self.sent[-1], {"k": rp.GONE})
        count = len(self.sent)
        self.time.advance(rp.HEARTBEAT_S * 3)
        self.reporter.user_syncing(ALICE, "D1", "online", 8_000)
        self.time.advance(0)
        self.assertEqual(len(self.sent), count)  # stopped: nothing more

    def test_offline_never_reported_and_big_reports_split(self) -> None:
        self.reporter.user_syncing(ALICE, "D1", "offline", 30_000)
        self.time.advance(0)
        self.assertEqual(self.sent, [])
        for i in range(rp.MAX_ENTRIES + 5):
            self.reporter.user_syncing(f"@u{i}:test.local", None, "online", 30_000)
        self.time.advance(0)
        self.assertEqual([len(m["s"]) for m in self.sent], [rp.MAX_ENTRIES, 5])

    def test_malformed_reports_are_dropped(self) -> None:
        good = [ALICE, "D", "online", 10**12, 10**12]
        self.assertEqual(rp._entry(good),  # noqa: SLF001
                         (ALICE, "D", "online", rp.MAX_REMAINING_MS, rp.MAX_AGO_MS))
        for bad in ([ALICE, "D", "offline", 1, 1], [ALICE, "D", "online", -1, 1],
                    [ALICE, "D", "online", True, 1], [ALICE, 5, "online", 1, 1],
                    ["", "D", "online", 1, 1], ["x" * 300, None, "online", 1, 1],
                    [ALICE, "D", "online", 1], "x", None):
            self.assertIsNone(rp._entry(bad), bad)  # noqa: SLF001


class WorkerPresenceTestCase(MainAndReaderMixin, RoomTestCase):
    """A = the main process (self.hs), B = the client worker (self.b)."""

    timeout = 60
    presence_enabled = True

    def config_overrides(self) -> dict[str, Any]:
        out = workers_overrides(f"t{secrets.token_hex(6)}:")
        out["presence"] = {"enabled": self.presence_enabled}
        return out

    async def setUp(self) -> None:  # type: ignore[override]
        require_workers(self.engine)
        await super().setUp()
        await self.start_reader()

    async def on_b(self, method: str, path: str, token: str) -> Response:
        self.base_url = self.b_url
        try:
            d = defer.ensureDeferred(self.request(method, path, token=token))
        finally:
            self.base_url = self.a_url
        return await d

    async def sharing(self) -> tuple[str, str]:
        alice = await self.user("alice")
        bob = await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        return alice, bob

    async def status_on_a(self, token: str) -> dict[str, Any]:
        resp = await self.request("GET", f"{CS}/presence/{q(ALICE)}/status", token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def eventually_on_a(self, token: str, state: str, timeout: float = 5.0
                              ) -> dict[str, Any]:
        """GET on A until alice reads as ``state`` (reports and timeouts apply async)."""
        seen: dict[str, Any] = {}
        for _ in range(int(timeout / 0.05)):
            seen = await self.status_on_a(token)
            if seen.get("presence") == state:
                return seen
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"alice never became {state} on main: {seen}")

    async def step(self, seconds: float, step: float = rp.HEARTBEAT_S) -> None:
        """Advance the shared clock in steps, letting each step's timers finish."""
        while seconds > 0:
            self.advance(min(step, seconds))
            seconds -= step
            await task.deferLater(reactor, 0.1, lambda: None)


class WorkerPresenceTest(WorkerPresenceTestCase):
    async def _main_sync(self, token: str, since: str | None = None) -> dict[str, Any]:
        path = f"{CS}/sync?timeout=0&set_presence=offline"
        if since:
            path += f"&since={q(since)}"
        resp = await self.request("GET", path, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    def _alice_presence(self, sync: dict[str, Any]) -> list[dict[str, Any]]:
        return [e["content"] for e in sync.get("presence", {}).get("events", [])
                if e["sender"] == ALICE]

    async def test_worker_sync_makes_online_then_times_out(self) -> None:
        alice, bob = await self.sharing()
        since = (await self._main_sync(bob))["next_batch"]
        self.assertEqual((await self.status_on_a(bob))["presence"], "offline")
        sync = await self.on_b("GET", f"{CS}/sync?timeout=0&set_presence=online", alice)
        self.assertEqual(sync.code, 200, sync)
        online = await self.eventually_on_a(bob, "online")
        self.assertTrue(online["currently_active"])
        # Bob's /sync on main sees it too.
        self.assertTrue(await wait_until(lambda: self.hs.replication.presence_syncs.applied > 0))
        seen = self._alice_presence(await self._main_sync(bob, since))
        self.assertEqual([p["presence"] for p in seen], ["online"])
        # And a /sync held on the worker (read from main's broadcasts).
        on_b = await self.on_b("GET", f"{CS}/presence/{q(ALICE)}/status", bob)
        self.assertEqual(on_b.json["presence"], "online", on_b)
        # Alice stops syncing: offline on main once SYNC_ONLINE_TIMEOUT_MS has passed.
        await self.step(SYNC_ONLINE_TIMEOUT_MS / 1000 + 2 * rp.HEARTBEAT_S)
        await self.eventually_on_a(bob, "offline")

    async def test_repeated_syncs_keep_online_past_the_timeout(self) -> None:
        """Long-polls reported by the heartbeat keep the user online (the rate bound
        sends no message per sync)."""
        alice, bob = await self.sharing()
        for _ in range(8):  # 40 s of syncing, past SYNC_ONLINE_TIMEOUT_MS
            sync = await self.on_b("GET", f"{CS}/sync?timeout=0&set_presence=online", alice)
            self.assertEqual(sync.code, 200, sync)
            await self.step(rp.HEARTBEAT_S)
        self.assertEqual((await self.status_on_a(bob))["presence"], "online")
        self.assertLess(self.b.replication.presence_syncs.messages, 8 + 2 * 8)

    async def test_silent_worker_expires(self) -> None:
        """B stops reporting (crashed, cut off): A forgets its syncs after EXPIRY_S, so a
        long sync B reported does not keep alice online until its end."""
        alice, bob = await self.sharing()
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{CS}/sync?timeout=240000&set_presence=online", alice))
        await self.eventually_on_a(bob, "online")
        link, self.b.replication.link = self.b.replication.link, None  # publishes nothing
        try:
            await self.step(rp.EXPIRY_S + rp.HEARTBEAT_S)
            self.assertTrue(await wait_until(
                lambda: self.hs.replication.presence_syncs.expired == 1))
            await self.step(SYNC_ONLINE_TIMEOUT_MS / 1000 + rp.HEARTBEAT_S)
            await self.eventually_on_a(bob, "offline")
        finally:
            self.b.replication.link = link
        await self.step(240)  # the held sync answers
        self.assertEqual((await poll).code, 200)

    async def test_worker_stopping_ends_its_syncs(self) -> None:
        alice, bob = await self.sharing()
        poll = defer.ensureDeferred(self.on_b(
            "GET", f"{CS}/sync?timeout=240000&set_presence=online", alice))
        await self.eventually_on_a(bob, "online")
        await self.b.stop()  # says "gone"; the held sync answers as the worker closes
        self.assertEqual((await poll).code, 200)
        await self.step(SYNC_ONLINE_TIMEOUT_MS / 1000 + rp.HEARTBEAT_S)
        await self.eventually_on_a(bob, "offline")
        self.assertEqual(self.hs.replication.presence_syncs.expired, 0)  # told, not expired

    async def test_legacy_events_on_worker_marks_online(self) -> None:
        alice, bob = await self.sharing()
        before = self.b.replication.streams.snapshot()["presence"]
        events = await self.on_b("GET", f"{CS}/events?timeout=0", alice)
        self.assertEqual(events.code, 200, events)
        await self.eventually_on_a(bob, "online")
        # Written by main only; B's position follows main's.
        self.assertTrue(await wait_until(
            lambda: self.b.replication.streams.snapshot()["presence"] > before))
        self.assertLessEqual(self.b.replication.streams.snapshot()["presence"],
                             self.hs.replication.streams.snapshot()["presence"])

    async def test_set_presence_offline_does_not_bump(self) -> None:
        alice, bob = await self.sharing()
        before = self.hs.replication.streams.snapshot()["presence"]
        sync = await self.on_b("GET", f"{CS}/sync?timeout=0&set_presence=offline", alice)
        self.assertEqual(sync.code, 200, sync)
        await self.step(2 * rp.HEARTBEAT_S)
        self.assertEqual(self.b.replication.presence_syncs.tracked(), 0)
        self.assertEqual(self.hs.replication.presence_syncs.applied, 0)
        self.assertEqual(self.hs.replication.streams.snapshot()["presence"], before)
        self.assertEqual((await self.status_on_a(bob))["presence"], "offline")


class WorkerPresenceDisabledTest(WorkerPresenceTestCase):
    presence_enabled = False

    async def test_nothing_reported(self) -> None:
        alice, bob = await self.sharing()
        self.assertIsNone(self.b.replication.presence_syncs)
        self.assertIsNone(self.hs.replication.presence_syncs)
        sync = await self.on_b("GET", f"{CS}/sync?timeout=0&set_presence=online", alice)
        self.assertEqual(sync.code, 200, sync)
        await self.step(rp.HEARTBEAT_S)
        self.assertEqual((await self.status_on_a(bob))["presence"], "offline")
