"""``POST /_synapse/admin/v1/purge_media_cache?before_ts=``: cached remote media and
thumbnails not served since then are dropped (files and rows), newer ones kept, the
quarantine of remote media survives; parameters checked as Synapse; media.delete
permission; audited."""

from __future__ import annotations

from typing import Any

from tests.rest.test_federation_media import CLIENT_MEDIA, MediaTestCase, png

SA = "/_synapse/admin/v1"
PURGE = f"{SA}/purge_media_cache"
DAY = 86_400


class PurgeMediaCacheTest(MediaTestCase):
    async def download(self, token: str, media_id: str) -> Any:
        return await self.request("GET", f"{CLIENT_MEDIA}/download/remote.test/{media_id}",
                                  token=token)

    async def thumb(self, token: str, media_id: str) -> Any:
        return await self.request("GET", f"{CLIENT_MEDIA}/thumbnail/remote.test/{media_id}"
                                         "?width=32&height=32&method=crop", token=token)

    async def test_parameters_and_permission(self) -> None:
        admin = await self.token_on(self.hs, "admin", admin=True)
        alice = await self.token_on(self.hs, "alice")
        resp = await self.request("POST", PURGE, token=admin)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        for bad in ("abc", "-1", "1.5", "99999999999999999999999", "1000"):
            resp = await self.request("POST", f"{PURGE}?before_ts={bad}", token=admin)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", f"{PURGE}?before_ts=30000000000", token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", f"{PURGE}?before_ts=30000000000")
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("POST", f"{PURGE}?before_ts=30000000000", token=admin)
        self.assertEqual((resp.code, resp.json), (200, {"deleted": 0}))

    async def test_old_entries_purged_new_kept_quarantine_kept(self) -> None:
        admin = await self.token_on(self.hs, "admin", admin=True)
        alice = await self.token_on(self.hs, "alice")
        old_file = await self.remote_media(png(color="red"))
        old_thumb = await self.remote_media(png(color="green"))
        quarantined = await self.remote_media(png(color="blue"))
        fresh = await self.remote_media(png(color="yellow"))
        self.assertEqual((await self.download(alice, old_file)).code, 200)
        self.assertEqual((await self.thumb(alice, old_file)).code, 200)
        self.assertEqual((await self.thumb(alice, old_thumb)).code, 200)
        self.assertEqual((await self.download(alice, quarantined)).code, 200)
        resp = await self.request("POST", f"{SA}/media/quarantine/remote.test/{quarantined}",
                                  {}, token=admin)
        self.assertEqual(resp.code, 200, resp)
        self.advance(2 * DAY)
        self.assertEqual((await self.download(alice, fresh)).code, 200)
        fresh_thumb = await self.thumb(alice, fresh)
        self.assertEqual(fresh_thumb.code, 200)
        before_ts = self.clock.time_msec() - DAY * 1000
        resp = await self.request("POST", f"{PURGE}?before_ts={before_ts}", token=admin)
        self.assertEqual((resp.code, resp.json), (200, {"deleted": 2}))
        # Again: nothing left to purge.
        resp = await self.request("POST", f"{PURGE}?before_ts={before_ts}", token=admin)
        self.assertEqual((resp.code, resp.json), (200, {"deleted": 0}))
        rows = await self.hs.db.query(
            "t", "SELECT media_id FROM remote_media_thumbnails ORDER BY media_id")
        self.assertEqual([r[0] for r in rows], [fresh])
        # The quarantine outlived the purge (the remote server still has the file).
        self.assertMatrixError(await self.download(alice, quarantined), 404, "M_NOT_FOUND")
        # With the remote server down, only the fresh entries are served.
        await self.remote.stop()
        self.assertEqual((await self.download(alice, fresh)).code, 200)
        self.assertEqual((await self.thumb(alice, fresh)).raw, fresh_thumb.raw)
        self.assertMatrixError(await self.download(alice, old_file), 502, "M_UNKNOWN")
        self.assertMatrixError(await self.thumb(alice, old_file), 502, "M_UNKNOWN")
        self.assertMatrixError(await self.thumb(alice, old_thumb), 502, "M_UNKNOWN")
        # Audited, with the date and the count only.
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        purges = [e.details for e in events if e.details.get("action") == "purge_media_cache"]
        self.assertEqual(len(purges), 2)
        self.assertEqual({p["before_ts"] for p in purges}, {before_ts})
        self.assertEqual(sorted(p["deleted"] for p in purges), [0, 2])


class PurgeWithoutFederationTest(MediaTestCase):
    """Federation off: no remote media cache, nothing to purge."""

    def config_overrides(self) -> dict[str, Any]:
        return {}

    async def setUp(self) -> None:  # type: ignore[override]
        # A plain server: skip the second one of FederationTestCase.
        from tests.harness import HomeserverTestCase

        await HomeserverTestCase.setUp(self)

    async def test_answers_zero(self) -> None:
        admin = await self.token_on(self.hs, "admin", admin=True)
        resp = await self.request("POST", f"{PURGE}?before_ts=30000000000", token=admin)
        self.assertEqual((resp.code, resp.json), (200, {"deleted": 0}))
