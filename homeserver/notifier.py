"""Wakes long-polling /sync requests (and WebSocket pushes) when something new
happens for a user. Keyed by user and room, so a send wakes exactly the syncs of
that room's members; no polling.

``Notifier`` is the in-process implementation. A multi-process deployment wraps it:
events persisted elsewhere arrive over Redis pub/sub and are fed to
:meth:`Notifier.notify`, so the interface stays the same.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from homeserver.clock import Clock


class NotifierInterface(Protocol):
    #: True once :meth:`Notifier.close` ran: long-polls answer now instead of waiting.
    closing: bool

    def notify(self, user_ids: Iterable[str] = (), room_ids: Iterable[str] = ()) -> None: ...

    def wait(self, user_id: str, room_ids: Iterable[str], timeout_s: float) -> defer.Deferred[bool]: ...


class Waiter:
    """One parked long-poll. Slots and no closures: tens of thousands may be parked, so
    each costs a few hundred bytes (issue 18), and they share one timer (see ``Notifier``).
    :meth:`Notifier.wait` parks a Deferred-backed one; a long-poll that holds no coroutine
    while parked (homeserver/http/longpoll.py) is its own waiter, through
    :meth:`Notifier.park`, and overrides :meth:`on_fire`."""

    __slots__ = ("notifier", "user_id", "rooms", "fired", "seq")

    def __init__(self) -> None:
        self.notifier: Notifier | None = None
        self.user_id = ""
        self.rooms: tuple[str, ...] = ()
        self.fired = True  # not parked
        self.seq = 0  # of its current heap entry: older entries of a re-parked one are stale

    def on_fire(self, woken: bool) -> None:
        """Woken (True) or timed out (False); already unindexed, so it may park again."""
        raise NotImplementedError


class _Waiter(Waiter):
    """The waiter behind :meth:`Notifier.wait`: fires a Deferred."""

    __slots__ = ("deferred",)

    def __init__(self) -> None:
        super().__init__()
        self.deferred: defer.Deferred[bool] = defer.Deferred(canceller=self._cancelled)

    def on_fire(self, woken: bool) -> None:
        self.deferred.callback(woken)

    def _cancelled(self, _d: defer.Deferred[bool]) -> None:
        """The awaiting request went away: stop indexing it (it counts as fired)."""
        if self.notifier is not None and not self.fired:
            self.fired = True
            self.notifier._unindex(self)


# A key's waiters: the lone waiter itself (the usual case: one long-poll per user), or a set.
_Slot = Waiter | set[Waiter]


def _add(index: dict[str, _Slot], key: str, w: Waiter) -> None:
    cur = index.get(key)
    if cur is None:
        index[key] = w
    elif isinstance(cur, set):
        cur.add(w)
    else:
        index[key] = {cur, w}


def _discard(index: dict[str, _Slot], key: str, w: Waiter) -> bool:
    """Remove ``w`` under ``key``; whether it was there."""
    cur = index.get(key)
    if cur is w:
        del index[key]
        return True
    if isinstance(cur, set) and w in cur:
        cur.discard(w)
        if not cur:
            del index[key]
        return True
    return False


def _members(slot: _Slot | None) -> Iterable[Waiter]:
    if slot is None:
        return ()
    return slot if isinstance(slot, set) else (slot,)


class Notifier:
    """Waiters are indexed by user and by room. Timeouts share one reactor timer over a
    heap of (deadline, seq, waiter) instead of a DelayedCall each; entries of waiters
    already woken stay in the heap until their deadline (or a compaction)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._by_user: dict[str, _Slot] = {}
        self._by_room: dict[str, _Slot] = {}
        self._heap: list[tuple[float, int, Waiter]] = []
        self._seq = 0
        self._live = 0  # waiters not yet fired
        self._timer: IDelayedCall | None = None
        self._timer_at = 0.0
        self.closing = False
        # Read by the metrics (homeserver/metrics/activity.py) at scrape time.
        self.notifications = 0
        self.woken = 0

    def notify(self, user_ids: Iterable[str] = (), room_ids: Iterable[str] = ()) -> None:
        """Something changed for these users / in these rooms: wake their waiters."""
        self.notifications += 1
        waiters: set[Waiter] = set()
        for uid in user_ids:
            waiters.update(_members(self._by_user.get(uid)))
        for rid in room_ids:
            waiters.update(_members(self._by_room.get(rid)))
        for w in waiters:
            if not w.fired:
                self.woken += 1
                self._fire(w, True)

    def close(self) -> None:
        """Graceful shutdown: wake every waiter now; from here on nobody waits, so held
        long-polls answer at once with what they have (their normal empty answer)."""
        self.closing = True
        self.notify(user_ids=list(self._by_user), room_ids=list(self._by_room))

    def wait(self, user_id: str, room_ids: Iterable[str], timeout_s: float) -> defer.Deferred[bool]:
        """A Deferred firing True when woken, False on timeout (at once when closing)."""
        if self.closing:
            return defer.succeed(False)
        w = _Waiter()
        self.park(w, user_id, room_ids, timeout_s)
        return w.deferred

    def park(self, w: Waiter, user_id: str, room_ids: Iterable[str], timeout_s: float) -> bool:
        """Index ``w`` until woken or ``timeout_s`` passed, then call ``w.on_fire`` (never
        from inside this call). False, and nothing parked, when closing: answer now."""
        if self.closing:
            return False
        if not w.fired:
            raise RuntimeError("waiter already parked")
        w.notifier = self
        w.user_id = user_id
        w.rooms = tuple(room_ids)  # a tuple passed in is kept as is (no copy per poll)
        w.fired = False
        _add(self._by_user, user_id, w)
        for rid in w.rooms:
            _add(self._by_room, rid, w)
        self._live += 1
        deadline = self._clock.time() + max(0.0, timeout_s)
        self._seq += 1
        w.seq = self._seq
        heapq.heappush(self._heap, (deadline, self._seq, w))
        if len(self._heap) > 2 * self._live + 64:
            self._compact()
        if self._timer is None or deadline < self._timer_at:
            self._schedule(deadline)
        return True

    def waiting_count(self) -> int:
        return self._live

    def _fire(self, w: Waiter, result: bool) -> None:
        """Unindex the waiter, then fire it (its awaiter may wait again at once)."""
        w.fired = True
        self._unindex(w)
        w.on_fire(result)

    def _unindex(self, w: Waiter) -> None:
        if _discard(self._by_user, w.user_id, w):
            self._live -= 1
        for rid in w.rooms:
            _discard(self._by_room, rid, w)

    def _schedule(self, deadline: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._clock.call_later(max(0.0, deadline - self._clock.time()),
                                             self._on_timer)

    def _on_timer(self) -> None:
        """Time out every waiter whose deadline passed; re-arm for the next one."""
        self._timer = None
        limit = max(self._clock.time(), self._timer_at)
        last = self._seq  # waiters added while firing wait for the next round
        # self._heap, not a local: a fired waiter may wait again, which may compact it.
        while self._heap and self._heap[0][0] <= limit and self._heap[0][1] <= last:
            _, seq, w = heapq.heappop(self._heap)
            if not w.fired and w.seq == seq:
                self._fire(w, False)
        # A fired waiter may have waited again and armed the timer already.
        if self._heap and (self._timer is None or self._heap[0][0] < self._timer_at):
            self._schedule(self._heap[0][0])

    def _compact(self) -> None:
        """Drop the heap entries of waiters already woken (bounds the heap under churn)."""
        self._heap = [e for e in self._heap if not e[2].fired and e[2].seq == e[1]]
        heapq.heapify(self._heap)
