"""The in-memory m.ignored_user_list of /sync (homeserver/handlers/ignored_users.py):
kept until a change of the user's account data (or anyone's, told by another process),
and never kept from a read that a change overlapped."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from homeserver.handlers.ignored_users import IgnoredUsers


class _Store:
    """Account data in a dict; ``hold`` makes the next read wait for ``release``."""

    def __init__(self) -> None:
        self.lists: dict[str, Any] = {}
        self.reads = 0
        self.hold: defer.Deferred[None] | None = None

    async def get_account_data(self, user_id: str, room_id: str | None, data_type: str) -> Any:
        assert room_id is None and data_type == "m.ignored_user_list"
        self.reads += 1
        content = self.lists.get(user_id)
        if self.hold is not None:
            held, self.hold = self.hold, None
            await held
        return content


class IgnoredUsersTest(unittest.TestCase):
    def setUp(self) -> None:
        self.store = _Store()
        self.ignored = IgnoredUsers(self.store, size=2)  # type: ignore[arg-type]

    def set(self, user: str, *ignored: str) -> None:
        self.store.lists[user] = {"ignored_users": {u: {} for u in ignored}}

    async def test_kept_until_the_users_change(self) -> None:
        self.set("@a:t", "@x:t")
        self.assertEqual(await self.ignored.of("@a:t"), {"@x:t"})
        self.set("@a:t", "@y:t")
        self.assertEqual(await self.ignored.of("@a:t"), {"@x:t"})  # kept: no change told
        self.assertEqual(self.store.reads, 1)
        self.ignored.changed("@b:t")  # another user's change keeps it
        self.assertEqual(await self.ignored.of("@a:t"), {"@x:t"})
        self.ignored.changed("@a:t")
        self.assertEqual(await self.ignored.of("@a:t"), {"@y:t"})
        self.assertEqual(self.store.reads, 2)

    async def test_another_process_change_drops_all(self) -> None:
        self.set("@a:t", "@x:t")
        self.set("@b:t", "@x:t")
        await self.ignored.of("@a:t")
        await self.ignored.of("@b:t")
        self.set("@a:t")
        self.set("@b:t", "@z:t")
        self.ignored.changed("")
        self.assertEqual(await self.ignored.of("@a:t"), frozenset())
        self.assertEqual(await self.ignored.of("@b:t"), {"@z:t"})

    async def test_a_read_overlapping_a_change_is_not_kept(self) -> None:
        self.set("@a:t", "@x:t")
        gate: defer.Deferred[None] = defer.Deferred()
        self.store.hold = gate
        reading = defer.ensureDeferred(self.ignored.of("@a:t"))
        self.set("@a:t", "@y:t")  # written and told while the old value is on its way
        self.ignored.changed("@a:t")
        gate.callback(None)
        self.assertEqual(await reading, {"@x:t"})
        self.assertEqual(await self.ignored.of("@a:t"), {"@y:t"})

    async def test_malformed_content_is_no_one(self) -> None:
        for content in (None, "x", {"ignored_users": ["@x:t"]}, {"ignored_users": {1: {}}}):
            self.store.lists["@a:t"] = content
            self.ignored.changed("@a:t")
            self.assertEqual(await self.ignored.of("@a:t"), frozenset())

    async def test_bounded(self) -> None:
        for user in ("@a:t", "@b:t", "@c:t"):
            self.set(user, "@x:t")
            await self.ignored.of(user)
        reads = self.store.reads
        await self.ignored.of("@a:t")  # the least recently used was dropped (size 2)
        self.assertEqual(self.store.reads, reads + 1)
