"""A cheap "is this session revoked?" check for every request.

Answers are cached: a revoked session stays revoked for ever (so that answer is
kept until evicted), an active one is re-checked after ``ttl`` seconds. Revoking
in this process invalidates at once; other processes learn through
:meth:`SessionCache.invalidate` (fed by Redis pub/sub in a multi-worker setup)
or, at worst, after ``ttl``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from homeserver.clock import Clock
from storage.stores.sessions import SessionStore


class SessionCache:
    def __init__(
        self, store: SessionStore, clock: Clock, ttl: float, max_entries: int = 100_000
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        # session_id -> (active, checked_at)
        self._entries: OrderedDict[str, tuple[bool, float]] = OrderedDict()
        self._listeners: list[Callable[[list[str]], None]] = []

    async def is_active(self, session_id: str) -> bool:
        entry = self._entries.get(session_id)
        now = self._clock.time()
        if entry is not None:
            active, checked = entry
            if not active or now - checked < self._ttl:
                self._entries.move_to_end(session_id)
                return active
        active = await self._store.is_active(session_id)
        self._put(session_id, active, now)
        return active

    def mark_active(self, session_id: str) -> None:
        self._put(session_id, True, self._clock.time())

    def invalidate(self, session_ids: Iterable[str], propagate: bool = True) -> None:
        """Mark sessions revoked here, and tell other processes (if wired)."""
        sids = list(session_ids)
        now = self._clock.time()
        for sid in sids:
            self._put(sid, False, now)
        if propagate and sids:
            for listener in self._listeners:
                listener(sids)

    def add_revocation_listener(self, listener: Callable[[list[str]], None]) -> None:
        self._listeners.append(listener)

    def _put(self, session_id: str, active: bool, now: float) -> None:
        self._entries[session_id] = (active, now)
        self._entries.move_to_end(session_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
