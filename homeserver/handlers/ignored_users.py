"""Whom a user ignores (``m.ignored_user_list``), kept in memory for /sync, which reads
it on every request: their messages and invites are hidden from the user.

A user's entry is dropped at any account data change of theirs; a change told by another
process (replication names no user) drops every entry. A read that overlapped a change
is answered but not kept, so a write committed while it ran is never hidden."""

from __future__ import annotations

from homeserver.lru import LruCache
from storage.stores.account_data import AccountDataStore

#: Users whose list is kept.
IGNORED_CACHE_SIZE = 10_000


class IgnoredUsers:
    def __init__(self, store: AccountDataStore, size: int = IGNORED_CACHE_SIZE) -> None:
        self._store = store
        self._cache: LruCache[str, frozenset[str]] = LruCache(size)
        self._changes = 0

    def changed(self, user_id: str) -> None:
        """An account data change of ``user_id`` ("": of someone, on another process)."""
        self._changes += 1
        if user_id:
            self._cache.pop(user_id)
        else:
            self._cache.clear()

    async def of(self, user_id: str) -> frozenset[str]:
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        changes = self._changes
        content = await self._store.get_account_data(user_id, None, "m.ignored_user_list")
        users = content.get("ignored_users") if isinstance(content, dict) else None
        ignored = frozenset(u for u in users if isinstance(u, str)) if isinstance(
            users, dict) else frozenset()
        if changes == self._changes:
            self._cache.set(user_id, ignored)
        return ignored
