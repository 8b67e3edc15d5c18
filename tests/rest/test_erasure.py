"""GDPR erasure end to end, on the engine under test: what goes at once, the purge job
after the grace window (resumable after a crash, on its timer), the scan of every table
for the erased user afterwards, the audit trail pseudonymised and still verifying, and
least privilege (a moderator cannot erase an admin)."""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.task import deferLater

import tests.rest.test_audit as audit_tests
from homeserver.audit.chain import PSEUDONYM_PREFIX
from homeserver.audit.service import user_pseudonym, verify_chain
from homeserver.events.redaction import prune_event_dict
from homeserver.gdpr.erasure_purge import STEPS, ErasurePurge
from homeserver.media.handler import media_key
from storage.database import Txn
from tests.harness import TEST_PASSWORD
from tests.rest import erasure_plugin
from tests.rest.e2e_helpers import OlmDevice
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_cross_signing import Identity
from tests.rest.test_media import PNG

SA = "/_synapse/admin"
DEACTIVATE = f"{CS}/account/deactivate"
EXPORT = "/_parley/client/v1/export"
NAME = "erasemeqx"
UID = f"@{NAME}:test.local"
DISPLAYNAME = "Zorblax Quentin"
SECRET_BODY = "my-secret-body-7731"
GATEWAY = "https://push.example.org/_matrix/push/v1/notify"

# Where an erased user's id may remain after the purge, and why (README "GDPR erasure"):
# the tombstone keeps the id reserved (never registered again, as Synapse); the room
# graph keeps the user's membership state and events, redacted, because the other
# members' rooms (and other servers) need them for authorisation and state.
TOMBSTONE = {("users", "user_id"), ("erased_users", "user_id")}
ROOM_GRAPH = {("room_memberships", "user_id"), ("room_memberships", "sender"),
              ("current_state", "state_key"), ("state_group_entries", "state_key"),
              ("rooms", "creator"), ("events", "sender"), ("events", "state_key")}


def u(user_id: str) -> str:
    return quote(user_id, safe="")


