"""contrib/example_plugin in a real server, imported by path (nothing pip-installed):
the keyword/regex spam filter on events and the invite blocklist by server."""

from __future__ import annotations

import os
import sys
import tomllib
from types import SimpleNamespace

from twisted.trial import unittest

from plugins import PluginError, load_plugins
from plugins.module_api import validate_plugin_config
from tests.rest.room_helpers import CS, RoomTestCase

PLUGIN_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "example_plugin")
if PLUGIN_DIR not in sys.path:
    sys.path.insert(0, PLUGIN_DIR)

import parley_example_plugin as example  # noqa: E402

CONFIG = {"keywords": ["Casino"], "patterns": [r"(?i)buy\s+now"],
          "blocked_servers": ["spam.example", "*.bad.example"],
          "refusal_message": "Refused by the spam filter"}


class ExamplePluginServerTest(RoomTestCase):
    def config_overrides(self) -> dict:
        return {"plugins": [{"name": "parley_example_plugin", "config": CONFIG}]}

    async def test_spam_filter_on_events(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for text in ("Best CASINO in town", "please BUY   now!"):
            resp = await self.send(alice, room, text)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            self.assertEqual(resp.json["error"], "Refused by the spam filter")
        edit = {"msgtype": "m.text", "body": "* fine",
                "m.new_content": {"msgtype": "m.text", "body": "casino"}}
        resp = await self.send(alice, room, content=edit)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.send_ok(alice, room, "an ordinary message about buying bread")

    async def test_invite_blocklist_by_server(self) -> None:
        alice = await self.user("alice")
        room = await self.create_room(alice)
        for invitee in ("@x:spam.example", "@y:bad.example", "@z:deep.bad.example"):
            resp = await self.member(alice, room, "invite", user_id=invitee)
            self.assertMatrixError(resp, 403, "M_FORBIDDEN")
            self.assertEqual(resp.json["error"],
                             "Invites to or from that server are not allowed here")
        await self.user("bob")
        resp = await self.member(alice, room, "invite", user_id="@bob:test.local")
        self.assertEqual(resp.code, 200, resp)
        resp = await self.request("POST", f"{CS}/createRoom",
                                  {"invite": ["@x:spam.example"]}, token=alice)
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")


class ExamplePluginUnitTest(unittest.TestCase):
    def setUp(self) -> None:
        # The plugin keeps its settings in a module global: a server built earlier in
        # this process (another test) may have configured it.
        example.SETTINGS = example.Settings({})

    def tearDown(self) -> None:
        example.SETTINGS = example.Settings({})

    def test_matching(self) -> None:
        settings = example.Settings(CONFIG)
        self.assertTrue(example.is_spam(["casino"], settings))
        self.assertFalse(example.is_spam(["hello"], settings))
        self.assertEqual(example.event_texts({"body": 1, "formatted_body": "<b>x</b>"}),
                         ["<b>x</b>"])
        self.assertTrue(example.server_blocked("a.bad.example", settings.blocked))
        self.assertFalse(example.server_blocked("notbad.example", settings.blocked))
        self.assertFalse(example.server_blocked("spam.example.org", settings.blocked))

    def test_empty_config_filters_nothing(self) -> None:
        event = SimpleNamespace(content={"body": "casino"})
        self.assertIsNone(example.check_event_for_spam(event))
        self.assertIsNone(example.user_may_invite("@a:x", "@b:spam.example"))

    def test_config_is_validated(self) -> None:
        with self.assertRaisesRegex(PluginError, "keywords"):
            validate_plugin_config("example_spam_filter", example, {"keywords": "casino"})
        with self.assertRaisesRegex(PluginError, "unexpected"):
            validate_plugin_config("example_spam_filter", example, {"typo": 1})
        with self.assertRaisesRegex(ValueError, "regular expression"):
            example.Settings({"patterns": ["("]})

    def test_packaging_declares_the_entry_point(self) -> None:
        with open(os.path.join(PLUGIN_DIR, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        self.assertEqual(project["entry-points"]["parley.plugins"],
                         {"example_spam_filter": "parley_example_plugin"})
        # Installed or not, a plugin loads only when named: an empty list loads none.
        pm = load_plugins([])
        self.assertEqual([n for n, _ in pm.list_name_plugin()], [])
