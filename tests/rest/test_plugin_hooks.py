"""Each plugin hook is called at its point (tests/rest/hook_plugin.py), a failing
plugin is contained per its hook's default, and the module API works over HTTP."""

from __future__ import annotations

import logging

from tests.harness import TEST_PASSWORD
from tests.rest import hook_plugin
from tests.rest.room_helpers import CS, RoomTestCase, q

PLUGIN = "tests.rest.hook_plugin"


def failures(text: str, hook: str, reason: str) -> float:
    prefix = f'parley_plugin_hook_failures_total{{hook="{hook}",reason="{reason}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


class PluginHooksTest(RoomTestCase):
    def config_overrides(self) -> dict:
        return {"plugins": [{"name": PLUGIN, "config": {"greeting": "hello"}}],
                "plugins_config": {"timeouts": {"check_event_for_spam": "200ms",
                                                "auth_provider_login": "200ms",
                                                "http": "200ms"}}}

    async def setUp(self) -> None:  # type: ignore[override]
        hook_plugin.SEEN.clear()
        await super().setUp()

    def metrics(self) -> str:
        from prometheus_client import generate_latest
        return generate_latest(self.hs.metrics_registry).decode()

    async def test_check_event_for_spam(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        resp = await self.send(alice, room, "cheap pills buy-now")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertEqual(resp.json["error"], "Your message looks like spam")
        await self.send_ok(alice, room, "an honest message")
        self.assertIn(("m.room.message", room), hook_plugin.SEEN["check_event_for_spam"])

    async def test_failing_spam_check_is_contained_and_fails_closed(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        with self.assertLogs("plugins.host", logging.WARNING) as logs:
            for how in ("raise", "hang", "garbage"):
                resp = await self.send(alice, room, how)
                self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        for line in logs.output:
            self.assertNotIn("secret-content", line)
            self.assertIn(PLUGIN, line)
        text = self.metrics()
        for reason in ("exception", "timeout", "invalid_result"):
            self.assertEqual(failures(text, "check_event_for_spam", reason), 1, reason)
        self.assertIn('parley_plugin_hook_duration_seconds_count{hook="check_event_for_spam"}',
                      text)
        await self.send_ok(alice, room, "the server still answers")

    async def test_join_and_invite_gates(self) -> None:
        alice = await self.user("alice")
        nojoin = await self.user("nojoin")
        await self.user("noinvite")
        room = await self.create_room(alice, preset="public_chat")
        self.assertMatrixError(await self.join(nojoin, room), 403, "M_FORBIDDEN")
        resp = await self.member(alice, room, "invite", user_id="@noinvite:test.local")
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertEqual(resp.json["error"], "invites to that user are blocked")
        bob = await self.user("bob")
        resp = await self.member(alice, room, "invite", user_id="@bob:test.local")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.join(bob, room)).code, 200)
        self.assertIn(("@bob:test.local", room, True), hook_plugin.SEEN["user_may_join_room"])
        # createRoom's invite list goes through the same gate, before anything is stored.
        resp = await self.request("POST", f"{CS}/createRoom",
                                  {"invite": ["@noinvite:test.local"]}, token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_room_creation_alias_and_publish_gates(self) -> None:
        nocreate = await self.user("nocreate")
        resp = await self.request("POST", f"{CS}/createRoom", {}, token=nocreate)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        alice = await self.user("alice")
        resp = await self.request("POST", f"{CS}/createRoom",
                                  {"room_alias_name": "badalias"}, token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("GET", f"{CS}/directory/room/{q('#badalias:test.local')}")
        self.assertEqual(resp.code, 404)  # nothing was left behind
        room = await self.create_room(alice, name="kept")
        resp = await self.request("PUT", f"{CS}/directory/room/{q('#badalias2:test.local')}",
                                  {"room_id": room}, token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("PUT", f"{CS}/directory/room/{q('#fine:test.local')}",
                                  {"room_id": room}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        nopublish = await self.user("nopublish")
        resp = await self.request("POST", f"{CS}/createRoom", {"visibility": "public"},
                                  token=nopublish)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        own = await self.create_room(nopublish)
        resp = await self.request("PUT", f"{CS}/directory/list/room/{q(own)}",
                                  {"visibility": "public"}, token=nopublish)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("GET", f"{CS}/rooms/{q(room)}/state/m.room.name/",
                                  token=alice)
        self.assertEqual(resp.json["name"], "kept")  # the plugin's edit of its copy is lost

    async def test_registration_spam_check_sees_ip_and_user_agent(self) -> None:
        body = {"username": "evil", "password": TEST_PASSWORD}
        first = await self.request("POST", "/_matrix/client/v3/register", body)
        body["auth"] = {"type": "m.login.dummy", "session": first.json["session"]}
        resp = await self.request("POST", "/_matrix/client/v3/register", body,
                                  headers={"User-Agent": "EvilBot/1.0"})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        self.assertIn(("@evil:test.local", "127.0.0.1", "EvilBot/1.0", False),
                      hook_plugin.SEEN["check_registration_for_spam"])
        await self.register("good")

    async def test_check_password(self) -> None:
        await self.register("ldapuser")
        resp = await self.login("ldapuser", "external-secret")
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual((await self.login("ldapuser")).code, 200)  # local hash, None
        await self.register("ldapdenied")
        self.assertMatrixError(await self.login("ldapdenied"), 403, "M_FORBIDDEN")
        self.assertMatrixError(await self.login("nobody", "external-secret"), 403,
                               "M_FORBIDDEN")

    async def test_auth_provider_login(self) -> None:
        await self.register("tokenuser")
        flows = (await self.request("GET", f"{CS}/login")).json["flows"]
        self.assertIn({"type": "org.example.token"}, flows)
        resp = await self.request("POST", f"{CS}/login", {
            "type": "org.example.token", "token": "good", "user": "@tokenuser:test.local"})
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json["user_id"], "@tokenuser:test.local")
        for token in ("bad", "raise", "hang", "garbage"):
            resp = await self.request("POST", f"{CS}/login", {
                "type": "org.example.token", "token": token, "user": "@tokenuser:test.local"})
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        resp = await self.request("POST", f"{CS}/login", {
            "type": "org.example.token", "token": "good", "user": "@ghost:test.local"})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")

    async def test_on_new_event_and_deactivation(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        await self.send_ok(alice, room, "seen by the plugin")
        resp = await self.request("POST", f"{CS}/account/deactivate", {
            "auth": {"type": "m.login.password", "password": TEST_PASSWORD,
                     "identifier": {"type": "m.id.user", "user": "alice"}}}, token=alice)
        self.assertEqual(resp.code, 200, resp)
        assert self.hs.plugins is not None
        await self.hs.plugins.drain()
        self.assertIn(("m.room.message", "@alice:test.local"), hook_plugin.SEEN["on_new_event"])
        self.assertEqual(hook_plugin.SEEN["on_user_deactivated"], ["@alice:test.local"])

    async def test_module_api_route_and_config(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        path = "/_parley/plugins/tests.rest.hook_plugin"
        resp = await self.request("GET", f"{path}/whoami?room={q(room)}", token=alice)
        self.assertEqual(resp.code, 200, resp)
        self.assertEqual(resp.json, {"user_id": "@alice:test.local", "greeting": "hello",
                                     "is_admin": False, "membership": "join"})
        self.assertMatrixError(await self.request("GET", f"{path}/whoami"), 401,
                               "M_MISSING_TOKEN")
        for how in ("raise", "hang", "garbage", "fine"):
            resp = await self.request("GET", f"{path}/broken/{how}")
            self.assertMatrixError(resp, 503, "M_UNKNOWN")
        api = hook_plugin.API["api"]
        self.assertFalse(hasattr(api, "stores") or hasattr(api, "db"))
        view = await api.get_room_state(room, "m.room.create")
        self.assertEqual(view.sender, "@alice:test.local")
        self.assertIsNone(await api.get_room_state("!nope:test.local", "m.room.create"))
        self.assertTrue(await api.user_exists("@alice:test.local"))
