"""GDPR data export (homeserver/gdpr/): request behind UIA, progress, download of the
archive with a single-use expiring link, access control, admin export, expiry and
cleanup, and resuming a job after a restart."""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from homeserver.app import build_homeserver
from plugins import hookimpl
from storage.stores.pushers import Pusher
from tests.harness import TEST_PASSWORD, Response
from tests.rest.room_helpers import CS, RoomTestCase, q

EXPORT = "/_parley/client/v1/export"
ADMIN_EXPORT = "/_parley/admin/v1/users/{}/export"
ALICE = "@alice:test.local"


class GdprExportTestCase(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return {"gdpr": {"export_link_lifetime": "1h"}}

    def password(self, user_id: str) -> dict[str, Any]:
        return {"type": "m.login.password", "password": TEST_PASSWORD,
                "identifier": {"type": "m.id.user", "user": user_id}}

    async def start_export(self, token: str, user_id: str) -> str:
        first = await self.request("POST", EXPORT, {}, token=token)
        self.assertEqual(first.code, 401, first)
        auth = {**self.password(user_id), "session": first.json["session"]}
        resp = await self.request("POST", EXPORT, {"auth": auth}, token=token)
        self.assertEqual(resp.code, 200, resp)
        return resp.json["export_id"]

    async def wait_complete(self, export_id: str, token: str) -> dict[str, Any]:
        for _ in range(400):
            resp = await self.request("GET", f"{EXPORT}/{export_id}", token=token)
            self.assertEqual(resp.code, 200, resp)
            if resp.json["status"] in ("complete", "failed"):
                self.assertEqual(resp.json["status"], "complete", resp)
                return resp.json
            await deferLater(reactor, 0.02)
        self.fail(f"export {export_id} did not complete")

    async def download(self, status: dict[str, Any], token: str | None = None) -> Response:
        url = urlsplit(status["download_url"])
        return await self.request("GET", f"{url.path}?{url.query}", token=token)

    async def fixture(self) -> tuple[str, str, str, str]:
        """Alice and Bob talk in a room; Alice uploads a file and sets account data.
        Returns (alice token, bob token, room id, media id)."""
        alice, bob = await self.user("alice"), await self.user("bob")
        room = await self.create_room(alice, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        await self.send_ok(alice, room, "alice says secret-a1")
        await self.send_ok(bob, room, "bob says private-b1")
        await self.send_ok(alice, room, "alice says secret-a2")
        up = await self.request("POST", "/_matrix/media/v3/upload", raw_body=b"\x00cipher\xff" * 50,
                                headers={"Content-Type": "application/octet-stream"},
                                token=alice)
        self.assertEqual(up.code, 200, up)
        media_id = up.json["content_uri"].rsplit("/", 1)[1]
        ad = await self.request("PUT", f"{CS}/user/{q(ALICE)}/account_data/org.example.x",
                                {"hello": "world"}, token=alice)
        self.assertEqual(ad.code, 200, ad)
        return alice, bob, room, media_id


class ExportTest(GdprExportTestCase):
    async def test_user_exports_and_downloads(self) -> None:
        alice, bob, room, media_id = await self.fixture()
        export_id = await self.start_export(alice, ALICE)
        status = await self.wait_complete(export_id, alice)
        self.assertEqual(status["user_id"], ALICE)
        self.assertEqual(status["progress"]["sections_done"],
                         status["progress"]["sections_total"])
        resp = await self.download(status)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.header("Content-Type"), "application/zip")
        zf = zipfile.ZipFile(io.BytesIO(resp.raw))
        names = set(zf.namelist())
        for name in ("manifest.json", "profile.json", "account_data.json", "devices.json",
                     "memberships.json", "push_rules.json", "pushers.json", "plugins.json",
                     "events/000001.json", "media/000001.json", "audit/000001.json",
                     f"media/files/{media_id}"):
            self.assertIn(name, names)
        events = json.loads(zf.read("events/000001.json"))
        bodies = [e["content"].get("body") for e in events]
        self.assertIn("alice says secret-a1", bodies)
        self.assertIn("alice says secret-a2", bodies)
        self.assertTrue(all(e["sender"] == ALICE for e in events))
        self.assertEqual(status["progress"]["sections"]["events"]["items"], len(events))
        everything = b"".join(zf.read(n) for n in names)
        self.assertNotIn(b"private-b1", everything)  # Bob's message is not Alice's data
        self.assertEqual(zf.read(f"media/files/{media_id}"), b"\x00cipher\xff" * 50)
        media = json.loads(zf.read("media/000001.json"))
        self.assertEqual([m["media_id"] for m in media], [media_id])
        account_data = json.loads(zf.read("account_data.json"))
        self.assertEqual(account_data["global"]["org.example.x"], {"hello": "world"})
        memberships = json.loads(zf.read("memberships.json"))
        self.assertEqual([(m["room_id"], m["membership"]) for m in memberships],
                         [(room, "join")])
        devices = json.loads(zf.read("devices.json"))
        self.assertEqual(len(devices), 1)
        audit = json.loads(zf.read("audit/000001.json"))
        self.assertIn("gdpr_export_request", [a["action"] for a in audit])
        manifest = json.loads(zf.read("manifest.json"))
        self.assertEqual(manifest["user_id"], ALICE)
        # The link is single-use.
        again = await self.download(status)
        self.assertMatrixError(again, 404, "M_NOT_FOUND")
        # A fresh status read gives a new link that works.
        fresh = (await self.request("GET", f"{EXPORT}/{export_id}", token=alice)).json
        self.assertEqual((await self.download(fresh, token=alice)).code, 200)
        # Requests and downloads are audited.
        trail = await self.hs.stores.security_events.list_events(event_type="gdpr", limit=20)
        actions = [(e.action, e.outcome) for e in trail]
        self.assertIn(("gdpr_export_request", "success"), actions)
        self.assertEqual(actions.count(("gdpr_export_download", "success")), 2)
        self.assertIn(("gdpr_export_download", "failure"), actions)

    async def test_uia_required(self) -> None:
        alice = await self.user("alice")
        resp = await self.request("POST", EXPORT, {}, token=alice)
        self.assertEqual(resp.code, 401, resp)
        self.assertIn(["m.login.password"], [f["stages"] for f in resp.json["flows"]])
        wrong = {**self.password(ALICE), "password": "wrong-password",
                 "session": resp.json["session"]}
        bad = await self.request("POST", EXPORT, {"auth": wrong}, token=alice)
        self.assertEqual(bad.code, 401, bad)
        self.assertEqual(bad.json.get("errcode"), "M_FORBIDDEN", bad)
        none = await self.request("POST", EXPORT, {})
        self.assertMatrixError(none, 401, "M_MISSING_TOKEN")

    async def test_other_users_export_is_404(self) -> None:
        alice, bob, _, _ = await self.fixture()
        export_id = await self.start_export(alice, ALICE)
        status = await self.wait_complete(export_id, alice)
        self.assertMatrixError(await self.request("GET", f"{EXPORT}/{export_id}", token=bob),
                               404, "M_NOT_FOUND")
        # Bob holding Alice's link but sending his own access token: refused too.
        self.assertMatrixError(await self.download(status, token=bob), 404, "M_NOT_FOUND")
        path = urlsplit(status["download_url"]).path
        self.assertMatrixError(await self.request("GET", path), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.request("GET", f"{path}?token=nope"), 404,
                               "M_NOT_FOUND")
        self.assertMatrixError(await self.request("GET", f"{EXPORT}/nope", token=alice),
                               404, "M_NOT_FOUND")
        # Alice's (unused) link still works for her.
        self.assertEqual((await self.download(status)).code, 200)

    async def test_second_request_answers_the_running_export(self) -> None:
        alice = await self.user("alice")
        parked: defer.Deferred[None] = defer.Deferred()
        exports = self.hs.gdpr_export
        assert exports is not None

        async def hook(export_id: str, section: str, batch: int) -> None:
            await parked

        exports.before_batch = hook
        first = await self.start_export(alice, ALICE)
        second = await self.start_export(alice, ALICE)
        self.assertEqual(first, second)
        exports.before_batch = None
        parked.callback(None)
        await self.wait_complete(first, alice)


class _NotesPlugin:
    @hookimpl
    def export_user_data(self, user_id: str) -> Any:
        return {"notes": [f"note about {user_id}"]}


class PluginPartTest(GdprExportTestCase):
    async def test_plugins_add_their_part(self) -> None:
        assert self.hs.plugins is not None
        self.hs.plugins.pm.register(_NotesPlugin(), name="notes")
        alice = await self.user("alice")
        await self.hs.stores.pushers.set_pusher(Pusher(
            ALICE, "com.example.app", "SECRET-PUSHKEY", "http", "App", "Phone", None, "en",
            {"url": "https://push.example/_matrix/push/v1/notify"}, None, 1), False)
        status = await self.wait_complete(await self.start_export(alice, ALICE), alice)
        raw = (await self.download(status)).raw
        zf = zipfile.ZipFile(io.BytesIO(raw))
        self.assertEqual(json.loads(zf.read("plugins.json")),
                         {"notes": {"notes": [f"note about {ALICE}"]}})
        pushers = json.loads(zf.read("pushers.json"))
        self.assertEqual([p["app_id"] for p in pushers], ["com.example.app"])
        self.assertNotIn(b"SECRET-PUSHKEY", b"".join(zf.read(n) for n in zf.namelist()))


class AdminExportTest(GdprExportTestCase):
    async def test_admin_exports_any_user(self) -> None:
        alice, bob, _, _ = await self.fixture()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        admin = (await self.login("admin")).json["access_token"]
        path = ADMIN_EXPORT.format(q(ALICE))
        self.assertMatrixError(await self.request("POST", path, token=bob), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.request("POST", path), 401, "M_MISSING_TOKEN")
        unknown = await self.request("POST", ADMIN_EXPORT.format(q("@nobody:test.local")),
                                     token=admin)
        self.assertMatrixError(unknown, 404, "M_NOT_FOUND")
        remote = await self.request("POST", ADMIN_EXPORT.format(q("@x:elsewhere")),
                                    token=admin)
        self.assertMatrixError(remote, 400, "M_INVALID_PARAM")
        resp = await self.request("POST", path, token=admin)
        self.assertEqual(resp.code, 200, resp)
        export_id = resp.json["export_id"]
        status = await self.wait_complete(export_id, admin)  # admins read any export
        self.assertEqual(status["user_id"], ALICE)
        dl = await self.download(status, token=admin)
        self.assertEqual(dl.code, 200, dl)
        events = json.loads(zipfile.ZipFile(io.BytesIO(dl.raw)).read("events/000001.json"))
        self.assertTrue(events and all(e["sender"] == ALICE for e in events))
        # The subject can read it too; Bob cannot.
        self.assertEqual((await self.request("GET", f"{EXPORT}/{export_id}",
                                             token=alice)).code, 200)
        self.assertMatrixError(await self.request("GET", f"{EXPORT}/{export_id}", token=bob),
                               404, "M_NOT_FOUND")
        trail = await self.hs.stores.security_events.list_events(event_type="admin_action")
        self.assertIn(("gdpr_export", "success", ALICE),
                      [(e.action, e.outcome, e.target) for e in trail])


class ExpiryTest(GdprExportTestCase):
    async def test_link_and_archive_expire(self) -> None:
        alice, _, _, _ = await self.fixture()
        export_id = await self.start_export(alice, ALICE)
        status = await self.wait_complete(export_id, alice)
        archive = os.path.join(self.data_dir, "exports", f"{export_id}.zip")
        self.assertTrue(os.path.exists(archive))
        self.assertEqual(status["download_expires_ts"], status["expires_ts"])
        exports = self.hs.gdpr_export
        assert exports is not None
        self.assertEqual(await exports.cleanup(), 0)  # not expired yet
        self.assertTrue(os.path.exists(archive))
        self.advance(3600 + 1)  # also runs the periodic cleanup (every 10 minutes)
        self.assertMatrixError(await self.download(status), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.request("GET", f"{EXPORT}/{export_id}",
                                                  token=alice), 404, "M_NOT_FOUND")
        for _ in range(100):
            if not os.path.exists(archive):
                break
            await deferLater(reactor, 0.02)
        self.assertFalse(os.path.exists(archive))
        self.assertIsNone(await exports._store.get_job(export_id))  # noqa: SLF001
        self.assertEqual(os.listdir(os.path.join(self.data_dir, "exports")), [])

    async def test_link_expires_before_use(self) -> None:
        alice = await self.user("alice")
        export_id = await self.start_export(alice, ALICE)
        status = await self.wait_complete(export_id, alice)
        self.advance(1800)
        self.assertEqual((await self.download(status)).code, 200)  # within the lifetime


class RestartTest(GdprExportTestCase):
    async def test_job_resumes_after_restart(self) -> None:
        alice, _, room, _ = await self.fixture()
        for i in range(5):
            await self.send_ok(alice, room, f"more {i}")
        exports = self.hs.gdpr_export
        assert exports is not None
        exports.batch_size = 2
        reached: defer.Deferred[None] = defer.Deferred()

        async def hook(export_id: str, section: str, batch: int) -> None:
            if section == "events" and batch == 2:
                reached.callback(None)
                await exports.wait_stopping()  # park here until the server stops

        exports.before_batch = hook
        export_id = await self.start_export(alice, ALICE)
        await reached
        await self.hs.stop()
        # A new process on the same database resumes the job from its cursors.
        self.hs = await build_homeserver(self.config, clock=self.clock)
        self.base_url = f"http://127.0.0.1:{self.hs.listen(reactor)[0].getHost().port}"
        status = await self.wait_complete(export_id, alice)  # the session survives
        total = status["progress"]["sections"]["events"]["items"]
        dl = await self.download(status)
        zf = zipfile.ZipFile(io.BytesIO(dl.raw))
        # The first batch (2 events) came from the first process; the second process
        # went on from the cursor in one batch of its default size.
        first = json.loads(zf.read("events/000001.json"))
        rest = json.loads(zf.read("events/000002.json"))
        self.assertEqual(len(first), 2)
        self.assertEqual(len(first) + len(rest), total)
        ids = [e["event_id"] for e in first + rest]
        self.assertEqual(len(set(ids)), total)
        bodies = {e["content"].get("body") for e in first + rest}
        self.assertTrue({f"more {i}" for i in range(5)} <= bodies)
        self.assertIn("alice says secret-a1", bodies)
        self.assertNotIn("events/000003.json", zf.namelist())
