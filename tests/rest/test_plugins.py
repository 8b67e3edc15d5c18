"""Plugins named in the config are loaded and their hooks are called."""

from __future__ import annotations

from twisted.trial import unittest

from plugins import PluginError, load_plugins
from tests.harness import TEST_PASSWORD, HomeserverTestCase
from tests.rest import spam_plugin


class PluginHooksTest(HomeserverTestCase):
    def config_overrides(self) -> dict:
        return {"plugins": ["tests.rest.spam_plugin"]}

    async def test_username_spam_check(self) -> None:
        resp = await self.request("POST", "/_matrix/client/v3/register",
                                  {"username": "spammer", "password": TEST_PASSWORD})
        self.assertMatrixError(resp, 403, "M_FORBIDDEN")
        await self.register("honest")

    async def test_security_events_reach_plugins(self) -> None:
        spam_plugin.SEEN.clear()
        await self.register("watched")
        await self.login("watched", "wrong-password")
        kinds = [(e["event_type"], e["outcome"], e["user_id"]) for e in spam_plugin.SEEN]
        self.assertIn(("register", "success", "@watched:test.local"), kinds)
        self.assertIn(("login", "failure", "@watched:test.local"), kinds)
        for event in spam_plugin.SEEN:
            self.assertNotIn(TEST_PASSWORD, repr(event))


class PluginLoadingTest(unittest.TestCase):
    def test_unknown_plugin_is_a_clear_error(self) -> None:
        with self.assertRaisesRegex(PluginError, "no_such_plugin_module"):
            load_plugins(["no_such_plugin_module"])
