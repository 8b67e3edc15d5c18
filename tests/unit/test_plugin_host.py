"""The plugin host: sync, Deferred and coroutine answers alike; timeouts; each hook's
failure default; metrics; config validation of plugins."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.trial import unittest

from homeserver.http.errors import MatrixError
from plugins import PluginError, hookimpl, load_plugins
from plugins.host import PluginHost
from plugins.module_api import validate_plugin_config
from plugins.types import Refusal


class Sync:
    @hookimpl
    def rate_limit_policy(self, action: str) -> Any:
        if action == "raise":
            raise ZeroDivisionError
        return {"login": 2, "bad": "x"}.get(action)

    @hookimpl
    def export_user_data(self, user_id: str) -> Any:
        return {"notes": [user_id]}

    @hookimpl
    def erase_user_data(self, user_id: str) -> None:
        return None

    @hookimpl
    def scan_media(self, path: str) -> str | None:
        if path == "boom":
            _raise()
        return "infected" if path == "bad" else None

    @hookimpl
    def user_may_invite(self, invitee: str) -> Any:
        if invitee == "@slow:x":
            time.sleep(0.05)  # a blocking plugin: its answer comes too late
        return None


class Async:
    @hookimpl
    async def rate_limit_policy(self, action: str) -> Any:
        return 0.5 if action == "message" else None

    @hookimpl
    def export_user_data(self, user_id: str) -> Any:
        return object()  # not JSON

    @hookimpl
    async def erase_user_data(self, user_id: str) -> None:
        await defer.Deferred()  # hangs

    @hookimpl
    def user_may_invite(self, invitee: str) -> Any:
        if invitee == "@refused:x":
            raise Refusal(400, "M_FORBIDDEN", "no", {"org.example.why": "test"})
        if invitee == "@deferred:x":
            return defer.succeed(True)
        return None


def _raise() -> Any:
    raise ValueError("boom")


def failures(registry: CollectorRegistry, hook: str, reason: str) -> float:
    return registry.get_sample_value("parley_plugin_hook_failures_total",
                                     {"hook": hook, "reason": reason}) or 0.0


class PluginHostTest(unittest.TestCase):
    def setUp(self) -> None:
        pm = load_plugins([], builtins=[("sync", Sync()), ("async", Async())])
        self.registry = CollectorRegistry()
        self.host = PluginHost(pm, self.registry, {"erase_user_data": 0.05,
                                                   "user_may_invite": 0.01})

    async def test_rate_limit_policy_first_answer_wins_and_fails_open(self) -> None:
        self.assertEqual(await self.host.rate_limit_factor("login", None, "1.2.3.4"), 2.0)
        self.assertEqual(await self.host.rate_limit_factor("message", "@a:x", None), 0.5)
        self.assertIsNone(await self.host.rate_limit_factor("other", None, None))
        self.assertIsNone(await self.host.rate_limit_factor("bad", None, None))
        self.assertIsNone(await self.host.rate_limit_factor("raise", None, None))
        self.assertEqual(failures(self.registry, "rate_limit_policy", "invalid_result"), 1)
        self.assertEqual(failures(self.registry, "rate_limit_policy", "exception"), 1)

    async def test_export_and_erase(self) -> None:
        out = await self.host.export_user_data("@a:x")
        self.assertEqual(out, {"sync": {"notes": ["@a:x"]}, "async": {"error": "plugin failed"}})
        self.assertEqual(await self.host.erase_user_data("@a:x"), ["async"])  # timed out
        self.assertEqual(failures(self.registry, "erase_user_data", "timeout"), 1)

    def test_scan_media_fails_closed(self) -> None:
        self.assertIsNone(self.host.scan_media_blocking("clean", "image/png", "0" * 64))
        self.assertEqual(self.host.scan_media_blocking("bad", "image/png", "0" * 64), "infected")
        self.assertEqual(self.host.scan_media_blocking("boom", "image/png", "0" * 64),
                         "scanner failed")

    async def test_gate_answers(self) -> None:
        await self.host.gate("user_may_invite", inviter="@a:x", invitee="@ok:x", room_id="!r")
        with self.assertRaises(MatrixError) as refused:
            await self.host.gate("user_may_invite", inviter="@a:x", invitee="@refused:x",
                                 room_id="!r")
        self.assertEqual((refused.exception.code, refused.exception.errcode), (400, "M_FORBIDDEN"))
        with self.assertRaises(MatrixError) as deferred:
            await self.host.gate("user_may_invite", inviter="@a:x", invitee="@deferred:x",
                                 room_id="!r")
        self.assertEqual(deferred.exception.code, 403)
        # A blocking sync plugin past its timeout: its answer is discarded, fail closed.
        with self.assertRaises(MatrixError):
            await self.host.gate("user_may_invite", inviter="@a:x", invitee="@slow:x",
                                 room_id="!r")
        self.assertEqual(failures(self.registry, "user_may_invite", "timeout"), 1)
        self.assertEqual(self.registry.get_sample_value(
            "parley_plugin_hook_duration_seconds_count", {"hook": "user_may_invite"}), 7)

    def test_refusal_cannot_forge_fields(self) -> None:
        for args in ((500, "M_X", "m"), (403, "nope", "m"), (403, "M_X", "m", {"errcode": 1})):
            with self.assertRaises(ValueError):
                Refusal(*args)

    def test_unknown_timeout_hook_is_a_config_error(self) -> None:
        with self.assertRaisesRegex(PluginError, "no_such_hook"):
            PluginHost(load_plugins([]), CollectorRegistry(), {"no_such_hook": 1.0})

    def test_plugin_config_schema(self) -> None:
        class WithSchema:
            CONFIG_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}}

        self.assertEqual(validate_plugin_config("p", WithSchema, {"n": 1}), {"n": 1})
        with self.assertRaisesRegex(PluginError, "'p' at n"):
            validate_plugin_config("p", WithSchema, {"n": "x"})

    def test_hookimpl_for_unknown_hook_is_refused(self) -> None:
        class Typo:
            @hookimpl
            def check_evnt_for_spam(self, event: Any) -> None: ...

        with self.assertRaisesRegex(PluginError, "check_evnt_for_spam"):
            load_plugins([], builtins=[("typo", Typo())])
