"""Wakes long-polling /sync requests (and WebSocket pushes) when something new
happens for a user. Keyed by user and room, so a send wakes exactly the syncs of
that room's members; no polling.

``Notifier`` is the in-process implementation. A multi-process deployment wraps it:
events persisted elsewhere arrive over Redis pub/sub and are fed to
:meth:`Notifier.notify`, so the interface stays the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Protocol

from twisted.internet import defer

from homeserver.clock import Clock


class NotifierInterface(Protocol):
    #: True once :meth:`Notifier.close` ran: long-polls answer now instead of waiting.
    closing: bool

    def notify(self, user_ids: Iterable[str] = (), room_ids: Iterable[str] = ()) -> None: ...

    def wait(self, user_id: str, room_ids: Iterable[str], timeout_s: float) -> defer.Deferred[bool]: ...


class Notifier:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._by_user: dict[str, set[defer.Deferred[bool]]] = defaultdict(set)
        self._by_room: dict[str, set[defer.Deferred[bool]]] = defaultdict(set)
        self.closing = False
        # Read by the metrics (homeserver/metrics/activity.py) at scrape time.
        self.notifications = 0
        self.woken = 0

    def notify(self, user_ids: Iterable[str] = (), room_ids: Iterable[str] = ()) -> None:
        """Something changed for these users / in these rooms: wake their waiters."""
        self.notifications += 1
        waiters: set[defer.Deferred[bool]] = set()
        for uid in user_ids:
            waiters |= self._by_user.pop(uid, set())
        for rid in room_ids:
            waiters |= self._by_room.pop(rid, set())
        for d in waiters:
            if not d.called:
                self.woken += 1
                d.callback(True)

    def close(self) -> None:
        """Graceful shutdown: wake every waiter now; from here on nobody waits, so held
        long-polls answer at once with what they have (their normal empty answer)."""
        self.closing = True
        self.notify(user_ids=list(self._by_user), room_ids=list(self._by_room))

    def wait(self, user_id: str, room_ids: Iterable[str], timeout_s: float) -> defer.Deferred[bool]:
        """A Deferred firing True when woken, False on timeout (at once when closing)."""
        if self.closing:
            return defer.succeed(False)
        d: defer.Deferred[bool] = defer.Deferred()
        rooms = list(room_ids)
        self._by_user[user_id].add(d)
        for rid in rooms:
            self._by_room[rid].add(d)

        def timeout() -> None:
            if not d.called:
                d.callback(False)

        call = self._clock.call_later(max(0.0, timeout_s), timeout)

        def cleanup(result: bool) -> bool:
            if call.active():
                call.cancel()
            self._by_user.get(user_id, set()).discard(d)
            if not self._by_user.get(user_id):
                self._by_user.pop(user_id, None)
            for rid in rooms:
                self._by_room.get(rid, set()).discard(d)
                if not self._by_room.get(rid):
                    self._by_room.pop(rid, None)
            return result

        d.addBoth(cleanup)
        return d

    def waiting_count(self) -> int:
        return len({d for s in self._by_user.values() for d in s})
