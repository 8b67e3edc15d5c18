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


class EntryPointDiscoveryTest(unittest.TestCase):
    """A plugin installed as a distribution is found by its ``parley.plugins`` entry
    point name, and only loads when the config names it."""

    def setUp(self) -> None:
        import os
        import sys
        import tempfile

        site = tempfile.mkdtemp(prefix="parley-ep-")
        dist = os.path.join(site, "parley_ep_probe-1.0.dist-info")
        os.mkdir(dist)
        with open(os.path.join(dist, "METADATA"), "w") as f:
            f.write("Metadata-Version: 2.1\nName: parley-ep-probe\nVersion: 1.0\n")
        with open(os.path.join(dist, "entry_points.txt"), "w") as f:
            f.write("[parley.plugins]\nprobe_filter = parley_ep_probe_module\n")
        with open(os.path.join(site, "parley_ep_probe_module.py"), "w") as f:
            f.write("from plugins import hookimpl\n\n\n@hookimpl\n"
                    "def check_username_for_spam(user_id):\n    return True\n")
        sys.path.insert(0, site)
        self.addCleanup(sys.path.remove, site)

    def test_entry_point_loads_only_when_named(self) -> None:
        self.assertEqual(load_plugins([]).list_name_plugin(), [])
        pm = load_plugins(["probe_filter"])
        self.assertEqual(pm.hook.check_username_for_spam(user_id="@a:b"), [True])

    def test_config_takes_names_and_objects(self) -> None:
        import tempfile

        from tests.harness import make_config

        config, _ = make_config(tempfile.mkdtemp(), "sqlite", plugins=[
            "tests.rest.spam_plugin", {"name": "x.y", "config": {"a": 1}}])
        self.assertEqual(config.plugins, ["tests.rest.spam_plugin", "x.y"])
        self.assertEqual(config.plugin_configs, {"x.y": {"a": 1}})
        with self.assertRaisesRegex(Exception, "plugins"):
            make_config(tempfile.mkdtemp(), "sqlite", plugins=[{"config": {}}])