async def all_rows(txn_db: Any) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Every table of the database (listed from the database itself): columns and rows."""

    def scan(txn: Txn) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
        if txn.engine.name == "sqlite":
            names = [r[0] for r in txn.query(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                "'sqlite_%'")]
        else:
            names = [r[0] for r in txn.query(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "current_schema() AND table_type = 'BASE TABLE'")]
        out = {}
        for name in names:
            txn.execute(f"SELECT * FROM {name}")
            cols = [d[0] for d in txn._cur.description]  # noqa: SLF001
            out[name] = (cols, txn.fetchall())
        return out

    return await txn_db.run("test_scan", scan)


class ErasureTestCase(RoomTestCase):
    grace = "0"

    def config_overrides(self) -> dict[str, Any]:
        return {"gdpr": {"erasure_grace_period": self.grace}, "search": {"enabled": True}}

    async def setUp(self) -> None:  # type: ignore[override]
        await super().setUp()
        await self.hs.registration.create_account("admin", TEST_PASSWORD, is_admin=True)
        self.admin = (await self.login("admin")).json["access_token"]

    @property
    def purge(self) -> ErasurePurge:
        assert self.hs.erasure is not None
        return self.hs.erasure.purge

    async def erase_self(self, token: str, name: str = NAME) -> None:
        first = await self.request("POST", DEACTIVATE, {"erase": True}, token=token)
        self.assertEqual(first.code, 401, first)
        resp = await self.request("POST", DEACTIVATE, {"erase": True, "auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": name}, "password": TEST_PASSWORD}},
            token=token)
        self.assertEqual(resp.code, 200, resp)

    async def ok(self, method: str, path: str, body: Any = None, token: str | None = None,
                 **kw: Any) -> Any:
        resp = await self.request(method, path, body, token=token, **kw)
        self.assertEqual(resp.code, 200, (method, path, resp))
        return resp.json

    async def active_user(self) -> dict[str, Any]:
        """A user who has done everything: returns what the checks need."""
        reg = await self.register(NAME, refresh_token=True)
        tok, dev = reg["access_token"], reg["device_id"]
        second = (await self.login(NAME)).json["access_token"]
        bob = await self.user("bob")
        # Profile, with an avatar they uploaded, and a second piece of media.
        mxc = (await self.ok("POST", "/_matrix/media/v3/upload", raw_body=PNG,
                             headers={"Content-Type": "image/png"}, token=tok))["content_uri"]
        await self.ok("POST", "/_matrix/media/v3/upload", raw_body=b"plain text file",
                      headers={"Content-Type": "text/plain"}, token=tok)
        await self.ok("PUT", f"{CS}/profile/{u(UID)}/displayname",
                      {"displayname": DISPLAYNAME}, token=tok)
        await self.ok("PUT", f"{CS}/profile/{u(UID)}/avatar_url", {"avatar_url": mxc}, token=tok)
        # Rooms: one of theirs (bob joins), one of bob's, a pending invite from bob.
        own = await self.create_room(tok, name="their room", preset="public_chat")
        self.assertEqual((await self.join(bob, own)).code, 200)
        bobs = await self.create_room(bob, preset="public_chat")
        self.assertEqual((await self.join(tok, bobs)).code, 200)
        invited = await self.create_room(bob)
        self.assertEqual((await self.member(bob, invited, "invite", user_id=UID)).code, 200)
        mine = await self.send_ok(tok, own, SECRET_BODY)
        theirs = await self.send_ok(tok, bobs, SECRET_BODY + " two")
        bob_msg = await self.send_ok(bob, bobs, "bob says hi")
        # A reaction (relation), a state event, a receipt, a report.
        self.assertEqual((await self.send(tok, bobs, event_type="m.reaction", content={
            "m.relates_to": {"rel_type": "m.annotation", "event_id": bob_msg,
                             "key": "👍"}})).code, 200)
        self.assertEqual((await self.put_state(tok, own, "m.room.topic",
                                               {"topic": SECRET_BODY})).code, 200)
        await self.ok("POST", f"{CS}/rooms/{q(bobs)}/receipt/m.read/{q(bob_msg)}", {},
                      token=tok)
        await self.ok("POST", f"{CS}/rooms/{q(bobs)}/report/{q(bob_msg)}",
                      {"reason": "spam from " + UID}, token=tok)
        # Account data, tags, filters, push rules, pushers, presence, OpenID.
        await self.ok("PUT", f"{CS}/user/{u(UID)}/account_data/org.example.x",
                      {"mine": UID}, token=tok)
        await self.ok("PUT", f"{CS}/user/{u(UID)}/rooms/{q(own)}/tags/u.work", {}, token=tok)
        await self.ok("POST", f"{CS}/user/{u(UID)}/filter", {"room": {"limit": 5}}, token=tok)
        await self.ok("PUT", f"{CS}/pushrules/global/content/myrule",
                      {"pattern": NAME, "actions": ["notify"]}, token=tok)
        await self.ok("POST", f"{CS}/pushers/set", {
            "kind": "http", "app_id": "org.example.app", "pushkey": NAME + "-key",
            "app_display_name": "Example", "device_display_name": NAME + "'s phone",
            "lang": "en", "data": {"url": GATEWAY}}, token=tok)
        await self.ok("PUT", f"{CS}/presence/{u(UID)}/status",
                      {"presence": "online", "status_msg": "busy " + NAME}, token=tok)
        await self.ok("POST", f"{CS}/user/{u(UID)}/openid/request_token", {}, token=tok)
        # Keys: device keys, one-time and fallback keys, cross-signing, a key backup.
        olm = OlmDevice(UID, dev, tok)
        await self.ok("POST", f"{CS}/keys/upload", {
            "device_keys": olm.device_keys(), "one_time_keys": olm.one_time_keys(3),
            "fallback_keys": olm.fallback_key()}, token=tok)
        await self.ok("POST", f"{CS}/keys/device_signing/upload", Identity(UID).body(),
                      token=tok)
        version = (await self.ok("POST", f"{CS}/room_keys/version", {
            "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": {"public_key": "abcdefg"}}, token=tok))["version"]
        await self.ok("PUT", f"{CS}/room_keys/keys/{q(own)}/s1?version={version}", {
            "first_message_index": 1, "forwarded_count": 0, "is_verified": False,
            "session_data": {"ephemeral": "e", "ciphertext": "c", "mac": "m"}}, token=tok)
        # To-device messages both ways.
        bob_dev = (await self.ok("GET", f"{CS}/account/whoami", token=bob))["device_id"]
        await self.ok("PUT", f"{CS}/sendToDevice/m.test/td1",
                      {"messages": {"@bob:test.local": {bob_dev: {"from": NAME}}}}, token=tok)
        await self.ok("PUT", f"{CS}/sendToDevice/m.test/td2",
                      {"messages": {UID: {"*": {"to": NAME}}}}, token=bob)
        # A data export (its archive on disk), done before the erasure.
        first = await self.request("POST", EXPORT, {}, token=tok)
        self.assertEqual(first.code, 401, first)
        export_id = (await self.ok("POST", EXPORT, {"auth": {
            "type": "m.login.password", "session": first.json["session"],
            "identifier": {"type": "m.id.user", "user": NAME}, "password": TEST_PASSWORD}},
            token=tok))["export_id"]
        for _ in range(400):
            status = await self.ok("GET", f"{EXPORT}/{export_id}", token=tok)
            if status["status"] in ("complete", "failed"):
                break
            await deferLater(reactor, 0.02)
        self.assertEqual(status["status"], "complete", status)
        # A sync (positions, device lists), and the second session's too.
        await self.sync(tok)
        await self.sync(second)
        return {"token": tok, "bob": bob, "own": own, "bobs": bobs, "invited": invited,
                "mine": mine, "theirs": theirs, "mxc": mxc}


class EraseAtOnceTest(ErasureTestCase):
    """A 30-day grace window: what erasure does before any purge runs."""

    grace = "30d"

    async def test_erasure_at_once(self) -> None:
        s = await self.active_user()
        await self.erase_self(s["token"])
        # Locked out at once: the token is dead and the password no longer logs in.
        gone = await self.request("GET", f"{CS}/account/whoami", token=s["token"])
        self.assertMatrixError(gone, 401, "M_UNKNOWN_TOKEN")
        self.assertNotEqual((await self.login(NAME)).code, 200)
        user = await self.ok("GET", f"{SA}/v2/users/{u(UID)}", token=self.admin)
        self.assertTrue(user["erased"] and user["deactivated"] and user["locked"])
        # Keys, backups, pushers, settings gone; rooms left, the invite rejected.
        bob = s["bob"]
        keys = await self.ok("POST", f"{CS}/keys/query", {"device_keys": {UID: []}}, token=bob)
        self.assertEqual(keys["device_keys"].get(UID, {}), {})
        self.assertNotIn(UID, keys.get("master_keys", {}))
        rows = await all_rows(self.hs.db)
        for table in ("e2e_device_keys", "e2e_one_time_keys", "e2e_fallback_keys",
                      "cross_signing_keys", "room_key_backup_keys", "room_key_backup_versions",
                      "pushers", "account_data", "user_filters", "push_rules", "presence",
                      "devices"):
            cols, data = rows[table]
            idx = cols.index("user_id")
            self.assertFalse([r for r in data if r[idx] == UID], table)
        members = await self.ok("GET", f"{CS}/rooms/{q(s['bobs'])}/joined_members", token=bob)
        self.assertNotIn(UID, members["joined"])
        state = await self.ok("GET", f"{CS}/rooms/{q(s['invited'])}/state/m.room.member/"
                              f"{u(UID)}", token=bob)
        self.assertEqual(state["membership"], "leave")
        profile = await self.request("GET", f"{CS}/profile/{u(UID)}", token=bob)
        self.assertNotIn(DISPLAYNAME, profile.raw.decode())
        found = await self.ok("POST", f"{CS}/user_directory/search", {"search_term": NAME},
                              token=bob)
        self.assertEqual(found["results"], [])
        # Someone joining afterwards is served the user's messages pruned.
        carol = await self.user("carol")
        self.assertEqual((await self.join(carol, s["bobs"])).code, 200)
        ev = await self.ok("GET", f"{CS}/rooms/{q(s['bobs'])}/event/{q(s['theirs'])}",
                           token=carol)
        self.assertEqual(ev["content"], {})
        # The purge job waits for its window, listed as a background job.
        assert self.hs.erasure is not None
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual((job.kind, job.status, job.target, job.requested_by),
                         ("erasure", "scheduled", UID, UID))
        self.assertEqual(job.progress["total"], len(STEPS))
        listed = await self.ok("GET", f"/_parley/admin/v1/background_jobs/{job.job_id}",
                               token=self.admin)
        self.assertEqual(listed.get("kind", listed.get("type")), "erasure")
        self.assertEqual(await self.purge.run_due(), 0)
        self.assertIsNotNone(await self.hs.stores.users.get_user(UID))

    async def test_timer_runs_the_purge_after_the_window(self) -> None:
        tok = await self.user(NAME)
        await self.erase_self(tok)
        self.advance(29 * 86400)
        await self.purge.wait_idle()
        assert self.hs.erasure is not None
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual(job.status, "scheduled")
        self.advance(2 * 86400)  # past the window: the hourly run picks it up
        await self.purge.wait_idle()
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual(job.status, "complete", job)
        self.assertTrue(job.target and job.target.startswith(PSEUDONYM_PREFIX))

    async def test_purge_resumes_after_a_crash(self) -> None:
        s = await self.active_user()
        await self.erase_self(s["token"])
        assert self.hs.erasure is not None
        store = self.hs.erasure.store
        (info,) = await self.hs.erasure.jobs.list_jobs(10, None)
        job = await store.get_job(info.job_id)
        assert job is not None

        def runner() -> ErasurePurge:  # a new process's runner, one event per batch
            p = self.purge
            return ErasurePurge(self.clock, store, self.hs.stores.events, self.hs.stores.media,
                                p._backend, p._plugins, p._audit, self.config.data_dir,  # noqa: SLF001
                                batch=1)

        self.assertFalse(await runner().run_job(job, max_batches=4))  # "killed" half-way
        half = await store.get_job(job.job_id)
        assert half is not None
        self.assertEqual((half.status, STEPS[half.step]), ("active", "events"))
        self.assertIsNotNone(half.step_cursor)
        self.assertFalse(await runner().run_job(half, max_batches=3))  # killed again
        again = await store.get_job(job.job_id)
        assert again is not None
        self.assertTrue(await runner().run_job(again))
        done = await store.get_job(job.job_id)
        assert done is not None
        self.assertEqual((done.status, done.step), ("complete", len(STEPS)))
        self.assertEqual(done.user_id, user_pseudonym(self.hs.sessions._events.id_key, UID))  # type: ignore[attr-defined]  # noqa: SLF001
        # Running a finished job's steps again changes nothing and fails on nothing.
        self.assertTrue(await runner().run_job(job))
        rows = await all_rows(self.hs.db)
        cols, data = rows["events"]
        for r in data:
            ev = dict(zip(cols, r, strict=True))
            if ev["sender"] == UID:
                pdu = json.loads(ev["json"])
                self.assertEqual(pdu, prune_event_dict(pdu, "10"))
                self.assertNotIn(SECRET_BODY, ev["json"])


class PurgeScanTest(ErasureTestCase):
    """Grace 0: the purge runs right after the erasure."""

    async def test_erase_everything_then_scan_every_table(self) -> None:
        s = await self.active_user()
        media_ids = [r[0] for r in (await all_rows(self.hs.db))["local_media"][1]
                     if UID in r]
        self.assertEqual(len(media_ids), 2)
        exports = os.path.join(self.config.data_dir, "exports")
        self.assertTrue(os.listdir(exports))
        await self.erase_self(s["token"])
        await self.purge.wait_idle()
        await self.purge.run_due()
        assert self.hs.erasure is not None
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual(job.status, "complete", job)
        key = self.hs.sessions._events.id_key  # type: ignore[attr-defined]  # noqa: SLF001
        pseudonym = user_pseudonym(key, UID)
        self.assertEqual((job.target, job.requested_by), (pseudonym, pseudonym))

        rows = await all_rows(self.hs.db)
        self.assertIn("security_events", rows)
        found = []
        for table, (cols, data) in rows.items():
            for row in data:
                for col, value in zip(cols, row, strict=True):
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes) \
                        else value
                    if not isinstance(text, str):
                        continue
                    self.assertNotIn(SECRET_BODY, text, (table, col))
                    self.assertNotIn(DISPLAYNAME, text, (table, col))
                    if NAME not in text:
                        continue
                    if (table, col) in TOMBSTONE | ROOM_GRAPH:
                        continue
                    if table == "events" and col == "json":
                        # Kept only in its redacted form (the room graph needs it).
                        pdu = json.loads(text)
                        self.assertEqual(pdu, prune_event_dict(pdu, "10"), text)
                        continue
                    found.append((table, col, text[:200]))
        self.assertEqual(found, [])
        # The tombstone keeps the id reserved, and nothing else.
        user = await self.hs.stores.users.get_user(UID)
        assert user is not None
        self.assertTrue(user.deactivated)
        retry = await self.request("POST", f"{CS}/register",
                                   {"username": NAME, "password": TEST_PASSWORD})
        self.assertMatrixError(retry, 400, "M_USER_IN_USE")
        # The export archive is gone from disk.
        self.assertEqual(os.listdir(exports), [])
        # Media files are gone from the backend.
        backend = self.purge._backend  # noqa: SLF001
        for media_id in media_ids:
            self.assertIsNone(await backend.read_bytes(media_key(media_id)))
        download = await self.request(
            "GET", f"/_matrix/client/v1/media/download/{s['mxc'][6:]}", token=s["bob"])
        self.assertEqual(download.code, 404)
        # The audit trail: pseudonymised, the chain verifies, the pseudonym is linkable.
        report = await verify_chain(self.hs.stores.security_events, id_key=key)
        self.assertTrue(report.ok, report.describe())
        entries = await self.hs.stores.security_events.list_events(limit=1000)
        named = [e for e in entries if pseudonym in (e.user_id, e.target)]
        self.assertTrue(any(e.event_type == "deactivate" for e in named))
        self.assertTrue(any(e.event_type == "erasure_purge" for e in named))
        # Bob still sees the room, with the erased user's events pruned.
        ev = await self.ok("GET", f"{CS}/rooms/{q(s['bobs'])}/event/{q(s['theirs'])}",
                           token=s["bob"])
        self.assertEqual(ev["content"], {})

    async def test_admin_erase_and_audit_cli_verify(self) -> None:
        tok = await self.user(NAME)
        await self.send_ok(tok, await self.create_room(tok), SECRET_BODY)
        resp = await self.request("POST", f"{SA}/v1/deactivate/{u(UID)}", {"erase": True},
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        await self.purge.wait_idle()
        assert self.hs.erasure is not None
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual((job.status, job.requested_by), ("complete", "@admin:test.local"))
        rows = await all_rows(self.hs.db)
        cols, data = rows["security_events"]
        self.assertFalse([r for r in data if any(isinstance(v, str) and NAME in v for v in r)])
        # The admin's own entry keeps the admin, with the target pseudonymised.
        entries = await self.hs.stores.security_events.list_events(event_type="admin_action")
        (admin_entry,) = [e for e in entries if e.action == "deactivate_user"]
        self.assertEqual(admin_entry.user_id, "@admin:test.local")
        self.assertTrue(admin_entry.target and admin_entry.target.startswith(PSEUDONYM_PREFIX))
        self.assertEqual(admin_entry.details["user_id"], admin_entry.target)  # type: ignore[index]
        # ``parley audit verify`` (with the audit key from the data directory) passes...
        code, out, err = await audit_tests.AuditTestCase.cli(
            self, "verify", "-c", audit_tests.AuditTestCase.config_file(self))  # type: ignore[arg-type]
        self.assertEqual(code, 0, err)
        self.assertIn("OK:", out)
        # ... and still finds an edit of a pseudonymised entry.

        def tamper(txn: Txn) -> None:
            txn.execute("UPDATE security_events SET target = ? WHERE seq = ?",
                        ("erased-0123456789abcdef", admin_entry.seq))

        await self.hs.db.run("test_tamper", tamper)
        code, out, err = await audit_tests.AuditTestCase.cli(
            self, "verify", "-c", audit_tests.AuditTestCase.config_file(self))  # type: ignore[arg-type]
        self.assertEqual(code, 1, out)
        self.assertIn(f"FAILED at seq={admin_entry.seq}", err)
        self.assertIn("target does not match its MAC", err)

    async def test_admin_erases_an_already_deactivated_account(self) -> None:
        await self.user(NAME)
        resp = await self.request("POST", f"{SA}/v1/deactivate/{u(UID)}", {},
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        self.assertFalse((await self.ok("GET", f"{SA}/v2/users/{u(UID)}",
                                        token=self.admin))["erased"])
        resp = await self.request("POST", f"{SA}/v1/deactivate/{u(UID)}", {"erase": True},
                                  token=self.admin)
        self.assertEqual(resp.code, 200, resp)
        await self.purge.wait_idle()
        assert self.hs.erasure is not None
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual(job.status, "complete")
        self.assertEqual(await self.hs.stores.users.erased_among([UID]), {UID})


class LeastPrivilegeTest(ErasureTestCase):
    grace = "30d"

    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(),
                "admin_roles": {"deactivator": ["users.deactivate"]}}

    async def test_only_an_admin_may_erase_a_staff_account(self) -> None:
        mod = (await self.register("mona"))["access_token"]
        await self.hs.stores.roles.set_role("@mona:test.local", "moderator")
        deact = (await self.register("dora"))["access_token"]
        await self.hs.stores.roles.set_role("@dora:test.local", "deactivator")
        for token, target in ((mod, "@admin:test.local"), (deact, "@admin:test.local"),
                              (deact, "@mona:test.local")):
            resp = await self.request("POST", f"{SA}/v1/deactivate/{u(target)}",
                                      {"erase": True}, token=token)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            self.assertEqual(await self.hs.stores.users.erased_among([target]), set())
        assert self.hs.erasure is not None
        self.assertEqual(await self.hs.erasure.jobs.list_jobs(10, None), [])
        # With users.deactivate, an ordinary user may be erased.
        await self.user(NAME)
        resp = await self.request("POST", f"{SA}/v1/deactivate/{u(UID)}", {"erase": True},
                                  token=deact)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(await self.hs.stores.users.erased_among([UID]), {UID})
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual(job.requested_by, "@dora:test.local")


class PluginErasureTest(ErasureTestCase):
    """Plugins' ``erase_user_data`` is called by the purge; a failing plugin stops the
    job (with the error shown) until a later run succeeds."""

    def config_overrides(self) -> dict[str, Any]:
        return {**super().config_overrides(), "plugins": [{"name": "tests.rest.erasure_plugin"}]}

    async def test_plugin_hook_called_and_retried(self) -> None:
        erasure_plugin.ERASED.clear()
        erasure_plugin.FAIL[0] = True
        self.addCleanup(erasure_plugin.FAIL.__setitem__, 0, False)
        await self.erase_self(await self.user(NAME))
        await self.purge.wait_idle()
        assert self.hs.erasure is not None
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual((job.status, job.progress["done"]), ("active", 0))
        self.assertIn("plugins failed: tests.rest.erasure_plugin", job.error or "")
        self.assertEqual(erasure_plugin.ERASED, [])
        erasure_plugin.FAIL[0] = False
        self.assertEqual(await self.purge.run_due(), 1)
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual((job.status, job.error), ("complete", None))
        self.assertEqual(erasure_plugin.ERASED, [UID])


class EncryptedContentTest(ErasureTestCase):
    """With event content encrypted at rest the purge opens and re-seals each event."""

    def config_overrides(self) -> dict[str, Any]:
        key = base64.b64encode(b"\x07" * 32).decode()
        return {"gdpr": {"erasure_grace_period": 0},
                "secrets": {"at_rest_keys": [{"id": "k1", "key": key}],
                            "encrypt_event_content": True}}

    async def test_purge_reseals_redacted_events(self) -> None:
        tok = await self.user(NAME)
        bob = await self.user("bob")
        room = await self.create_room(tok, preset="public_chat")
        self.assertEqual((await self.join(bob, room)).code, 200)
        mine = await self.send_ok(tok, room, SECRET_BODY)
        await self.erase_self(tok)
        await self.purge.wait_idle()
        assert self.hs.erasure is not None
        (job,) = await self.hs.erasure.jobs.list_jobs(10, None)
        self.assertEqual(job.status, "complete", job)
        ev = await self.ok("GET", f"{CS}/rooms/{q(room)}/event/{q(mine)}", token=bob)
        self.assertEqual((ev["content"], ev["sender"]), ({}, UID))
        stored = await self.hs.stores.events.get_event(mine)
        assert stored is not None
        self.assertEqual(stored.pdu.get("content"), {})
        cols, data = (await all_rows(self.hs.db))["events"]
        raw = [r[cols.index("json")] for r in data if r[cols.index("event_id")] == mine][0]
        self.assertNotIn("content", str(raw))  # still sealed, not plaintext JSON

