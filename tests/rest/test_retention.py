"""Message retention (``retention``): the periodic purge job, driven by the test clock,
deletes history older than each room's max lifetime (server default or the room's
``m.room.retention`` state clamped to the allowed range, never below its min lifetime),
keeps the room's state and latest event, resumes an interrupted run, and lists its
runs as background jobs of kind ``retention``."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task

from homeserver.app import build_homeserver
from homeserver.gdpr.retention_config import PurgeJobConfig
from homeserver.handlers.retention import RetentionHandler
from homeserver.jobs.listing import JobInfo
from storage.stores.retention import RetentionStore
from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import CS, RoomTestCase, q

HOUR = 3600
DAY = 24 * HOUR
DAY_MS = DAY * 1000
JOBS = "/_parley/admin/v1/background_jobs"


# Tests log in again after moving the clock days ahead: no new-login notices (their
# background sends would outlive the test).
QUIET = {"detection": {"new_login": {"enabled": False}}}


class RetentionTestCase(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {**QUIET, "retention": {
            "enabled": True,
            "default_policy": {"min_lifetime": "3d", "max_lifetime": "10d"},
            "allowed_lifetime_min": "1d", "allowed_lifetime_max": "20d",
            "purge_jobs": [{"interval": "1h"}]}}

    async def relogin(self, name: str) -> str:
        resp = await self.login(name)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["access_token"]

    async def runs(self) -> list[JobInfo]:
        assert self.hs.retention_jobs is not None
        return await self.hs.retention_jobs.list_jobs(100, None)

    async def advance_and_purge(self, seconds: float) -> JobInfo:
        """Move the clock (the purge job fires) and wait for the run it started."""
        self.advance(seconds)
        now = self.clock.time_msec()
        for _ in range(1000):
            runs = await self.runs()
            if runs and runs[0].created_ts >= now and all(r.status != "active" for r in runs):
                self.assertEqual(runs[0].status, "complete", runs[0])
                return runs[0]
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail(f"the retention run never finished: {await self.runs()}")

    async def bodies(self, token: str, room_id: str) -> list[str]:
        resp = await self.request("GET", f"{CS}/rooms/{q(room_id)}/messages?dir=b&limit=100",
                                  token=token)
        self.assertEqual(resp.code, 200, resp)
        return [e["content"].get("body") for e in reversed(resp.json["chunk"])
                if e["type"] == "m.room.message"]


class RetentionPurgeTest(RetentionTestCase):
    async def test_default_policy_purges_old_history_and_keeps_state(self) -> None:
        alice = await self.user("alice")
        await self.user("carol")
        room_id = await self.create_room(alice, preset="public_chat", name="Kept name")
        old = [await self.send_ok(alice, room_id, f"old {i}") for i in range(3)]
        only_old = await self.create_room(alice, name="Quiet")
        for i in range(2):
            await self.send_ok(alice, only_old, f"quiet {i}")

        first = await self.advance_and_purge(5 * DAY)  # nothing is 10 days old yet
        self.assertEqual(first.progress["events_deleted"], 0)
        alice = await self.relogin("alice")
        await self.send_ok(alice, room_id, "recent")
        run = await self.advance_and_purge(6 * DAY)  # the old ones are 11 days old now

        self.assertEqual(run.kind, "retention")
        self.assertTrue(run.job_id.startswith("retention_"))
        self.assertGreaterEqual(run.progress["events_deleted"], 4)
        self.assertEqual(run.progress["done"], run.progress["total"])
        alice = await self.relogin("alice")
        self.assertEqual(await self.bodies(alice, room_id), ["recent"])
        for event_id in old:
            self.assertMatrixError(await self.get_event(alice, room_id, event_id), 404,
                                   "M_NOT_FOUND")
        # The room's latest event is never purged, however old.
        self.assertEqual(await self.bodies(alice, only_old), ["quiet 1"])
        # State is kept: the name is there, and a new member can join and read it.
        carol = await self.relogin("carol")
        self.assertEqual((await self.join(carol, room_id)).code, 200)
        resp = await self.request("GET", f"{CS}/rooms/{q(room_id)}/state/m.room.name",
                                  token=carol)
        self.assertEqual(resp.json, {"name": "Kept name"})
        await self.send_ok(carol, room_id, "after the purge")
        self.assertEqual(await self.bodies(alice, room_id), ["recent", "after the purge"])
        # The run is a background job readable by id, listed by the admin API.
        assert self.hs.retention_jobs is not None
        self.assertEqual(await self.hs.retention_jobs.get_job(run.job_id), run)
        self.assertIsNone(await self.hs.retention_jobs.get_job("purge_nothing"))
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        admin = await self.relogin("admin")
        resp = await self.request("GET", f"{JOBS}?kind=retention", token=admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertIn("retention", resp.json["kinds"])
        self.assertEqual([j["job_id"] for j in resp.json["jobs"]], [run.job_id, first.job_id])
        resp = await self.request("GET", f"{JOBS}/{run.job_id}", token=admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((resp.json["kind"], resp.json["status"]), ("retention", "complete"))

    async def test_room_policy_clamped_and_min_lifetime(self) -> None:
        alice = await self.user("alice")
        rooms = {}
        # 1h is below the allowed minimum (1d); 100d above the maximum (20d); a room
        # setting only max_lifetime 2d still gets the default min_lifetime (3d), and
        # history is kept for the longer of the two.
        for name, policy in (("short", {"min_lifetime": HOUR * 1000,
                                        "max_lifetime": HOUR * 1000}),
                             ("long", {"max_lifetime": 100 * DAY_MS}),
                             ("under_min", {"max_lifetime": 2 * DAY_MS}),
                             ("default", None)):
            room_id = await self.create_room(alice, name=name)
            if policy is not None:
                resp = await self.put_state(alice, room_id, "m.room.retention", policy)
                self.assertEqual(resp.code, 200, resp)
            await self.send_ok(alice, room_id, f"{name} old")
            await self.send_ok(alice, room_id, f"{name} last")
            rooms[name] = room_id

        async def olds() -> dict[str, bool]:
            token = await self.relogin("alice")
            return {name: f"{name} old" in await self.bodies(token, room_id)
                    for name, room_id in rooms.items()}

        await self.advance_and_purge(2 * HOUR)
        self.assertEqual(await olds(), dict.fromkeys(rooms, True))
        await self.advance_and_purge(DAY)  # 1d+2h: the 1h room, clamped to 1d
        self.assertEqual(await olds(), {"short": False, "long": True, "under_min": True,
                                        "default": True})
        await self.advance_and_purge(2 * DAY)  # 3d+2h: past the 3d min lifetime
        self.assertEqual(await olds(), {"short": False, "long": True, "under_min": False,
                                        "default": True})
        await self.advance_and_purge(8 * DAY)  # 11d+2h: the server default (10d)
        self.assertEqual(await olds(), {"short": False, "long": True, "under_min": False,
                                        "default": False})
        await self.advance_and_purge(10 * DAY)  # 21d+2h: 100d clamped to 20d
        self.assertEqual(await olds(), dict.fromkeys(rooms, False))

    async def test_bad_retention_state_refused(self) -> None:
        alice = await self.user("alice")
        room_id = await self.create_room(alice)
        for bad in ({"max_lifetime": "1d"}, {"max_lifetime": -5}, {"min_lifetime": True},
                    {"min_lifetime": 5 * DAY_MS, "max_lifetime": DAY_MS}):
            resp = await self.put_state(alice, room_id, "m.room.retention", bad)
            self.assertMatrixError(resp, 400, "M_BAD_JSON")
        resp = await self.put_state(alice, room_id, "m.room.retention",
                                    {"min_lifetime": DAY_MS, "max_lifetime": 5 * DAY_MS})
        self.assertEqual(resp.code, 200, resp)

    async def test_interrupted_run_resumes_at_start_up(self) -> None:
        alice = await self.user("alice")
        room_id = await self.create_room(alice, name="resume")
        await self.send_ok(alice, room_id, "old")
        await self.send_ok(alice, room_id, "last")
        store = RetentionStore(self.hs.db)
        # A run a stopped process left active part-way (cursor before every room).
        await store.create_run("retention_left", None, None, 1, self.clock.time_msec())
        await store.add_progress("retention_left", "!", 0, 0, 0, 0, self.clock.time_msec())
        await self.hs.stop()
        self.reactor_time.advance(11 * DAY)  # no loop runs while stopped
        self.hs = await build_homeserver(self.config, clock=self.clock)
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"
        assert self.hs.retention_jobs is not None
        for _ in range(1000):
            job = await self.hs.retention_jobs.get_job("retention_left")
            assert job is not None
            if job.status != "active":
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(job.status, "complete")
        self.assertGreaterEqual(job.progress["events_deleted"], 1)
        token = await self.relogin("alice")
        self.assertEqual(await self.bodies(token, room_id), ["last"])


class RetentionPolicyTest(RetentionTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {**QUIET, "retention": {
            "enabled": True, "default_policy": {"max_lifetime": "10d"},
            "allowed_lifetime_min": "1d", "allowed_lifetime_max": "20d",
            "purge_jobs": [{"longest_max_lifetime": "3d", "interval": "52w"},
                           {"shortest_max_lifetime": "3d", "interval": "52w"}]}}

    async def test_policy_and_job_ranges(self) -> None:
        handler = self.hs.retention
        assert isinstance(handler, RetentionHandler)
        self.assertEqual(handler.policy_for(None), (None, 10 * DAY_MS))
        self.assertEqual(handler.policy_for({"max_lifetime": 1}), (None, DAY_MS))
        self.assertEqual(handler.policy_for({"max_lifetime": 99 * DAY_MS}),
                         (None, 20 * DAY_MS))
        self.assertEqual(handler.policy_for({"max_lifetime": "x"}), (None, 10 * DAY_MS))
        self.assertEqual(handler.policy_for({"min_lifetime": 2 * DAY_MS}),
                         (2 * DAY_MS, 10 * DAY_MS))
        short = PurgeJobConfig(None, 3 * DAY_MS)
        long = PurgeJobConfig(3 * DAY_MS, None)
        self.assertTrue(handler._in_job(3 * DAY_MS, short))  # noqa: SLF001
        self.assertFalse(handler._in_job(3 * DAY_MS, long))  # noqa: SLF001
        self.assertTrue(handler._in_job(10 * DAY_MS, long))  # noqa: SLF001

    async def test_each_job_purges_only_its_rooms(self) -> None:
        alice = await self.user("alice")
        short = await self.create_room(alice, name="short")
        resp = await self.put_state(alice, short, "m.room.retention",
                                    {"max_lifetime": 2 * DAY_MS})
        self.assertEqual(resp.code, 200, resp)
        default = await self.create_room(alice, name="default")
        for room_id in (short, default):
            await self.send_ok(alice, room_id, "old")
            await self.send_ok(alice, room_id, "last")
        self.advance(11 * DAY)  # both rooms expired; the jobs' (yearly) loops not due
        handler = self.hs.retention
        assert handler is not None
        short_job, long_job = self.hs.config.retention.purge_jobs
        await handler.run_job(short_job)  # max lifetime <= 3d: only the 2d room
        token = await self.relogin("alice")
        self.assertEqual(await self.bodies(token, short), ["last"])
        self.assertEqual(await self.bodies(token, default), ["old", "last"])
        await handler.run_job(long_job)  # > 3d: the default (10d) room
        self.assertEqual(await self.bodies(token, default), ["last"])
        runs = await self.runs()
        self.assertEqual([r.progress["rooms_purged"] for r in runs], [1, 1])
