"""Presence from syncs held on client workers (issue 18).

Presence has one writer, the main process. A client worker's /sync (and legacy /events)
with ``set_presence=online|unavailable`` is reported to it over the replication channel
and applied there as if the sync were local (``PresenceHandler.remote_syncing``), idle
and offline timers included:

- The worker (:class:`SyncReporter`) keeps the syncs in progress: per user and device,
  the state asked for, when the latest sync started and when it ends (its timeout). A new
  device or a changed state is sent at once (batched in one message per reactor turn),
  but at most once per user per ``HEARTBEAT_S``; everything else waits for the heartbeat.
- Every ``HEARTBEAT_S`` the worker sends every sync still in progress ("still syncing"),
  even none: the main process records when it last heard from each worker.
- The main process (:class:`RemoteSyncs`) keeps each reported device alive until that
  worker's sync ends plus ``SYNC_ONLINE_TIMEOUT_MS`` (as for its own syncs). A worker not
  heard from for ``EXPIRY_S`` (crashed, cut off from Redis), or that says it is stopping,
  is gone: its syncs stop counting and the users time out as if they had just ended, as
  Synapse does with the syncing users of a process that stops reporting.

``set_presence=offline`` never counts; with presence disabled nothing is reported.
Messages carry user and device ids and times only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from homeserver.clock import Clock
from homeserver.handlers.presence import ONLINE, UNAVAILABLE
from homeserver.replication.link import JsonDict

logger = logging.getLogger(__name__)

KIND = "psync"  # a worker's syncs (and heartbeat)
GONE = "psync_gone"  # a worker stopping: its syncs no longer count
HEARTBEAT_S = 5.0  # a worker reports its syncs in progress this often
EXPIRY_S = 3 * HEARTBEAT_S  # main forgets a worker's syncs after this long unheard
MAX_ENTRIES = 1000  # syncs per message (bigger reports are split)
MAX_TRACKED = 100_000  # syncs a worker tracks at most (one per user and device)
MAX_REMAINING_MS = 10 * 60_000  # a reported sync's remaining time, bounded on receipt
MAX_AGO_MS = 24 * 3600_000  # a reported "started ago", bounded on receipt
MAX_ID_LENGTH = 255  # user / device id length accepted from a message
_STATES = (ONLINE, UNAVAILABLE)


@dataclass
class _Sync:
    state: str
    started_ms: int  # the latest sync's start
    until_ms: int  # when the latest sync ends (its timeout)


class SyncReporter:
    """A client worker's side: collects its syncs and reports them to the main process.

    ``send(msg)`` publishes a message (Replication.send); ``reactor`` runs the coalesced
    immediate reports; the heartbeat runs on ``clock`` (tests drive it)."""

    def __init__(self, clock: Clock, reactor: Any, send: Any) -> None:
        self._clock = clock
        self._reactor = reactor
        self._send = send
        self._syncs: dict[tuple[str, str | None], _Sync] = {}
        self._dirty: set[tuple[str, str | None]] = set()
        self._sent_at: dict[str, int] = {}  # user -> when last reported (ms)
        self._flush_call: Any = None
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self.messages = 0  # sent (tests, metrics)

    def tracked(self) -> int:
        return len(self._syncs)

    def user_syncing(self, user_id: str, device_id: str | None, state: str,
                     timeout_ms: int) -> None:
        """A sync started here with ``set_presence=state`` (called before it waits)."""
        if self._stopped or state not in _STATES:
            return
        key = (user_id, device_id)
        now = self._clock.time_msec()
        entry = self._syncs.get(key)
        if entry is None:
            if len(self._syncs) >= MAX_TRACKED:
                self._expire(now)
                if len(self._syncs) >= MAX_TRACKED:
                    return  # bounded memory: reported again once there is room
            self._syncs[key] = _Sync(state, now, now + timeout_ms)
            self._dirty.add(key)
        else:
            if entry.state != state:
                self._dirty.add(key)
            entry.state, entry.started_ms = state, now
            entry.until_ms = max(entry.until_ms, now + timeout_ms)
        if self._dirty and (self._flush_call is None or not self._flush_call.active()):
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send the new and changed syncs of users not reported in the last
        ``HEARTBEAT_S`` (the others go with the next heartbeat)."""
        now = self._clock.time_msec()
        bound = int(HEARTBEAT_S * 1000)
        due = {k for k in self._dirty
               if now - self._sent_at.get(k[0], now - bound) >= bound}
        if due:
            self._dirty -= due
            self._report(sorted(due, key=lambda k: (k[0], k[1] or "")), now, heartbeat=False)

    def _expire(self, now: int) -> None:
        for key in [k for k, s in self._syncs.items() if s.until_ms < now]:
            del self._syncs[key]
            self._dirty.discard(key)
        for user_id in [u for u, t in self._sent_at.items()
                        if now - t > 2 * HEARTBEAT_S * 1000]:
            del self._sent_at[user_id]

    def heartbeat(self) -> None:
        """Report every sync in progress (and that this worker is alive)."""
        if self._stopped:
            return
        now = self._clock.time_msec()
        self._expire(now)
        self._dirty.clear()
        self._report(list(self._syncs), now, heartbeat=True)

    def _report(self, keys: list[tuple[str, str | None]], now: int, heartbeat: bool) -> None:
        entries = []
        for key in keys:
            entry = self._syncs.get(key)
            if entry is None:
                continue
            entries.append([key[0], key[1], entry.state, max(0, entry.until_ms - now),
                            max(0, now - entry.started_ms)])
            self._sent_at[key[0]] = now
        chunks = [entries[i:i + MAX_ENTRIES] for i in range(0, len(entries), MAX_ENTRIES)]
        for chunk in chunks or ([[]] if heartbeat else []):
            msg: JsonDict = {"k": KIND, "s": chunk}
            if heartbeat:
                msg["hb"] = True
            self._send(msg)
            self.messages += 1

    # -- life cycle

    def start(self) -> None:
        self._tick()

    def _tick(self) -> None:
        if self._stopped:
            return
        self._timer = self._clock.call_later(HEARTBEAT_S, self._tick)
        self.heartbeat()

    def stop(self) -> None:
        """Stopping: tell the main process these syncs no longer count."""
        if self._stopped:
            return
        self._send({"k": GONE})
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()


