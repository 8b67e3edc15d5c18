"""Background jobs listing (``/_parley/admin/v1/background_jobs``): history purges, room
shutdowns and GDPR exports in one newest-first list, filtered by kind, paged without
losing or repeating jobs, each readable by id; plus the registry's merge on its own."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, task
from twisted.trial import unittest

from homeserver.jobs.listing import JobInfo, JobRegistry
from storage.stores.gdpr_exports import GdprExportStore
from tests.harness import TEST_PASSWORD
from tests.rest.room_helpers import RoomTestCase, q

JOBS = "/_parley/admin/v1/background_jobs"
SA = "/_synapse/admin"


class _Source:
    def __init__(self, kind: str, jobs: list[JobInfo]) -> None:
        self.kind = kind
        self._jobs = sorted(jobs, key=lambda j: -j.created_ts)

    async def list_jobs(self, limit: int, before_ts: int | None) -> list[JobInfo]:
        return [j for j in self._jobs if before_ts is None or j.created_ts < before_ts][:limit]

    async def get_job(self, job_id: str) -> JobInfo | None:
        return next((j for j in self._jobs if j.job_id == job_id), None)


def _job(kind: str, n: int, ts: int) -> JobInfo:
    return JobInfo(job_id=f"{kind}_{n}", kind=kind, status="complete", created_ts=ts)


class RegistryTest(unittest.TestCase):
    async def test_merge_filter_get_and_pages(self) -> None:
        registry = JobRegistry()
        registry.add_source(_Source("a", [_job("a", i, ts) for i, ts in
                                          enumerate([10, 30, 30, 50])]))
        registry.add_source(_Source("b", [_job("b", i, ts) for i, ts in
                                          enumerate([20, 30, 40])]))
        with self.assertRaises(ValueError):
            registry.add_source(_Source("a", []))
        self.assertEqual(registry.kinds, ["a", "b"])
        everything = await registry.list_jobs(100, None, None)
        self.assertEqual([j.created_ts for j in everything], [50, 40, 30, 30, 30, 20, 10])
        self.assertEqual([j.job_id for j in await registry.list_jobs(2, 35, "a")],
                         ["a_1", "a_2"])
        self.assertEqual(await registry.list_jobs(10, None, "nope"), [])
        self.assertEqual((await registry.get_job("b_2")).created_ts, 40)  # type: ignore[union-attr]
        self.assertIsNone(await registry.get_job("c_1"))
        # Paging with the endpoint's cut never splits a millisecond: every job once.
        for limit in (1, 2, 3, 4):
            seen: list[str] = []
            before = None
            for _ in range(20):
                page, before = await registry.page(limit, before, None)
                seen += [j.job_id for j in page]
                if before is None:
                    break
            self.assertEqual(sorted(seen), sorted(j.job_id for j in everything), limit)
        # A kind filter pages the same way.
        seen = []
        before = None
        for _ in range(20):
            page, before = await registry.page(1, before, "a")
            seen += [j.job_id for j in page]
            if before is None:
                break
        self.assertEqual(seen, ["a_3", "a_1", "a_2", "a_0"])


class BackgroundJobsTest(RoomTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        self.admin = (await self.login("admin")).json["access_token"]

    async def get(self, path: str, token: str | None = None) -> Any:
        return await self.request("GET", path, token=token or self.admin)

    async def ok(self, path: str) -> Any:
        resp = await self.get(path)
        self.assertEqual(resp.code, 200, resp)
        return resp.json

    async def wait_for(self, job_id: str) -> dict[str, Any]:
        for _ in range(500):
            job = await self.ok(f"{JOBS}/{q(job_id)}")
            if job["status"] in ("complete", "failed"):
                return job
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail("job never finished")

    async def _three_jobs(self) -> tuple[str, str, str]:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for i in range(3):
            await self.send_ok(alice, room, f"m{i}")
        self.advance(1)
        resp = await self.request("POST", f"{SA}/v1/purge_history/{q(room)}",
                                  {"purge_up_to_ts": self.clock.time_msec()}, token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        purge_id = resp.json["purge_id"]
        await self.wait_for(purge_id)
        self.advance(1)
        export_id = "exportjob1"
        await GdprExportStore(self.hs.db).create_job(export_id, "@alice:test.local",
                                                     "@admin:test.local", ["profile", "rooms"],
                                                     self.clock.time_msec())
        self.advance(1)
        resp = await self.request("DELETE", f"{SA}/v2/rooms/{q(room)}", {}, token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        delete_id = resp.json["delete_id"]
        await self.wait_for(delete_id)
        return purge_id, export_id, delete_id

    async def test_list_filter_and_get(self) -> None:
        purge_id, export_id, delete_id = await self._three_jobs()
        body = await self.ok(JOBS)
        self.assertEqual([j["job_id"] for j in body["jobs"]], [delete_id, export_id, purge_id])
        self.assertNotIn("next_batch", body)
        self.assertTrue({"purge_history", "gdpr_export", "room_shutdown"} <= set(body["kinds"]))
        by_id = {j["job_id"]: j for j in body["jobs"]}
        purge = by_id[purge_id]
        self.assertEqual((purge["kind"], purge["status"]), ("purge_history", "complete"))
        self.assertEqual(purge["requested_by"], "@admin:test.local")
        self.assertTrue(purge["target"].startswith("!"))
        self.assertIn("hidden_events", purge["progress"])
        export = by_id[export_id]
        self.assertEqual((export["kind"], export["status"]), ("gdpr_export", "scheduled"))
        self.assertEqual(export["target"], "@alice:test.local")
        self.assertEqual(export["progress"], {"done": 0, "total": 2, "items": 0})
        shutdown = by_id[delete_id]
        self.assertEqual((shutdown["kind"], shutdown["status"]), ("room_shutdown", "complete"))
        self.assertEqual(shutdown["progress"]["kicked_users"], 1)
        self.assertGreater(shutdown["progress"]["purged_events"], 0)
        self.assertIsNotNone(shutdown["updated_ts"])
        # Never secrets: no token or archive path of an export.
        self.assertNotIn("token", str(export))
        # Kind filter.
        only = await self.ok(f"{JOBS}?kind=room_shutdown")
        self.assertEqual([j["job_id"] for j in only["jobs"]], [delete_id])
        self.assertEqual((await self.ok(f"{JOBS}?kind=retention_xyz"))["jobs"], [])
        # By id.
        for job_id in (purge_id, export_id, delete_id):
            self.assertEqual(await self.ok(f"{JOBS}/{q(job_id)}"), by_id[job_id])
        self.assertMatrixError(await self.get(f"{JOBS}/nope"), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.get(f"{JOBS}/{'x' * 200}"), 404, "M_NOT_FOUND")

    async def test_pages(self) -> None:
        purge_id, export_id, delete_id = await self._three_jobs()
        first = await self.ok(f"{JOBS}?limit=2")
        self.assertEqual([j["job_id"] for j in first["jobs"]], [delete_id, export_id])
        second = await self.ok(f"{JOBS}?limit=2&from={first['next_batch']}")
        self.assertEqual([j["job_id"] for j in second["jobs"]], [purge_id])
        self.assertNotIn("next_batch", second)

    async def test_bad_parameters(self) -> None:
        for query in ("limit=0", "limit=1001", "limit=x", "from=-3", "from=abc", "from=0",
                      "kind=Bad-Kind", f"kind={'a' * 80}"):
            self.assertMatrixError(await self.get(f"{JOBS}?{query}"), 400, "M_INVALID_PARAM")

    async def test_roles(self) -> None:
        for role, code in (("auditor", 200), ("moderator", 200), ("support", 403)):
            token = (await self.register(f"r_{role}"))["access_token"]
            await self.hs.stores.roles.set_role(f"@r_{role}:test.local", role)
            resp = await self.get(JOBS, token=token)
            self.assertEqual(resp.code, code, (role, resp))
        alice = await self.user("alice")
        self.assertMatrixError(await self.get(JOBS, token=alice), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.request("GET", JOBS), 401, "M_MISSING_TOKEN")
