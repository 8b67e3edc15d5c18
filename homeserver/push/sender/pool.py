"""The server's HTTP pushers: one :class:`HttpPusher` per pusher with something to
do, fed by the push actions written for each new event and by read receipts.

Pushers are looked up in the database when a user gets notifying push actions (one
query per event), so a pusher set, replaced or deleted through ``/pushers/set`` is
noticed without any hook in the REST layer; a worker re-reads its row before each
pass and retires when the row is gone. At start-up, the pushers with notifications
queued after their position resume.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from twisted.internet import defer

from homeserver.metrics.registry import PREFIX
from homeserver.push.sender.pusher import HttpPusher, PusherDeps, PusherKey
from storage.stores.push_actions import PushActionRow
from storage.stores.pushers import PendingPush, Pusher

logger = logging.getLogger(__name__)

OUTCOMES = ("sent", "failed", "blocked", "rejected", "dropped",
            "badge_sent", "badge_failed", "badge_blocked")


class PushMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            f"{PREFIX}push_sent",
            "Notifications POSTed to push gateways, by outcome (sent, failed, blocked,"
            " rejected, dropped after a day of failures; badge_* for read badge updates).",
            ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.sent.labels(outcome)

    def count(self, outcome: str) -> None:
        self.sent.labels(outcome).inc()


class PusherPool:
    def __init__(self, deps: PusherDeps) -> None:
        self._deps = deps
        self._workers: dict[PusherKey, HttpPusher] = {}
        self._tasks: set[defer.Deferred[Any]] = set()
        self._stopped = False

    async def start(self) -> None:
        """Resume pushers with notifications queued (after a restart)."""
        for pusher in await self._deps.store.http_pushers_with_pending():
            self._worker(pusher).kick()

    def stop(self) -> None:
        self._stopped = True
        for worker in list(self._workers.values()):
            worker.stop()
        self._workers.clear()
        for task in list(self._tasks):
            task.cancel()

    @property
    def busy(self) -> bool:
        """Whether a hook's lookup is still running (tests wait for it)."""
        return bool(self._tasks)

    def worker(self, key: PusherKey) -> HttpPusher | None:
        return self._workers.get(key)

    # -- hooks ----------------------------------------------------------------------------

    def on_push_actions(self, rows: Sequence[PushActionRow]) -> None:
        """``PushActionsHandler.on_added``: a batch's notifying rows were written."""
        rows = [r for r in rows if r.notify]
        if rows and not self._stopped:
            self._background(self._on_push_actions(rows))

    def on_read(self, user_id: str, _room_id: str) -> None:
        """``ReceiptsHandler.on_read``: badge updates for the user's pushers."""
        if not self._stopped:
            self._background(self._on_read(user_id))

    async def _on_push_actions(self, rows: list[PushActionRow]) -> None:
        by_user: dict[str, list[PendingPush]] = {}
        for r in rows:
            by_user.setdefault(r.user_id, []).append(
                PendingPush(r.event_id, r.room_id, r.stream_ordering, r.actions_json))
        for pusher in await self._deps.store.http_pushers_for_users(list(by_user)):
            if not self._stopped:
                self._worker(pusher).on_new_actions(by_user[pusher.user_id])

    async def _on_read(self, user_id: str) -> None:
        for pusher in await self._deps.store.http_pushers_for_users([user_id]):
            if not self._stopped:
                self._worker(pusher).on_read()

    # -- internals ------------------------------------------------------------------------

    def _worker(self, pusher: Pusher) -> HttpPusher:
        key = (pusher.user_id, pusher.app_id, pusher.pushkey)
        worker = self._workers.get(key)
        if worker is None:
            worker = self._workers[key] = HttpPusher(key, self._deps, self._retire)
        return worker

    def _retire(self, key: PusherKey) -> None:
        self._workers.pop(key, None)

    def _background(self, coro: Any) -> None:
        d = defer.ensureDeferred(coro)
        self._tasks.add(d)
        d.addErrback(_log_failure)
        d.addBoth(lambda _: self._tasks.discard(d))


def _log_failure(failure: Any) -> None:
    if not failure.check(defer.CancelledError):
        logger.error("pusher pool task failed: %s", failure.getErrorMessage())
