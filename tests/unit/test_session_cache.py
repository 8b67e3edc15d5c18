"""The revocation cache: revoked sessions are remembered, active ones re-checked after the TTL."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest

from homeserver.auth.session_cache import SessionCache
from homeserver.clock import Clock


class FakeStore:
    def __init__(self) -> None:
        self.active: set[str] = set()
        self.lookups = 0

    async def is_active(self, session_id: str) -> bool:
        self.lookups += 1
        return session_id in self.active


class SessionCacheTest(unittest.TestCase):
    def setUp(self) -> None:
        self.time = task.Clock()
        self.store = FakeStore()
        self.cache = SessionCache(self.store, Clock(self.time), ttl=30, max_entries=3)  # type: ignore[arg-type]

    async def test_active_cached_for_ttl(self) -> None:
        self.store.active.add("s")
        self.assertTrue(await self.cache.is_active("s"))
        self.assertTrue(await self.cache.is_active("s"))
        self.assertEqual(self.store.lookups, 1)
        self.store.active.discard("s")  # revoked by another process
        self.time.advance(31)
        self.assertFalse(await self.cache.is_active("s"))
        self.assertEqual(self.store.lookups, 2)

    async def test_local_invalidation_is_immediate_and_propagated(self) -> None:
        heard: list[list[str]] = []
        self.cache.add_revocation_listener(heard.append)
        self.store.active.add("s")
        self.assertTrue(await self.cache.is_active("s"))
        self.cache.invalidate(["s"])
        self.assertFalse(await self.cache.is_active("s"))
        self.assertEqual(heard, [["s"]])
        self.cache.invalidate(["t"], propagate=False)
        self.assertEqual(heard, [["s"]])

    async def test_bounded(self) -> None:
        for sid in "abcde":
            await self.cache.is_active(sid)
        self.assertEqual(len(self.cache._entries), 3)  # noqa: SLF001
