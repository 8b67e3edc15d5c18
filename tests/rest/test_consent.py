"""Consent tracking (``user_consent``): 403 ``M_CONSENT_NOT_GIVEN`` with the consent
URI until the user accepts the current policy on the consent page (HMAC-checked link),
acceptance recorded and audited, a version bump asks again, the exemptions (leaving,
the server notices room, application service users, profile refreshes), the login
server notice, and the GDPR export / admin details."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import yaml
from twisted.internet import reactor, task
from twisted.trial import unittest

from homeserver.app import build_homeserver
from homeserver.config.loader import ConfigError
from homeserver.handlers.consent import _action
from tests.harness import make_config
from tests.rest.room_helpers import CS, RoomTestCase, q
from tests.rest.test_gdpr_export import ALICE, GdprExportTestCase

POLICY = "Be nice. <script>alert(1)</script> & keep <b>backups</b>."
SECRET = "a-form-secret-of-enough-length"
AS_TOKEN = "consent-as-token"


def consent_config(version: str = "1.0", **extra: Any) -> dict[str, Any]:
    return {"form_secret": SECRET, "detection": {"new_login": {"enabled": False}},
            "user_consent": {"version": version,
                             "policies": {"1.0": POLICY, "2.0": "Version two."},
                             "policy_name": "Parley Privacy", **extra}}


class ConsentTestCase(RoomTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return consent_config()

    def link_params(self, uri: str) -> dict[str, str]:
        parsed = urlparse(uri)
        self.assertEqual(parsed.path, "/_matrix/consent")
        return {k: v[0] for k, v in parse_qs(parsed.query).items()}

    async def page(self, params: dict[str, str]) -> Any:
        return await self.request("GET", "/_matrix/consent?" + urlencode(params))

    async def agree(self, params: dict[str, str]) -> Any:
        return await self.request(
            "POST", "/_matrix/consent", raw_body=urlencode(params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})

    async def consent_uri(self, token: str) -> str:
        resp = await self.request("POST", f"{CS}/createRoom", {}, token=token)
        self.assertMatrixError(resp, 403, "M_CONSENT_NOT_GIVEN")
        return resp.json["consent_uri"]

    async def accept(self, token: str) -> None:
        params = self.link_params(await self.consent_uri(token))
        page = await self.page(params)
        self.assertEqual(page.code, 200, page)
        resp = await self.agree({**params, "v": self.hs.config.user_consent.version})
        self.assertEqual(resp.code, 200, resp)

    async def restart(self, **consent: Any) -> None:
        """Stop the server and start it again on the same database with a new
        ``user_consent`` section (a policy update is a config change and a restart)."""
        await self.hs.stop()
        current = self.hs.config.user_consent
        assert current is not None
        config = dataclasses.replace(self.hs.config,
                                     user_consent=dataclasses.replace(current, **consent))
        self.hs = await build_homeserver(config, clock=self.clock)
        port = self.hs.listen(reactor)[0]
        self.base_url = f"http://127.0.0.1:{port.getHost().port}"


class ConsentTest(ConsentTestCase):
    async def test_blocked_until_accepted_on_the_page(self) -> None:
        token = await self.user("alice")
        uri = await self.consent_uri(token)
        self.assertTrue(uri.startswith("http://127.0.0.1/_matrix/consent?"), uri)
        params = self.link_params(uri)
        self.assertEqual(params["u"], "alice")
        resp = await self.request("POST", f"{CS}/createRoom", {}, token=token)
        self.assertIn(uri, resp.json["error"])  # block_events_error names the link

        # The page: the policy, escaped, with the form; no referrer leaks the hash.
        page = await self.page(params)
        self.assertEqual(page.code, 200, page)
        self.assertTrue(page.header("Content-Type").startswith("text/html"))
        self.assertEqual(page.header("Referrer-Policy"), "no-referrer")
        self.assertIn("form-action 'self'", page.header("Content-Security-Policy"))
        text = page.raw.decode()
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt; &amp; keep", text)
        self.assertNotIn("<script>", text)
        self.assertIn('name="h" value="' + params["h"], text)
        self.assertIn("Parley Privacy", text)
        public = await self.request("GET", "/_matrix/consent")
        self.assertEqual(public.code, 200, public)
        self.assertNotIn("<form", public.raw.decode())

        # Bad links are refused, nothing is recorded.
        bad = {**params, "h": "0" * 64}
        self.assertMatrixError(await self.page(bad), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.agree(bad), 403, "M_FORBIDDEN")
        other = {"u": "bob", "h": params["h"]}  # alice's hash for another user
        self.assertMatrixError(await self.agree(other), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.page({"u": "alice"}), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.page({**params, "v": "9.9"}), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.agree({"h": params["h"]}), 400, "M_MISSING_PARAM")
        self.assertMatrixError(await self.page({"u": "x" * 300, "h": "y"}), 400,
                               "M_INVALID_PARAM")
        ghost = {"u": "ghost", "h": self.hs.consent.user_hash("ghost")}
        self.assertMatrixError(await self.agree(ghost), 404, "M_NOT_FOUND")
        self.assertMatrixError(await self.request("PUT", "/_matrix/consent"), 405,
                               "M_UNRECOGNIZED")
        big = await self.request("POST", "/_matrix/consent", raw_body=b"u=" + b"a" * 20000,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertMatrixError(big, 413, "M_TOO_LARGE")
        self.assertEqual(await self.hs.consent.consents("@alice:test.local"), [])
        resp = await self.request("POST", f"{CS}/createRoom", {}, token=token)
        self.assertMatrixError(resp, 403, "M_CONSENT_NOT_GIVEN")

        # Accepting through the form records it (time and version) and audits it.
        before = self.clock.time_msec()
        resp = await self.agree({**params, "v": "1.0"})
        self.assertEqual(resp.code, 200, resp)
        self.assertIn("recorded", resp.raw.decode())
        [record] = await self.hs.consent.consents("@alice:test.local")
        self.assertEqual(record.version, "1.0")
        self.assertGreaterEqual(record.accepted_ts, before)
        audit = await self.hs.stores.security_events.list_events(event_type="consent")
        self.assertEqual([(e.user_id, e.outcome, e.details.get("version")) for e in audit],
                         [("@alice:test.local", "success", "1.0")])
        # Accepting twice keeps the first record and audits once.
        self.assertEqual((await self.agree({**params, "v": "1.0"})).code, 200)
        self.assertEqual(len(await self.hs.stores.security_events.list_events(
            event_type="consent")), 1)
        again = await self.page(params)
        self.assertIn("already agreed", again.raw.decode())
        self.assertNotIn("<form", again.raw.decode())

        # Now everything works.
        room_id = await self.create_room(token, name="ok")
        await self.send_ok(token, room_id, "hello")
        self.assertEqual((await self.put_state(token, room_id, "m.room.topic",
                                               {"topic": "t"})).code, 200)

    async def test_join_invite_blocked_leave_allowed(self) -> None:
        bob = await self.user("bob")
        await self.accept(bob)
        room_id = await self.create_room(bob, preset="public_chat")
        alice = await self.user("alice")
        resp = await self.join(alice, room_id)
        self.assertMatrixError(resp, 403, "M_CONSENT_NOT_GIVEN")
        self.assertIn("consent_uri", resp.json)
        # Someone who consented may invite alice; alice may reject (leave) the invite.
        resp = await self.member(bob, room_id, "invite", user_id="@alice:test.local")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.member(alice, room_id, "leave")).code, 200)
        await self.accept(alice)
        self.assertEqual((await self.join(alice, room_id)).code, 200)
        await self.send_ok(alice, room_id, "hi")

    async def test_version_bump_requires_reconsent(self) -> None:
        token = await self.user("alice")
        await self.accept(token)
        room_id = await self.create_room(token)
        other_room = await self.create_room(token)
        await self.send_ok(token, room_id, "v1")
        await self.user("bob")
        await self.restart(version="2.0")
        # The access token survives the restart; the consent does not cover 2.0.
        resp = await self.send(token, room_id, "v2")
        self.assertMatrixError(resp, 403, "M_CONSENT_NOT_GIVEN")
        params = self.link_params(resp.json["consent_uri"])
        page = await self.page(params)
        self.assertIn("Version two.", page.raw.decode())
        self.assertIn('name="v" value="2.0"', page.raw.decode())
        # A profile change still updates the member event the server sends for her.
        resp = await self.request("PUT", f"{CS}/profile/{q('@alice:test.local')}/displayname",
                                  {"displayname": "Alice"}, token=token)
        self.assertEqual(resp.code, 200, resp)
        # Inviting is refused, leaving is always allowed.
        resp = await self.member(token, room_id, "invite", user_id="@bob:test.local")
        self.assertMatrixError(resp, 403, "M_CONSENT_NOT_GIVEN")
        self.assertEqual((await self.member(token, other_room, "leave")).code, 200)
        self.assertEqual((await self.agree({**params, "v": "2.0"})).code, 200)
        await self.send_ok(token, room_id, "v2")
        versions = [r.version for r in await self.hs.consent.consents("@alice:test.local")]
        self.assertEqual(sorted(versions), ["1.0", "2.0"])
        self.assertEqual(await self.hs.consent.consent_version("@alice:test.local"), "2.0")

    async def test_action_names(self) -> None:
        me = "@a:test.local"
        self.assertEqual(_action(me, None, None, None), "create_room")
        self.assertEqual(_action(me, "m.room.message", None, {}), "send")
        self.assertEqual(_action(me, "m.room.name", "", {}), "state")
        self.assertEqual(_action(me, "m.room.member", me, {"membership": "join"}), "join")
        self.assertEqual(_action(me, "m.room.member", me, {"membership": "knock"}), "join")
        self.assertIsNone(_action(me, "m.room.member", me, {"membership": "leave"}))
        self.assertEqual(_action(me, "m.room.member", "@b:x", {"membership": "invite"}),
                         "invite")
        self.assertEqual(_action(me, "m.room.member", "@b:x", {"membership": "ban"}), "state")
        self.assertEqual(_action(me, "m.room.member", "@b:x", {"membership": "leave"}),
                         "state")


class ConsentBlockActionsTest(ConsentTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return consent_config(block_actions=["send"])

    async def test_only_configured_actions_are_blocked(self) -> None:
        token = await self.user("alice")
        room_id = await self.create_room(token, name="allowed")
        self.assertEqual((await self.put_state(token, room_id, "m.room.topic",
                                               {"topic": "t"})).code, 200)
        resp = await self.send(token, room_id, "blocked")
        self.assertMatrixError(resp, 403, "M_CONSENT_NOT_GIVEN")
        params = self.link_params(resp.json["consent_uri"])
        self.assertEqual((await self.agree(params)).code, 200)  # v defaults to current
        await self.send_ok(token, room_id, "sent")


class ConsentNoticeTest(ConsentTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return consent_config(server_notice_content={
            "msgtype": "m.text", "body": "Please agree to our policy: %(consent_uri)s"})

    async def notices(self, token: str) -> list[dict]:
        for _ in range(300):
            sync = await self.sync(token)
            for room in sync["rooms"].get("join", {}).values():
                bodies = [e for e in room["timeline"]["events"]
                          if e["type"] == "m.room.message" and e["content"].get(
                              "server_notice_type") == "org.parley.consent"]
                if bodies:
                    return bodies
            await task.deferLater(reactor, 0.01, lambda: None)
        return []

    async def test_login_sends_one_notice_in_an_exempt_room(self) -> None:
        await self.user("alice")
        token = (await self.login("alice")).json["access_token"]
        notices = await self.notices(token)
        self.assertEqual(len(notices), 1, notices)
        body = notices[0]["content"]["body"]
        self.assertIn("/_matrix/consent?u=alice&h=", body)
        self.assertEqual(notices[0]["sender"], "@server:test.local")
        # Another login: no second notice for the same version.
        self.assertEqual((await self.login("alice")).code, 200)
        await task.deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(len(await self.notices(token)), 1)
        # The notices room was joined for her without consent; she may leave it.
        sync = await self.sync(token)
        [room_id] = list(sync["rooms"]["join"])
        self.assertEqual((await self.member(token, room_id, "leave")).code, 200)


class ConsentAppserviceTest(ConsentTestCase):
    def config_overrides(self) -> dict[str, Any]:
        path = os.path.join(self.data_dir, "consent-as.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"id": "consent-as", "url": None, "as_token": AS_TOKEN,
                            "hs_token": "consent-hs-token", "sender_localpart": "bridge",
                            "namespaces": {"users": [{"regex": "@br_.*:test.local",
                                                      "exclusive": True}],
                                           "aliases": [], "rooms": []}}, f)
        return {**consent_config(), "app_service_config_files": [path]}

    async def test_appservice_users_are_exempt(self) -> None:
        resp = await self.request("POST", f"{CS}/register", {
            "type": "m.login.application_service", "username": "br_one"}, token=AS_TOKEN)
        self.assertEqual(resp.code, 200, resp)
        ghost = resp.json["access_token"]
        room_id = await self.create_room(ghost)
        await self.send_ok(ghost, room_id, "bridged")
        sender_room = await self.create_room(AS_TOKEN)  # the AS's own sender user
        await self.send_ok(AS_TOKEN, sender_room, "from the bridge")
        # A regular user is still asked.
        alice = await self.user("alice")
        self.assertMatrixError(await self.request("POST", f"{CS}/createRoom", {}, token=alice),
                               403, "M_CONSENT_NOT_GIVEN")


class ConsentOffTest(RoomTestCase):
    async def test_off_by_default(self) -> None:
        self.assertIsNone(self.hs.consent)
        token = await self.user("alice")
        room_id = await self.create_room(token)
        await self.send_ok(token, room_id)
        resp = await self.request("GET", "/_matrix/consent?u=alice&h=x")
        self.assertMatrixError(resp, 404, "M_UNRECOGNIZED")


class ConsentConfigTest(unittest.TestCase):
    def test_form_secret_and_policy_text_required(self) -> None:
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        with self.assertRaises(ConfigError):
            make_config(data_dir, "sqlite", user_consent={"version": "1.0",
                                                          "policies": {"1.0": "x"}})
        with self.assertRaises(ConfigError):
            make_config(data_dir, "sqlite", form_secret=SECRET,
                        user_consent={"version": "3.0", "policies": {"1.0": "x"}})
        policy_dir = os.path.join(data_dir, "policies")
        os.makedirs(policy_dir)
        with open(os.path.join(policy_dir, "7.txt"), "w") as f:
            f.write("From a file")
        config, _ = make_config(data_dir, "sqlite", form_secret=SECRET,
                                user_consent={"version": "7", "template_dir": policy_dir})
        assert config.user_consent is not None
        self.assertEqual(config.user_consent.policies["7"], "From a file")
        self.assertEqual(config.user_consent.block_actions,
                         frozenset({"send", "state", "join", "invite", "create_room"}))


class ConsentExportTest(ConsentTestCase, GdprExportTestCase):
    def config_overrides(self) -> dict[str, Any]:
        return consent_config()

    async def test_export_includes_consent_records(self) -> None:
        token = await self.user("alice")
        await self.accept(token)
        export_id = await self.start_export(token, ALICE)
        status = await self.wait_complete(export_id, token)
        resp = await self.download(status)
        self.assertEqual(resp.code, 200, resp)
        records = json.loads(zipfile.ZipFile(io.BytesIO(resp.raw)).read("consent.json"))
        [record] = await self.hs.consent.consents(ALICE)
        self.assertEqual(records, [{"version": "1.0", "accepted_ts": record.accepted_ts}])