def _entry(raw: Any) -> tuple[str, str | None, str, int, int] | None:
    """One reported sync, validated and bounded (None: malformed)."""
    if not isinstance(raw, list) or len(raw) != 5:
        return None
    user_id, device_id, state, remaining, ago = raw
    if not isinstance(user_id, str) or not 0 < len(user_id) <= MAX_ID_LENGTH:
        return None
    if device_id is not None and (not isinstance(device_id, str)
                                  or len(device_id) > MAX_ID_LENGTH):
        return None
    if state not in _STATES:
        return None
    for n in (remaining, ago):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return None
    return user_id, device_id, state, min(remaining, MAX_REMAINING_MS), min(ago, MAX_AGO_MS)


class RemoteSyncs:
    """The main process's side: applies the workers' reports to its presence handler
    and forgets the syncs of workers that stop reporting."""

    def __init__(self, clock: Clock, presence: Any, workers: set[str]) -> None:
        self._clock = clock
        self._presence = presence
        self._workers = workers  # the deployment's process names (others are ignored)
        self._heard: dict[str, float] = {}  # worker -> when last heard (clock seconds)
        self._queue: defer.Deferred[None] = defer.succeed(None)  # reports, in order
        self._last: defer.Deferred[None] = defer.succeed(None)  # fires when all ran
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self.applied = 0  # syncs applied (tests)
        self.expired = 0  # workers forgotten for silence (tests)

    def handlers(self) -> dict[str, Any]:
        return {KIND: self.on_report, GONE: self.on_gone}

    def _sender(self, msg: JsonDict) -> str | None:
        sender = msg.get("i")
        return sender if isinstance(sender, str) and sender in self._workers else None

    def on_report(self, msg: JsonDict) -> None:
        sender = self._sender(msg)
        if sender is None or self._stopped:
            return
        self._heard[sender] = self._clock.time()
        raw = msg.get("s")
        entries = [e for e in (_entry(r) for r in (raw[:MAX_ENTRIES]
                                                  if isinstance(raw, list) else [])) if e]
        if entries:
            self._then(self._apply(sender, entries))

    def on_gone(self, msg: JsonDict) -> None:
        sender = self._sender(msg)
        if sender is not None and not self._stopped:
            self._heard.pop(sender, None)
            self._then(self._presence.process_gone(sender))

    async def _apply(self, sender: str, entries: list[tuple[str, str | None, str, int, int]]
                     ) -> None:
        for user_id, device_id, state, remaining, ago in entries:
            await self._presence.remote_syncing(sender, user_id, device_id, state,
                                                remaining, ago)
            self.applied += 1

    def _then(self, coro: Any) -> None:
        """Run after the reports before it (one at a time: the database is not flooded,
        and a worker's "gone" is never overtaken by its earlier report)."""
        if self._stopped:
            coro.close()
            return
        done: defer.Deferred[None] = defer.Deferred()
        self._queue.addCallback(lambda _: defer.ensureDeferred(coro))
        self._queue.addErrback(lambda f: logger.warning("presence from a worker failed: %s",
                                                        f.getErrorMessage()))
        self._queue.addCallback(lambda _: done.callback(None))
        self._last = done

    def check_expiry(self) -> None:
        """Forget the syncs of workers silent for ``EXPIRY_S``."""
        now = self._clock.time()
        for worker in [w for w, t in self._heard.items() if now - t > EXPIRY_S]:
            del self._heard[worker]
            self.expired += 1
            logger.info("presence: no sync report from worker %s for %ds: its syncs expire",
                        worker, int(EXPIRY_S))
            self._then(self._presence.process_gone(worker))

    # -- life cycle

    def start(self) -> None:
        self._tick()

    def _tick(self) -> None:
        if self._stopped:
            return
        self._timer = self._clock.call_later(HEARTBEAT_S, self._tick)
        self.check_expiry()

    async def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        last, self._last = self._last, defer.succeed(None)
        await last
