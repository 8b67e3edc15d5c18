"""Media admin beyond one media: a user's and a room's media (metadata only), bulk
quarantine (counts, downloads refused after, protected media spared), protection,
deleting a user's media and media older than a date; roles and audit entries."""

from __future__ import annotations

from typing import Any

from tests.rest.room_helpers import CS, RoomTestCase, q

SA = "/_synapse/admin/v1"
MEDIA = "/_matrix/client/v1/media"


class AdminMediaTest(RoomTestCase):
    async def _setup(self) -> None:
        await self.staff()
        self.alice = await self.user("alice")

    async def upload(self, token: str, data: bytes) -> str:
        resp = await self.request("POST", "/_matrix/media/v3/upload", raw_body=data,
                                  headers={"Content-Type": "text/plain"}, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["content_uri"].rsplit("/", 1)[1]

    async def download(self, media_id: str) -> int:
        resp = await self.request("GET", f"{MEDIA}/download/test.local/{media_id}",
                                  token=self.alice)
        return resp.code

    async def _actions(self) -> list[dict[str, Any]]:
        events = await self.hs.stores.security_events.list_events(event_type="admin_action")
        return [e.details for e in events if e.outcome == "success"]

    async def test_list_user_media(self) -> None:
        await self._setup()
        ids = [await self.upload(self.alice, b"x" * n) for n in (3, 1, 2)]
        path = f"{SA}/users/{q('@alice:test.local')}/media"
        resp = await self.request("GET", path, token=self.auditor)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["total"], 3)
        first = resp.json["media"][0]
        self.assertEqual(set(first), {"media_id", "media_type", "media_length", "upload_name",
                                      "created_ts", "last_access_ts", "quarantined_by",
                                      "safe_from_quarantine"})
        self.assertEqual(sorted(m["media_id"] for m in resp.json["media"]), sorted(ids))
        page = await self.request("GET", f"{path}?limit=2&order_by=media_length&dir=b",
                                  token=self.mod)
        self.assertEqual([m["media_length"] for m in page.json["media"]], [3, 2])
        self.assertEqual(page.json["next_token"], 2)
        rest = await self.request("GET", f"{path}?limit=2&from=2&order_by=media_length&dir=b",
                                  token=self.mod)
        self.assertEqual([m["media_length"] for m in rest.json["media"]], [1])
        self.assertNotIn("next_token", rest.json)
        for bad in ("order_by=password", "dir=x", "limit=0", "limit=100000", "from=-1"):
            resp = await self.request("GET", f"{path}?{bad}", token=self.admin)
            self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("GET", path, token=self.support)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("GET", path)
        self.assertMatrixError(resp, 401, "M_MISSING_TOKEN")
        resp = await self.request("GET", f"{SA}/users/{q('@nobody:test.local')}/media",
                                  token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        resp = await self.request("GET", f"{SA}/users/{q('@x:elsewhere.example')}/media",
                                  token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")

    async def _room_with_media(self) -> tuple[str, list[str]]:
        ids = [await self.upload(self.alice, f"file{i}".encode()) for i in range(3)]
        room = await self.create_room(self.alice)
        await self.send(self.alice, room, content={
            "msgtype": "m.image", "body": "a.png", "url": f"mxc://test.local/{ids[0]}",
            "info": {"thumbnail_url": f"mxc://test.local/{ids[1]}"}})
        await self.send(self.alice, room, content={
            "msgtype": "m.file", "body": "b", "url": f"mxc://test.local/{ids[2]}"})
        await self.send(self.alice, room, content={
            "msgtype": "m.file", "body": "c", "url": "mxc://remote.example/abcdef"})
        await self.send(self.alice, room, content={"msgtype": "m.text", "body": "no media"})
        return room, ids

    async def test_room_media_and_quarantine(self) -> None:
        await self._setup()
        room, ids = await self._room_with_media()
        resp = await self.request("GET", f"{SA}/room/{q(room)}/media", token=self.auditor)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["local"], [f"mxc://test.local/{i}" for i in ids])
        self.assertEqual(resp.json["remote"], ["mxc://remote.example/abcdef"])
        resp = await self.request("GET", f"{SA}/room/{q('!nope:test.local')}/media",
                                  token=self.admin)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")
        # Protect one: the bulk call spares it.
        resp = await self.request("POST", f"{SA}/media/protect/{ids[1]}", token=self.mod)
        self.assertEqual(resp.code, 200, resp)
        listing = await self.request("GET", f"{SA}/users/{q('@alice:test.local')}/media",
                                     token=self.admin)
        protected = {m["media_id"]: m["safe_from_quarantine"] for m in listing.json["media"]}
        self.assertTrue(protected[ids[1]])
        self.assertFalse(protected[ids[0]])
        resp = await self.request("POST", f"{SA}/room/{q(room)}/media/quarantine",
                                  token=self.auditor)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", f"{SA}/room/{q(room)}/media/quarantine",
                                  token=self.mod)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"num_quarantined": 2})
        self.assertEqual(await self.download(ids[0]), 404)
        self.assertEqual(await self.download(ids[2]), 404)
        self.assertEqual(await self.download(ids[1]), 200)
        actions = await self._actions()
        self.assertIn({"action": "quarantine_room_media", "role": "moderator",
                       "room_id": room, "num_quarantined": 2}, actions)
        self.assertIn({"action": "protect_media", "role": "moderator", "media_id": ids[1]},
                      actions)
        # Unprotected, it goes too.
        resp = await self.request("POST", f"{SA}/media/unprotect/{ids[1]}", token=self.mod)
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("POST", f"{SA}/room/{q(room)}/media/quarantine",
                                  token=self.mod)
        self.assertEqual(resp.json["num_quarantined"], 3)
        self.assertEqual(await self.download(ids[1]), 404)
        resp = await self.request("POST", f"{SA}/media/protect/unknownmedia", token=self.mod)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_user_media_quarantine(self) -> None:
        await self._setup()
        ids = [await self.upload(self.alice, f"mine{i}".encode()) for i in range(3)]
        other = await self.upload(self.admin, b"not alice's")
        await self.request("POST", f"{SA}/media/protect/{ids[2]}", token=self.admin)
        path = f"{SA}/user/{q('@alice:test.local')}/media/quarantine"
        resp = await self.request("POST", path, token=self.support)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", path, token=self.mod)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"num_quarantined": 2})
        self.assertEqual(await self.download(ids[0]), 404)
        self.assertEqual(await self.download(ids[1]), 404)
        self.assertEqual(await self.download(ids[2]), 200)
        self.assertEqual(await self.download(other), 200)
        listing = await self.request("GET", f"{SA}/users/{q('@alice:test.local')}/media",
                                     token=self.admin)
        quarantined = {m["media_id"]: m["quarantined_by"] for m in listing.json["media"]}
        self.assertIsNotNone(quarantined[ids[0]])
        self.assertIsNone(quarantined[ids[2]])
        self.assertIn({"action": "quarantine_user_media", "role": "moderator",
                       "user_id": "@alice:test.local", "num_quarantined": 2},
                      await self._actions())
        resp = await self.request("POST", f"{SA}/user/{q('@nobody:test.local')}/media/quarantine",
                                  token=self.mod)
        self.assertMatrixError(resp, 404, "M_NOT_FOUND")

    async def test_delete_user_media(self) -> None:
        await self._setup()
        ids = [await self.upload(self.alice, f"del{i}".encode()) for i in range(3)]
        path = f"{SA}/users/{q('@alice:test.local')}/media"
        resp = await self.request("DELETE", path, token=self.mod)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("DELETE", f"{path}?limit=2&order_by=media_id",
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        first = resp.json["deleted_media"]
        self.assertEqual(resp.json["total"], 2)
        self.assertLess(set(first), set(ids))
        resp = await self.request("DELETE", path, token=self.admin)
        self.assertEqual(resp.json, {"deleted_media": sorted(set(ids) - set(first)),
                                     "total": 1})
        for media_id in ids:
            self.assertEqual(await self.download(media_id), 404)
        listing = await self.request("GET", path, token=self.admin)
        self.assertEqual(listing.json["total"], 0)
        self.assertIn({"action": "delete_user_media", "role": "admin",
                       "user_id": "@alice:test.local", "total": 1}, await self._actions())

    async def test_delete_media_before(self) -> None:
        await self._setup()
        old = await self.upload(self.alice, b"old media")
        avatar = await self.upload(self.alice, b"avatar media")
        resp = await self.request("PUT", f"{CS}/profile/{q('@alice:test.local')}/avatar_url",
                                  {"avatar_url": f"mxc://test.local/{avatar}"},
                                  token=self.alice)
        self.assertEqual(resp.code, 200, resp)
        kept = await self.upload(self.alice, b"protected media")
        await self.request("POST", f"{SA}/media/protect/{kept}", token=self.admin)
        self.advance(60)
        cutoff = self.clock.time_msec()
        self.advance(60)
        new = await self.upload(self.alice, b"new media")
        resp = await self.request("POST", f"{SA}/media/delete", token=self.admin)
        self.assertMatrixError(resp, 400, "M_MISSING_PARAM")
        resp = await self.request("POST", f"{SA}/media/delete?before_ts=x", token=self.admin)
        self.assertMatrixError(resp, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", f"{SA}/media/delete?before_ts={cutoff}",
                                  token=self.mod)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", f"{SA}/media/delete?before_ts={cutoff}",
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"deleted_media": [old], "total": 1})
        self.assertEqual(await self.download(old), 404)
        for media_id in (avatar, kept, new):
            self.assertEqual(await self.download(media_id), 200)
        # keep_profiles=false also takes the avatar; size_gt filters by size.
        resp = await self.request(
            "POST", f"{SA}/media/delete?before_ts={cutoff}&keep_profiles=false&size_gt=100",
            token=self.admin)
        self.assertEqual(resp.json["total"], 0)
        resp = await self.request(
            "POST", f"{SA}/media/delete?before_ts={cutoff}&keep_profiles=false",
            token=self.admin)
        self.assertEqual(resp.json, {"deleted_media": [avatar], "total": 1})
        self.assertEqual(await self.download(kept), 200)
